"""Would the notes tell the phase vocoder where each partial is? An oracle check for issue 25.

The phase-vocoder synthesis (specdiff/audio/phase_vocoder.py) keeps as many onsets as the frequency it gives each
spectral peak is right (``results/vocoder_peak_frequency.md``: about 0.05 bins needed, the peak-frequency network
reaches 0.16-0.17). ``specdiff synth`` knows the notes, so each partial's nominal frequency, k f0 of a sounding
note in equal temperament, is at hand. On held-out band-music renders (the generated-idioms test split, each
SoundFont), at the bundled vocoder magnitude's peaks that lie within 0.75 bins of a harmonic (k <= 16) of a
note sounding then (from its onset to 0.3 s after its end), this compares, with the render's own instantaneous
frequency as the truth (clipped to +-1 bin, weighted by the true magnitude, as ``vocoder_ladder_idioms.py``):

- ``notes``: the nearest such harmonic's nominal frequency;
- ``network``: what the bundled vocoder uses (its peak-frequency network, else the parabola),

per harmonic number and per General MIDI family of the nearest harmonic's note.

Usage: python benchmarks/vocoder_notes_frequency.py [--max-files 4] [--seconds 20]
Writes benchmarks/results/vocoder_notes_frequency.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vocoder_benchmark import idiom_clips  # noqa: E402

from specdiff.atomic import atomic_write_text  # noqa: E402
from specdiff.audio.mel import log_mel  # noqa: E402
from specdiff.audio.phase_vocoder import spectral_peaks  # noqa: E402
from specdiff.constants import SAMPLE_RATE  # noqa: E402
from specdiff.midi.pitch import midi_to_hz  # noqa: E402
from specdiff.training.vocoder_losses import instantaneous_frequency_offset  # noqa: E402

HARMONICS = 16
RELEASE_SECONDS = 0.3
NEAR_BINS = 0.75
GROUPS = ((1, 1), (2, 3), (4, 7), (8, 16))


class Tally:
    """Magnitude-weighted mean absolute errors by row label."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def add(self, label: str, error: np.ndarray, weight: np.ndarray) -> None:
        entry = self.sums.setdefault(label, [0.0, 0.0])
        entry[0] += float(np.sum(np.abs(error) * weight))
        entry[1] += float(np.sum(weight))

    def mean(self, label: str) -> float:
        total, weight = self.sums.get(label, (0.0, 0.0))
        return total / weight if weight else float("nan")


