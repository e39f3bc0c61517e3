"""Evaluation metrics: note-onset F1, reconstruction distances, Fréchet distance (embeddings: test_embeddings.py)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from specdiff.evaluation import metrics, transcription
from specdiff.evaluation.embeddings import register_embedding
from specdiff.midi.reader import Note

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def melody(shift: float = 0.0, transpose: int = 0) -> list[Note]:
    """Eight 0.4 s notes of a C major scale, the first at 0.2 s."""
    pitches = [60, 62, 64, 65, 67, 69, 71, 72]
    return [
        Note(p + transpose, 0.2 + 0.45 * i + shift, 0.6 + 0.45 * i + shift, 100, 0, False)
        for i, p in enumerate(pitches)
    ]


def noise(seconds: float, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * amplitude).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Onset F1 (mir_eval)
# ------------------------------------------------------------------------------------------

needs_mir_eval = pytest.mark.skipif(importlib.util.find_spec("mir_eval") is None, reason="mir_eval is not installed")


@needs_mir_eval
def test_identical_notes_score_one():
    scores = metrics.onset_scores(melody(), melody())
    assert scores["precision"] == scores["recall"] == scores["f1"] == 1.0
    assert scores["reference_notes"] == scores["estimated_notes"] == 8


@needs_mir_eval
def test_onsets_shifted_beyond_tolerance_score_zero_and_within_tolerance_score_one():
    assert metrics.onset_scores(melody(), melody(shift=0.1))["f1"] == 0.0
    assert metrics.onset_scores(melody(), melody(shift=-0.1))["f1"] == 0.0
    assert metrics.onset_scores(melody(), melody(shift=0.04))["f1"] == 1.0


@needs_mir_eval
def test_wrong_pitch_does_not_match_and_offsets_are_ignored():
    assert metrics.onset_scores(melody(), melody(transpose=1))["f1"] == 0.0
    longer = [Note(n.pitch, n.start, n.end + 1.0, n.velocity, n.program, n.is_drum) for n in melody()]
    zero_length = [Note(n.pitch, n.start, n.start, n.velocity, n.program, n.is_drum) for n in melody()]
    assert metrics.onset_scores(melody(), longer)["f1"] == 1.0
    assert metrics.onset_scores(melody(), zero_length)["f1"] == 1.0


@needs_mir_eval
def test_partial_matches_give_hand_computed_precision_recall():
    ref = melody()[:4]
    half_right = melody()[:2] + melody(transpose=5)[2:4]  # 2 hits, 2 false alarms (pitches 69, 70 at other onsets)
    s = metrics.onset_scores(ref, half_right)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    s = metrics.onset_scores(ref, melody()[:2])  # 2 hits, nothing else
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))


@needs_mir_eval
def test_drums_are_excluded_and_empty_lists_are_defined():
    drums = [Note(36, 0.2 + 0.1 * i, 0.21 + 0.1 * i, 100, 0, True) for i in range(10)]
    assert metrics.onset_scores(melody() + drums, melody())["f1"] == 1.0
    assert metrics.onset_scores(melody(), melody() + drums)["precision"] == 1.0
    assert metrics.onset_scores([], [])["f1"] == 1.0
    assert metrics.onset_scores(melody(), [])["f1"] == 0.0
    assert metrics.onset_scores(drums, melody())["f1"] == 0.0


# ------------------------------------------------------------------------------------------
# Reconstruction distances
# ------------------------------------------------------------------------------------------


def test_log_mel_l1_is_zero_for_identical_audio_and_ignores_extra_trailing_samples():
    x = noise(1.0)
    assert metrics.log_mel_l1(x, x) == 0.0
    # Frames are not centred (ORIGINAL.md §1): with a length that is a multiple of the hop, the frames of
    # x and of x followed by silence agree on x's span, so cropping to the common length gives 0.
    assert len(x) % 320 == 0
    assert metrics.log_mel_l1(np.concatenate([x, np.zeros(8000, np.float32)]), x) == 0.0


def test_log_mel_l1_of_a_gain_change_is_the_log_of_the_gain():
    # Loud white noise fills every mel band above the 1e-5 floor, so doubling the amplitude adds
    # exactly ln 2 to every log-mel value.
    x = noise(1.0, amplitude=0.3)
    assert metrics.log_mel_l1(2 * x, x) == pytest.approx(math.log(2.0), abs=1e-4)


def test_multi_resolution_stft_distance_hand_values():
    x = noise(1.0, seed=1)
    same = metrics.multi_resolution_stft_distance(x, x)
    assert same == {"mr_stft_log_l1": 0.0, "spectral_convergence": 0.0}
    # |STFT(2x)| = 2|STFT(x)|: log distance ln 2; spectral convergence ||x - 2x|| / ||x|| = 1.
    double = metrics.multi_resolution_stft_distance(2 * x, x)
    assert double["mr_stft_log_l1"] == pytest.approx(math.log(2.0), abs=1e-9)
    assert double["spectral_convergence"] == pytest.approx(1.0, abs=1e-9)
    half = metrics.multi_resolution_stft_distance(0.5 * x, x)
    assert half["spectral_convergence"] == pytest.approx(0.5, abs=1e-9)


def test_reconstruction_scores_grow_with_distortion():
    x = noise(2.0, seed=2)
    slightly = metrics.reconstruction_scores(x + noise(2.0, seed=3, amplitude=0.01), x)
    heavily = metrics.reconstruction_scores(x + noise(2.0, seed=3, amplitude=0.1), x)
    for key in ("log_mel_l1", "mr_stft_log_l1", "spectral_convergence"):
        assert 0 < slightly[key] < heavily[key]


# ------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------


def random_covariance(dim: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_closed_forms():
    s = random_covariance(6, 0)
    mu = np.arange(6.0)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert metrics.frechet_distance(mu, s, mu + shift, s) == pytest.approx(float(shift @ shift), rel=1e-9)
    # Diagonal (commuting) covariances: sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))  # 1 + 0 + 4
    assert expected == 5.0
    assert metrics.frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(5.0, rel=1e-12)


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    from scipy.linalg import sqrtm

    s1, s2 = random_covariance(8, 1), random_covariance(8, 2)
    mu1, mu2 = np.random.default_rng(3).standard_normal((2, 8))
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm(s1 @ s2)).real)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)  # symmetric


def test_frechet_distance_of_samples_and_rank_deficient_sets():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((20000, 3))
    b = rng.standard_normal((20000, 3)) + np.array([2.0, 0.0, 0.0])
    assert metrics.frechet_distance_of_embeddings(a, b) == pytest.approx(4.0, abs=0.1)
    # Fewer rows than dimensions: singular covariances still give a finite, non-negative value.
    few = rng.standard_normal((3, 10))
    assert metrics.frechet_distance_of_embeddings(few, few) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        metrics.gaussian_statistics(few[:1])


def test_frechet_audio_distance_pools_windows_of_all_clips(monkeypatch):
    from specdiff.evaluation import embeddings

    monkeypatch.setattr(embeddings, "_REGISTRY", dict(embeddings._REGISTRY))  # registration stays local
    register_embedding("test-rms", lambda audio: np.sqrt((audio.reshape(-1, 1600) ** 2).mean(axis=1))[:, None])
    clips = [noise(1.0, seed=6), noise(1.0, seed=7)]
    same = metrics.frechet_audio_distance(clips, clips, embedding="test-rms")
    assert same["frechet_distance"] == pytest.approx(0.0, abs=1e-12)
    assert same["windows_generated"] == same["windows_reference"] == 20
    louder = metrics.frechet_audio_distance([2 * c for c in clips], clips, embedding="test-rms")
    assert louder["frechet_distance"] == pytest.approx(0.1**2, rel=0.05)  # RMS 0.2 vs 0.1, tiny spread
    # Non-finite windows (overflowing audio) are dropped and counted, not propagated.
    broken = [np.concatenate([np.full(1600, np.inf, np.float32), c]) for c in clips]
    dropped = metrics.frechet_audio_distance(broken, clips, embedding="test-rms")
    assert dropped["windows_dropped"] == 2 and dropped["windows_generated"] == 20
    assert dropped["frechet_distance"] == pytest.approx(0.0, abs=1e-12)
    default = metrics.frechet_audio_distance([noise(3.0, 8)], [noise(3.0, 9, amplitude=0.01)])
    assert default["embedding"] == "mfcc-stats" and default["frechet_distance"] > 1.0


# ------------------------------------------------------------------------------------------
# basic-pitch transcription (optional dependency)
# ------------------------------------------------------------------------------------------


def _require_basic_pitch():
    reason = transcription.transcription_unavailable()
    if reason:
        pytest.skip(reason)


def _scale_midi(tmp_path):
    mido = pytest.importorskip("mido")
    mid = mido.MidiFile(ticks_per_beat=480)  # 120 qpm: 960 ticks per second
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("program_change", program=0, time=0))
    last = 0
    for note in melody():
        for tick, msg in ((round(note.start * 960), "note_on"), (round(note.end * 960), "note_off")):
            track.append(mido.Message(msg, note=note.pitch, velocity=100 if msg == "note_on" else 0, time=tick - last))
            last = tick
    path = tmp_path / "scale.mid"
    mid.save(path)
    return path


def test_basic_pitch_transcribes_a_rendered_scale(tmp_path):
    _require_basic_pitch()
    render = pytest.importorskip("specdiff.data.render")
    if not render.available_backends():
        pytest.skip("no MIDI renderer installed")
    path = _scale_midi(tmp_path)
    notes, _ = metrics.midi_reference_notes(path)
    assert [n.pitch for n in notes] == [n.pitch for n in melody()]
    audio = render.render_midi(path)
    scores = metrics.transcription_scores(np.zeros_like(audio), audio, notes)
    assert scores["reference_f1"] >= 0.8  # a clean piano scale is easy
    assert scores["generated_f1"] == 0.0 and scores["generated_estimated_notes"] == 0  # silence
    assert scores["f1_ratio"] == 0.0
    # Level-independent: a quiet copy transcribes to the same notes.
    assert transcription.transcribe(audio * 0.01) == transcription.transcribe(audio)


@pytest.mark.slow
def test_array_transcription_equals_basic_pitch_predict_on_a_file(tmp_path):
    # Reference implementation: basic-pitch's own file-based predict() (librosa load + resample).
    _require_basic_pitch()
    import soundfile as sf
    from basic_pitch.inference import predict

    render = pytest.importorskip("specdiff.data.render")
    audio = render.render_midi(_scale_midi(tmp_path))
    sf.write(tmp_path / "a.wav", audio, 16000, subtype="FLOAT")
    _, _, events = predict(tmp_path / "a.wav", transcription._basic_pitch()["model"])
    expected = sorted((round(s, 6), round(e, 6), int(p)) for s, e, p, *_ in events)
    got = sorted(
        (round(n.start, 6), round(n.end, 6), n.pitch) for n in transcription.transcribe(audio, normalize=False)
    )
    assert got == expected and len(got) > 0


def test_missing_basic_pitch_gives_a_reason_with_the_install_command():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['basic_pitch'] = None  # as if not installed\n"
        "from specdiff.evaluation import transcription\n"
        "print(transcription.transcription_unavailable())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.startswith("transcription metrics skipped (") and "pip install --no-deps basic-pitch" in out


def test_level_scores_measure_loudness_peaks_and_segment_jumps():
    from specdiff.evaluation.metrics import level_comparison, level_scores

    seg = 81920
    t = np.arange(seg) / 16000.0
    sine = np.sin(2 * np.pi * 440 * t)
    # 0.1, 0.2, silence, 0.2 amplitude: +6.02 dB jump; the rest is not counted as drift.
    audio = np.concatenate([0.1 * sine, 0.2 * sine, np.zeros(seg), 0.2 * sine])
    levels = level_scores(audio)
    assert levels["max_segment_jump_db"] == pytest.approx(20 * np.log10(2), abs=1e-3)
    assert levels["peak"] == pytest.approx(0.2, abs=1e-4)
    expected = 10 * np.log10((0.01 + 0.04 + 0 + 0.04) / 4 / 2)  # sine power = A^2 / 2
    assert levels["loudness_db"] == pytest.approx(expected, abs=1e-3)
    both = level_comparison(0.5 * audio, audio)
    assert both["loudness_diff_db"] == pytest.approx(20 * np.log10(0.5), abs=1e-6)
    assert both["reference_peak"] == pytest.approx(0.2, abs=1e-4)


def test_frechet_decomposition_splits_the_distance_into_mean_and_covariance_terms():
    # benchmarks/frechet_decomposition.py: FD = |mu1 - mu2|^2 + covariance term. Two Gaussians with the
    # same covariance differ by the mean term alone; a shrunk copy (same mean) by the covariance term
    # alone, which for x -> c x of a white d-dim set is d (1 - c)^2 (tr S1 + tr S2 - 2 tr (S1 S2)^1/2).
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "frechet_decomposition.py"
    spec = importlib.util.spec_from_file_location("frechet_decomposition", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20000, 40))
    ref = (ref - ref.mean(0)) / ref.std(0, ddof=1)  # exactly zero mean, unit variance per dim
    shifted = module.decompose(ref + 0.5, ref)
    assert shifted["mean_term"] == pytest.approx(40 * 0.25) and abs(shifted["covariance_term"]) < 1e-6
    shrunk = module.decompose(0.5 * ref, ref)
    assert shrunk["mean_term"] == pytest.approx(0.0, abs=1e-12)
    assert shrunk["covariance_term"] == pytest.approx(40 * 0.25, rel=0.02)  # off-diagonal noise: ~1%
    assert shrunk["mean_dims_trace"] == pytest.approx(0.25 * 20, rel=0.02)
    assert shrunk["frechet_distance"] == pytest.approx(shrunk["mean_dims_fd"] + shrunk["spread_dims_fd"], rel=0.02)
