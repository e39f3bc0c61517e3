"""Training of the neural vocoder (specdiff/audio/vocoder.py): the trainer, validation and the loop.

Recipe (HiFi-GAN / Vocos): reconstruction losses (log-mel L1 through our exact front end, ORIGINAL.md §1,
plus a multi-resolution STFT loss) and, after a reconstruction-only warm-up, hinge adversarial
losses with feature matching from a multi-period discriminator (MPD, HiFi-GAN) and a
multi-resolution spectrogram discriminator (MRD, UnivNet/Vocos). The discriminators are slimmer
than the originals so that the run fits a shared CPU.

For a vocoder whose synthesis is the phase vocoder (``VocoderConfig.synthesis``, the bundled one),
the losses see the audio of the head's magnitude with the phase vocoder's phase (:func:`synthesize`),
and ``magnitude_weight`` adds an L1 between the head's log-magnitude and the true one of its own
STFT framing (:func:`magnitude_l1`); the bundled vocoder was trained that way without the
adversarial losses (its model card has the commands). ``rise_weight`` adds an L1 between the rises
along time of the same two log-magnitudes (:func:`magnitude_rise_loss`), for attacks as sharp as the
true ones. ``frequency_weight`` trains the peak-frequency network of a vocoder with ``peak_frequency:
predicted`` on the true STFT's instantaneous frequency (:func:`frequency_offset_loss`).

Commands (in specdiff/commands/vocoder.py):
  specdiff train-vocoder [--audio-dir DIR] [--midi-dir DIR] [--demo-corpus] [--cache-dir DIR] --run-dir RUN ...
  specdiff vocode mel.npy|in.wav -o out.wav --vocoder DIR
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specdiff.atomic import atomic_write
from specdiff.audio.mel import log_mel
from specdiff.audio.vocoder import Vocoder, VocoderConfig
from specdiff.errors import AudioError
from specdiff.pipeline.folder import VOCODER_FOLDER
from specdiff.training.vocoder_data import PairedSegmentSampler, SegmentSampler, features_and_target, load_clips
from specdiff.training.vocoder_losses import (
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    discriminator_loss,
    floored_log_magnitudes,
    frequency_offset_loss,
    generator_adversarial_loss,
    magnitude_rise_loss,
    mel_l1,
    multi_resolution_stft_loss,
)


def synthesize(generator: Vocoder, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio made the way the vocoder is used, ``VocoderConfig.synthesis``; the head's log-magnitude).

    With the phase vocoder the head's phase is unused and the gradient reaches the magnitude only
    (the peak picking is a constant of the step).
    """
    return synthesize_with_frequency(generator, mel)[:2]


