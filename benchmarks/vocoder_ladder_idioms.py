"""Where does the phase-vocoder synthesis lose onsets on held-out band music? A small oracle ladder.

On the clips of ``vocoder_benchmark.py --set idioms`` (the generated-idioms test split rendered with
each SoundFont, plus its sparse pieces; no quiet copies), each row resynthesises the render at the
vocoder's synthesis framing (Hann 1280, hop 320, specdiff.audio.vocoder.ISTFTHead) from a magnitude and
a phase, each either the ORIGINAL one (the render's own STFT) or a recovered one:

  true |X| + true phase       the framing alone (should keep every onset);
  true |X| + PV phase         the phase vocoder (specdiff.audio.phase_vocoder) on a perfect magnitude;
  network |X| + true phase    the bundled vocoder's magnitude (from the render's log-mel) alone;
  network |X| + PV phase      both recovered: "vocoder, phase vocoder alone" of vocoder_benchmark.py;
and, per ``--transients`` item, the phase vocoder with its transient phase reset on both magnitudes.
Two oracle rows split the last step (the phase vocoder's phase from the network's magnitude):
  network |X| + PV phase of true |X|           the phase vocoder run on the true magnitude;
  network |X| + PV phase, true peak frequency  the network's peaks, each at the true STFT's instantaneous
                                               frequency there (its phase advance) instead of a parabola;
                                               with ``--frequency-noise``, also that frequency plus noise;
and, for a vocoder with ``peak_frequency: predicted``, the row it ships:
  network |X| + PV phase, predicted peak frequency.

No mel fit and no silence gate: the rows isolate the magnitude and the phase. Per row: onsets kept
(basic-pitch onset F1 against the MIDI of the resynthesis over the original's, mean over clips, as
in vocoder_benchmark.py) and log-mel L1 to the original. Writes
benchmarks/results/vocoder_ladder_idioms.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vocoder_benchmark import OnsetScorer, idiom_clips, midi_notes, transient_option  # noqa: E402

from specdiff.audio.mel import log_mel  # noqa: E402
from specdiff.audio.phase_vocoder import spectral_peaks  # noqa: E402
from specdiff.training.vocoder_losses import instantaneous_frequency_offset  # noqa: E402


def resyntheses(
    head, model, audio: np.ndarray, transients: list[str], noise: list[float]
) -> tuple[dict, dict, torch.Tensor]:
    """({row: audio}, {row: peak frequency error in bins}) for one clip (see the module doc), and its log-mel."""
    x = torch.from_numpy(audio)[None]
    spectrum = head.stft(x)
    mel = log_mel(x)
    with torch.inference_mode():
        network = torch.exp(model.spectrum(mel)[0].float())
    frames = min(network.shape[-1], spectrum.shape[-1])
    magnitudes = {"true |X|": spectrum.abs()[..., :frames], "network |X|": network[..., :frames]}
    true_phase = spectrum.angle()[..., :frames]
    rows = {}
    for name, magnitude in magnitudes.items():
        rows[f"{name} + true phase"] = head.istft(magnitude, true_phase)
        rows[f"{name} + PV phase"] = head.istft(magnitude, head.peak_locked_phase(magnitude))
        for spec in transients:
            db, align = transient_option(spec)
            phase = head.peak_locked_phase(magnitude, db, align)
            rows[f"{name} + PV phase, transient reset {db:g} dB, {align}"] = head.istft(magnitude, phase)
    network = magnitudes["network |X|"]
    rows["network |X| + PV phase of true |X|"] = head.istft(network, head.peak_locked_phase(magnitudes["true |X|"]))
    true_offset = instantaneous_frequency_offset(spectrum[..., :frames], head.n_fft, head.hop_length)
    offsets = {"network |X| + PV phase": None, "network |X| + PV phase, true peak frequency": true_offset}
    generator = torch.Generator().manual_seed(0)
    for sigma in noise:
        jitter = sigma * torch.randn(true_offset.shape, generator=generator)
        offsets[f"network |X| + PV phase, true peak frequency + noise {sigma:g} bins"] = true_offset + jitter
    if model.config.peak_frequency == "predicted":
        with torch.inference_mode():
            offsets["network |X| + PV phase, predicted peak frequency"] = model.phase_vocoder_inputs(mel)[1][
                ..., :frames
            ]
    errors = {}
    for label, offset in offsets.items():
        if offset is not None:
            rows[label] = head.istft(network, head.peak_locked_phase(network, frequency_offset=offset))
        given = None if offset is None else offset[0]
        errors[label] = peak_frequency_error(network[0], given, true_offset[0], magnitudes["true |X|"][0])
    return {label: y[0].float().numpy() for label, y in rows.items()}, errors, mel


def peak_frequency_error(magnitude, offset, true_offset, true_magnitude) -> float:
    """Mean |frequency error| in bins at the spectral peaks of ``magnitude`` ``[bins, T]`` that the phase
    vocoder reads (``offset`` None: its parabola; NaN entries: the parabola there), weighted by the true
    magnitude there; the truth is the true STFT's instantaneous frequency clipped to +-1 bin, as the
    phase vocoder clips a given one."""
    m = magnitude.T.double().numpy()
    log_m = np.log(m + 1e-12)
    truth, weight = true_offset.T.double().numpy().clip(-1, 1), true_magnitude.T.double().numpy()
    given = None if offset is None else offset.T.double().numpy()
    total = weighted = 0.0
    for i in range(m.shape[0]):
        peaks, parabola = spectral_peaks(m[i], log_m[i])
        estimate = parabola if given is None else np.where(np.isnan(given[i, peaks]), parabola, given[i, peaks])
        w = weight[i, peaks]
        weighted += float(np.sum(w * np.abs(np.clip(estimate, -1, 1) - truth[i, peaks])))
        total += float(np.sum(w))
    return weighted / max(total, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocoder", type=Path, default=REPO / "specdiff" / "assets" / "default_model")
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--sparse-files", type=int, default=4)
    parser.add_argument("--soundfonts", nargs="+", default=["TimGM6mb", "FluidR3_GM"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transients", nargs="+", default=["10:envelope"], metavar="DB[:ALIGN]")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="vocoder_ladder_idioms", help="results file stem")
    parser.add_argument(
        "--frequency-noise",
        nargs="*",
        type=float,
        default=[0.1, 0.2, 0.3],
        metavar="BINS",
        help="rows with the true peak frequencies plus Gaussian noise of this standard deviation",
    )
    args = parser.parse_args()

    from specdiff.audio.vocoder import load_vocoder

    torch.set_num_threads(1)
    started = time.perf_counter()
    model = load_vocoder(args.vocoder).model
    tmp = tempfile.TemporaryDirectory()
    clips = idiom_clips(args.max_files, args.seconds, args.soundfonts, 0, Path(tmp.name), args.sparse_files)
    scorer = OnsetScorer()
    per_clip = []
    for name, audio, midi in clips:
        audio = audio[: len(audio) // 320 * 320]
        truth = midi_notes(midi, args.seconds)
        original = scorer.f1(truth, scorer.notes(audio))
        row = {"clip": name, "original/onset_f1_vs_midi": original}
        outputs, errors, mel = resyntheses(model.head, model, audio, args.transients, args.frequency_noise)
        row.update({f"{label}/peak_frequency_error": value for label, value in errors.items()})
        for label, y in outputs.items():
            ours = log_mel(torch.from_numpy(y)[None])
            frames = min(ours.shape[1], mel.shape[1])
            row[f"{label}/log_mel_l1"] = float((ours[:, :frames] - mel[:, :frames]).abs().mean())
            if original > 0:
                row[f"{label}/onsets_kept"] = scorer.f1(truth, scorer.notes(y)) / original
        per_clip.append(row)
        print(name, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)
    result = summarise(per_clip, args)
    result["seconds_taken"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


def summarise(per_clip: list[dict], args) -> dict:
    labels = [k.split("/")[0] for k in per_clip[0] if k.endswith("/log_mel_l1")]
    groups = {"all": per_clip, **{sf: [r for r in per_clip if f"[{sf}]" in r["clip"]] for sf in args.soundfonts}}
    summary = {}
    for label in labels:
        summary[label] = {"log_mel_l1": float(np.mean([r[f"{label}/log_mel_l1"] for r in per_clip]))}
        if f"{label}/peak_frequency_error" in per_clip[0]:
            errors = [r[f"{label}/peak_frequency_error"] for r in per_clip]
            summary[label]["peak_frequency_error"] = float(np.mean(errors))
        for group, rows in groups.items():
            kept = [r[f"{label}/onsets_kept"] for r in rows if f"{label}/onsets_kept" in r]
            summary[label][f"onsets_kept/{group}"] = float(np.mean(kept)) if kept else float("nan")
    original = float(np.mean([r["original/onset_f1_vs_midi"] for r in per_clip]))
    vocoder = args.vocoder.resolve()
    vocoder = vocoder.relative_to(REPO) if vocoder.is_relative_to(REPO) else vocoder
    return {"clips": len(per_clip), "vocoder": vocoder.as_posix(), "soundfonts": args.soundfonts,
            "original_onset_f1_vs_midi": original, "summary": summary, "per_clip": per_clip}  # fmt: skip


def markdown(result: dict) -> str:
    groups = ["all", *result["soundfonts"]]
    lines = [
        f"# Onset ladder at the vocoder's synthesis framing: {result['clips']} held-out idioms clips",
        "",
        "| row | log-mel L1 ↓ | " + " | ".join(f"onsets kept, {g} ↑" for g in groups) + " | peak frequency error ↓ |",
        "|---" * (len(groups) + 3) + "|",
    ]
    for label, values in result["summary"].items():
        cells = [f"{values['log_mel_l1']:.4f}"] + [f"{values[f'onsets_kept/{g}']:.4f}" for g in groups]
        error = values.get("peak_frequency_error")
        cells.append("" if error is None else f"{error:.3f} bins")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Original render: onset F1 vs MIDI {result['original_onset_f1_vs_midi']:.4f} (mean over clips).",
        "Peak frequency error: at the network magnitude's spectral peaks, |frequency the phase vocoder uses - the "
        "true STFT's instantaneous frequency| (both clipped to +-1 bin of 12.5 Hz), weighted by the true magnitude.",
        f"Vocoder: {result['vocoder']}. No mel fit, no silence gate. Made by benchmarks/vocoder_ladder_idioms.py"
        + (f" in {result['seconds_taken']:.0f} s." if "seconds_taken" in result else "."),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
