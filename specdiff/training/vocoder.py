"""Training of the neural vocoder (specdiff/audio/vocoder.py): losses, discriminators, data, the loop.

Recipe (HiFi-GAN / Vocos): reconstruction losses (log-mel L1 through our exact front end, ORIGINAL.md §1,
plus a multi-resolution STFT loss) and, after a reconstruction-only warm-up, hinge adversarial
losses with feature matching from a multi-period discriminator (MPD, HiFi-GAN) and a
multi-resolution spectrogram discriminator (MRD, UnivNet/Vocos). The discriminators are slimmer
than the originals so that the run fits a shared CPU.

For a vocoder whose synthesis is the phase vocoder (``VocoderConfig.synthesis``, the bundled one),
the losses see the audio of the head's magnitude with the phase vocoder's phase (:func:`synthesize`),
and ``magnitude_weight`` adds an L1 between the head's log-magnitude and the true one of its own
STFT framing (:func:`magnitude_l1`); the bundled vocoder was trained that way without the
adversarial losses (its model card has the commands).

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
from specdiff.audio.vocoder import Vocoder, VocoderConfig
from specdiff.constants import HOP_LENGTH, SAMPLE_RATE
from specdiff.errors import AudioError, SpecdiffError
from specdiff.pipeline.folder import VOCODER_FOLDER

HOP = HOP_LENGTH
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
MIDI_SUFFIXES = {".mid", ".midi"}


def _log_mel(audio: torch.Tensor) -> torch.Tensor:
    from specdiff.audio.mel import log_mel

    return log_mel(audio)


# ---- reconstruction losses -------------------------------------------------------------------------

STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256), (2048, 512))  # (n_fft = window, hop)


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT| ``[B, n_fft/2 + 1, frames]`` with a Hann window of n_fft samples (centred frames)."""
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)
    return torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)  # the epsilon keeps the gradient finite at 0


def multi_resolution_stft_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over resolutions of the L1 distances of log and of linear STFT magnitudes (as in DAC).

    No spectral-convergence term: its per-example normalisation explodes on silent segments.
    """
    total = fake.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        f, r = stft_magnitude(fake, n_fft, hop), stft_magnitude(real, n_fft, hop)
        total = total + F.l1_loss(torch.log(f.clamp_min(1e-5)), torch.log(r.clamp_min(1e-5))) + F.l1_loss(f, r)
    return total / len(STFT_RESOLUTIONS)


#: Magnitudes below this count as silence in :func:`magnitude_l1` (the loudest bins reach ~300; the
#: front end clips its mel at the same 1e-5).
MAGNITUDE_FLOOR = 1e-5


def magnitude_l1(log_magnitude: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the head's log-magnitude ``[B, bins, T]`` and ``log |target|`` (complex, the head's own
    framing, :meth:`specdiff.audio.vocoder.ISTFTHead.stft`), both floored at :data:`MAGNITUDE_FLOOR`.

    This trains the magnitude for the phase-vocoder synthesis (specdiff.audio.phase_vocoder), which takes
    the phase from the magnitude instead of the head; the floor keeps silent bins from dominating.
    """
    floor = math.log(MAGNITUDE_FLOOR)
    return F.l1_loss(log_magnitude.clamp_min(floor), torch.log(target.abs().clamp_min(MAGNITUDE_FLOOR)))


