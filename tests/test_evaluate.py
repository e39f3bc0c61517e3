"""`specdiff evaluate` end to end: tiny random model, two short pieces, a few steps.

What is checked:
- building the parser imports no torch;
- an oracle "model" that returns the reference render itself scores a perfect reconstruction
  (distances 0, Fréchet 0, F1 ratio 1): the generated and reference audio are aligned and cropped
  correctly;
- a silent model scores the hand-computable log-mel L1 and onset F1 0; a --reference-dir file
  replaces the render for its piece only;
- the real pipeline through the command-line entry point writes JSON, table, audio and PNGs with
  every metric present and finite (transcription metrics when basic-pitch is installed);
- without basic-pitch, transcription is skipped with a message and the rest still runs;
- --max-seconds cuts notes and audio; bad input raises one-line SpecdiffErrors.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import smf_bytes

from specdiff.commands import evaluate as evaluate_command
from specdiff.errors import AudioError, MidiError, SpecdiffError
from specdiff.evaluation import evaluate as ev
from specdiff.evaluation import metrics, transcription

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
TRANSCRIPTION = transcription.transcription_unavailable() is None
FAST = ["--steps", "2", "--inverter", "griffinlim", "--device", "cpu", "--seed", "3"]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def write_midi(path: Path, notes: list[tuple[int, int, int, float, float]]) -> Path:
    """A MIDI file with one track per channel; notes are (channel, program, pitch, start s, end s)."""
    channels = sorted({n[0] for n in notes})
    tracks = [(c, next(n[1] for n in notes if n[0] == c), [n[2:] for n in notes if n[0] == c]) for c in channels]
    path.write_bytes(smf_bytes(tracks))
    return path


SCALE = [(0, 0, p, 0.1 + 0.4 * i, 0.45 + 0.4 * i) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
BAND = (
    [(0, 48, p, t, t + 0.9) for t, chord in ((0.0, (60, 64, 67)), (1.0, (62, 65, 69)), (2.0, (64, 67, 71)))
     for p in chord]
    + [(1, 33, p, t, t + 0.45) for t, p in zip(np.arange(0, 3, 0.5), (36, 36, 38, 38, 40, 40))]
    + [(9, 0, 36 if i % 2 == 0 else 38, 0.25 * i, 0.25 * i + 0.1) for i in range(12)]
)  # fmt: skip


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """A folder with two short pieces: a piano scale (3.35 s) and strings + bass + drums (3 s)."""
    folder = tmp_path_factory.mktemp("songs")
    write_midi(folder / "a_scale.mid", SCALE)
    write_midi(folder / "b_band.mid", BAND)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random pipeline folder (the 'tiny' preset, shrunk further for CI speed)."""
    from specdiff.models.presets import build_models
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    models = build_models("tiny", seed=0, d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    SpectrogramDiffusionPipeline(*models).save_pretrained(folder)
    return folder


class FakePipeline:
    """Returns given audio per call (in call order), padded with zeros to whole 5.12 s segments
    like a real pipeline may; records what it was asked."""

    sample_rate = SR

    def __init__(self, audios: list[np.ndarray]):
        self.audios, self.calls = list(audios), []

    def __call__(self, tokenized, **kwargs):
        self.calls.append((tokenized, kwargs))
        audio = self.audios[len(self.calls) - 1]
        segments = math.ceil(len(audio) / (SR * 5.12))
        padded = np.zeros(int(segments * SR * 5.12), np.float32)
        padded[: len(audio)] = audio
        return argparse.Namespace(audios=padded[None], mels=None)


def renders(folder: Path) -> list[np.ndarray]:
    from specdiff.data.render import render_midi

    return [render_midi(path) for path in sorted(folder.glob("*.mid"))]


def needs_renderer():
    render = pytest.importorskip("specdiff.data.render")
    if not render.available_backends():
        pytest.skip("no MIDI renderer installed")


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_building_the_parser_does_not_import_torch():
    code = (
        "import argparse, sys\n"
        "from specdiff.commands.evaluate import add_evaluate_arguments\n"
        "p = argparse.ArgumentParser(); add_evaluate_arguments(p.add_subparsers())\n"
        "a = p.parse_args(['evaluate', '--demo-split', 'test', '--max-seconds', '4', '--png'])\n"
        "assert a.demo_split == 'test' and a.max_seconds == 4.0 and a.png and a.steps is None  # the model's\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_embedding_choices_are_the_registered_ones():
    from specdiff.constants import EMBEDDINGS
    from specdiff.evaluation.embeddings import available_embeddings

    assert set(EMBEDDINGS) <= set(available_embeddings())
    assert EMBEDDINGS[0] == "mfcc-stats"


def test_unset_sampler_settings_are_the_models_sampling_json(songs):
    from specdiff.pipeline.sampling_settings import SamplingSettings

    pipe = FakePipeline([np.zeros(SR * 4, np.float32)])
    pipe.sampling = SamplingSettings(scheduler="ddim", num_inference_steps=3, guidance_scale=1.0)
    results = ev.evaluate(pipe, [songs / "a_scale.mid"], transcription=False, verbose=False)
    kwargs = pipe.calls[0][1]
    assert (kwargs["num_inference_steps"], kwargs["scheduler"], kwargs["guidance_scale"]) == (3, "ddim", 1.0)
    assert (results["settings"]["steps"], results["settings"]["scheduler"]) == (3, "ddim")
    plain = FakePipeline([np.zeros(SR * 4, np.float32)])  # no sampling.json: the library defaults
    ev.evaluate(plain, [songs / "a_scale.mid"], transcription=False, verbose=False, steps=2)
    assert (plain.calls[0][1]["num_inference_steps"], plain.calls[0][1]["scheduler"]) == (
        2,
        SamplingSettings().scheduler,
    )


def test_oracle_model_scores_a_perfect_reconstruction(songs):
    needs_renderer()
    audios = renders(songs)
    pipe = FakePipeline(audios)
    results = ev.evaluate(pipe, [songs], steps=3, scheduler="ddim", guidance=1.5, seed=5, verbose=False)
    # The pipeline got each piece's tokens, with the settings.
    from specdiff.midi.tokenizer import midi_to_segments

    for (tokenized, kwargs), path in zip(pipe.calls, sorted(songs.glob("*.mid"))):
        expected = midi_to_segments(path)
        assert tokenized.segments == expected.segments and tokenized.duration == expected.duration
        assert (kwargs["num_inference_steps"], kwargs["scheduler"], kwargs["guidance_scale"]) == (3, "ddim", 1.5)
    for row, audio in zip(results["pieces"], audios):
        assert row["seconds"] == len(audio) / SR  # cropped to the render, not the padded output
        assert row["reference"].startswith("rendered (")
        assert row["log_mel_l1"] == 0.0 and row["mr_stft_log_l1"] == 0.0 and row["spectral_convergence"] == 0.0
        if TRANSCRIPTION:
            assert row["generated_f1"] == row["reference_f1"] and row["f1_ratio"] == 1.0
    assert [r["notes"] for r in results["pieces"]] == [8, 9 + 6]  # drums are not counted
    assert results["summary"]["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    if TRANSCRIPTION:
        assert results["pieces"][0]["reference_f1"] >= 0.8  # a clean piano scale transcribes well
        assert results["summary"]["f1_ratio"] == 1.0


def test_silent_model_and_a_reference_folder(songs, tmp_path):
    needs_renderer()
    from specdiff.audio.files import load_audio, save_wav
    from specdiff.audio.mel import MIN_VALUE, log_mel

    refs = tmp_path / "refs"
    refs.mkdir()
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32)  # 2 s, shorter than the piece
    save_wav(refs / "a_scale.wav", tone, SR)
    pipe = FakePipeline([np.zeros(SR * 4, np.float32)] * 2)
    out = tmp_path / "out"
    results = ev.evaluate(
        pipe, [songs / "a_scale.mid", songs / "b_band.mid"], reference_audio=refs, out_dir=out, verbose=False
    )
    a, b = results["pieces"]
    assert a["reference"] == str(refs / "a_scale.wav") and b["reference"].startswith("rendered")
    assert a["seconds"] == 2.0  # the common length with the 2 s reference
    # Silence is ln(1e-5) in every mel bin: the L1 is the mean distance of the reference's log-mel
    # from it (the file as stored: 16-bit rounding lifts the near-empty bins of a pure tone).
    stored = load_audio(refs / "a_scale.wav")
    expected = float((log_mel(torch.from_numpy(stored)) - MIN_VALUE).abs().mean())
    assert a["log_mel_l1"] == pytest.approx(expected, rel=1e-6)
    assert a["spectral_convergence"] == pytest.approx(1.0)  # ||ref - 0|| / ||ref||
    if TRANSCRIPTION:
        assert a["generated_f1"] == b["generated_f1"] == 0.0 and a["generated_estimated_notes"] == 0
    # Only the rendered reference is written next to the generated audio.
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["a_scale.wav", "b_band.reference.wav", "b_band.wav"]
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["pieces"][0]["log_mel_l1"] == pytest.approx(expected, rel=1e-6)


def test_end_to_end_command_with_a_tiny_model(songs, model_dir, tmp_path, capsys):
    needs_renderer()
    out = tmp_path / "eval"
    parser = argparse.ArgumentParser()
    evaluate_command.add_evaluate_arguments(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(songs), "--model", str(model_dir), "--out", str(out),
                              "--max-seconds", "2", "--png", *FAST])  # fmt: skip
    assert args.func(args) == 0
    printed = capsys.readouterr()
    results = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.md").read_text() in printed.out  # the table is printed
    assert "| **mean** |" in printed.out and "Fréchet distance" in printed.out
    assert results["settings"]["max_seconds"] == 2.0 and results["settings"]["steps"] == 2
    assert [p["piece"] for p in results["pieces"]] == ["a_scale.mid", "b_band.mid"]
    keys = ["log_mel_l1", "mr_stft_log_l1", "spectral_convergence", "x_real_time"]
    if TRANSCRIPTION:
        keys += ["generated_f1", "reference_f1", "f1_ratio", "generated_precision", "reference_recall"]
        assert results["transcription"].startswith("basic-pitch")
    for row in results["pieces"]:
        assert row["seconds"] == 2.0 and row["segments"] == 1
        for key in keys:
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] >= 0, key
        assert row["log_mel_l1"] > 0  # a random model does not reproduce the render
        png = Path(row["plot"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        import soundfile as sf

        info = sf.info(row["audio"])
        assert info.samplerate == SR and info.frames >= 2 * SR
    assert results["pieces"][0]["notes"] == 5  # scale notes starting before 2 s
    summary = results["summary"]
    assert summary["pieces"] == 2 and summary["total_seconds"] == 4.0
    assert math.isfinite(summary["frechet_distance"]) and summary["frechet_distance"] > 0
    assert summary["windows_generated"] == summary["windows_reference"] == 2 * 3  # 0.96 s windows, 0.48 s hop
    if TRANSCRIPTION:
        assert summary["reference_f1"] > 0.5


def test_missing_transcriber_is_skipped_with_a_message(songs, monkeypatch, capsys):
    needs_renderer()
    reason = "transcription metrics skipped (No module named 'basic_pitch'); install with: pip install ..."
    monkeypatch.setattr(transcription, "transcription_unavailable", lambda: reason)
    monkeypatch.setattr(metrics, "transcribe", lambda *a, **k: pytest.fail("transcribe called"))
    pipe = FakePipeline([np.zeros(SR, np.float32)])
    results = ev.evaluate(pipe, [songs / "a_scale.mid"], verbose=True)
    printed = capsys.readouterr()
    assert reason in printed.err and "skipped" in results["transcription"]
    assert not any(k.endswith("f1") for k in results["pieces"][0])
    assert "onset F1" not in printed.out  # no empty transcription columns in the table
    assert math.isfinite(results["pieces"][0]["log_mel_l1"])


def test_non_finite_audio_is_scored_as_silence(songs, capsys):
    needs_renderer()
    broken = np.zeros(SR * 4, np.float32)
    broken[:SR] = np.nan
    broken[SR : SR + 10] = np.inf
    results = ev.evaluate(FakePipeline([broken]), [songs / "a_scale.mid"], transcription=False, verbose=True)
    row = results["pieces"][0]
    silent = ev.evaluate(
        FakePipeline([np.zeros(SR * 4, np.float32)]), [songs / "a_scale.mid"], transcription=False, verbose=False
    )
    assert row["nonfinite_samples"] == SR + 10 and silent["pieces"][0]["nonfinite_samples"] == 0
    for key in ("log_mel_l1", "mr_stft_log_l1", "spectral_convergence"):
        assert row[key] == silent["pieces"][0][key]
    assert results["summary"]["frechet_distance"] == silent["summary"]["frechet_distance"]
    printed = capsys.readouterr()
    assert "non-finite generated samples" in printed.err and "a_scale.mid (16010)" in printed.out


def test_max_seconds_cuts_the_notes_and_keeps_the_tokens(songs):
    from specdiff.midi.tokenizer import midi_to_segments

    path = songs / "a_scale.mid"
    whole = ev.prepare_piece(path)
    assert whole.cut is None and whole.tokenized.segments == midi_to_segments(path).segments
    cut = ev.prepare_piece(path, max_seconds=1.0)
    assert cut.cut == cut.tokenized.duration == 1.0 and len(cut.tokenized.segments) == 1
    assert [(n.pitch, n.start, round(n.end, 6)) for n in cut.notes] == [
        (60, 0.1, 0.45),
        (62, 0.5, 0.85),
        (64, 0.9, 1.0),
    ]
    assert ev.prepare_piece(path, max_seconds=100.0).cut is None  # longer than the piece: untouched


def test_demo_split_selects_the_held_out_files(monkeypatch, model_dir):
    corpus = pytest.importorskip("specdiff.data.corpus")
    try:
        expected = corpus.demo_midi_files("test")[:2]
    except SpecdiffError as err:
        pytest.skip(str(err))
    seen = {}
    monkeypatch.setattr(ev, "evaluate", lambda model, files, **kw: seen.update(files=files, kw=kw) or {})
    parser = argparse.ArgumentParser()
    evaluate_command.add_evaluate_arguments(parser.add_subparsers())
    args = parser.parse_args(
        ["evaluate", "--demo-split", "test", "--max-files", "2", "--model", str(model_dir), "-q", *FAST]
    )
    monkeypatch.setattr(ev, "markdown_report", lambda results: "")
    assert args.func(args) == 0
    assert seen["files"] == expected and len(expected) == 2
    assert seen["kw"]["steps"] == 2 and seen["kw"]["plots"] is False


def test_bad_input_raises_one_line_errors(songs, tmp_path, model_dir):
    pipe = FakePipeline([])
    with pytest.raises(MidiError, match="not found"):
        ev.evaluate(pipe, [tmp_path / "missing.mid"], verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MidiError, match="no .mid"):
        ev.evaluate(pipe, [tmp_path / "empty"], verbose=False)
    with pytest.raises(SpecdiffError, match="unknown embedding"):
        ev.evaluate(pipe, [songs], embedding="vggish", verbose=False)
    with pytest.raises(SpecdiffError, match="steps"):
        ev.evaluate(pipe, [songs], steps=0, verbose=False)
    with pytest.raises(AudioError, match="reference audio folder not found"):
        ev.evaluate(pipe, [songs], reference_audio=tmp_path / "no-refs", verbose=False)
    (tmp_path / "bad.mid").write_bytes(b"not a midi file")
    with pytest.raises(MidiError):
        ev.evaluate(pipe, [tmp_path / "bad.mid"], verbose=False)
    assert pipe.calls == []  # every check happens before any synthesis
    parser = argparse.ArgumentParser()
    evaluate_command.add_evaluate_arguments(parser.add_subparsers())
    for argv, message in (
        (["evaluate", "--model", str(model_dir)], "nothing to evaluate"),
        (["evaluate", str(songs), "--demo-split", "test", "--model", str(model_dir)], "not several"),
        (["evaluate", str(songs), "--model", str(tmp_path / "nope")], "model folder not found"),
    ):
        args = parser.parse_args(argv)
        with pytest.raises(SpecdiffError, match=message):
            args.func(args)


def test_files_that_cannot_be_synthesized_are_skipped_and_listed(songs, model_dir, tmp_path, capsys):
    from specdiff.audio.files import save_wav

    folder = tmp_path / "midi"
    folder.mkdir()
    (folder / "a_scale.mid").write_bytes((songs / "a_scale.mid").read_bytes())
    (folder / "b_empty.mid").write_bytes(smf_bytes([(0, 0, [])]))  # a track without notes
    (folder / "c_bad.mid").write_bytes(b"not a midi file")
    refs = tmp_path / "refs"
    save_wav(refs / "a_scale.wav", np.full(SR * 3, 0.1, np.float32), SR)
    pipe = FakePipeline([np.zeros(SR * 3, np.float32)])
    results = ev.evaluate(pipe, [folder], reference_audio=refs, transcription=False, verbose=False)
    assert [p["piece"] for p in results["pieces"]] == ["a_scale.mid"] and len(pipe.calls) == 1
    reasons = {s["piece"]: s["reason"] for s in results["skipped"]}
    assert reasons == {"b_empty.mid": "MIDI file has no notes", "c_bad.mid": "not a MIDI file (no MThd header)"}
    assert results["summary"]["skipped"] == 2 and results["summary"]["pieces"] == 1
    report = ev.markdown_report(results)
    assert "Skipped, cannot be synthesized (2): b_empty.mid (MIDI file has no notes); c_bad.mid" in report
    # None left: one error naming every reason.
    with pytest.raises(MidiError, match=r"none of the 2 MIDI file\(s\).*b_empty.mid: MIDI file has no notes; c_bad"):
        ev.evaluate(pipe, [folder / "b_empty.mid", folder / "c_bad.mid"], transcription=False, verbose=False)
    # The command ends with a summary line that names the skipped files.
    parser = argparse.ArgumentParser()
    evaluate_command.add_evaluate_arguments(parser.add_subparsers())
    argv = ["evaluate", str(folder), "--model", str(model_dir), "--reference-dir", str(refs), "--no-transcription"]
    args = parser.parse_args([*argv, "--no-audio", "--out", str(tmp_path / "out"), "-q", *FAST])
    assert args.func(args) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("specdiff: evaluated 1 piece(s); skipped 2: b_empty.mid (MIDI file has no notes)")


def test_a_cut_after_a_long_rest_plays_no_phantom_ties(tmp_path):
    """The MT3 tie quirk (a segment after the song's last event lists the notes that ended there)
    must not reach a cut piece whose notes resume after the cut: the segment inside the rest has
    an empty tie section, as in the whole song."""
    import pretty_midi

    from specdiff.midi.tokenizer import EOS_ID, PAD_ID, TIE_ID, notes_to_segments

    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes.append(pretty_midi.Note(velocity=100, pitch=60, start=0.5, end=1.5))
    piano.notes.append(pretty_midi.Note(velocity=100, pitch=64, start=14.0, end=15.0))
    midi.instruments.append(piano)
    path = tmp_path / "rest.mid"
    midi.write(str(path))

    piece = ev.prepare_piece(path, max_seconds=10.0)
    assert [(n.pitch, n.start, n.end) for n in piece.notes] == [(60, 0.5, 1.5)]
    assert len(piece.tokenized.segments) == 2  # 10 s: 501 frames
    second = [t for t in piece.tokenized.segments[1] if t != PAD_ID]
    assert second == [TIE_ID, EOS_ID]  # nothing held at 5.12 s, no events before 10.24 s
    # The cut notes tokenized alone carry the quirk: pitch 60 tied into the silent segment.
    quirk = [t for t in notes_to_segments(piece.notes, 10.0)[1] if t != PAD_ID]
    assert quirk != second and TIE_ID in quirk and len(quirk) > 2
