"""A small Vocos-style neural vocoder for our exact log-mel front end (ORIGINAL.md §1, §6).

The official spectrogram inverter (ORIGINAL.md §6) ships only as a SavedModel/ONNX file. This module is our
own replacement with the same interface: natural-log mel ``[B, T, 128]`` at 50 frames/s in, 16 kHz
audio ``[B, T*320]`` out.

Why Vocos (Siuzdak 2023) rather than a HiFi-GAN/MelGAN upsampler: every layer runs at the *frame*
rate (50 frames/s) and the waveform comes out of an inverse STFT, so one second of audio costs a
few hundred MFLOPs. Upsampling vocoders run their last layers at 16 kHz and cost 10-100x more on a
CPU. In PyTorch the inverse STFT is ``irfft`` + overlap-add; in an ONNX export it is one
``conv_transpose1d`` with a fixed windowed inverse-DFT basis (plain ONNX: no complex tensors, no FFT
operators). Unlike Vocos the head's phase refers to absolute time, not to each frame (see
:class:`ISTFTHead`): music holds steady notes far longer than the backbone's receptive field.

Two syntheses (``VocoderConfig.synthesis``). ``"network"``: the head's magnitude and phase, as in
Vocos (what ``forward`` and the ONNX export compute). ``"phase_vocoder"``: the head's magnitude only,
trained to be the true magnitude of the synthesis framing, with a phase built from it frame by frame
(specdiff/audio/phase_vocoder.py). benchmarks/results/vocoder_onsets.md measured why: the network's
phase loses more onsets than any other part of the chain, while the true magnitude with the phase
vocoder's phase keeps them all. With ``peak_frequency: "predicted"`` the phase vocoder takes each peak's
frequency from a small network over frequency (specdiff/audio/peak_frequency.py, weights
``peak_frequency.*``) instead of a parabola through the magnitude, which misplaces the partials of the
network's magnitude (benchmarks/results/vocoder_peak_frequency.md).

Layout on disk (inside a model folder): ``vocoder/config.json`` + ``vocoder/model.safetensors``
(fp16 weights; buffers such as the DFT basis are rebuilt from the config).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specdiff.atomic import atomic_write
from specdiff.constants import (
    HOP_LENGTH,
    N_MELS,
    PEAK_FREQUENCY_INPUTS,
    PEAK_FREQUENCY_RULES,
    SAMPLE_RATE,
    VOCODER_SYNTHESES,
)
from specdiff.errors import ModelError
from specdiff.pipeline.folder import VOCODER_FOLDER

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class VocoderConfig:
    """Hyper-parameters of :class:`Vocoder` (saved as ``config.json``)."""

    sample_rate: int = SAMPLE_RATE  # ORIGINAL.md §1
    hop_length: int = HOP_LENGTH  # ORIGINAL.md §1: 20 ms frames, 50 frames/s
    n_mels: int = N_MELS  # ORIGINAL.md §1
    # Range used to scale log-mel input to [-1, 1] (ORIGINAL.md §1.1 min_value / max_value).
    feature_min: float = math.log(1e-5)
    feature_max: float = 4.0
    dim: int = 192
    intermediate_dim: int = 576
    num_layers: int = 8
    kernel_size: int = 7
    # Synthesis STFT: 1280 = 4 x hop, so a Hann window overlaps 4x and sums to a constant.
    n_fft: int = 1280
    max_log_magnitude: float = 7.0  # exp(7) ~ 1100 > the rfft magnitude of a full-scale sine (~640)
    # Phase convention of the head's output (see ISTFTHead): "absolute" (time-invariant) for new
    # models; "frame" (phase relative to each frame's start, as in Vocos) for folders saved before.
    phase: str = "absolute"
    # How VocoderInverter turns the head's output into audio: "network" (its magnitude and phase, what
    # forward() and the ONNX export compute) or "phase_vocoder" (its magnitude with a phase built from
    # that magnitude, specdiff.audio.phase_vocoder; for heads trained on the magnitude itself).
    synthesis: str = "network"
    # With "phase_vocoder": where each spectral peak's frequency comes from. "parabola": a parabola through
    # the head's log-magnitude at the peak (folders saved before the key existed). "predicted": a small
    # network over frequency (specdiff.audio.peak_frequency, its own weights ``peak_frequency.*``) on the
    # lowest ``frequency_bins`` bins, the parabola above.
    peak_frequency: str = "parabola"
    frequency_channels: int = 16
    frequency_bins: int = 321  # 0-4 kHz of the 1280-point synthesis STFT
    # What that network reads (constants.PEAK_FREQUENCY_INPUTS): "mel" (folders saved before the key existed)
    # or "mel+bands", which adds the two mel bands around each bin and the bin's place between their centres.
    frequency_inputs: str = "mel"

    @classmethod
    def from_dict(cls, data: dict) -> VocoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"model_type"}
        if unknown:
            raise ModelError(f"vocoder config has unknown keys: {sorted(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("phase", "frame")  # configs written before the key existed
        values.setdefault("peak_frequency", "parabola")
        if values.get("frequency_inputs", "mel") not in PEAK_FREQUENCY_INPUTS:
            raise ModelError(
                f"vocoder config: frequency_inputs must be one of {PEAK_FREQUENCY_INPUTS}, "
                f"got {values['frequency_inputs']!r}"
            )
        if values["peak_frequency"] not in PEAK_FREQUENCY_RULES:
            raise ModelError(
                f"vocoder config: peak_frequency must be one of {PEAK_FREQUENCY_RULES}, "
                f"got {values['peak_frequency']!r}"
            )
        if values["phase"] not in ("absolute", "frame"):
            raise ModelError(f"vocoder config: phase must be 'absolute' or 'frame', got {values['phase']!r}")
        if values.get("synthesis", "network") not in VOCODER_SYNTHESES:
            raise ModelError(
                f"vocoder config: synthesis must be one of {VOCODER_SYNTHESES}, got {values['synthesis']!r}"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return {"model_type": "vocos", **asdict(self)}


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise MLP, with layer scale and a residual (ConvNeXt/Vocos)."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


def _inverse_dft_basis(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed inverse real-DFT basis for ``conv_transpose1d`` and the Hann window.

    Row k (real part) and row n_bins + k (imaginary part) hold what bin k contributes to the n_fft
    output samples of ``irfft`` times the synthesis window, so one conv_transpose with stride hop
    does irfft + windowing + overlap-add.
    """
    n_bins = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_bins, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    # irfft counts the bins between DC and Nyquist twice (their conjugate mirror images).
    weight = torch.full((n_bins, 1), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0
    angle = 2 * math.pi * k * n / n_fft
    real = weight * torch.cos(angle) / n_fft
    imag = -weight * torch.sin(angle) / n_fft  # irfft ignores the imaginary DC/Nyquist parts: sin = 0 there
    basis = torch.cat([real, imag], 0) * window
    return basis[:, None, :].float(), window.float()


class ISTFTHead(nn.Module):
    """Frame features -> (log-magnitude, phase) per STFT bin -> waveform by overlap-add.

    Synthesis frame i is centred on sample 320*i + 320, the centre of analysis frame i (ORIGINAL.md §1: frame
    i covers [320 i, 320 i + 640)), and the output is cut to exactly T * hop samples.

    Phase convention. With ``absolute_phase`` the predicted phase of bin k refers to sample 0 of the
    song, not to the start of frame i: the head adds 2 pi k (i * hop) / n_fft before the inverse DFT.
    Why: the backbone is convolutional, so a steady note (the same mel frame after frame) gets the
    same output in every frame. In the frame-relative convention (Vocos) a steady sinusoid needs a
    phase that turns by 2 pi k hop / n_fft (k quarter turns here) from frame to frame, which a
    shift-equivariant network cannot produce far from the note's onset: neighbouring frames then
    partly cancel. In the absolute convention a steady sinusoid at a bin centre has a constant
    phase (and one between bins turns by at most pi hop / n_fft per frame).
    """

    def __init__(self, dim: int, n_fft: int, hop_length: int, max_log_magnitude: float, absolute_phase: bool = False):
        super().__init__()
        if n_fft < 2 * hop_length or n_fft % 2:
            raise ValueError("n_fft must be even and at least 2 * hop_length")
        self.n_fft, self.hop_length, self.max_log_magnitude = n_fft, hop_length, max_log_magnitude
        self.absolute_phase = absolute_phase
        self.out = nn.Linear(dim, n_fft + 2)
        basis, window = _inverse_dft_basis(n_fft)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("window_sq", (window**2)[None, None, :], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, C] -> [B, T * hop]
        return self.synthesize(*self.spectrum(x))

    def spectrum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, C]`` -> (log-magnitude, phase), each ``[B, n_bins, T]``, at this head's framing.

        The phase refers to each frame's first sample (what :meth:`istft` and :meth:`stft` use),
        whatever the convention of the raw output.
        """
        log_mag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)  # each [B, n_bins, T]
        if self.absolute_phase:
            phase = phase + self.frame_phase(phase.shape[-1], phase.device)
        return torch.clamp(log_mag, max=self.max_log_magnitude), phase

    def synthesize(self, log_mag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """:meth:`spectrum`'s outputs -> audio ``[B, T * hop]``."""
        return self.istft(torch.exp(log_mag), phase)

    def peak_locked_phase(
        self,
        magnitude: torch.Tensor,
        transient_db: float | None = None,
        transient_align: str = "envelope",
        frequency_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A phase ``[B, n_bins, T]`` for ``magnitude`` ``[B, n_bins, T]`` from its spectral peaks
        (specdiff.audio.phase_vocoder, with its transient reset when ``transient_db`` is not None, the peaks'
        frequencies from ``frequency_offset`` ``[B, n_bins, T]`` when given; no gradient), in
        :meth:`istft`'s convention."""
        from specdiff.audio.phase_vocoder import peak_locked_phase

        def frames_of(x: torch.Tensor) -> np.ndarray:
            return x.detach().float().transpose(1, 2).cpu().numpy()

        offsets = [None] * magnitude.shape[0] if frequency_offset is None else frames_of(frequency_offset)
        # One signal at a time: each frame's phase continues the previous frame's.
        options = {"transient_db": transient_db, "transient_align": transient_align}
        phase = np.stack(
            [
                peak_locked_phase(m, self.n_fft, self.hop_length, frequency_offset=f, **options)
                for m, f in zip(frames_of(magnitude), offsets)
            ]
        )
        return torch.from_numpy(phase).to(device=magnitude.device, dtype=magnitude.dtype).transpose(1, 2)

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """The analysis that :meth:`istft` inverts: ``[B, T * hop]`` -> complex ``[B, n_bins, T]``, frame i
        on samples ``[hop (i + 1) - n_fft / 2, hop (i + 1) + n_fft / 2)`` (zero outside the audio)."""
        frames = audio.shape[-1] // self.hop_length
        left = self.n_fft // 2 - self.hop_length
        right = (frames - 1) * self.hop_length + self.n_fft - left - audio.shape[-1]
        padded = nn.functional.pad(audio, (left, right))
        return torch.fft.rfft(padded.unfold(-1, self.n_fft, self.hop_length) * self.window, dim=-1).transpose(1, 2)

    def frame_phase(self, frames: int, device: torch.device | None = None) -> torch.Tensor:
        """``[n_bins, frames]``: 2 pi k (i * hop) / n_fft, reduced modulo 2 pi in integer arithmetic
        (exact for long songs, where k * i * hop exceeds float32's integers)."""
        k = torch.arange(self.n_fft // 2 + 1, device=device)[:, None]
        i = torch.arange(frames, device=device)[None, :]
        turns = torch.remainder(k * (i * self.hop_length), self.n_fft)
        return turns.float() * (2 * math.pi / self.n_fft)

    def istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Inverse STFT of ``magnitude * exp(i phase)`` (each ``[B, n_fft/2 + 1, T]``) -> ``[B, T * hop]``.

        In PyTorch: ``irfft`` + windowed overlap-add (``fold``), ~10x faster on a CPU than the
        equivalent ``conv_transpose1d`` with the inverse-DFT basis, which is what an ONNX export
        records (no FFT or complex operators there). tests/test_vocoder.py checks that they agree.
        """
        if torch.onnx.is_in_onnx_export():
            spectrum = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], 1)
            audio = nn.functional.conv_transpose1d(spectrum, self.basis, stride=self.hop_length)[:, 0]
        else:
            spectrum = torch.polar(magnitude, phase)
            frames = torch.fft.irfft(spectrum, n=self.n_fft, dim=1) * self.window[:, None]  # [B, n_fft, T]
            length = (phase.shape[-1] - 1) * self.hop_length + self.n_fft
            audio = nn.functional.fold(frames, (1, length), (1, self.n_fft), stride=(1, self.hop_length))[:, 0, 0]
        # Divide by the summed squared window (4x-overlapped Hann: 1.5 inside, smaller at the edges).
        envelope = nn.functional.conv_transpose1d(
            torch.ones_like(phase[:1, :1, :]), self.window_sq, stride=self.hop_length
        )
        start = self.n_fft // 2 - self.hop_length
        num_samples = phase.shape[-1] * self.hop_length
        return audio[:, start : start + num_samples] / envelope[:, 0, start : start + num_samples]


class Vocoder(nn.Module):
    """Log-mel ``[B, T, 128]`` (natural log, ORIGINAL.md §1) -> audio ``[B, T * 320]`` at 16 kHz."""

    def __init__(self, config: VocoderConfig | None = None):
        super().__init__()
        self.config = config = config or VocoderConfig()
        self.embed = nn.Conv1d(config.n_mels, config.dim, config.kernel_size, padding=config.kernel_size // 2)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(config.dim, config.intermediate_dim, config.kernel_size, 1.0 / config.num_layers)
            for _ in range(config.num_layers)
        )
        self.peak_frequency = None
        if config.peak_frequency == "predicted":
            from specdiff.audio.peak_frequency import PeakFrequencyNet

            self.peak_frequency = PeakFrequencyNet(
                config.frequency_channels,
                config.frequency_bins,
                config.n_fft,
                config.sample_rate,
                band_inputs=config.frequency_inputs == "mel+bands",
            )
        self.final_norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.head = ISTFTHead(
            config.dim, config.n_fft, config.hop_length, config.max_log_magnitude, config.phase == "absolute"
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.head.synthesize(*self.spectrum(log_mel))

    def spectrum(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel ``[B, T, 128]`` -> the head's (log-magnitude, phase), each ``[B, n_fft/2 + 1, T]``
        (see :meth:`ISTFTHead.spectrum`)."""
        return self.head.spectrum(self.features(log_mel))

    def phase_vocoder_inputs(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-mel ``[B, T, 128]`` -> what the phase-vocoder synthesis needs from the network: the head's
        log-magnitude and, when the config's ``peak_frequency`` is ``"predicted"``, the peaks' frequency
        offsets in bins (NaN where the parabola applies; else None: the parabola everywhere), each
        ``[B, n_fft/2 + 1, T]``. The offsets see the magnitude without its gradient: their loss trains
        only their own network."""
        log_magnitude = self.spectrum(log_mel)[0]
        if self.peak_frequency is None:
            return log_magnitude, None
        return log_magnitude, self.peak_frequency(log_mel, log_magnitude.detach())

    def features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, T, 128]`` -> the backbone's frame features ``[B, T, dim]`` (the head's input)."""
        c = self.config
        # Scale to [-1, 1] the way the diffusion model's features are scaled (ORIGINAL.md §1.1, no clipping).
        x = (log_mel - c.feature_min) * (2.0 / (c.feature_max - c.feature_min)) - 1.0
        x = self.embed(x.transpose(1, 2))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x.transpose(1, 2))

    # ---- saving / loading -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and fp16 ``model.safetensors`` into ``directory`` (atomically)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        text = json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(text))
        return directory

    def with_config(self, config: VocoderConfig) -> Vocoder:
        """A new vocoder with ``config`` and this one's weights; only the peak-frequency network
        (``peak_frequency.*``) may be new (freshly initialised), dropped or given more inputs (their weights
        start at zero, so it starts as the old one: ``frequency_inputs`` "mel" -> "mel+bands"), e.g. to
        switch a trained vocoder's ``peak_frequency`` before training that network."""
        model = type(self)(config)
        state = self.state_dict()
        if model.peak_frequency is not None:
            from specdiff.audio.peak_frequency import widen_inputs

            state = widen_inputs(state, model.peak_frequency, "peak_frequency.")
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shapes that differ
            first = str(err).strip().splitlines()[-1].strip()
            raise ModelError(f"the new config changes more than the peak-frequency network: {first}") from None
        changed = [k for k in [*result.missing_keys, *result.unexpected_keys] if not k.startswith("peak_frequency.")]
        if changed:
            raise ModelError(f"the new config changes more than the peak-frequency network: {changed[:3]}")
        return model.train(self.training)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Vocoder:
        """Load a folder written by :meth:`save_pretrained` (weights come back as float32)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ModelError(f"{directory} is not a vocoder folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            config = VocoderConfig.from_dict(json.loads(config_path.read_text()))
            state = load_file(str(weights_path))
        except (OSError, ValueError, TypeError) as err:
            raise ModelError(f"cannot read vocoder in {directory}: {err}") from None
        model = cls(config)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ModelError(f"vocoder weights in {directory} do not match its config: {first}") from None
        return model.eval()


# ---- Inverter wrapper ------------------------------------------------------------------------------


#: Griffin-Lim iterations that refine the network's output by default (see :class:`VocoderInverter`).
DEFAULT_REFINE_ITERS = 32
#: Mel-fit corrections of the phase-vocoder synthesis by default (see :meth:`VocoderInverter.fit_to_mel`).
DEFAULT_MEL_FIT_ITERS = 1


class VocoderInverter:
    """The ``Inverter`` protocol (specdiff/audio/inverters.py) around a :class:`Vocoder`.

    ``inverter(log_mel)`` takes float log-mel ``[B, T, 128]`` (numpy) and returns float32 audio
    ``[B, T * 320]`` at ``sample_rate``.

    ``synthesis`` (default: the vocoder config's): ``"network"`` synthesises the head's magnitude with
    its own phase (what the ONNX export computes); ``"phase_vocoder"`` gives the head's magnitude a
    phase built from that magnitude (specdiff.audio.phase_vocoder), for heads trained to predict the true
    magnitude of the synthesis framing; its peaks' frequencies come from the vocoder's peak-frequency
    network when its config says ``peak_frequency: "predicted"`` (:meth:`Vocoder.phase_vocoder_inputs`).

    ``refine_iters``: refinement iterations against the input mel (``None``: the synthesis's default).
    With ``"phase_vocoder"``, gain corrections of the magnitude at the synthesis framing, the phase
    kept (:meth:`fit_to_mel`; default :data:`DEFAULT_MEL_FIT_ITERS`). With ``"network"``, a
    consistency refinement after the synthesis (:meth:`refine`; default :data:`DEFAULT_REFINE_ITERS`,
    its level errors need it): the STFT of its audio (the front end's own STFT) keeps its phase and
    within-band detail, its magnitudes are fitted to the mel (the multiplicative least-squares
    updates of Griffin-Lim's mel inversion, started from the synthesis's magnitudes), and that many
    fast Griffin-Lim iterations start from that phase. It lowers the log-mel error, but its
    Griffin-Lim iterations run at the front end's 2x overlap, which loses onsets
    (benchmarks/results/vocoder_onsets.md). 0: the synthesis alone.

    ``gate_iters`` (default :data:`specdiff.audio.silence_gate.DEFAULT_GATE_ITERS`; 0 = off): the last stage,
    :func:`specdiff.audio.silence_gate.silence_gate`, scales down frames that come out louder than their mel
    (the overlap smear beside loud frames, a magnitude that does not reach the floor), so rests stay
    silent.

    Attributes ``transient_db`` (default None: off) and ``transient_align``: the phase vocoder's
    transient phase reset (:func:`specdiff.audio.phase_vocoder.peak_locked_phase`). Not a config key:
    measured, it keeps no more onsets (benchmarks/results/vocoder_benchmark_idioms_transients.md);
    benchmarks/vocoder_benchmark.py ``--transients`` sets them to compare rules.
    """

    def __init__(
        self,
        model: Vocoder,
        device: str | torch.device = "cpu",
        refine_iters: int | None = None,
        synthesis: str | None = None,
        gate_iters: int | None = None,
    ):
        from specdiff.audio.silence_gate import DEFAULT_GATE_ITERS

        synthesis = synthesis or model.config.synthesis
        if synthesis not in VOCODER_SYNTHESES:
            raise ValueError(f"synthesis must be one of {VOCODER_SYNTHESES}, got {synthesis!r}")
        if refine_iters is None:
            refine_iters = DEFAULT_REFINE_ITERS if synthesis == "network" else DEFAULT_MEL_FIT_ITERS
        if refine_iters < 0:
            raise ValueError(f"refine_iters must be >= 0, got {refine_iters}")
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.sample_rate = model.config.sample_rate
        self.hop_length = model.config.hop_length
        self.refine_iters = refine_iters
        self.synthesis = synthesis
        self.gate_iters = DEFAULT_GATE_ITERS if gate_iters is None else int(gate_iters)
        if self.gate_iters < 0:
            raise ValueError(f"gate_iters must be >= 0, got {gate_iters}")
        self.transient_db: float | None = None
        self.transient_align = "envelope"

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        features = np.asarray(log_mel, dtype=np.float32)
        if features.ndim != 3 or features.shape[-1] != self.model.config.n_mels:
            raise ValueError(f"expected log-mel [B, T, {self.model.config.n_mels}], got {features.shape}")
        if features.shape[1] == 0:
            return np.zeros((features.shape[0], 0), np.float32)
        with torch.inference_mode():
            log_mel_t = torch.from_numpy(features).to(self.device)
            if self.synthesis == "phase_vocoder":
                audio = self.phase_vocoder(log_mel_t)
            else:
                audio = self.model(log_mel_t)
                if self.refine_iters:
                    audio = self.refine(audio.float(), log_mel_t)
            if self.gate_iters:
                from specdiff.audio.silence_gate import silence_gate

                audio = silence_gate(audio.float(), log_mel_t, iterations=self.gate_iters)
        return audio.float().cpu().numpy()

    def phase_vocoder(self, log_mel: torch.Tensor) -> torch.Tensor:
        """The head's magnitude with :meth:`ISTFTHead.peak_locked_phase`, fitted to the mel by
        ``refine_iters`` gain corrections (:meth:`fit_to_mel`) -> audio ``[B, T * 320]``."""
        head = self.model.head
        log_magnitude, offset = self.model.phase_vocoder_inputs(log_mel)
        magnitude = torch.exp(log_magnitude.float())
        phase = head.peak_locked_phase(magnitude, self.transient_db, self.transient_align, offset)
        return self.fit_to_mel(magnitude, phase, log_mel.float(), self.refine_iters)

    def fit_to_mel(
        self, magnitude: torch.Tensor, phase: torch.Tensor, log_mel: torch.Tensor, iterations: int
    ) -> torch.Tensor:
        """Audio of ``magnitude`` and ``phase`` (``[B, bins, T]``, the head's framing) after ``iterations``
        corrections of the magnitude towards ``log_mel`` ``[B, T, 128]``, the phase kept.

        Each one measures the audio's own mel and multiplies every bin by the mel bands' level errors
        (in log, shared between the bands that cover the bin). It works at the synthesis framing, so
        the phase vocoder's phase and attacks stay (Griffin-Lim at the front end's 2x overlap loses
        onsets, benchmarks/results/vocoder_onsets.md); on held-out renders one correction removes a
        third of the log-mel error at no cost in onsets, more start to cost onsets.
        """
        from specdiff.audio import mel

        head = self.model.head
        if iterations:
            weights = torch.from_numpy(mel.mel_filterbank_on(head.n_fft // 2 + 1)).to(magnitude)  # [bins, 128]
            share = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)  # each covered bin: sums to 1
            silent = mel.MIN_VALUE + 1e-2  # the front end's floor: a band at it has no level to match
            for _ in range(iterations):
                current = mel.log_mel(head.istft(magnitude, phase))
                active = (log_mel > silent) | (current > silent)
                error = torch.where(active, (log_mel - current).clamp(-4.0, 4.0), torch.zeros_like(current))
                magnitude = magnitude * torch.exp(error @ share.T).transpose(1, 2)
        return head.istft(magnitude, phase)

    def refine(self, audio: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
        """Fit ``audio`` ``[B, T * 320]`` to ``log_mel`` ``[B, T, 128]`` (see the class docstring)."""
        from specdiff.audio import mel
        from specdiff.audio.griffin_lim import GriffinLimInverter

        spectrum = mel.stft(audio)  # [B, T, 513]: T * 320 samples give exactly T frames
        griffin_lim = GriffinLimInverter(n_iter=self.refine_iters, device=str(audio.device))
        magnitude = griffin_lim.mel_to_magnitude(log_mel, init=spectrum.abs())
        return griffin_lim.griffin_lim(magnitude, angles=spectrum / spectrum.abs().clamp_min(1e-16))

    @property
    def description(self) -> str:
        """How it makes audio, in words (``specdiff info``'s inverter line)."""
        if self.synthesis == "network":
            steps = [f"the network's own phase, {self.refine_iters} refinement iterations"]
        else:
            rule = "predicted" if self.model.config.peak_frequency == "predicted" else "from a parabola"
            steps = [f"phase vocoder (peak frequencies {rule})", f"{self.refine_iters} mel-fit correction(s)"]
        if self.gate_iters:
            steps.append("silence gate")
        return ", ".join(steps)

    def __repr__(self) -> str:
        c = self.model.config
        return (
            f"VocoderInverter(dim={c.dim}, layers={c.num_layers}, n_fft={c.n_fft}, synthesis={self.synthesis!r}, "
            f"peak_frequency={c.peak_frequency!r}, refine_iters={self.refine_iters}, gate_iters={self.gate_iters})"
        )


def find_vocoder_dir(path: str | os.PathLike) -> Path | None:
    """``path/vocoder`` or ``path`` itself when it holds a vocoder, else None."""
    path = Path(path)
    for candidate in (path / VOCODER_FOLDER, path):
        if (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
            return candidate
    return None


def load_vocoder(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    refine_iters: int | None = None,
    synthesis: str | None = None,
    gate_iters: int | None = None,
) -> VocoderInverter:
    """Load the vocoder of a model folder (``path/vocoder/``) or a vocoder folder itself; ``path`` may
    also be a Hugging Face Hub id (``ORG/NAME[@REVISION]``, :mod:`specdiff.pipeline.hub`: only its vocoder files
    are fetched).

    This is the hook for ``inverters.load_inverter(model_dir)``: call it when
    ``find_vocoder_dir(model_dir)`` is not None. ``refine_iters``, ``synthesis``, ``gate_iters``: see
    :class:`VocoderInverter`.
    """
    from specdiff.pipeline.hub import VOCODER_FILES, resolve_model_path

    path = resolve_model_path(path, files=VOCODER_FILES, what="vocoder")
    folder = find_vocoder_dir(path)
    if folder is None:
        raise ModelError(f"no vocoder in {path} (expected {VOCODER_FOLDER}/{CONFIG_NAME} and {WEIGHTS_NAME})")
    return VocoderInverter(Vocoder.from_pretrained(folder), device, refine_iters, synthesis, gate_iters)
