"""Artefacts written before the package moved into folders still load.

``tests/data/old_layout/step_00000002.pt`` is a training checkpoint written by the flat-layout code
(commit ad42ce9, ``specdiff.train.train`` on the synthetic data set, a 16-wide micro model, two steps).
Checkpoints are read with ``torch.load(weights_only=True)``: they hold tensors, numbers, strings and
the config as a plain dict, never a pickled specdiff class, so no module path is stored in them. The
bundled model (``specdiff/assets/default_model``, diffusers layout with ``vocoder/``) predates the
move too; it is loaded here through both readers.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import torch

from specdiff.training.checkpoints import load_checkpoint
from specdiff.training.export import model_from_path

OLD = Path(__file__).resolve().parent / "data" / "old_layout"
CHECKPOINT = OLD / "step_00000002.pt"
# What the flat-layout code's model_from_path gave for this checkpoint (EMA weights).
OLD_PARAMETERS = 89760
OLD_SUM_OF_ABS = 50041.31199911639


def test_old_checkpoint_names_no_module_of_the_package():
    import zipfile

    with zipfile.ZipFile(CHECKPOINT) as archive:
        pickle = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    globals_ = [arg for op, arg, _ in pickletools.genops(pickle) if op.name in ("GLOBAL", "STACK_GLOBAL") and arg]
    assert not any("specdiff" in str(g) for g in globals_)
    assert b"specdiff." not in pickle


def test_old_checkpoint_loads_with_the_same_weights():
    state = load_checkpoint(CHECKPOINT)
    assert state["step"] == 2 and state["config"]["model"]["d_model"] == 16
    model = model_from_path(CHECKPOINT)
    weights = model.state_dict()
    assert sum(v.numel() for v in weights.values()) == OLD_PARAMETERS
    assert float(sum(v.double().abs().sum() for v in weights.values())) == OLD_SUM_OF_ABS
    assert all(torch.equal(weights[k], v.float()) for k, v in state["ema"]["shadow"].items() if k in weights)


def test_old_run_folder_loads(tmp_path):
    """model_from_path also takes the run folder (its newest checkpoint)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / CHECKPOINT.name).write_bytes(CHECKPOINT.read_bytes())
    (run / "config.json").write_bytes((OLD / "config.json").read_bytes())
    model = model_from_path(run)
    assert sum(v.numel() for v in model.state_dict().values()) == OLD_PARAMETERS


def test_bundled_model_folder_written_before_the_move_loads():
    from specdiff.audio.inverters import load_inverter
    from specdiff.pipeline.default_model import DEFAULT_MODEL_DIR
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    pipe = SpectrogramDiffusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert pipe.decoder is not None and pipe.notes_encoder is not None
    inverter = load_inverter(DEFAULT_MODEL_DIR, "auto")
    assert type(inverter).__name__ != "GriffinLimInverter"  # the vocoder/ folder was found and loaded
