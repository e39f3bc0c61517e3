"""One rule for every sampler setting: explicit value > the model folder's sampling.json > library default.

``specdiff.pipeline.sampling_settings.resolve_sampling`` owns the rule; the pipeline, the command line
(synth, evaluate, serve all fill their unset flags through ``commands.options.resolve_sampling``) and
``evaluate()`` use it, and None means "the model's recommendation" in all of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from specdiff.constants import DEFAULT_GUIDANCE, DEFAULT_NUM_STEPS, DEFAULT_PRECISION, DEFAULT_SCHEDULER
from specdiff.errors import ModelError
from specdiff.pipeline.folder import SAMPLING_FILE
from specdiff.pipeline.sampling_settings import (
    ResolvedSampling,
    SamplingSettings,
    resolve_sampling,
    write_sampling_settings,
)

ROOT = Path(__file__).resolve().parents[1]

LIBRARY = {
    "scheduler": DEFAULT_SCHEDULER,
    "num_inference_steps": DEFAULT_NUM_STEPS,
    "guidance_scale": DEFAULT_GUIDANCE,
    "final_noise_time": 0.0,
    "precision": DEFAULT_PRECISION,
    "guidance_ceiling": None,
    "guidance_lift": None,
    "guidance_schedule": "every",
}
#: What the test folder's sampling.json recommends: a value unlike the library's for every key.
RECOMMENDED = {
    "scheduler": "ddim",
    "num_inference_steps": 4,
    "guidance_scale": 1.0,
    "final_noise_time": 0.5,
    "precision": "bf16",
    "guidance_ceiling": -0.2,
    "guidance_lift": 0.0,
    "guidance_schedule": "first",
}
#: What a caller asks for: unlike both.
EXPLICIT = {
    "scheduler": "unipc",
    "num_inference_steps": 7,
    "guidance_scale": 3.5,
    "final_noise_time": 0.25,
    "precision": "fp16",
    "guidance_ceiling": 0.5,
    "guidance_lift": 0.3,
    "guidance_schedule": "every",
}


def as_dict(settings: ResolvedSampling) -> dict[str, object]:
    return {key: getattr(settings, key) for key in LIBRARY}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    write_sampling_settings(tmp_path, SamplingSettings(**RECOMMENDED), note="measured")
    return tmp_path


def test_the_keys_are_the_fields_of_sampling_json():
    assert set(LIBRARY) == set(SamplingSettings().to_json()) and as_dict(SamplingSettings().resolve()) == LIBRARY


@pytest.mark.parametrize("key", sorted(LIBRARY))
def test_explicit_beats_sampling_json_beats_library_default(folder, tmp_path, key):
    # Nothing given, no file: the library default.
    assert getattr(resolve_sampling(None), key) == LIBRARY[key]
    assert getattr(resolve_sampling(tmp_path / "no-such-model"), key) == LIBRARY[key]
    # Nothing given: the folder's recommendation, read from the folder or from its settings.
    assert getattr(resolve_sampling(folder), key) == RECOMMENDED[key]
    assert getattr(resolve_sampling(SamplingSettings(**RECOMMENDED)), key) == RECOMMENDED[key]
    # Given explicitly: the caller's value, over the folder and over the defaults; the other keys
    # keep the recommendation.
    for source, fallback in ((folder, RECOMMENDED), (None, LIBRARY)):
        chosen = as_dict(resolve_sampling(source, **{key: EXPLICIT[key]}))
        assert chosen == {**fallback, key: EXPLICIT[key]}
    # None is "the model's recommendation", never a value of its own.
    assert getattr(resolve_sampling(folder, **{key: None}), key) == RECOMMENDED[key]


def test_explicit_values_pass_unchecked_for_their_caller_to_judge():
    sampler = object()  # a sampler object, not a name: the pipeline accepts those
    chosen = SamplingSettings().resolve(scheduler=sampler, num_inference_steps=0, guidance_scale=-1.0)
    assert chosen.scheduler is sampler and (chosen.num_inference_steps, chosen.guidance_scale) == (0, -1.0)


def test_a_broken_sampling_json_is_a_model_error(tmp_path):
    (tmp_path / SAMPLING_FILE).write_text(json.dumps({"num_inference_steps": 0}))
    with pytest.raises(ModelError, match="bad sampler settings"):
        resolve_sampling(tmp_path)


def test_the_command_line_fills_unset_flags_by_the_same_rule(folder):
    from specdiff.commands.options import resolve_sampling as fill_args

    args = argparse.Namespace(scheduler=None, steps=None, guidance=None, precision="auto")
    fill_args(args, folder)
    assert (args.scheduler, args.steps, args.guidance, args.precision_recommended) == ("ddim", 4, 1.0, "bf16")
    args = argparse.Namespace(scheduler="original", steps=2, guidance=0.0, precision="fp32")
    fill_args(args, folder)
    assert (args.scheduler, args.steps, args.guidance, args.precision) == ("original", 2, 0.0, "fp32")
    assert not hasattr(args, "precision_recommended")  # an explicit precision needs no recommendation


def test_the_pipeline_resolves_by_the_same_rule(folder):
    torch = pytest.importorskip("torch")
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    module = torch.nn.Linear(1, 1)
    pipe = SpectrogramDiffusionPipeline(module, module, module, sampling=SamplingSettings(**RECOMMENDED))
    assert pipe.sampling_for() == resolve_sampling(folder)
    assert pipe.scheduler == "ddim" and pipe.max_steps() == 1000
    chosen = pipe.sampling_for("unipc", 7, 3.5)
    assert (chosen.scheduler, chosen.num_inference_steps, chosen.guidance_scale) == ("unipc", 7, 3.5)
    # A scheduler given to the pipeline is the caller's too: it beats the recommendation, and a
    # call's own argument beats it; None goes back to the recommendation.
    pipe.scheduler = "original"
    assert pipe.sampling_for().scheduler == "original" and pipe.max_steps() is None
    assert pipe.sampling_for("ddim").scheduler == "ddim"
    pipe.scheduler = None
    assert pipe.scheduler == "ddim"


def test_evaluate_resolves_by_the_same_rule():
    """evaluate() called from Python with nothing set runs the model's recommendation (checked
    end to end in tests/test_evaluate.py); here: it imports the resolver, not its own defaults."""
    source = (ROOT / "specdiff" / "evaluation" / "evaluate.py").read_text(encoding="utf-8")
    assert "resolve_sampling(" in source and "DEFAULT_NUM_STEPS" not in source


def test_resolving_imports_no_torch():
    code = (
        "import sys\n"
        "from specdiff.pipeline.sampling_settings import resolve_sampling\n"
        "assert resolve_sampling(None).num_inference_steps > 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_an_unknown_guidance_schedule_is_a_model_error(tmp_path):
    (tmp_path / SAMPLING_FILE).write_text(json.dumps({"guidance_schedule": "last"}))
    with pytest.raises(ModelError, match="guidance_schedule"):
        resolve_sampling(tmp_path)
