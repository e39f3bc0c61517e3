"""Models by Hugging Face Hub id (issue 28), offline: a real Hub cache (the layout snapshot_download
reads: ``models--ORG--NAME/{refs,snapshots,blobs}``) is built from a tiny model folder, and the
models load from it through huggingface_hub with ``HF_HUB_OFFLINE=1``. No test touches the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ARPEGGIO, make_hub_cache, write_midi, write_onnx

from specdiff import cli
from specdiff.errors import ModelError
from specdiff.pipeline.hub import looks_like_hub_id, resolve_model_path

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = "google/music-spectrogram-diffusion"
TINY = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory) -> Path:
    """A tiny model in the official repository's layout: diffusers folders whose weights are PyTorch
    pickles (``diffusion_pytorch_model.bin``, no safetensors) and the ONNX inverter in melgan/."""
    from specdiff.models.presets import build_models
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    folder = tmp_path_factory.mktemp("official") / "music-spectrogram-diffusion"
    SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY)).save_pretrained(folder)
    from safetensors.torch import load_file

    for name in ("notes_encoder", "continuous_encoder", "decoder"):
        weights = folder / name / "diffusion_pytorch_model.safetensors"
        torch.save(load_file(str(weights)), folder / name / "diffusion_pytorch_model.bin")
        weights.unlink()
    projection = np.random.default_rng(0).normal(0, 0.01, (128, 320)).astype(np.float32)
    write_onnx(folder / "melgan" / "model.onnx", projection)
    (folder / "README.md").write_text("a file the pipeline does not need\n")
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache under HF_HOME, offline. huggingface_hub reads these variables once, at its
    import (maybe before this test), so the values it read are set as well."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in (("HF_HOME", home), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_what_counts_as_a_hub_id(tmp_path, monkeypatch, hub_cache):
    for text in (OFFICIAL, "org/name@v1.0", "org/name@0123abcd", "a.b/c_d-e"):
        assert looks_like_hub_id(text), text
    for text in ("name", "org/name/extra", "/abs/org", "./org/name", "org/", "org/na me", "~/org"):
        assert not looks_like_hub_id(text), text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not looks_like_hub_id("org/name")  # an existing path is always local
    assert resolve_model_path("org/name") == Path("org/name")
    assert resolve_model_path("no/such/folder") == Path("no/such/folder")  # neither: unchanged


def test_official_layout_loads_from_the_hub_cache_as_the_local_copy_does(official_layout, hub_cache):
    from specdiff.audio.inverters import OnnxInverter
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    snapshot = make_hub_cache(hub_cache, OFFICIAL, official_layout)
    from_hub = SpectrogramDiffusionPipeline.from_pretrained(OFFICIAL)
    local = SpectrogramDiffusionPipeline.from_pretrained(official_layout)
    assert from_hub._source == snapshot and isinstance(from_hub.inverter, OnnxInverter)
    kwargs = dict(num_inference_steps=2, show_progress=False, scheduler="original")
    song = [[1000 + i % 8 for i in range(40)] + [1] + [0] * 10]
    ours = from_hub(song, generator=torch.Generator().manual_seed(0), **kwargs)
    reference = local(song, generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.array_equal(ours.mels, reference.mels) and np.array_equal(ours.audios, reference.audios)
    # Pinned revisions: the commit, as an argument or as ORG/NAME@COMMIT.
    assert SpectrogramDiffusionPipeline.from_pretrained(OFFICIAL, revision=snapshot.name)._source == snapshot
    assert resolve_model_path(f"{OFFICIAL}@{snapshot.name}") == snapshot
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        resolve_model_path(f"{OFFICIAL}@v2")  # a revision the cache has never seen


def test_synth_by_hub_id(official_layout, hub_cache, tmp_path, capsys):
    import soundfile as sf

    make_hub_cache(hub_cache, "someone/tiny-model", official_layout)
    song = write_midi(tmp_path / "song.mid", ARPEGGIO)
    argv = ["synth", str(song), "-o", str(tmp_path / "song.wav"), "--model", "someone/tiny-model"]
    assert cli.main([*argv, "--steps", "2", "--scheduler", "original", "--seed", "0", "-q"]) == 0
    audio, rate = sf.read(tmp_path / "song.wav")
    assert rate == 16000 and len(audio) > 16000


def test_offline_and_not_cached_is_one_line_saying_how_to_get_it(hub_cache, tmp_path, capsys):
    song = write_midi(tmp_path / "song.mid", ARPEGGIO)
    status = cli.main(["synth", str(song), "-o", str(tmp_path / "x.wav"), "--model", "someone/not-cached"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert "someone/not-cached is not in the Hugging Face cache" in err and str(hub_cache) in err
    assert "HF_HUB_OFFLINE" in err and "`hf download someone/not-cached`" in err
    assert not (tmp_path / "x.wav").exists()


def test_without_huggingface_hub_the_same_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(ModelError, match=r"needs huggingface_hub: pip install 'specdiff\[hub\]'"):
        resolve_model_path(OFFICIAL)
    song = write_midi(tmp_path / "song.mid", ARPEGGIO)
    assert cli.main(["synth", str(song), "--model", OFFICIAL]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "specdiff[hub]" in err


def test_vocoder_and_init_from_by_hub_id(hub_cache, tmp_path):
    from specdiff.audio.vocoder import load_vocoder
    from specdiff.commands.train import add_train_arguments, config_from_args
    from specdiff.pipeline.default_model import default_model_path

    bundled = default_model_path()
    if bundled is None:
        pytest.skip("the package ships no default model")
    snapshot = make_hub_cache(hub_cache, "someone/with-vocoder", bundled)
    vocoder = load_vocoder("someone/with-vocoder")
    assert vocoder.sample_rate == 16000 and vocoder(np.zeros((1, 3, 128), np.float32)).shape == (1, 960)

    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", str(tmp_path / "run"), "--init-from", "someone/with-vocoder"])
    config = config_from_args(args)
    assert Path(config.init_from) == snapshot
    assert config.model.get("score_roll_features")  # the bundled decoder's options came along


def test_env_variables_alone_point_a_fresh_process_at_the_cache(official_layout, tmp_path):
    """The real start-up path: HF_HOME and HF_HUB_OFFLINE set before huggingface_hub is imported."""
    pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf-home"
    make_hub_cache(home / "hub", "someone/tiny-model", official_layout)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = (
        "from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline as P; "
        "print(P.from_pretrained('someone/tiny-model', inverter=None)._source)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(home / "hub" / "models--someone--tiny-model" / "snapshots")
