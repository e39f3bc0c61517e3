"""Training: the objective (ORIGINAL.md §4.1-4.2), CFG drop, resume after SIGKILL, DDP equivalence, export.

Micro models (d_model 32, one layer) and the synthetic data set keep this file fast.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MICRO
from torch import nn

from specdiff.cli import main  # what python -m specdiff runs
from specdiff.errors import ModelError, SpecdiffError
from specdiff.models.presets import build_models
from specdiff.sampling.diffusion import alpha_sigma
from specdiff.training.batches import ShardedCounterSampler, SyntheticDataset, collate_counted
from specdiff.training.checkpoints import list_checkpoints, load_checkpoint
from specdiff.training.config import TrainConfig, apply_overrides
from specdiff.training.export import export_pipeline, model_from_checkpoint
from specdiff.training.log import read_metrics
from specdiff.training.loop import Trainer, train
from specdiff.training.objective import (
    SpectrogramDiffusionModel,
    diffusion_loss,
    draw_diffusion_inputs,
    trim_token_padding,
)
from specdiff.training.optim import build_optimizer

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
MICRO_SET = [f"model.{k}={v}" for k, v in MICRO.items()]


def micro_model(dropout: float = 0.0) -> SpectrogramDiffusionModel:
    return SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=dropout, **MICRO))


def micro_config(out_dir: Path, **changes) -> TrainConfig:
    base = dict(
        model=dict(MICRO), data="synthetic", out_dir=str(out_dir), batch_size=2, steps=6, log_every=1,
        val_every=0, sample_every=0, ckpt_every=3, keep_checkpoints=5, val_examples=2, tensorboard=False,
        num_threads=1, bf16=False,  # float32: the equivalence tests compare runs up to float rounding
    )  # fmt: skip
    return TrainConfig.from_preset("tiny", **{**base, **changes})


def cli_args(config: TrainConfig) -> list[str]:
    """The same run as `config`, on the command line."""
    sets = [f"{k}={v}" for k, v in vars(config).items() if k not in ("model", "data", "out_dir") and v is not None]
    return ["train", "--data", str(config.data), "--out", config.out_dir, "--no-progress"] + [
        a for s in sets + MICRO_SET for a in ("--set", s)
    ]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------


def test_diffusion_inputs_depend_only_on_the_counter():
    t, noise, keep = draw_diffusion_inputs([5, 9, 2], seed=3, drop_prob=0.1)
    t2, noise2, keep2 = draw_diffusion_inputs([2, 9], seed=3, drop_prob=0.1)
    assert t.shape == (3,) and noise.shape == (3, 256, 128) and keep.dtype == torch.bool
    assert torch.equal(t2, t[[2, 1]]) and torch.equal(noise2, noise[[2, 1]]) and torch.equal(keep2, keep[[2, 1]])
    other, _, _ = draw_diffusion_inputs([5, 9, 2], seed=4, drop_prob=0.1)
    assert not torch.equal(other, t)


def test_times_uniform_and_cfg_drop_near_ten_percent():
    n = 3000
    t, noise, keep = draw_diffusion_inputs(range(n), seed=0, drop_prob=0.1, shape=(1,))
    assert float(t.min()) >= 0.0 and float(t.max()) < 1.0
    assert abs(float(t.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    dropped = 1.0 - keep.float().mean().item()
    assert abs(dropped - 0.1) < 4 * math.sqrt(0.09 / n), dropped  # binomial, 4 sigma
    assert abs(float(noise.std()) - 1.0) < 0.1


class Recorder(nn.Module):
    """Stands in for the model: records its inputs, predicts a fixed function of z_t."""

    class decoder:  # diffusion_loss reads what the output means from the decoder
        prediction_type = "epsilon"

    def forward(self, tokens, context, context_mask, z_t, t, timbre=None):
        self.seen = dict(tokens=tokens, context=context, context_mask=context_mask, z_t=z_t, t=t, timbre=timbre)
        return 0.5 * z_t


def test_objective_drops_conditioning_and_sums_l1():
    data = SyntheticDataset(seed=1)
    batch = collate_counted([(i, data[i]) for i in range(4)])
    batch["context_mask"][:] = True
    t, noise, _ = draw_diffusion_inputs(batch["index"], 0, 0.1)
    keep = torch.tensor([True, False, True, False])
    model = Recorder()
    out = diffusion_loss(model, batch, t, noise, keep, trim=False)
    seen = model.seen
    assert torch.equal(seen["tokens"][keep], batch["tokens"][keep])
    assert int(seen["tokens"][~keep].abs().sum()) == 0  # tokens * 0: all PAD, so the notes mask is all False
    assert bool(seen["context_mask"][keep].all()) and not bool(seen["context_mask"][~keep].any())
    assert torch.equal(seen["context"], batch["context"])  # the context itself is clean, not dropped
    alpha, sigma = alpha_sigma(t)
    expected_z = alpha[:, None, None] * batch["target"] + sigma[:, None, None] * noise
    assert torch.allclose(seen["z_t"], expected_z, atol=1e-6) and torch.equal(seen["t"], t)
    assert seen["timbre"] is None  # a batch without a timbre column conditions nothing
    error = (0.5 * expected_z - noise).abs()
    assert float(out.loss_sum) == pytest.approx(float(error.sum()), rel=1e-5)  # summed, not averaged
    assert float(out.loss_mean) == pytest.approx(float(error.mean()), rel=1e-5)


def test_trimming_token_padding_is_exact():
    data = SyntheticDataset(seed=2, max_tokens=100)
    batch = collate_counted([(i, data[i]) for i in range(3)])
    longest = max(int((tokens != 0).sum()) for tokens in batch["tokens"])  # tokens are a prefix, then PAD
    trimmed = trim_token_padding(batch["tokens"])
    assert trimmed.shape[1] == 64 * math.ceil(longest / 64)
    assert (
        torch.equal(trimmed, batch["tokens"][:, : trimmed.shape[1]])
        and int(batch["tokens"][:, trimmed.shape[1] :].abs().sum()) == 0
    )
    assert trim_token_padding(torch.zeros(2, 2048, dtype=torch.long)).shape[1] == 64  # all PAD (CFG drop)
    model = micro_model().eval()
    t, noise, keep = draw_diffusion_inputs(batch["index"], 0, 0.0)
    with torch.no_grad():
        full = diffusion_loss(model, batch, t, noise, keep, trim=False)
        trimmed = diffusion_loss(model, batch, t, noise, keep, trim=True)
    assert float(trimmed.loss_mean) == pytest.approx(float(full.loss_mean), rel=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    data = SyntheticDataset(seed=0)
    batch = collate_counted([(i, data[i]) for i in range(4)])
    t, noise, keep = draw_diffusion_inputs(batch["index"], 0, 0.0)
    model = micro_model(dropout=0.0)
    optimizer = build_optimizer(model, "adafactor", lr=1e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        out = diffusion_loss(model, batch, t, noise, keep)
        out.loss_sum.backward()
        optimizer.step()
        losses.append(float(out.loss_mean))
    assert losses[-1] < 0.93 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 25  # steadily, not by luck


# ---------------------------------------------------------------------------------------------
# Data position, accumulation, checkpoints
# ---------------------------------------------------------------------------------------------


def test_sharded_sampler_covers_each_global_batch_once():
    world, micro, accumulation, start = 2, 2, 3, 10
    streams = []
    for rank in range(world):
        it = iter(ShardedCounterSampler(start, micro, accumulation, rank, world))
        streams.append([next(it) for _ in range(2 * micro * accumulation)])
    step0 = sorted(c for s in streams for c in s[: micro * accumulation])
    step1 = sorted(c for s in streams for c in s[micro * accumulation :])
    assert step0 == list(range(10, 22)) and step1 == list(range(22, 34))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    whole = train(micro_config(tmp_path / "a", batch_size=4, steps=3, dropout=0.0), progress=False)
    split = train(micro_config(tmp_path / "b", batch_size=4, micro_batch_size=1, steps=3, dropout=0.0), progress=False)
    for a, b in zip(whole, split):
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-5)
    pa = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])["model"]
    pb = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])["model"]
    assert max(float((pa[k] - pb[k]).abs().max()) for k in pa) < 1e-5


def test_checkpoints_are_complete_and_pruned(tmp_path):
    config = micro_config(tmp_path, steps=4, ckpt_every=1, keep_checkpoints=2)
    train(config, progress=False)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000003.pt", "step_00000004.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    state = load_checkpoint(tmp_path / "checkpoints" / names[-1])
    assert state["step"] == 4 and state["samples_seen"] == 8
    assert {"model", "ema", "optimizer", "rng", "config", "model_configs"} <= set(state)
    assert set(state["rng"][0]) >= {"torch", "numpy", "python"}
    with pytest.raises(SpecdiffError):  # a fresh run must not clobber an existing one
        train(config, resume="no", progress=False)
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "missing.pt")


def test_warm_start_takes_weights_and_ema_but_a_new_optimiser(tmp_path):
    first = micro_config(tmp_path / "adafactor", steps=2, ckpt_every=2)
    train(first, progress=False)
    source = load_checkpoint(tmp_path / "adafactor" / "checkpoints" / "step_00000002.pt")
    warm = micro_config(
        tmp_path / "adamw",
        steps=1,
        optimizer="adamw",
        lr=1e-3,
        init_from=str(list_checkpoints(tmp_path / "adafactor")[-1]),
    )
    trainer = Trainer(warm, resume="auto")
    assert trainer.step == 0 and trainer.samples_seen == 0
    assert all(torch.equal(v, source["model"][k]) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(v, source["ema"]["shadow"][k]) for k, v in trainer.ema.state_dict()["shadow"].items())
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and not trainer.optimizer.state
    trainer.run(progress=False)
    # once the run has its own checkpoint, it resumes from that one, not from init_from
    assert Trainer(warm, resume="auto").step == 1
    with pytest.raises(ModelError):
        Trainer(warm.replace(out_dir=str(tmp_path / "bad"), init_from=str(tmp_path / "missing.pt")))


def test_warm_start_from_an_exported_pipeline_folder(tmp_path):
    """A pipeline folder (specdiff export, or the official model) starts the weights and a fresh EMA."""
    train(micro_config(tmp_path / "first", steps=2, ckpt_every=2), progress=False)
    checkpoint = list_checkpoints(tmp_path / "first")[-1]
    folder = export_pipeline(checkpoint, tmp_path / "exported")
    exported = model_from_checkpoint(checkpoint).state_dict()  # the EMA weights
    warm = micro_config(tmp_path / "warm", steps=1, optimizer="adamw", init_from=str(folder))
    trainer = Trainer(warm, resume="auto")
    assert trainer.step == 0 and not trainer.optimizer.state
    assert all(torch.equal(v, exported[k]) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(v, exported[k]) for k, v in trainer.ema.state_dict()["shadow"].items())
    assert trainer.ema.num_updates == 0
    trainer.run(progress=False)
    with pytest.raises(ModelError):  # a folder that is not a pipeline
        Trainer(warm.replace(out_dir=str(tmp_path / "bad"), init_from=str(tmp_path)))


KILLER = """
import os, signal, sys
import specdiff.training.loop as T
save = T.save_checkpoint
def save_then_die(path, state, keep):
    save(path, state, keep)
    if state["step"] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like a pre-empted machine
