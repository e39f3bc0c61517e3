"""`specdiff info` (what a bug report needs) and `specdiff --version`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specdiff import __version__, cli, constants
from specdiff.commands import info
from specdiff.pipeline.default_model import DEFAULT_MODEL_DIR
from specdiff.pipeline.sampling_settings import read_sampling_settings

ROOT = Path(__file__).resolve().parents[1]


def run_info(argv: list[str], capsys) -> tuple[dict[str, str], str]:
    """``specdiff info --json ...``: the report and stderr."""
    assert cli.main(["info", "--json", *map(str, argv)]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


@pytest.fixture
def bare_model(tmp_path) -> Path:
    """A model folder without sampling.json or an inverter (info reads no weights)."""
    folder = tmp_path / "bare-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"specdiff {__version__}"


def test_info_reports_versions_the_bundled_model_and_its_sampler_settings(capsys):
    import torch

    from specdiff.commands.options import resolve_device

    report, err = run_info([], capsys)
    assert err == ""
    assert report["specdiff"].startswith(f"{__version__} (") and str(ROOT / "specdiff") in report["specdiff"]
    assert report["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert report["torch"].startswith(torch.__version__)
    assert report["model"] == f"{DEFAULT_MODEL_DIR.resolve()} (bundled)"
    s = read_sampling_settings(DEFAULT_MODEL_DIR)
    steps = f"{s.num_inference_steps} step" + ("" if s.num_inference_steps == 1 else "s")
    ends = f" (more end at noise time {s.final_noise_time:g})" if s.final_noise_time > 0 else ""
    ceiling = "" if s.guidance_ceiling is None else f" capped at {s.guidance_ceiling:g}"
    assert report["sampling"].startswith(f"{s.scheduler}, {steps}{ends}, guidance {s.guidance_scale:g}{ceiling}")
    assert report["sampling"].endswith("(sampling.json)")
    assert report["inverter"].split()[0].rstrip(":") in constants.INVERTERS
    if report["inverter"].startswith("vocoder:"):  # the bundled vocoder says how it makes audio
        assert "phase vocoder (peak frequencies predicted)" in report["inverter"]
    assert report["device"].split()[0] == resolve_device("auto")
    assert report["precision"].split()[0] in constants.PRECISIONS
    # The bundled decoder's extensions, read from its config.json (switches by name, values after "=").
    decoder = json.loads((DEFAULT_MODEL_DIR / "decoder" / "config.json").read_text())
    extensions = report["decoder"].removesuffix(" (extensions)").split(", ")
    assert f"score_roll_features={decoder['score_roll_features']}" in extensions
    assert ("roll_carry_in" in extensions) == bool(decoder.get("roll_carry_in"))
    assert not any(part.startswith("timbres") for part in extensions)  # they have their own line


def test_an_original_decoder_has_no_extensions(bare_model, capsys):
    (bare_model / "decoder").mkdir()
    (bare_model / "decoder" / "config.json").write_text('{"d_model": 768, "prediction_type": "epsilon"}')
    report, _ = run_info(["--model", bare_model], capsys)
    assert report["decoder"] == "the original architecture (no extensions)"
    assert report["programs"] == "Slakh classes (34, as the original)"


def test_text_output_is_one_key_value_line_each(capsys):
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys[:5] == ["specdiff", "python", "platform", "torch", "model"]
    assert {"sampling", "inverter", "device", "precision"} <= set(keys)
    assert [k for k in keys if k.startswith("extra ")] == [f"extra {name}" for name in info.EXTRAS]


def test_a_model_folder_without_settings_or_inverter(bare_model, capsys):
    report, err = run_info(["--model", bare_model], capsys)
    assert report["model"] == str(bare_model.resolve())
    assert (
        report["sampling"]
        == "original, 100 steps, guidance 2, precision fp32 where fast (library defaults, no sampling.json)"
    )
    # The fallback inverter's warning goes into its line, not onto stderr.
    assert report["inverter"].startswith("griffinlim (") and "low-quality fallback" in report["inverter"]
    assert err == ""
    assert report["precision"].startswith("fp32 (the model's recommendation")


def test_problems_are_reported_in_their_line(bare_model, monkeypatch, capsys):
    (bare_model / "sampling.json").write_text('{"scheduler": "euler"}')
    (bare_model / "melgan").mkdir()
    (bare_model / "melgan" / "model.onnx").write_bytes(b"not an onnx file")
    report, _ = run_info(["--model", bare_model], capsys)
    assert report["sampling"].startswith("error: bad sampler settings") and "euler" in report["sampling"]
    if info.module_installed("onnxruntime"):
        assert report["inverter"].startswith(f"error: {bare_model / 'melgan' / 'model.onnx'}: cannot load")
    else:
        assert report["inverter"].startswith("griffinlim (skipping the onnx inverter")

    monkeypatch.setattr("specdiff.pipeline.default_model.DEFAULT_MODEL_DIR", bare_model.parent / "no-model-here")
    report, _ = run_info([], capsys)
    assert report["model"].startswith("none (no default model is bundled") and report["inverter"].startswith("none")


def test_a_missing_model_folder_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["info", "--model", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"specdiff: error: model folder not found: {tmp_path / 'nothing'}"
    ]


@pytest.mark.parametrize(
    "native, expected",
    [
        (True, "bf16 (the model's recommendation: this CPU multiplies bf16 natively"),
        (False, "fp32 (the model recommends bf16, but this CPU has no native bf16 matmuls"),
    ],
)
def test_precision_says_why_auto_picks_it_on_a_cpu(native, expected, monkeypatch):
    monkeypatch.setattr("specdiff.hardware.cpu_has_native_bf16", lambda: native)
    assert info._precision_line("bf16", "cpu").startswith(expected)
    assert info._precision_line("fp16", "cpu") == "fp32 (the model recommends fp16, which is for GPUs)"
    assert info._precision_line("fp16", "cuda") == "fp16 (the model's recommendation, on cuda)"


def test_extras_cover_pyproject_and_say_how_to_install_a_missing_one(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(info.EXTRAS) == set(extras) - {"all", "test"}
    monkeypatch.setattr(info, "module_installed", lambda name: name != "tensorboard")
    status = info.extras_status()
    assert status["train"] == "no (tensorboard missing: pip install 'specdiff[train]')"
    assert all(status[name].startswith("yes (") for name in info.EXTRAS if name != "train")


def test_module_installed_checks_without_importing():
    assert info.module_installed("json") and not info.module_installed("specdiff_no_such_module")
    assert not info.module_installed("specdiff_no_such_package.sub")


def test_info_loads_no_diffusion_model_and_no_optional_runtime():
    probe = (
        "import contextlib, io, sys\nfrom specdiff import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    assert cli.main(['info']) == 0\n"
        "print([m for m in ('specdiff.pipeline.pipeline', 'specdiff.models.decoder', 'diffusers', 'transformers', "
        "'matplotlib', "
        "'fastapi', 'tensorboard') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_inverter_that_breaks_unexpectedly_is_reported_and_the_rest_still_printed(bare_model, monkeypatch, capsys):
    def broken(model_dir):
        raise RuntimeError("weights file truncated\nat byte 7")

    monkeypatch.setattr("specdiff.audio.inverters.load_auto_inverter", broken)
    report, _ = run_info(["--model", bare_model], capsys)
    assert report["inverter"] == "error: RuntimeError: weights file truncated; at byte 7"
    assert {"device", "precision", "extra onnx"} <= set(report)
