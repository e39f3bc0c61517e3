"""Where are onsets lost in our spectrogram inverter? An oracle ladder (issue 18, part 1).

On the held-out clips of benchmarks/vocoder_benchmark.py (same selection, same basic-pitch
transcription, same onset F1 against the MIDI file), each row resynthesises the SoundFont render
from a mix of ORIGINAL (oracle) and RECOVERED parts, so the loss of each part can be read off alone:

  a  the original audio;
  b  original STFT magnitude + original phase (the framing alone: should equal a);
  c  magnitude recovered from the log-mel (non-negative least squares of the mel filterbank, as
     Griffin-Lim in the repo does) + ORIGINAL phase (the mel's magnitude loss alone);
  d  ORIGINAL magnitude + Griffin-Lim phase (32 fast iterations from random phase, the repo's
     settings: phase retrieval alone);
  e  network magnitude + original phase, original magnitude + network phase (the vocoder's
     ISTFTHead predicts both; n_fft 1280 framing);
  g  a candidate fix that uses only the mel: the network's magnitude with Griffin-Lim phase at the
     1280 framing (4x overlap instead of the front end's 2x), from random or from the network's phase;
  h  another one: the magnitude recovered from the REAL log-mel on the 1280 framing's bins (the 128
     mel triangles laid on those bins as in c, NNLS against exp(log-mel) of the front end) with
     Griffin-Lim at the 1280 framing, 32 / 100 / 200 iterations, from random or from the network's
     phase; one gain computed from the mel alone matches the output's mel level to the input's; and
     the same magnitude with the original phase (is the magnitude or the phase retrieval the problem?);
  i  the phase vocoder (specdiff.audio.phase_vocoder: phase built frame by frame from the magnitude's
     peaks) at the 1280 framing, on the original magnitude, on the mel's NNLS magnitude (h) and on
     the network's magnitude (the pipeline for a vocoder folder with synthesis "phase_vocoder");
  f  the real inverters of the benchmark: network alone, Griffin-Lim alone, the pipeline
     (network + 32 refinement iterations), and the pipeline's refinement with 0 Griffin-Lim
     iterations (network phase + network magnitudes fitted to the mel).

Framings (hop 320 throughout): "fe" is the front end's own STFT (periodic Hann 640, FFT 1024, not
centred; specdiff.audio.mel.stft / specdiff.audio.griffin_lim.istft), on which the mel and the repo's
Griffin-Lim live; "1280" is the vocoder's synthesis STFT (Hann 1280, frame i centred on sample
320 i + 320, as ISTFTHead); "640" is the same with a 640 window (Hann 640, FFT 640, the front
end's frames). For c at 1280 / 640 the 128 mel triangles are laid on that framing's own bins
(same band edges; NOT the front end's mel, which only exists at 640/1024): it measures a 128-band
projection at that window length.

Per row: onset F1 against the MIDI file and against basic-pitch's transcription of the original
(mir_eval, 50 ms, offsets ignored), log-mel L1 to the original, and onset measures at the MIDI
onsets (chord notes within 30 ms count once; 0.1 s from the clip's start, 0.2 s from its end):
  pre-echo dB    broadband waveform energy: 10 log10(E_resynth / E_original) in [t - 60, t - 20 ms];
  contrast dB    change of 10 log10(E[t, t + 50] / E[t - 60, t - 20]) against the original;
  note-band pre-echo / rise dB: the same two, per MIDI note, on the energy of the note's first 3
                 harmonics (see note_band_energy): what a pitch-wise onset detector sees.

Usage:
  python benchmarks/vocoder_onsets.py --vocoder specdiff/assets/default_model
Writes benchmarks/results/vocoder_onsets.json, vocoder_onsets.md and vocoder_onsets/*.png.
  python benchmarks/vocoder_onsets.py --rows "h. " [--speed]
computes and scores only the rows whose label contains one of the given strings (plus the original)
and prints their table without writing anything (but the pictures, with --pictures-dir DIR); --speed
also times the h rows' inverter on 10 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vocoder_benchmark import OnsetScorer, _write_atomic, held_out_clips, midi_notes  # noqa: E402

from specdiff.audio import mel  # noqa: E402
from specdiff.audio.griffin_lim import GriffinLimInverter, istft  # noqa: E402
from specdiff.evaluation.metrics import log_mel_l1, onset_scores  # noqa: E402

HOP = mel.HOP_LENGTH
SR = mel.SAMPLE_RATE
ENVELOPE_FLOOR = 0.1
GL_ITERS, GL_MOMENTUM, NNLS_ITERS, SEED = 32, 0.99, 30, 0  # GriffinLimInverter's defaults


# ---- a centred STFT framing like ISTFTHead's, for any n_fft ------------------------------------


def stft_n(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``[N]`` audio (N a multiple of the hop) -> complex ``[T, n_fft/2 + 1]``, T = N / hop, frame i on
    samples [320 i + 320 - n_fft/2, 320 i + 320 + n_fft/2) (ISTFTHead's frames), periodic Hann."""
    frames = audio.shape[-1] // HOP
    left = n_fft // 2 - HOP
    padded = torch.nn.functional.pad(audio, (left, (frames - 1) * HOP + n_fft - left - audio.shape[-1]))
    window = torch.hann_window(n_fft, periodic=True, dtype=audio.dtype)
    return torch.fft.rfft(padded.unfold(-1, n_fft, HOP) * window)