def mel_l1(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between our log-mel features (ORIGINAL.md §1) of two waveforms."""
    return F.l1_loss(_log_mel(fake), _log_mel(real))


# ---- discriminators ---------------------------------------------------------------------------------


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded to [T/p, p], 2-D convs along time."""

    def __init__(self, period: int, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.period = period
        norm = nn.utils.parametrizations.weight_norm
        chans = (1, *channels)
        self.convs = nn.ModuleList(
            norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3, 1), padding=(2, 0))) for i in range(len(channels))
        )
        self.convs.append(norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0))))
        self.post = norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, n = audio.shape
        if n % self.period:
            audio = F.pad(audio, (0, self.period - n % self.period), mode="reflect")
        x = audio.view(b, 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        x = self.post(x)
        features.append(x)
        return x.flatten(1), features


class ResolutionDiscriminator(nn.Module):
    """UnivNet/Vocos resolution discriminator: 2-D convs on a linear magnitude spectrogram."""

    def __init__(self, n_fft: int, hop: int, channels: int = 16):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        norm = nn.utils.parametrizations.weight_norm
        # The first conv already strides along frequency: full-resolution 2-D convs dominate CPU time.
        self.convs = nn.ModuleList(
            [
                norm(nn.Conv2d(1, channels, (7, 5), (2, 1), padding=(3, 2))),
                norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
                norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
                norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
                norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
            ]
        )
        self.post = norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = stft_magnitude(audio, self.n_fft, self.hop)[:, None]  # [B, 1, freq, time]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        x = self.post(x)
        features.append(x)
        return x.flatten(1), features


class MultiPeriodDiscriminator(nn.ModuleList):
    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__(PeriodDiscriminator(p, channels) for p in periods)


class MultiResolutionDiscriminator(nn.ModuleList):
    def __init__(
        self, resolutions: tuple[tuple[int, int], ...] = ((256, 64), (512, 128), (1024, 256)), channels: int = 16
    ):
        super().__init__(ResolutionDiscriminator(n, h, channels) for n, h in resolutions)


def discriminator_loss(
    discriminators: nn.ModuleList, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """Hinge loss (push real scores above +1, fake ones below -1; mean over sub-discriminators) and
    each sub-discriminator's detached feature maps of ``real`` (reused for feature matching).

    Real and fake audio go through each sub-discriminator as one batch: on a CPU the per-call
    overhead of many small 2-D convolutions is a large part of the cost.
    """
    total = real.new_zeros(())
    real_features = []
    n = real.shape[0]
    for d in discriminators:
        scores, features = d(torch.cat([real, fake]))
        total = total + F.relu(1 - scores[:n]).mean() + F.relu(1 + scores[n:]).mean()
        real_features.append([f[:n].detach() for f in features])
    return total / len(discriminators), real_features


def generator_adversarial_loss(
    discriminators: nn.ModuleList, real_features: list[list[torch.Tensor]], fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge generator loss, feature-matching L1), each a mean over sub-discriminators.

    ``real_features`` are the real audio's feature maps from :func:`discriminator_loss` of the same
    step (computed just before the discriminator update, which saves one discriminator pass).
    """
    adversarial, matching = fake.new_zeros(()), fake.new_zeros(())
    for d, features_real in zip(discriminators, real_features):
        score_fake, features_fake = d(fake)
        adversarial = adversarial + F.relu(1 - score_fake).mean()
        matching = matching + sum(F.l1_loss(f, r) for f, r in zip(features_fake, features_real)) / len(features_real)
    return adversarial / len(discriminators), matching / len(discriminators)


# ---- data ---------------------------------------------------------------------------------------------


def load_audio_file(path: str | os.PathLike) -> np.ndarray:
    """16 kHz mono float32 audio (via specdiff.audio.files)."""
    from specdiff.audio.files import load_audio

    return np.asarray(load_audio(path), dtype=np.float32)


def list_files(folder: str | os.PathLike, suffixes: set[str]) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecdiffError(f"not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise SpecdiffError(f"no {'/'.join(sorted(suffixes))} files in {folder}")
    return files


class SegmentSampler:
    """Random fixed-length training segments from in-memory clips, with random gain.

    Each example is ``segment_frames * 320 + 320`` samples: the extra frame lets the last mel frame
    see real audio instead of the STFT's end padding (ORIGINAL.md §1 ``pad_end``), as inside a long song.
    """

    def __init__(self, clips: list[np.ndarray], segment_frames: int, seed: int = 0, gain_range=(0.4, 1.0)):
        self.length = segment_frames * HOP + HOP
        self.clips = [np.pad(c, (0, max(0, self.length - len(c)))) for c in clips]
        weights = np.array([len(c) - self.length + 1 for c in self.clips], np.float64)
        self.probabilities = weights / weights.sum()
        self.gain_range = gain_range
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> torch.Tensor:
        out = np.empty((batch_size, self.length), np.float32)
        for i, clip_index in enumerate(self.rng.choice(len(self.clips), size=batch_size, p=self.probabilities)):
            clip = self.clips[clip_index]
            start = self.rng.integers(0, len(clip) - self.length + 1)
            out[i] = clip[start : start + self.length] * self.rng.uniform(*self.gain_range)
        return torch.from_numpy(out)


def features_and_target(audio: torch.Tensor, segment_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel of the first ``segment_frames`` frames, the matching ``segment_frames * 320`` samples)."""
    return _log_mel(audio)[:, :segment_frames], audio[:, : segment_frames * HOP]


def synthesize(generator: Vocoder, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio made the way the vocoder is used, ``VocoderConfig.synthesis``; the head's log-magnitude).

    With the phase vocoder the head's phase is unused and the gradient reaches the magnitude only
    (the peak picking is a constant of the step).
    """
    log_magnitude, phase = generator.spectrum(mel)
    if generator.config.synthesis == "phase_vocoder":
        phase = generator.head.peak_locked_phase(log_magnitude.exp())
    return generator.head.synthesize(log_magnitude, phase), log_magnitude


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
    mrd_weight: float = 0.5
    feature_matching_weight: float = 2.0
    grad_clip: float = 100.0
    # Segments of each batch the discriminators see (0: all). Discriminators cost ~5x the generator
    # step on a CPU; the reconstruction losses still use the whole batch.
    gan_batch_size: int = 0
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

    def train_step(self, audio: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch of raw audio segments (see :class:`SegmentSampler`)."""
        c = self.train_config
        self.generator.train()
        lr = self.learning_rate(self.step)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        audio = audio.to(self.device)
        with torch.no_grad():
            mel, real = features_and_target(audio, c.segment_frames)
        fake, log_magnitude = synthesize(self.generator, mel)
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
        if c.magnitude_weight:
            magnitude_loss = magnitude_l1(log_magnitude, self.generator.head.stft(real))
            g_loss = g_loss + c.magnitude_weight * magnitude_loss
            logs["loss/magnitude"] = magnitude_loss.item()
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
        mel = _log_mel(audio)
        fake = synthesize(generator, mel)[0][:, : audio.shape[-1]]
        mel_errors.append(F.l1_loss(_log_mel(fake), mel).item())
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


def _load_clips(files: list[Path], max_seconds: float | None = None) -> list[np.ndarray]:
    clips = []
    for f in files:
        audio = load_audio_file(f)
        if max_seconds is not None:
            audio = audio[: int(max_seconds * SAMPLE_RATE)]
        if audio.size >= HOP * 4:
            clips.append(audio)
    return clips


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
) -> VocoderTrainer:
    """Train (or resume from ``run_dir/checkpoint.pt``) until ``train_config.max_steps``.

    A checkpoint is written every ``checkpoint_every`` steps, and also whenever ``checkpoint_minutes``
    have passed since the last one (GAN steps cost several times reconstruction-only ones).
    Writes ``checkpoint.pt`` (everything, for resuming), ``vocoder/`` (the latest generator in the
    shipped layout), ``vocoder_step{N}/`` copies (at the end of the warm-up and every ``keep_every``
    steps), ``log.jsonl`` and ``tensorboard/`` when available. ``init_from``: a vocoder whose weights
    start a new run (ignored when resuming; its config must be ``vocoder_config``).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clips = _load_clips(train_files)
    if not clips:
        raise AudioError("no usable training audio (every file is shorter than 4 frames)")
    val_clips = _load_clips(val_files, max_seconds=10.0)
    sampler = SegmentSampler(clips, train_config.segment_frames, seed=train_config.seed)
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
            logs = trainer.train_step(sampler.sample(train_config.batch_size))
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


# ---- gathering training audio -------------------------------------------------------------------------


def demo_corpus_audio(split: str, cache_dir: Path, soundfont: str | None = None) -> list[Path]:
    """The bundled demo corpus's ``split`` (specdiff.data.corpus) rendered once into ``cache_dir``."""
    from specdiff.data.corpus import demo_midi_files

    return render_midi_files(demo_midi_files(split), cache_dir, soundfont)


def render_midi_files(midi_files: list[Path], cache_dir: Path, soundfont: str | None = None) -> list[Path]:
    """Render MIDI files (specdiff.data.render) to ``cache_dir/<name>.wav`` unless already there."""
    from tqdm import tqdm

    from specdiff.audio.files import save_wav
    from specdiff.data.render import render_midi

    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for midi in tqdm(midi_files, desc=f"render {cache_dir.name}", leave=False):
        wav = cache_dir / (Path(midi).stem + ".wav")
        if not wav.exists():
            save_wav(wav, render_midi(midi, soundfont=soundfont), SAMPLE_RATE)  # atomic
        out.append(wav)
    return out


def cache_audio(cache_dir: Path, out_dir: Path, split: str = "train") -> list[Path]:
    """Audio of the ``split`` songs of a feature cache (specdiff.data.cache), written to ``out_dir``.

    The cache keeps features only, so each song's audio comes back from the source its index
    records: a recording ("AUDIO + MIDI") is used in place, a render ("render MIDI [(programs seed
    N)]") is rendered again the way specdiff.data.cache made it. Other sources are skipped.
    """
    import re
    import warnings

    from specdiff.audio.files import save_wav
    from specdiff.data.cache import load_index
    from specdiff.data.songs import RenderedMidi

    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = [], 0
    for song in load_index(cache_dir):
        if song.get("split", "train") != split:
            continue
        source = str(song.get("source", ""))
        rendered = re.fullmatch(r"render (.+?)(?: \(programs seed (\d+)\))?", source)
        if rendered:
            wav = out_dir / (re.sub(r"[^A-Za-z0-9._-]+", "_", song["id"]) + ".wav")
            if not wav.exists():
                seed = None if rendered.group(2) is None else int(rendered.group(2))
                pair = RenderedMidi(song_id=song["id"], split=split, midi=rendered.group(1), program_seed=seed)
                try:
                    save_wav(wav, pair.load()[0], SAMPLE_RATE)
                except (SpecdiffError, OSError) as err:
                    warnings.warn(f"cannot render {rendered.group(1)}: {err}", stacklevel=2)
                    skipped += 1
                    continue
            files.append(wav)
        elif " + " in source and Path(source.split(" + ")[0]).is_file():
            files.append(Path(source.split(" + ")[0]))
        else:
            skipped += 1
    if skipped:
        warnings.warn(
            f"{skipped} {split} songs of {cache_dir} have no audio source that can be read again", stacklevel=2
        )
    if not files:
        raise SpecdiffError(f"no {split} audio can be recovered from the feature cache {cache_dir}")
    return files