T.save_checkpoint = save_then_die
from specdiff.cli import main  # what python -m specdiff runs
sys.exit(main({argv!r}))
"""


def test_sigkill_and_resume_continue_the_same_loss_curve(tmp_path):
    # dropout on: resuming must restore the RNG state too, not only weights and data position
    config = micro_config(tmp_path / "killed", steps=6, ckpt_every=3, dropout=0.1, cfg_drop_prob=0.5)
    script = KILLER.format(kill_at=3, argv=cli_args(config))
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step_00000003.pt"]

    resumed = train(config, resume="auto", progress=False)
    assert [r.step for r in resumed] == [4, 5, 6]
    reference = train(config.replace(out_dir=str(tmp_path / "straight")), progress=False)
    assert [r.loss_sum for r in resumed] == [r.loss_sum for r in reference[3:]]  # bit-identical on CPU

    killed_curve = [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path / "killed") if "train/loss" in m]
    straight_curve = [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path / "straight") if "train/loss" in m]
    assert killed_curve == straight_curve  # metrics.jsonl shows one continuous curve
    a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "step_00000006.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000006.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"])


def test_two_process_ddp_matches_one_process(tmp_path):
    config = micro_config(tmp_path / "ddp", batch_size=4, steps=3, ckpt_every=3, dropout=0.0)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "specdiff", *cli_args(config),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(config.replace(out_dir=str(tmp_path / "single")), progress=False)
    ddp_state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step_00000003.pt")
    one_state = load_checkpoint(tmp_path / "single" / "checkpoints" / "step_00000003.pt")
    assert len(ddp_state["rng"]) == 2  # both ranks' RNG states are kept
    diff = max(float((ddp_state["model"][k] - one_state["model"][k]).abs().max()) for k in one_state["model"])
    assert diff < 1e-5
    moved = max(float((one_state["model"][k] - micro_model().state_dict()[k]).abs().max()) for k in one_state["model"])
    assert moved > 1e-4  # the comparison is not between two untrained models
    ddp_losses = [m["train/loss_sum"] for m in read_metrics(tmp_path / "ddp") if "train/loss_sum" in m]
    assert ddp_losses == pytest.approx([r.loss_sum for r in single], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Evaluation outputs, export, CLI
# ---------------------------------------------------------------------------------------------


def test_validation_samples_and_export_round_trip(tmp_path):
    config = micro_config(tmp_path / "run", steps=2, ckpt_every=2, val_every=2, sample_every=2, sample_steps=2)
    train(config, progress=False)
    metrics = read_metrics(tmp_path / "run")
    val = [m for m in metrics if "val/loss" in m]
    assert len(val) == 1 and val[0]["step"] == 2 and 0 < val[0]["val/loss_ema"] < 2
    if _has_matplotlib():
        assert (tmp_path / "run" / "samples" / "step_00000002.png").stat().st_size > 1000

    from specdiff.audio.vocoder import Vocoder, VocoderConfig

    vocoder = Vocoder(VocoderConfig(dim=8, intermediate_dim=16, num_layers=1))
    vocoder.save_pretrained(tmp_path / "voc")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "pipe"), "--vocoder", str(tmp_path / "voc")]) == 0
    pipe = tmp_path / "pipe"
    assert (pipe / "vocoder" / "model.safetensors").read_bytes() == (
        tmp_path / "voc" / "model.safetensors"
    ).read_bytes()
    assert not [p.name for p in pipe.iterdir() if p.name.startswith(".")]  # no temp folders left
    index = json.loads((pipe / "model_index.json").read_text())
    assert index["_class_name"] == "SpectrogramDiffusionPipeline"
    assert index["decoder"][1] == "T5FilmDecoder" and index["notes_encoder"][1] == "SpectrogramNotesEncoder"
    scheduler = json.loads((pipe / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "squaredcos_cap_v2" and scheduler["variance_type"] == "fixed_large"

    from safetensors.torch import load_file

    from specdiff.models.decoder import FilmDecoder
    from specdiff.models.encoders import ContinuousEncoder, NotesEncoder

    ema_model = model_from_checkpoint(list_checkpoints(tmp_path / "run")[-1], use_ema=True)
    raw_model = model_from_checkpoint(list_checkpoints(tmp_path / "run")[-1], use_ema=False)
    for name, cls in [
        ("notes_encoder", NotesEncoder),
        ("continuous_encoder", ContinuousEncoder),
        ("decoder", FilmDecoder),
    ]:
        config_json = json.loads((pipe / name / "config.json").read_text())
        module = cls.from_config(config_json)
        module.load_state_dict(load_file(str(pipe / name / "diffusion_pytorch_model.safetensors")), strict=True)
        expected = getattr(ema_model, name).state_dict()
        assert all(torch.equal(module.state_dict()[k], expected[k]) for k in expected)
    # the EMA differs from the raw weights after 2 steps (warm-up decay 0.1, then 2/11)
    assert not torch.equal(ema_model.decoder.spec_out.weight, raw_model.decoder.spec_out.weight)

    # the folder loads in the pipeline, with the EMA weights and the copied vocoder as its inverter
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    loaded = SpectrogramDiffusionPipeline.from_pretrained(pipe, inverter="auto")
    assert torch.equal(loaded.decoder.spec_out.weight, ema_model.decoder.spec_out.weight)
    assert type(loaded.inverter).__name__ == "VocoderInverter"
    with pytest.raises(ModelError):  # not a vocoder folder: refused before anything is written
        export_pipeline(list_checkpoints(tmp_path / "run")[-1], tmp_path / "pipe2", vocoder=tmp_path / "run")
    assert not (tmp_path / "pipe2").exists()

    # --half: float16 storage (half the bytes), loaded back as float32 equal to the rounded weights
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "half"), "--half"]) == 0
    stored = load_file(str(tmp_path / "half" / "decoder" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    full_bytes = (pipe / "decoder" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert (tmp_path / "half" / "decoder" / "diffusion_pytorch_model.safetensors").stat().st_size < 0.6 * full_bytes
    half = SpectrogramDiffusionPipeline.from_pretrained(tmp_path / "half", inverter=None)
    assert half.dtype == torch.float32
    assert torch.equal(half.decoder.spec_out.weight, ema_model.decoder.spec_out.weight.half().float())


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_overrides_parse_types_and_reject_unknown_keys():
    config = apply_overrides(TrainConfig(), ["steps=7", "lr=3e-4", "bf16=false", "val_data=none", "model.d_model=64"])
    assert config.steps == 7 and config.lr == 3e-4 and config.bf16 is False and config.val_data is None
    assert config.model == {"d_model": 64}
    for bad in (["nope=1"], ["steps=x"], ["steps"]):
        with pytest.raises(SpecdiffError):
            apply_overrides(TrainConfig(), bad)
    assert TrainConfig.from_preset("base").batch_size == 256
    with pytest.raises(SpecdiffError):
        TrainConfig.from_preset("huge")


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--no-progress"]) == 1  # no --data
    err = capsys.readouterr().err.strip()
    assert err.startswith("specdiff: error:") and "\n" not in err
    assert (
        main(
            ["train", "--data", "synthetic", "--out", str(tmp_path), "--batch-size", "3", "--set", "micro_batch_size=2"]
        )
        == 1
    )
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1  # no feature cache


def test_cli_module_is_light_and_in_sync():
    code = (
        "import sys, specdiff.commands.train; print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
    from specdiff.commands import train as train_cli
    from specdiff.constants import TRAIN_PRESET_NAMES
    from specdiff.training.config import TRAIN_PRESETS, TrainConfig

    assert TRAIN_PRESET_NAMES == tuple(sorted(TRAIN_PRESETS))
    assert set(train_cli.TRAIN_FLAGS) <= {f for f in TrainConfig.__dataclass_fields__}


def test_tensorboard_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="optional: pip install 'tensorboard>=2.14'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(micro_config(tmp_path, steps=2, ckpt_every=2, val_every=2, tensorboard=True), progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_sum", "train/segments_per_s", "val/loss", "val/loss_ema"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_trains_from_a_feature_cache(tmp_path):
    pytest.importorskip("specdiff.audio.mel")
    pytest.importorskip("tinysoundfont")
    from specdiff.data.cache import build_cache
    from specdiff.data.songs import render_pairs

    midi = ROOT / "tests" / "data" / "tokenizer"
    files = [str(midi / "bach_bwv66_6.mid"), str(midi / "multi_instrument.mid")]
    pairs = render_pairs(files, splits={files[0]: "train", files[1]: "validation"})
    assert build_cache(pairs, tmp_path / "cache", workers=0, progress=False)["songs"] == 2
    config = micro_config(tmp_path / "run", data=str(tmp_path / "cache"), steps=2, ckpt_every=2, val_every=2)
    records = train(config, progress=False)
    assert len(records) == 2 and all(math.isfinite(r.loss) for r in records)
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "val/loss" in m] == [2]


def test_bf16_autocast_on_a_cpu_with_native_bf16_is_close_to_float32(tmp_path):
    from specdiff.hardware import cpu_has_native_bf16
    from specdiff.training.validation import _autocast

    model = micro_model()
    batch = collate_counted([(i, SyntheticDataset(seed=0)[i]) for i in range(2)])
    t, noise, keep = draw_diffusion_inputs(batch["index"], 0, 0.0)
    with torch.no_grad():
        exact = diffusion_loss(model, batch, t, noise, keep).loss_mean
        with _autocast(torch.device("cpu"), True) as ctx:
            fast = diffusion_loss(model, batch, t, noise, keep).loss_mean
    if not cpu_has_native_bf16():
        assert ctx is None  # emulated bf16 is slower than float32: autocast stays off
        assert torch.equal(exact, fast)
    else:
        assert not torch.equal(exact, fast) and abs(float(fast) / float(exact) - 1) < 0.02
    with torch.no_grad(), _autocast(torch.device("cpu"), False) as off:
        assert off is None


def test_min_snr_weighting_downweights_low_noise_times_only():
    from specdiff.sampling.diffusion import logsnr
    from specdiff.training.objective import loss_weights

    t = torch.tensor([0.01, 0.1, 0.27, 0.5, 0.9])
    assert loss_weights(t, "none") is None
    w = loss_weights(t, "min_snr", gamma=5.0)
    expected = torch.clamp(5.0 / torch.exp(logsnr(t.double())), max=1.0).float()
    assert torch.allclose(w, expected)
    assert w[0] < 0.01 and w[1] < 0.2 and torch.all(w[3:] == 1.0)  # SNR(0.5) = 1 <= 5
    with pytest.raises(SpecdiffError):
        loss_weights(t, "p2")


def test_x0_weighting_is_the_l1_error_of_the_implied_x0():
    from specdiff.sampling.diffusion import alpha_sigma, q_sample
    from specdiff.training.objective import loss_weights

    t = torch.tensor([0.05, 0.3, 0.6, 0.8])
    x0, eps, eps_hat = torch.randn(3, 4, 16, 8).unbind(0)
    z = q_sample(x0, t, eps)
    alpha, sigma = (c[:, None, None] for c in alpha_sigma(t))
    x0_hat = (z - sigma * eps_hat) / alpha
    w = loss_weights(t, "x0", gamma=100.0)
    weighted = (eps_hat - eps).abs().sum((1, 2)) * w
    assert torch.allclose(weighted, (x0_hat - x0).abs().sum((1, 2)), rtol=1e-4)
    assert w[0] < 0.1 and torch.all(w[1:] > w[:-1])  # grows with the noise level
    assert float(loss_weights(torch.tensor([0.999]), "x0", gamma=5.0)) == 5.0  # capped as alpha -> 0


def test_weighted_objective_scales_each_examples_error_and_logs_the_unweighted_one():
    model = micro_model()
    batch = collate_counted([(i, SyntheticDataset(seed=0)[i]) for i in range(2)])
    t, noise, keep = draw_diffusion_inputs(batch["index"], 0, 0.0)
    with torch.no_grad():
        plain = diffusion_loss(model, batch, t, noise, keep)
        weighted = diffusion_loss(model, batch, t, noise, keep, weights=torch.tensor([1.0, 0.0]))
        first = diffusion_loss(model, {k: v[:1] for k, v in batch.items()}, t[:1], noise[:1], keep[:1])
    assert float(weighted.loss_sum) == pytest.approx(float(first.loss_sum), rel=1e-5)
    assert float(weighted.error_sum) == pytest.approx(float(plain.error_sum), rel=1e-6)
    assert float(weighted.loss_mean) == pytest.approx(float(plain.loss_mean), rel=1e-6)


def test_a_min_snr_run_trains_and_logs_the_unweighted_error(tmp_path):
    records = train(micro_config(tmp_path / "w", steps=2, loss_weighting="min_snr"), progress=False)
    assert len(records) == 2 and all(math.isfinite(r.loss) and r.loss > 0 for r in records)
    # train/loss is the unweighted per-element error, below the weighted sum only by the weights
    assert all(r.loss_sum <= r.loss * 2 * 256 * 128 * (1 + 1e-6) for r in records)


def test_lr_cool_down_falls_linearly_to_zero_over_the_last_steps(tmp_path):
    trainer = Trainer(micro_config(tmp_path / "cool", steps=6, lr=1e-3, lr_decay_steps=4, optimizer="adamw"))
    assert [trainer.learning_rate(k) for k in range(6)] == pytest.approx([1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    trainer.run(progress=False)
    lrs = [m["train/lr"] for m in read_metrics(tmp_path / "cool") if "train/lr" in m]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    constant = Trainer(micro_config(tmp_path / "constant", steps=6, lr=1e-3))
    assert {constant.learning_rate(k) for k in range(6)} == {1e-3}


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_embedding_lr_scale_gives_the_token_table_its_own_lr_through_the_schedule(tmp_path, optimizer):
    trainer = Trainer(micro_config(tmp_path / optimizer, steps=4, lr=1e-3, lr_decay_steps=2, optimizer=optimizer,
                                   embedding_lr_scale=10.0))  # fmt: skip
    groups = trainer.optimizer.param_groups
    table = trainer.model.notes_encoder.token_embedder.weight
    assert len(groups) == 2 and [id(p) for p in groups[1]["params"]] == [id(table)]
    assert all(p.requires_grad for g in groups for p in g["params"])  # the frozen position tables stay out
    before = table.detach().clone()
    trainer.run(progress=False)
    assert groups[0]["lr"] == pytest.approx(5e-4) and groups[1]["lr"] == pytest.approx(5e-3)  # last step: half
    assert not torch.equal(before, table)


def test_cli_resume_keeps_the_runs_own_recipe(tmp_path, capsys):
    """`specdiff train --out RUN` on a run with checkpoints continues its saved config.json, not the
    preset's defaults (whose single parameter group could not even load the run's optimiser state)."""
    config = micro_config(tmp_path / "run", steps=2, ckpt_every=2, embedding_lr_scale=5.0, lr=2e-4, optimizer="adamw")
    assert main(cli_args(config)) == 0
    capsys.readouterr()
    assert main(["train", "--out", config.out_dir, "--no-progress", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "with its config.json (overridden: steps)" in out and "resuming from" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["embedding_lr_scale"] == 5.0 and saved["lr"] == 2e-4 and saved["steps"] == 4
    assert saved["model"] == MICRO and saved["data"] == "synthetic"
    assert int(load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["step"]) == 4