def synthesize_with_frequency(
    generator: Vocoder, mel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`synthesize`, plus the peak-frequency network's offsets (``peak_frequency: predicted``; else None)."""
    if generator.config.synthesis != "phase_vocoder":
        log_magnitude, phase = generator.spectrum(mel)
        return generator.head.synthesize(log_magnitude, phase), log_magnitude, None
    log_magnitude, offset = generator.phase_vocoder_inputs(mel)
    phase = generator.head.peak_locked_phase(log_magnitude.exp(), frequency_offset=offset)
    return generator.head.synthesize(log_magnitude, phase), log_magnitude, offset


# ---- training -----------------------------------------------------------------------------------------


@dataclass
class VocoderTrainConfig:
    max_steps: int = 100_000
    warmup_steps: int = 3_000  # reconstruction losses only before this step (fast on a CPU)
    batch_size: int = 8
    segment_frames: int = 32  # 0.64 s
    lr: float = 5e-4
    lr_warmup_steps: int = 500  # linear ramp: the exp-magnitude head diverges under full-rate Adam at init
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio at max_steps
    mel_weight: float = 45.0  # Vocos
    stft_weight: float = 15.0
    # Weight of magnitude_l1 on the head's own log-magnitude (0: off).
    magnitude_weight: float = 0.0
    # Weight of magnitude_rise_loss on the same log-magnitudes (0: off): sharper magnitude attacks.
    rise_weight: float = 0.0
    # Weight of frequency_offset_loss on the peak-frequency network's instantaneous frequencies (vocoders
    # with peak_frequency "predicted"; 0: off).
    frequency_weight: float = 0.0
    mrd_weight: float = 0.5
    feature_matching_weight: float = 2.0
    grad_clip: float = 100.0
    # Segments of each batch the discriminators see (0: all). Discriminators cost ~5x the generator
    # step on a CPU; the reconstruction losses still use the whole batch.
    gan_batch_size: int = 0
    # Share of each batch drawn from (audio, given log-mel) pairs when train_vocoder gets some
    # (specdiff.training.vocoder_data.PairedSegmentSampler); the rest are real audio and its own mel.
    paired_share: float = 0.5
    seed: int = 0


class VocoderTrainer:
    """Generator + discriminators + optimisers, one ``step()`` at a time; atomic, resumable checkpoints."""

    def __init__(self, vocoder_config: VocoderConfig, train_config: VocoderTrainConfig, device: str = "cpu"):
        self.config, self.train_config, self.device = vocoder_config, train_config, torch.device(device)
        torch.manual_seed(train_config.seed)
        self.generator = Vocoder(vocoder_config).to(self.device)
        self.mpd = MultiPeriodDiscriminator().to(self.device)
        self.mrd = MultiResolutionDiscriminator().to(self.device)
        betas = (0.8, 0.99)
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=train_config.lr, betas=betas)
        self.opt_d = torch.optim.AdamW(
            [*self.mpd.parameters(), *self.mrd.parameters()], lr=train_config.lr, betas=betas
        )
        self.step = 0

    def learning_rate(self, step: int) -> float:
        c = self.train_config
        ramp = min(1.0, (step + 1) / max(1, c.lr_warmup_steps))
        progress = min(1.0, step / max(1, c.max_steps))
        return ramp * c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_step(self, audio: torch.Tensor, given_mel: torch.Tensor | None = None) -> dict[str, float]:
        """One optimisation step on a batch of raw audio segments (see :class:`SegmentSampler`).
        ``given_mel`` ``[B, segment_frames, 128]``: the vocoder's input for the rows where it is finite (a
        model's mel paired with the audio, :class:`PairedSegmentSampler`), the audio's own mel elsewhere."""
        c = self.train_config
        self.generator.train()
        lr = self.learning_rate(self.step)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        audio = audio.to(self.device)
        with torch.no_grad():
            mel, real = features_and_target(audio, c.segment_frames)
            if given_mel is not None:
                given = given_mel.to(mel)
                rows = torch.isfinite(given).flatten(1).all(dim=1)
                mel = torch.where(rows[:, None, None], given.nan_to_num(), mel)
        fake, log_magnitude, frequency_offset = synthesize_with_frequency(self.generator, mel)
        adversarial = self.step >= c.warmup_steps
        logs: dict[str, float] = {"lr": lr}

        if adversarial:
            k = c.gan_batch_size or real.shape[0]
            real_k, fake_k = real[:k], fake[:k]
            d_mpd, features_mpd = discriminator_loss(self.mpd, real_k, fake_k.detach())
            d_mrd, features_mrd = discriminator_loss(self.mrd, real_k, fake_k.detach())
            d_loss = d_mpd + c.mrd_weight * d_mrd
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            nn.utils.clip_grad_norm_([*self.mpd.parameters(), *self.mrd.parameters()], c.grad_clip)
            self.opt_d.step()
            logs["loss/discriminator"] = d_loss.item()

        # Both sides through the same framing: the target's last frame also ends in zero padding.
        with torch.set_grad_enabled(c.mel_weight != 0):  # still logged when off
            mel_loss = mel_l1(fake, real)
        with torch.set_grad_enabled(c.stft_weight != 0):
            stft_loss = multi_resolution_stft_loss(fake, real)
        g_loss = c.mel_weight * mel_loss + c.stft_weight * stft_loss
        if c.magnitude_weight or c.rise_weight or c.frequency_weight:  # one STFT of the target for all
            real_spectrum = self.generator.head.stft(real)
            fake_log, real_log = floored_log_magnitudes(log_magnitude, real_spectrum)
        if c.magnitude_weight:
            magnitude_loss = F.l1_loss(fake_log, real_log)  # = magnitude_l1(log_magnitude, stft(real))
            g_loss = g_loss + c.magnitude_weight * magnitude_loss
            logs["loss/magnitude"] = magnitude_loss.item()
        if c.rise_weight:
            rise_loss = magnitude_rise_loss(fake_log, real_log)
            g_loss = g_loss + c.rise_weight * rise_loss
            logs["loss/rise"] = rise_loss.item()
        if c.frequency_weight and frequency_offset is not None:
            head = self.generator.head
            frequency_loss = frequency_offset_loss(frequency_offset, real_spectrum, head.n_fft, head.hop_length)
            g_loss = g_loss + c.frequency_weight * frequency_loss
            logs["loss/frequency"] = frequency_loss.item()
        if adversarial:
            adv_p, fm_p = generator_adversarial_loss(self.mpd, features_mpd, fake_k)
            adv_r, fm_r = generator_adversarial_loss(self.mrd, features_mrd, fake_k)
            g_loss = g_loss + adv_p + c.mrd_weight * adv_r + c.feature_matching_weight * (fm_p + c.mrd_weight * fm_r)
            logs.update({"loss/adversarial": (adv_p + adv_r).item(), "loss/feature_matching": (fm_p + fm_r).item()})
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.generator.parameters(), c.grad_clip))
        self.opt_g.step()
        self.step += 1
        logs.update({"loss/mel_l1": mel_loss.item(), "loss/mr_stft": stft_loss.item(), "loss/generator": g_loss.item()})
        return logs

    # ---- checkpoints ----

    def state_dict(self, sampler: SegmentSampler | None = None) -> dict:
        return {
            "step": self.step,
            "vocoder_config": self.config.to_dict(),
            "train_config": vars(self.train_config).copy(),
            "generator": self.generator.state_dict(),
            "mpd": self.mpd.state_dict(),
            "mrd": self.mrd.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler_rng": sampler.rng.bit_generator.state if sampler is not None else None,
        }

    def save_checkpoint(self, path: str | os.PathLike, sampler: SegmentSampler | None = None) -> None:
        """Write everything needed to resume exactly (atomic: temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict(sampler)
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path: str | os.PathLike, sampler: SegmentSampler | None = None) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.generator.load_state_dict(state["generator"])
        self.mpd.load_state_dict(state["mpd"])
        self.mrd.load_state_dict(state["mrd"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        if sampler is not None and state.get("sampler_rng") is not None:
            sampler.rng.bit_generator.state = state["sampler_rng"]


@torch.no_grad()
def evaluate_vocoder(generator: Vocoder, clips: list[np.ndarray]) -> dict[str, float]:
    """Analysis-resynthesis of whole clips: mean log-mel L1 and multi-resolution STFT distance."""
    generator.eval()
    mel_errors, stft_errors = [], []
    for clip in clips:
        audio = torch.from_numpy(clip)[None]
        mel = log_mel(audio)
        fake = synthesize(generator, mel)[0][:, : audio.shape[-1]]
        mel_errors.append(F.l1_loss(log_mel(fake), mel).item())
        stft_errors.append(multi_resolution_stft_loss(fake, audio).item())
    generator.train()
    return {"val/mel_l1": float(np.mean(mel_errors)), "val/mr_stft": float(np.mean(stft_errors))}


class _ScalarLog:
    """JSON-lines log in the run folder, plus TensorBoard when the ``tensorboard`` package is installed."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "log.jsonl"
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def write(self, step: int, scalars: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()


class _StopOnSignal:
    """Context manager: SIGTERM / SIGINT set ``requested`` (the loop then checkpoints and returns)
    instead of killing the run between two checkpoints. Only installed in the main thread."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> _StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingBatches:
    """Each step's batch: real audio segments (:class:`SegmentSampler`) and, with ``pairs``, a
    ``paired_share`` of (audio, given mel) segments (:class:`PairedSegmentSampler`, drawn with the same
    generator, so the checkpointed ``sampler.rng`` state covers both)."""

    def __init__(self, sampler: SegmentSampler, pairs: list | None, config: VocoderTrainConfig):
        if not 0.0 <= config.paired_share <= 1.0:
            raise AudioError(f"paired_share must be in [0, 1], got {config.paired_share}")
        self.sampler, self.batch_size, self.frames = sampler, config.batch_size, config.segment_frames
        self.paired = PairedSegmentSampler(pairs, self.frames, sampler.rng) if pairs else None
        self.paired_rows = round(self.batch_size * config.paired_share) if self.paired else 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(audio [B, samples], given mel [B, frames, 128] with NaN rows for real audio, or None)``."""
        audio = self.sampler.sample(self.batch_size - self.paired_rows)
        if not self.paired_rows:
            return audio, None
        paired_audio, paired_mel = self.paired.sample(self.paired_rows)
        unknown = torch.full((len(audio), self.frames, paired_mel.shape[-1]), float("nan"))
        return torch.cat([audio, paired_audio]), torch.cat([unknown, paired_mel])


def train_vocoder(
    train_files: list[Path],
    val_files: list[Path],
    run_dir: Path,
    vocoder_config: VocoderConfig,
    train_config: VocoderTrainConfig,
    *,
    checkpoint_every: int = 500,
    checkpoint_minutes: float | None = None,
    validate_every: int = 2000,
    keep_every: int = 0,
    device: str = "cpu",
    progress: bool = True,
    init_from: Vocoder | None = None,
    pairs: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> VocoderTrainer:
    """Train (or resume from ``run_dir/checkpoint.pt``) until ``train_config.max_steps``.

    A checkpoint is written every ``checkpoint_every`` steps, and also whenever ``checkpoint_minutes``
    have passed since the last one (GAN steps cost several times reconstruction-only ones).
    Writes ``checkpoint.pt`` (everything, for resuming), ``vocoder/`` (the latest generator in the
    shipped layout), ``vocoder_step{N}/`` copies (at the end of the warm-up and every ``keep_every``
    steps), ``log.jsonl`` and ``tensorboard/`` when available. ``init_from``: a vocoder whose weights
    start a new run (ignored when resuming; its config must be ``vocoder_config``). ``pairs``: (audio, log-mel)
    pairs (``vocoder_data.load_pairs``) that make ``train_config.paired_share`` of every batch.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clips = load_clips(train_files)
    if not clips:
        raise AudioError("no usable training audio (every file is shorter than 4 frames)")
    val_clips = load_clips(val_files, max_seconds=10.0)
    sampler = SegmentSampler(clips, train_config.segment_frames, seed=train_config.seed)
    batches = TrainingBatches(sampler, pairs, train_config)
    trainer = VocoderTrainer(vocoder_config, train_config, device=device)
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        trainer.load_checkpoint(checkpoint, sampler)
        print(f"resumed from {checkpoint} at step {trainer.step}")
    elif init_from is not None:
        trainer.generator.load_state_dict(init_from.state_dict())
        print("warm start: generator weights from the given vocoder, new optimiser, step 0")
    log = _ScalarLog(run_dir)
    bar = tqdm(total=train_config.max_steps, initial=trainer.step, disable=not progress, dynamic_ncols=True)
    recent: dict[str, list[float]] = {}
    last_checkpoint = time.monotonic()
    stop = _StopOnSignal()
    with stop:
        while trainer.step < train_config.max_steps and not stop.requested:
            logs = trainer.train_step(*batches.next())
            for k, v in logs.items():
                recent.setdefault(k, []).append(v)
            bar.update(1)
            bar.set_postfix(mel=f"{logs['loss/mel_l1']:.3f}", stft=f"{logs['loss/mr_stft']:.3f}")
            step = trainer.step
            if step % 50 == 0:
                log.write(step, {k: float(np.mean(v)) for k, v in recent.items()})
                recent.clear()
            if step % validate_every == 0 and val_clips:
                scores = evaluate_vocoder(trainer.generator, val_clips)
                log.write(step, scores)
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            overdue = checkpoint_minutes is not None and time.monotonic() - last_checkpoint >= 60 * checkpoint_minutes
            if step % checkpoint_every == 0 or step == train_config.max_steps or overdue or stop.requested:
                last_checkpoint = time.monotonic()
                trainer.save_checkpoint(checkpoint, sampler)
                trainer.generator.save_pretrained(run_dir / VOCODER_FOLDER)
            if step == train_config.warmup_steps or (keep_every and step % keep_every == 0):
                # Kept copies: the reconstruction-only model (a fallback if the GAN phase goes wrong), and
                # periodic snapshots to compare.
                trainer.generator.save_pretrained(run_dir / f"{VOCODER_FOLDER}_step{step}")
    if stop.requested:
        bar.write(f"stopped by a signal at step {trainer.step}; checkpoint saved, run the same command to resume")
    bar.close()
    return trainer