def clip_errors(model, audio: np.ndarray, midi: Path, tally: Tally) -> None:
    """Add one clip's errors at the network magnitude's peaks to ``tally``."""
    import pretty_midi

    head = model.head
    audio = audio[: len(audio) // head.hop_length * head.hop_length]
    x = torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None]
    spectrum = head.stft(x)
    with torch.inference_mode():
        log_magnitude, offsets = model.phase_vocoder_inputs(log_mel(x))
    magnitude = torch.exp(log_magnitude[0].float()).numpy().T  # [T, bins]
    frames = min(magnitude.shape[0], spectrum.shape[-1])
    truth = instantaneous_frequency_offset(spectrum[..., :frames], head.n_fft, head.hop_length)[0].numpy().T.clip(-1, 1)
    weight = spectrum.abs()[0].numpy().T
    given = None if offsets is None else offsets[0].numpy().T
    score = pretty_midi.PrettyMIDI(str(midi))
    notes = [(n.start, n.end, n.pitch, i.program) for i in score.instruments if not i.is_drum for n in i.notes]
    bin_hz = SAMPLE_RATE / head.n_fft
    for i in range(frames):
        peaks, parabola = spectral_peaks(magnitude[i], np.log(magnitude[i] + 1e-12))
        if not peaks.size:
            continue
        network = parabola if given is None else np.where(np.isnan(given[i, peaks]), parabola, given[i, peaks])
        network, true, w = network.clip(-1, 1), truth[i, peaks], weight[i, peaks]
        tally.add("all peaks: network", network - true, w)
        now = head.hop_length * (i + 1) / SAMPLE_RATE  # the frame's centre
        sounding = [(p, prog) for start, end, p, prog in notes if start - 0.02 <= now <= end + RELEASE_SECONDS]
        if not sounding:
            tally.add("near a harmonic (share of weight)", np.zeros(peaks.size), w)
            continue
        f0 = midi_to_hz([p for p, _ in sounding])
        rows = [(f * k / bin_hz, k, prog) for f, (_, prog) in zip(f0, sounding) for k in range(1, HARMONICS + 1)]
        harmonics = np.array([r for r in rows if r[0] * bin_hz < SAMPLE_RATE / 2])
        distance = harmonics[:, 0][None, :] - peaks[:, None]
        nearest = np.abs(distance).argmin(1)
        notes_offset = distance[np.arange(peaks.size), nearest]
        near = np.abs(notes_offset) <= NEAR_BINS
        tally.add("near a harmonic (share of weight)", near.astype(float), w)
        number, family = harmonics[nearest, 1], harmonics[nearest, 2] // 8
        for low, high in GROUPS:
            pick = near & (number >= low) & (number <= high)
            tally.add(f"harmonics {low}-{high}: notes", notes_offset[pick] - true[pick], w[pick])
            tally.add(f"harmonics {low}-{high}: network", network[pick] - true[pick], w[pick])
        for fam in np.unique(family[near]).astype(int):
            pick = near & (family == fam)
            tally.add(f"family {fam}: notes", notes_offset[pick] - true[pick], w[pick])
            tally.add(f"family {fam}: network", network[pick] - true[pick], w[pick])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocoder", type=Path, default=REPO / "specdiff" / "assets" / "default_model")
    parser.add_argument("--max-files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--soundfonts", nargs="+", default=["TimGM6mb", "FluidR3_GM"])
    args = parser.parse_args()
    from specdiff.audio.vocoder import load_vocoder

    torch.set_num_threads(2)
    started = time.perf_counter()
    model = load_vocoder(args.vocoder).model
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        clips = idiom_clips(args.max_files, args.seconds, args.soundfonts, 0, Path(tmp))
        for name, audio, midi in clips:
            clip_errors(model, audio, midi, tally)
            print(name, flush=True)
    families = sorted({int(k.split()[1][:-1]) for k in tally.sums if k.startswith("family")})
    sets = ", ".join(args.soundfonts)
    lines = [f"# Peak frequencies from the notes: {len(clips)} held-out band clips ({sets}), first {args.seconds:g} s",
             "", "Mean |frequency - the render's instantaneous frequency| in bins (12.5 Hz), weighted by the true "
             "magnitude, at the bundled vocoder magnitude's peaks.", "",
             "| peaks | notes' harmonic | network (bundled) |", "|---|---|---|"]  # fmt: skip
    lines.append(f"| all | | {tally.mean('all peaks: network'):.3f} |")
    share = tally.mean("near a harmonic (share of weight)")
    lines.append(f"| within {NEAR_BINS} bins of a sounding note's harmonic ({share:.0%} of the weight) | | |")
    for low, high in GROUPS:
        label = f"harmonics {low}-{high}"
        lines.append(f"| {label} | {tally.mean(label + ': notes'):.3f} | {tally.mean(label + ': network'):.3f} |")
    for fam in families:
        label = f"family {fam}"
        lines.append(f"| General MIDI family {fam} (programs {8 * fam}-{8 * fam + 7}) | "
                     f"{tally.mean(label + ': notes'):.3f} | {tally.mean(label + ': network'):.3f} |")  # fmt: skip
    lines += ["", f"Made by `python benchmarks/vocoder_notes_frequency.py --max-files {args.max_files}` "
              f"in {time.perf_counter() - started:.0f} s."]  # fmt: skip
    atomic_write_text(REPO / "benchmarks" / "results" / "vocoder_notes_frequency.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