def istft_n(spectrum: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Least-squares inverse of :func:`stft_n`: complex ``[T, bins]`` -> ``[T * hop]`` (the envelope of
    squared windows is floored as in specdiff.audio.griffin_lim.istft, which matters only at the start)."""
    frames = spectrum.shape[0]
    window = torch.hann_window(n_fft, periodic=True, dtype=spectrum.real.dtype)
    chunks = torch.fft.irfft(spectrum, n=n_fft) * window  # [T, n_fft]
    length = (frames - 1) * HOP + n_fft
    fold = lambda x: torch.nn.functional.fold(x.T[None], (1, length), (1, n_fft), stride=(1, HOP))[0, 0, 0]  # noqa: E731
    audio = fold(chunks)
    envelope = fold((window**2).expand(frames, -1))
    start = n_fft // 2 - HOP
    return (audio / envelope.clamp_min(ENVELOPE_FLOOR))[start : start + frames * HOP]


def triangle_filterbank(n_bins: int) -> torch.Tensor:
    """The 128 mel triangles of specdiff.audio.mel (same band edges, peak 1) at ``n_bins`` linear bins 0..8 kHz."""
    return torch.from_numpy(mel.mel_filterbank_on(n_bins)).float()


def nnls_magnitude(magnitude: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Project ``[T, bins]`` magnitudes on the triangles ``fb`` (clip floor 1e-5 as the front end) and
    recover non-negative magnitudes the way GriffinLimInverter.mel_to_magnitude does (same init,
    same multiplicative updates, same iteration count)."""
    return nnls_bands(magnitude @ fb, fb)


def nnls_bands(projected: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Non-negative ``[T, bins]`` magnitudes whose projection on ``fb`` fits the band levels ``projected``
    ``[T, 128]`` (bands at the 1e-5 clip floor count as empty), as in :func:`nnls_magnitude`."""
    target = projected * (projected > mel.CLIP_VALUE_MIN * math.exp(1e-3))
    estimate = (target / fb.sum(0).clamp_min(1e-8)) @ fb.T
    numerator = target @ fb.T
    for _ in range(NNLS_ITERS):
        estimate = estimate * numerator / ((estimate @ fb) @ fb.T + 1e-12)
    return estimate


def griffin_lim_n(
    magnitude: torch.Tensor, n_fft: int, angles: torch.Tensor | None = None, iters: int = GL_ITERS
) -> torch.Tensor:
    """Fast Griffin-Lim at framing ``n_fft`` with GriffinLimInverter's settings (default: random phase, seed 0)."""
    if angles is None:
        generator = torch.Generator().manual_seed(SEED)
        angles = torch.polar(torch.ones_like(magnitude), torch.rand(magnitude.shape, generator=generator) * 2 * math.pi)
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        rebuilt = stft_n(istft_n(magnitude * angles, n_fft), n_fft)
        angles = rebuilt - previous * (GL_MOMENTUM / (1 + GL_MOMENTUM))
        angles = angles / angles.abs().clamp_min(1e-16)
        previous = rebuilt
    return istft_n(magnitude * angles, n_fft)


def unit(spectrum: torch.Tensor) -> torch.Tensor:
    return spectrum / spectrum.abs().clamp_min(1e-16)


def mel_magnitude_n(log_mel: torch.Tensor, n_fft: int) -> torch.Tensor:
    """The real mel ``[T, 128]`` (front end's framing) -> non-negative magnitudes ``[T, n_fft/2 + 1]`` on
    framing ``n_fft``'s bins: NNLS of the 128 triangles laid on those bins (the level is set later)."""
    return nnls_bands(torch.exp(log_mel), triangle_filterbank(n_fft // 2 + 1))


def match_mel_level(audio: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
    """One gain that gives ``audio``'s mel the total linear level of ``log_mel`` ``[T, 128]`` (the mel alone)."""
    floor = mel.MIN_VALUE + 1e-3
    target = (torch.exp(log_mel) * (log_mel > floor)).sum()
    own = mel.log_mel(audio)
    return audio * (target / (torch.exp(own) * (own > floor)).sum().clamp_min(1e-12))


def mel_griffin_lim_n(log_mel: torch.Tensor, n_fft: int, iters: int, angles: torch.Tensor | None = None):
    """The h rows' inverter: real mel ``[T, 128]`` -> magnitudes on framing ``n_fft`` -> Griffin-Lim there."""
    return match_mel_level(griffin_lim_n(mel_magnitude_n(log_mel, n_fft), n_fft, angles, iters), log_mel)


# ---- the network's own magnitude and phase --------------------------------------------------------


def network_spectrum(vocoder, log_mel: torch.Tensor) -> torch.Tensor:
    """The complex spectrum ``[T, 641]`` ISTFTHead turns into audio (frame-relative phase, so that
    istft_n(., 1280) gives the network's audio)."""
    log_magnitude, phase = vocoder.model.spectrum(log_mel)
    return torch.polar(torch.exp(log_magnitude), phase)[0].T


# ---- onset measures ---------------------------------------------------------------------------


def precision_recall(truth, notes) -> dict[str, float]:
    """Onset precision and recall against the MIDI file (specdiff.evaluation.metrics.onset_scores, 50 ms)."""
    as_midi = lambda n: (n[0], 69 + 12 * np.log2(np.maximum(n[1], 1e-3) / 440.0))  # noqa: E731
    scores = onset_scores(as_midi(truth), as_midi(notes))
    return {"precision_vs_midi": scores["precision"], "recall_vs_midi": scores["recall"]}


def onset_times(truth, seconds: float) -> np.ndarray:
    """Unique MIDI onsets (chord notes within 30 ms count once), away from the clip's edges."""
    times, kept = np.sort(truth[0][:, 0]), []
    for t in times:
        if 0.1 <= t <= seconds - 0.2 and (not kept or t - kept[-1] > 0.03):
            kept.append(t)
    return np.array(kept)


def _energy(audio: np.ndarray, t: float, start_ms: float, end_ms: float) -> float:
    a, b = int(round((t + start_ms / 1000) * SR)), int(round((t + end_ms / 1000) * SR))
    return float(np.mean(audio[max(a, 0) : b].astype(np.float64) ** 2)) + 1e-12


def note_band_energy(audio: np.ndarray, truth, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """For each MIDI note starting in [0.1 s, end - 0.2 s]: energy of its first 3 harmonics (nearest
    bin of a 512-point STFT, hop 80 = 5 ms, 32 ms Hann) in the frames centred 35-45 ms before the
    onset (covering about [t - 61, t - 19 ms]) and 20-40 ms after it. Returns (pre, post) arrays."""
    x = torch.from_numpy(np.ascontiguousarray(audio, np.float32))
    power = torch.stft(x, 512, 80, window=torch.hann_window(512), return_complex=True).abs().square().numpy()
    pre, post = [], []
    for (start, _), f0 in zip(truth[0], truth[1]):
        if not 0.1 <= start <= seconds - 0.2:
            continue
        bins = [round(h * f0 * 512 / SR) for h in (1, 2, 3) if h * f0 < 7800]
        frame = [int(round((start + ms / 1000) * SR / 80)) for ms in (-45, -35, 20, 40)]
        pre.append(power[bins][:, frame[0] : frame[1] + 1].sum(0).mean() + 1e-12)
        post.append(power[bins][:, frame[2] : frame[3] + 1].sum(0).mean() + 1e-12)
    return np.array(pre), np.array(post)


def onset_measures(original: np.ndarray, resynthesis: np.ndarray, onsets: np.ndarray, truth, seconds) -> dict:
    if not onsets.size:
        return {}
    pre, contrast = [], []
    for t in onsets:
        pre_o, pre_r = _energy(original, t, -60, -20), _energy(resynthesis, t, -60, -20)
        post_o, post_r = _energy(original, t, 0, 50), _energy(resynthesis, t, 0, 50)
        pre.append(10 * np.log10(pre_r / pre_o))
        contrast.append(10 * np.log10(post_r / pre_r) - 10 * np.log10(post_o / pre_o))
    pre_o, post_o = note_band_energy(original, truth, seconds)
    pre_r, post_r = note_band_energy(resynthesis, truth, seconds)
    return {
        "pre_echo_db": float(np.mean(pre)),
        "contrast_db": float(np.mean(contrast)),
        "note_pre_db": float(np.mean(10 * np.log10(pre_r / pre_o))),
        "note_rise_db": float(np.mean(10 * np.log10(post_r / pre_r) - 10 * np.log10(post_o / pre_o))),
    }


# ---- the ladder -------------------------------------------------------------------------------

ROWS = {
    "a. original": "the SoundFont render",
    "b. fe: orig |X| + orig phase": "front-end STFT (Hann 640, FFT 1024) and back",
    "b. 1280: orig |X| + orig phase": "vocoder synthesis STFT (Hann 1280) and back",
    "b. 640: orig |X| + orig phase": "Hann 640, FFT 640, centred like the head",
    "c. fe: mel-NNLS |X| + orig phase": "the real mel -> magnitude (repo's mel_to_magnitude) + original phase",
    "c. 1280: 128-band NNLS |X| + orig phase": "128 mel triangles on the 1280 bins, NNLS back, original phase",
    "c. 640: 128-band NNLS |X| + orig phase": "128 mel triangles on the 640 bins, NNLS back, original phase",
    "d. fe: orig |X| + GL phase": "repo's Griffin-Lim (32 it.) on the original front-end magnitude",
    "d. 1280: orig |X| + GL phase": "same Griffin-Lim at the 1280 framing",
    "d. 640: orig |X| + GL phase": "same Griffin-Lim at the 640 framing",
    "e. 1280: network |X| + orig phase": "ISTFTHead magnitude, original phase",
    "e. 1280: orig |X| + network phase": "original magnitude, ISTFTHead phase",
    "f. network alone": "vocoder, network alone (ONNX export)",
    "f. network + mel fit, 0 GL iterations": "pipeline refinement with 0 Griffin-Lim iterations",
    "f. pipeline (network + 32 GL iterations)": "vocoder as the pipeline uses it",
    "f. Griffin-Lim alone": "mel-NNLS magnitude + 32 GL iterations from random phase",
    "g. 1280: network |X| + GL phase from random": "real (mel only): network magnitude, 32 GL it. at the 1280 framing",
    "g. 1280: network |X| + GL phase from network phase": "real (mel only): same, GL started from the network's phase",
}
H_ITERS = (32, 100, 200)
ROWS["h. 1280: mel-NNLS |X| + orig phase"] = "the h rows' magnitude (real mel -> 1280 bins, NNLS), original phase"
for _iters in H_ITERS:
    ROWS[f"h. 1280: mel-NNLS |X| + GL from random, {_iters} it."] = (
        f"real (mel only): the mel's NNLS magnitude on the 1280 bins, {_iters} GL it. at the 1280 framing"
    )
for _iters in H_ITERS:
    ROWS[f"h. 1280: mel-NNLS |X| + GL from network phase, {_iters} it."] = (
        f"real (mel only): same, {_iters} GL it. started from the network's phase"
    )
ROWS["i. 1280: orig |X| + phase-vocoder phase"] = "original magnitude, peak-locked phase vocoder's phase"
ROWS["i. 1280: mel-NNLS |X| + phase-vocoder phase"] = "real (mel only, no network): the h rows' magnitude, same phase"
ROWS["i. 1280: network |X| + phase-vocoder phase"] = "real (mel only): ISTFTHead magnitude, same phase"


def phase_vocoder_n(magnitude: torch.Tensor) -> torch.Tensor:
    """``[T, 641]`` magnitude at the 1280 framing -> audio, with specdiff.audio.phase_vocoder's phase."""
    from specdiff.audio.phase_vocoder import peak_locked_phase

    phase = torch.from_numpy(peak_locked_phase(magnitude.numpy(), 1280, HOP)).to(magnitude.dtype)
    return istft_n(torch.polar(magnitude, phase), 1280)


def ladder(audio: np.ndarray, vocoders: dict, griffin_lim: GriffinLimInverter, wanted=None) -> dict[str, np.ndarray]:
    """Every row's resynthesis of ``audio``; with ``wanted`` (label -> bool), only those rows and the original."""
    x = torch.from_numpy(audio).float()
    log_mel = mel.log_mel(x[None])  # [1, T, 128]
    n = len(audio)
    out = {"a. original": audio}
    want = (lambda label: True) if wanted is None else wanted  # noqa: E731
    fe = mel.stft(x)  # [T, 513]
    if want(label := "b. fe: orig |X| + orig phase"):
        out[label] = istft(fe, n)
    if want(label := "c. fe: mel-NNLS |X| + orig phase"):
        out[label] = istft(griffin_lim.mel_to_magnitude(log_mel[0]) * unit(fe), n)
    if want(label := "d. fe: orig |X| + GL phase"):
        out[label] = griffin_lim.griffin_lim(fe.abs())
    for n_fft in (1280, 640):
        spec = stft_n(x, n_fft)
        if want(label := f"b. {n_fft}: orig |X| + orig phase"):
            out[label] = istft_n(spec, n_fft)
        if want(label := f"c. {n_fft}: 128-band NNLS |X| + orig phase"):
            fb = triangle_filterbank(n_fft // 2 + 1)
            out[label] = istft_n(nnls_magnitude(spec.abs(), fb) * unit(spec), n_fft)
        if want(label := f"d. {n_fft}: orig |X| + GL phase"):
            out[label] = griffin_lim_n(spec.abs(), n_fft)
    net, pipeline = vocoders["net"], vocoders["pipeline"]
    spec, network = stft_n(x, 1280), network_spectrum(net, log_mel)
    if want(label := "e. 1280: network |X| + orig phase"):
        out[label] = istft_n(network.abs() * unit(spec), 1280)
    if want(label := "e. 1280: orig |X| + network phase"):
        out[label] = istft_n(spec.abs() * unit(network), 1280)
    net_audio = net.model(log_mel)
    generator = torch.Generator().manual_seed(SEED)
    random = torch.polar(torch.ones_like(network.real), torch.rand(network.shape, generator=generator) * 2 * math.pi)
    if want(label := "g. 1280: network |X| + GL phase from random"):
        out[label] = griffin_lim_n(network.abs(), 1280, random)
    if want(label := "g. 1280: network |X| + GL phase from network phase"):
        out[label] = griffin_lim_n(network.abs(), 1280, unit(network))
    if want(label := "f. network alone"):
        out[label] = net_audio[0]
    if want(label := "f. network + mel fit, 0 GL iterations"):
        out[label] = net.refine(net_audio, log_mel)[0]  # net has refine_iters=0
    if want(label := "f. pipeline (network + 32 GL iterations)"):
        out[label] = torch.from_numpy(pipeline(log_mel.numpy()))[0]
    if want(label := "f. Griffin-Lim alone"):
        out[label] = torch.from_numpy(griffin_lim(log_mel.numpy()))[0]
    if want(label := "h. 1280: mel-NNLS |X| + orig phase"):
        out[label] = match_mel_level(istft_n(mel_magnitude_n(log_mel[0], 1280) * unit(spec), 1280), log_mel[0])
    for start, angles in (("random", random), ("network phase", unit(network))):
        for iters in H_ITERS:
            if want(label := f"h. 1280: mel-NNLS |X| + GL from {start}, {iters} it."):
                out[label] = mel_griffin_lim_n(log_mel[0], 1280, iters, angles)
    if want(label := "i. 1280: orig |X| + phase-vocoder phase"):
        out[label] = phase_vocoder_n(spec.abs())
    if want(label := "i. 1280: mel-NNLS |X| + phase-vocoder phase"):
        out[label] = match_mel_level(phase_vocoder_n(mel_magnitude_n(log_mel[0], 1280)), log_mel[0])
    if want(label := "i. 1280: network |X| + phase-vocoder phase"):
        out[label] = phase_vocoder_n(network.abs())
    # Sanity: our 1280 framing is the head's (the network's spectrum through istft_n is its audio).
    err = (istft_n(network, 1280) - net_audio[0]).abs().max().item()
    assert err < 1e-4 * max(net_audio.abs().max().item(), 1.0), f"framing mismatch with ISTFTHead: {err}"
    return {k: np.asarray(v, np.float32)[:n] for k, v in out.items()}


def inverter_speed(iters: int, seconds: float = 10.0, repeats: int = 3) -> float:
    """Times faster than real time of the h rows' inverter from random phase (mel -> NNLS magnitude on
    the 1280 bins -> ``iters`` Griffin-Lim iterations -> level match) on ``seconds`` of audio, best of
    ``repeats``, on the current torch threads; the input is a noise burst's mel (the time does not depend on it)."""
    generator = torch.Generator().manual_seed(SEED)
    log_mel = mel.log_mel(torch.randn(int(seconds * SR), generator=generator) * 0.1)
    best = math.inf
    for _ in range(repeats):
        with torch.inference_mode():
            start = time.perf_counter()
            mel_griffin_lim_n(log_mel, 1280, iters)
            best = min(best, time.perf_counter() - start)
    return seconds / best


# ---- pictures ---------------------------------------------------------------------------------


def save_onset_png(path: Path, title: str, signals: dict[str, np.ndarray], t: float) -> None:
    from specdiff.evaluation.plotting import COLORMAP, _figure, _save_figure

    fig = _figure(1400, 250 * len(signals), 100)
    axes = fig.subplots(len(signals), 2)
    a, b = int((t - 0.06) * SR), int((t + 0.09) * SR)
    pad = 256
    for row, (label, audio) in enumerate(signals.items()):
        seg = audio[a:b]
        ms = (np.arange(len(seg)) / SR + (a / SR - t)) * 1000
        ax_w, ax_s = axes[row]
        ax_w.plot(ms, seg, lw=0.6)
        ax_w.axvspan(-60, -20, color="tab:red", alpha=0.12)
        ax_w.axvline(0, color="k", lw=0.8)
        ax_w.set_xlim(ms[0], ms[-1])
        ax_w.set_ylabel(label, fontsize=8)
        wide = torch.from_numpy(audio[a - pad : b + pad].astype(np.float32))
        spec = torch.stft(wide, 512, 16, window=torch.hann_window(512), return_complex=True).abs()
        db = 20 * torch.log10(spec.clamp_min(1e-5)).numpy()[:129, pad // 16 : (pad + b - a) // 16]  # 0-4 kHz
        ax_s.imshow(db, origin="lower", aspect="auto", cmap=COLORMAP, vmin=-80, vmax=20,
                    extent=(-60, 90, 0, 4.0))  # fmt: skip
        ax_s.axvline(0, color="w", lw=0.8)
        ax_s.set_ylabel("kHz")
    axes[-1][0].set_xlabel("ms from MIDI onset (shaded: pre-echo window)")
    axes[-1][1].set_xlabel("ms from MIDI onset (STFT 512 / hop 16, 0-4 kHz)")
    fig.suptitle(title)
    _save_figure(fig, path)


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocoder", type=Path, default=REPO / "specdiff" / "assets" / "default_model")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-files", type=int, default=8, help="8: the clips of vocoder_benchmark.md")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--rows", nargs="+", help="only the rows whose label contains one of these; writes nothing")
    parser.add_argument("--speed", action="store_true", help="also time the h rows' inverter (1 thread, 10 s)")
    parser.add_argument(
        "--pictures-dir", type=Path, help="with --rows: also write the onset pictures of the rows computed there"
    )
    args = parser.parse_args()
    wanted = None if args.rows is None else (lambda label: any(r in label for r in args.rows))

    from specdiff.audio.vocoder import load_vocoder

    torch.set_num_threads(1)
    started = time.perf_counter()
    # The f rows' network synthesis, whatever the folder's own (the i rows hold the phase vocoder's).
    vocoders = {
        "net": load_vocoder(args.vocoder, refine_iters=0, synthesis="network"),
        "pipeline": load_vocoder(args.vocoder, refine_iters=32, synthesis="network"),
    }
    griffin_lim = GriffinLimInverter()
    scorer = OnsetScorer()
    _single_thread_onnx(scorer)
    clips = held_out_clips(args.split, args.max_files, args.seconds, None)
    per_clip, pictures = [], []
    for name, audio, midi in clips:
        seconds = len(audio) / SR
        audio = audio[: len(audio) // HOP * HOP]
        with torch.inference_mode():
            signals = ladder(audio, vocoders, griffin_lim, wanted)
        truth = midi_notes(midi, args.seconds)
        onsets = onset_times(truth, seconds)
        reference = scorer.notes(audio)
        row = {"clip": name, "onsets": int(onsets.size)}
        for label, signal in signals.items():
            # A resynthesis equal to the original (the b rows) gets the original's transcription.
            notes = reference if np.abs(signal - audio).max() < 1e-4 else scorer.notes(signal)
            row[label] = {
                "onset_f1_vs_midi": scorer.f1(truth, notes),
                **precision_recall(truth, notes),
                "onset_f1_vs_original": scorer.f1(reference, notes),
                "log_mel_l1": log_mel_l1(signal, audio),
                "max_abs_diff": float(np.abs(signal - audio).max()),
                **onset_measures(audio, signal, onsets, truth, seconds),
            }
        per_clip.append(row)
        f1 = {k: round(v["onset_f1_vs_midi"], 3) for k, v in row.items() if isinstance(v, dict)}
        print(name, f"{time.perf_counter() - started:.0f}s", f1, flush=True)
        if onsets.size:  # the clip's onset with the largest energy rise in the original, for the pictures
            best = max(onsets, key=lambda t: _energy(audio, t, 0, 50) / _energy(audio, t, -60, -20))
            pictures.append((name, best, {shown: signals[k] for k, shown in _PICTURE_ROWS.items() if k in signals}))

    if wanted is not None and args.pictures_dir is None:
        pictures = []  # a partial run writes nothing
    args.out.mkdir(parents=True, exist_ok=True)
    picture_dir = args.pictures_dir or args.out / "vocoder_onsets"
    picture_dir.mkdir(parents=True, exist_ok=True)
    contrast = lambda p: _energy(p[2]["original"], p[1], 0, 50) / _energy(p[2]["original"], p[1], -60, -20)  # noqa: E731
    for i, (name, t, signals) in enumerate(sorted(pictures, key=contrast, reverse=True)[:3]):
        stem = f"onset{i + 1}_{Path(name).stem}_{t:.2f}s"
        save_onset_png(picture_dir / f"{stem}.png", f"{name}, MIDI onset at {t:.3f} s", signals, t)

    keys = ["onset_f1_vs_midi", "precision_vs_midi", "recall_vs_midi", "onset_f1_vs_original", "log_mel_l1"]
    keys += ["pre_echo_db", "contrast_db", "note_pre_db", "note_rise_db"]
    summary = {}
    for label in (label for label in ROWS if label in per_clip[0]):
        summary[label] = {}
        for k in keys:
            values = [r[label][k] for r in per_clip if k in r[label]]
            if values:
                summary[label][k] = float(np.mean(values))
    result = {
        "vocoder": os.path.relpath(args.vocoder, REPO),
        "split": args.split,
        "clips": [r["clip"] for r in per_clip],
        "seconds_per_clip_max": args.seconds,
        "onsets": sum(r["onsets"] for r in per_clip),
        "run_seconds": time.perf_counter() - started,
        "summary": summary,
        "per_clip": per_clip,
    }
    if args.speed:
        result["speed_x_realtime"] = {str(iters): inverter_speed(iters) for iters in H_ITERS}
    if wanted is not None:
        print(markdown(result))
        return
    _write_atomic(args.out / "vocoder_onsets.json", json.dumps(result, indent=2) + "\n")
    _write_atomic(args.out / "vocoder_onsets.md", markdown(result))
    print(markdown(result))


_PICTURE_ROWS = {
    "a. original": "original",
    "f. network alone": "network",
    "f. pipeline (network + 32 GL iterations)": "pipeline",
    "f. Griffin-Lim alone": "Griffin-Lim",
    "i. 1280: network |X| + phase-vocoder phase": "phase vocoder",
}


def _single_thread_onnx(scorer: OnsetScorer) -> None:
    """basic-pitch's onnxruntime session on one intra-op thread (the benchmark's default uses all cores)."""
    session = getattr(scorer.model, "model", None)
    if session is None or not hasattr(session, "get_providers"):
        return
    import onnxruntime as ort
    from basic_pitch import ICASSP_2022_MODEL_PATH

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    scorer.model.model = ort.InferenceSession(str(ICASSP_2022_MODEL_PATH), options, providers=["CPUExecutionProvider"])


def markdown(result: dict) -> str:
    names = {
        "onset_f1_vs_midi": "onset F1 vs MIDI ↑",
        "precision_vs_midi": "precision vs MIDI",
        "recall_vs_midi": "recall vs MIDI",
        "onset_f1_vs_original": "onset F1 vs original ↑",
        "log_mel_l1": "log-mel L1 ↓",
        "pre_echo_db": "pre-echo dB (0 = original)",
        "contrast_db": "onset contrast change dB (0 = original)",
        "note_pre_db": "note-band pre-echo dB",
        "note_rise_db": "note-band onset rise change dB",
    }
    lines = [
        f"# Where onsets are lost: oracle ladder on {len(result['clips'])} held-out clips ({result['split']})",
        "",
        "| row | " + " | ".join(names.values()) + " | what it is |",
        "|---" * (len(names) + 2) + "|",
    ]
    for label, values in result["summary"].items():
        cells = [
            (f"{values[k]:+.1f}" if k.endswith("_db") else f"{values[k]:.4f}") if k in values else "" for k in names
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ROWS[label]} |")
    lines += [
        "",
        f"Vocoder: {result['vocoder']}. Clips: {', '.join(result['clips'])}"
        f" (first {result['seconds_per_clip_max']:g} s).",
        f"Broadband measures over {result['onsets']} MIDI onsets, note-band ones over every MIDI note"
        " (see the script's docstring); dB and F1 are means over clips.",
        "Rows within 1e-4 of the original (the b rows) reuse the original's transcription"
        " (basic-pitch is deterministic).",
        f"Made by benchmarks/vocoder_onsets.py in {result['run_seconds']:.0f} s"
        " (1 torch thread, 1 onnxruntime thread).",
    ]
    if "speed_x_realtime" in result:
        speeds = ", ".join(f"{v:.1f}x ({k} it.)" for k, v in result["speed_x_realtime"].items())
        lines.append(f"Speed of the h rows' inverter (mel -> audio, 10 s, 1 torch thread): {speeds} real time.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
