"""specdiff.constants: one source for the shared numbers and names, re-exported where they used to live."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from specdiff import constants

ROOT = Path(__file__).resolve().parents[1]


def test_constants_import_nothing_but_the_future():
    """Light enough for any module (and the CLI parser) to import."""
    tree = ast.parse((ROOT / "specdiff" / "constants.py").read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_the_numbers_agree_with_each_other():
    assert constants.FRAMES_PER_SECOND * constants.HOP_LENGTH == constants.SAMPLE_RATE  # 50 frames of 320 samples
    assert constants.SEGMENT_SECONDS == pytest.approx(5.12)
    assert constants.SEGMENT_FRAMES * constants.HOP_LENGTH == 81_920  # samples per segment (ORIGINAL.md §1.2)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("specdiff.audio.mel", ["SAMPLE_RATE", "HOP_LENGTH", "N_MELS", "FRAMES_PER_SECOND"]),
        (
            "specdiff.midi.tokenizer",
            ["SAMPLE_RATE", "HOP_LENGTH", "FRAMES_PER_SECOND", "SEGMENT_FRAMES", "SEGMENT_SECONDS"],
        ),
        ("specdiff.audio.files", ["SAMPLE_RATE"]),
        ("specdiff.data.render", ["SAMPLE_RATE"]),
        ("specdiff.evaluation.metrics", ["SAMPLE_RATE"]),
        ("specdiff.evaluation.embeddings", ["SAMPLE_RATE"]),
        ("specdiff.evaluation.evaluate", ["SAMPLE_RATE", "EMBEDDINGS"]),
        ("specdiff.data.cache", ["SAMPLE_RATE", "HOP_LENGTH", "N_MELS", "TOKENS_LENGTH"]),
        ("specdiff.evaluation.plotting", ["N_MELS"]),
        ("specdiff.pipeline.default_model", ["SCHEDULERS", "PRECISIONS", "DEFAULT_SCHEDULER", "DEFAULT_NUM_STEPS"]),
        ("specdiff.sampling.sampler", ["SCHEDULERS", "DEFAULT_SCHEDULER", "DEFAULT_NUM_STEPS", "DEFAULT_GUIDANCE"]),
        ("specdiff.cli", ["SCHEDULERS", "INVERTERS", "DEVICES", "PRECISIONS"]),
    ],
)
def test_old_homes_re_export_the_same_values(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) == getattr(constants, name), f"{module}.{name}"


def test_name_lists_match_what_is_registered():
    from specdiff.audio import inverters
    from specdiff.evaluation import embeddings
    from specdiff.models import networks as model
    from specdiff.training import train

    assert set(constants.PRESET_NAMES) == set(model.PRESETS)
    assert set(constants.TRAIN_PRESET_NAMES) == set(train.TRAIN_PRESETS)
    assert set(constants.INVERTERS) == {"auto", *inverters.available_inverters()}
    assert set(constants.EMBEDDINGS) <= set(embeddings.available_embeddings())
