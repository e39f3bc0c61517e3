"""Training data: pair discovery (folder, MAESTRO, Slakh, render), the feature cache, ChunkDataset,
and the bundled demo corpus. Fixtures are built in each dataset's real layout under tmp_path."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf
import torch

from specdiff.data import cache as data
from specdiff.data import corpus
from specdiff.data import songs as song_sources
from specdiff.data.cache import ChunkDataset, build_cache, collate_examples
from specdiff.data.songs import (
    AudioMidiPair,
    RenderedMidi,
    SongPair,
    discover,
    folder_pairs,
    maestro_pairs,
    render_pairs,
    slakh_pairs,
    trim_overlapping_notes,
)
from specdiff.midi.reader import Note
from specdiff.midi.tokenizer import TIE_ID, num_frames_for, tokenize_frames, tokens_to_notes

pytest.importorskip("tinysoundfont")
torch.set_num_threads(1)
SR = 16000
LN_MIN, LN_MAX = math.log(1e-5), 4.0


# --------------------------------------------------------------------------------------------
# fixture helpers


def midi_bytes(notes, program=0, channel=0, tempo_bpm=120.0, tpq=480) -> bytes:
    """A one-track MIDI file; notes are (start_s, end_s, pitch, velocity)."""
    mid = mido.MidiFile(ticks_per_beat=tpq)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0))
    track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    tps = tpq * tempo_bpm / 60.0
    events = []
    for start, end, pitch, vel in notes:
        events.append((round(start * tps), 1, mido.Message("note_on", channel=channel, note=pitch, velocity=vel)))
        events.append((round(end * tps), 0, mido.Message("note_off", channel=channel, note=pitch)))
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    mid.tracks.append(track)
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def write_pair(folder: Path, name: str, notes, program=0, channel=0, rate=SR, ext=".wav", stereo=False) -> Path:
    """x.mid + its rendering x.wav/x.flac at ``rate``."""
    from specdiff.data.render import render_midi

    folder.mkdir(parents=True, exist_ok=True)
    midi = midi_bytes(notes, program, channel)
    (folder / f"{name}.mid").write_bytes(midi)
    audio = render_midi(midi, sample_rate=rate)
    if stereo:
        audio = np.stack([audio, 0.5 * audio], axis=1)
    sf.write(folder / f"{name}{ext}", audio, rate)
    return folder / f"{name}.mid"


SCALE = [(0.1 + 0.3 * i, 0.35 + 0.3 * i, 60 + i, 90) for i in range(6)]  # ~2 s of notes


# --------------------------------------------------------------------------------------------
# discovery


def test_folder_pairs_find_audio_and_splits(tmp_path):
    write_pair(tmp_path / "train", "a", SCALE)
    write_pair(tmp_path / "test" / "sub", "b", SCALE, ext=".flac")
    (tmp_path / "c.mid").write_bytes(midi_bytes(SCALE))  # no audio: ignored
    write_pair(tmp_path, "d", SCALE)
    pairs = {p.song_id: p for p in folder_pairs(tmp_path)}
    assert set(pairs) == {"train/a", "test/sub/b", "d"}
    assert pairs["train/a"].split == "train" and pairs["test/sub/b"].split == "test"
    assert pairs["test/sub/b"].audio.endswith("b.flac")
    assert pairs["d"].split in ("train", "validation")  # fixed hash hold-out
    assert [p.split for p in folder_pairs(tmp_path, split="test")] == ["test"] * 3
    assert isinstance(discover(tmp_path)[0], AudioMidiPair)


def _maestro_fixture(root: Path) -> list[dict]:
    rows = []
    for i, split in enumerate(["train", "validation", "test"]):
        rel = f"2004/MIDI-Unprocessed_SMF_0{i}_R1_2004_01_ORIG_MID--AUDIO_0{i}_R1_2004_01_Track01_wav"
        # MAESTRO ships 44.1/48 kHz stereo wav: exercise resampling and downmixing
        write_pair(root / "2004", Path(rel).name, SCALE, rate=44100, stereo=True)
        (root / f"{rel}.mid").rename(root / f"{rel}.midi")
        rows.append({"canonical_composer": "Test", "canonical_title": f"Piece {i}", "split": split,
                     "year": 2004, "midi_filename": f"{rel}.midi", "audio_filename": f"{rel}.wav",
                     "duration": 2.9})  # fmt: skip
    return rows


def test_maestro_csv_and_json(tmp_path):
    rows = _maestro_fixture(tmp_path)
    with open(tmp_path / "maestro-v3.0.0.csv", "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for r in rows:
            f.write(",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in r.values()) + "\n")
    pairs = maestro_pairs(tmp_path)
    assert [p.split for p in pairs] == ["train", "validation", "test"]
    assert all(Path(p.midi).is_file() and Path(p.audio).is_file() for p in pairs)
    assert [type(p) for p in discover(tmp_path)] == [AudioMidiPair] * 3

    # the v3 json is column-oriented: {column: {row: value}}
    (tmp_path / "maestro-v3.0.0.csv").unlink()
    table = {col: {str(i): r[col] for i, r in enumerate(rows)} for col in rows[0]}
    (tmp_path / "maestro-v3.0.0.json").write_text(json.dumps(table))
    assert maestro_pairs(tmp_path) == pairs

    summary = build_cache(pairs, tmp_path / "cache", workers=0, progress=False)
    assert summary["cached"] == 3 and summary["failed"] == 0
    audio16 = song_sources.AudioMidiPair.load(pairs[0])[0]
    assert abs(len(audio16) - round(sf.info(pairs[0].audio).frames * SR / 44100)) <= 1
    songs = {s["id"]: s for s in data.load_index(tmp_path / "cache")}
    assert songs[pairs[0].song_id]["frames"] == -(-len(audio16) // 320)


SLAKH_META = """UUID: 0a1b2c
audio_dir: stems
midi_dir: MIDI
normalization_factor: -13.0
normalized: true
overall_gain: 0.18
stems:
  S00:
    audio_rendered: true
    inst_class: Piano
    integrated_loudness: -13.0
    is_drum: false
    midi_program_name: Bright Acoustic Piano
    midi_saved: true
    plugin_name: grand_piano.nkm
    program_num: 1
  S01:
    audio_rendered: true
    inst_class: Bass
    is_drum: false
    midi_program_name: Electric Bass (finger)
    midi_saved: true
    program_num: 33
  S02:
    audio_rendered: true
    inst_class: Drums
    is_drum: true
    midi_program_name: Drums
    midi_saved: true
    program_num: 0
  S03:
    audio_rendered: false
    inst_class: Guitar
    is_drum: false
    midi_program_name: Distortion Guitar
    midi_saved: true
    program_num: 30
  S04:
    audio_rendered: true
    inst_class: Piano
    is_drum: false
    midi_program_name: Acoustic Grand Piano
    midi_saved: true
    program_num: 0
target_peak: -1.0
"""


def _slakh_fixture(root: Path) -> Path:
    from specdiff.data.render import render_midi

    track = root / "slakh2100_flac_redux" / "train" / "Track00001"
    (track / "MIDI").mkdir(parents=True)
    (track / "stems").mkdir()
    (track / "metadata.yaml").write_text(SLAKH_META)
    stems = {
        "S00": (1, 0, [(0.0, 1.0, 60, 90), (1.0, 2.0, 64, 90)]),
        "S01": (33, 0, [(0.0, 2.0, 36, 90)]),
        "S02": (0, 9, [(t, t + 0.1, 36 if k % 2 == 0 else 38, 100) for k, t in enumerate(np.arange(0, 2, 0.5))]),
        "S03": (30, 0, [(0.0, 2.0, 52, 90)]),
        # same class program as S00 and an overlapping pitch 60: merged, then trimmed
        "S04": (0, 0, [(0.5, 1.5, 60, 90)]),
    }
    for name, (program, channel, notes) in stems.items():
        midi = midi_bytes(notes, program, channel)
        (track / "MIDI" / f"{name}.mid").write_bytes(midi)
        if name != "S03":  # audio_rendered: false -> no stem audio
            sf.write(track / "stems" / f"{name}.flac", render_midi(midi, sample_rate=SR, tail=0.2), SR)
    return track


def test_slakh_submixes(tmp_path):
    track = _slakh_fixture(tmp_path)
    pairs = slakh_pairs(tmp_path, subsets_per_song=10, seed=3)
    rendered = ("S00", "S01", "S02", "S04")
    assert pairs[0].stems == rendered  # the full mix comes first
    assert len(pairs) == 10 and len({p.stems for p in pairs}) == 10  # distinct subsets
    assert all(set(p.stems) <= set(rendered) for p in pairs)  # S03 has no audio
    assert all(p.split == "train" for p in pairs)
    assert [p.song_id for p in pairs] == [f"slakh/slakh2100_flac_redux/train/Track00001/mix{k:02d}" for k in range(10)]
    assert slakh_pairs(tmp_path, seed=3) == pairs  # deterministic
    assert len(slakh_pairs(tmp_path, subsets_per_song=100)) == 2**4 - 1  # all non-empty subsets

    full = pairs[0]
    assert full.programs == (0, 33, 0, 0) and full.drums == (False, False, True, False)
    audio, notes, total_time = full.load()
    stems = [sf.read(track / "stems" / f"{s}.flac", dtype="float32")[0] for s in rendered]
    n = max(len(s) for s in stems)
    expected = sum(np.pad(s, (0, n - len(s))) for s in stems)
    assert len(audio) == n
    assert np.corrcoef(audio, expected)[0, 1] > 0.9999  # the sum, peak-normalised
    from specdiff.data.render import PEAK

    assert np.abs(audio).max() == pytest.approx(PEAK, rel=1e-4)
    by = sorted((n.is_drum, n.program, n.pitch, round(n.start, 3), round(n.end, 3)) for n in notes)
    drums = [b for b in by if b[0]]
    assert len(drums) == 4 and {b[2] for b in drums} == {36, 38}
    assert (False, 33, 36, 0.0, 2.0) in by  # bass keeps its program
    # piano S00 (program 1 -> Slakh class 0) and S04 overlap on pitch 60: 0-1.0 is cut at 0.5
    assert [b for b in by if not b[0] and b[2] == 60] == [(False, 0, 60, 0.0, 0.5), (False, 0, 60, 0.5, 1.5)]
    assert total_time == pytest.approx(2.0)
    assert isinstance(discover(tmp_path / "slakh2100_flac_redux")[0], song_sources.SlakhMix)


def test_trim_overlapping_notes():
    notes = [
        Note(60, 0.0, 1.0, 90, 0, False),
        Note(60, 0.5, 0.8, 90, 0, False),  # overlap
        Note(60, 0.5, 0.9, 90, 40, False),  # other program: untouched
        Note(36, 0.0, 0.01, 90, 0, True),
        Note(36, 0.0, 0.01, 90, 0, True),
    ]  # duplicate drum
    out = trim_overlapping_notes(notes)
    assert out == [Note(60, 0.0, 0.5, 90, 0, False), Note(60, 0.5, 0.8, 90, 0, False),
                   Note(60, 0.5, 0.9, 90, 40, False), Note(36, 0.0, 0.01, 90, 0, True)]  # fmt: skip


def test_render_pairs_reassign(tmp_path):
    (tmp_path / "midi" / "test").mkdir(parents=True, exist_ok=True)
    (tmp_path / "midi" / "x.mid").write_bytes(midi_bytes(SCALE, program=0))
    (tmp_path / "midi" / "test" / "y.mid").write_bytes(midi_bytes([(0, 1, 84, 90)], program=0))
    plain = render_pairs(tmp_path / "midi")
    assert [(p.song_id, p.program_seed) for p in plain] == [("render/test/y", None), ("render/x", None)]
    assert plain[0].split == "test"
    pairs = render_pairs(tmp_path / "midi", variants=3, reassign=True, families=("pipe", "reed"), seed=1)
    assert len(pairs) == 6 and len({p.song_id for p in pairs}) == 6
    assert len({p.program_seed for p in pairs}) == 6
    assert {p.split for p in pairs if "/y/" in p.song_id} == {"test"}
    audio, notes, total_time = pairs[-1].load()
    assert len(audio) == math.ceil((SCALE[-1][1] + 1.0) * SR)  # render tail of 1 s
    programs = {n.program for n in notes}
    assert len(programs) == 1 and programs <= {64, 66, 67, 68, 69, 70, 71, 73}
    assert [(n.pitch, round(n.start, 3)) for n in notes] == [(p, round(s, 3)) for s, _, p, _ in SCALE]
    assert total_time == pytest.approx(SCALE[-1][1])
    assert pairs[-1].load()[0].tobytes() == audio.tobytes()  # deterministic render
    assert isinstance(discover(tmp_path / "midi")[0], RenderedMidi)


def test_prepare_command_renders_variants_into_a_cache(tmp_path, capsys):
    from specdiff.cli import main  # python -m specdiff runs the same command line

    (tmp_path / "midi" / "validation").mkdir(parents=True)
    (tmp_path / "midi" / "x.mid").write_bytes(midi_bytes(SCALE, program=0))
    (tmp_path / "midi" / "validation" / "y.mid").write_bytes(midi_bytes([(0, 1, 72, 90)], program=0))
    pairs = song_sources.discover_with_options(f"render:{tmp_path / 'midi'}", variants=3, seed=5)
    assert sorted(p.song_id for p in pairs) == [
        "render/validation/y",
        "render/validation/y/v0",
        "render/validation/y/v1",
        "render/x",
        "render/x/v0",
        "render/x/v1",
    ]
    assert [p.program_seed is None for p in pairs].count(True) == 2  # the first render keeps the file's programs
    cache = tmp_path / "cache"
    argv = ["prepare", f"render:{tmp_path / 'midi'}", str(cache), "--variants", "2", "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert "cached 4" in capsys.readouterr().out
    songs = {s["id"]: s["split"] for s in data.load_index(cache)}
    assert songs == {"render/x": "train", "render/x/v0": "train",
                     "render/validation/y": "validation", "render/validation/y/v0": "validation"}  # fmt: skip
    assert main(argv) == 0 and "skipped 4" in capsys.readouterr().out  # resumable: nothing redone
    assert main(["prepare", str(tmp_path / "nothing"), str(cache)]) == 1  # one-line user error


# --------------------------------------------------------------------------------------------
# cache


def test_cache_features_resume_and_failures(tmp_path, monkeypatch, caplog):
    from specdiff.audio.mel import log_mel

    midi_dir = tmp_path / "midi"
    midi_dir.mkdir()
    (midi_dir / "a.mid").write_bytes(midi_bytes(SCALE))
    (midi_dir / "b.mid").write_bytes(midi_bytes([(0.0, 3.0, 48, 100)], program=40))
    (midi_dir / "bad.mid").write_bytes(b"MThd garbage, not a MIDI file")
    (midi_dir / "cut.mid").write_bytes(midi_bytes(SCALE)[:40])  # truncated
    pairs = render_pairs(midi_dir) + [
        AudioMidiPair(song_id="noaudio", midi=str(midi_dir / "a.mid"), audio=str(tmp_path / "missing.wav"))
    ]
    # small feature chunks: the chunked log-mel must equal the whole-song one
    monkeypatch.setattr(data, "FEATURE_CHUNK_FRAMES", 7)
    cache = tmp_path / "cache"
    summary = build_cache(pairs, cache, workers=0, progress=False)
    assert (summary["cached"], summary["skipped"], summary["failed"], summary["songs"]) == (2, 0, 3, 2)
    failures = json.loads((cache / "failures.json").read_text())
    assert set(failures) == {"render/bad", "render/cut", "noaudio"}
    assert failures["render/bad"].startswith("MidiError") and failures["noaudio"].startswith("AudioError")
    assert "render/bad" in caplog.text  # logged with its reason

    index = data.load_index(cache)
    assert [s["id"] for s in index] == ["render/a", "render/b"]
    audio, notes, total_time = pairs[0].load()
    mel = np.load(cache / "songs" / "render/a" / "mel.npy")
    assert mel.dtype == np.float16 and mel.shape == (math.ceil(len(audio) / 320), 128)
    assert index[0]["frames"] == len(mel) and index[0]["total_time"] == pytest.approx(total_time)
    whole = log_mel(torch.from_numpy(audio)).numpy()
    assert np.abs(mel.astype(np.float32) - whole).max() < 0.01  # float16 rounding only
    stored = data.array_to_notes(np.load(cache / "songs" / "render/a" / "notes.npy"))
    assert stored == notes

    # second run: nothing recomputed; a song whose meta.json is missing counts as not cached
    mtime = (cache / "songs" / "render/a" / "mel.npy").stat().st_mtime_ns
    (cache / "songs" / "render/b" / "meta.json").unlink()
    summary = build_cache(pairs, cache, workers=0, progress=False)
    assert (summary["cached"], summary["skipped"], summary["failed"], summary["songs"]) == (1, 1, 3, 2)
    assert (cache / "songs" / "render/a" / "mel.npy").stat().st_mtime_ns == mtime
    assert not list(cache.rglob("*.tmp"))


def test_cache_with_worker_processes(tmp_path):
    midi_dir = tmp_path / "midi"
    midi_dir.mkdir()
    for k in range(3):
        (midi_dir / f"s{k}.mid").write_bytes(midi_bytes([(0.1 * k, 1.0, 60 + k, 90)]))
    (midi_dir / "bad.mid").write_bytes(b"nope")
    summary = build_cache(f"render:{midi_dir}", tmp_path / "cache", workers=2, progress=False)
    assert (summary["cached"], summary["failed"], summary["songs"]) == (3, 1, 3)
    again = build_cache(f"render:{midi_dir}", tmp_path / "cache", workers=0, progress=False)
    assert (again["cached"], again["skipped"], again["failed"]) == (0, 3, 1)
    assert len(json.loads((tmp_path / "cache" / "index.json").read_text())["songs"]) == 3


# --------------------------------------------------------------------------------------------
# ChunkDataset


@dataclass(frozen=True, kw_only=True)
class SyntheticSong(SongPair):
    """Seeded random notes (melodic + drums) and a sine/noise rendering, exactly ``frames`` long."""

    frames: int
    seed: int

    def notes(self) -> list[Note]:
        rng = np.random.default_rng(self.seed)
        out = []
        seconds = self.frames / 50 - 2.0
        for pitch, program in [(48, 33), (60, 0), (64, 0), (67, 40), (72, 73)]:
            t = float(rng.uniform(0, 1))
            while t < seconds:  # non-overlapping notes per pitch, with gaps
                d = float(rng.uniform(0.05, 1.5))
                out.append(Note(pitch, t, min(t + d, seconds), 100, program, False))
                t += d + float(rng.uniform(0.01, 1.0))
        for t in np.arange(0.25, seconds, 0.5):
            out.append(Note(36, float(t), float(t) + 0.05, 100, 0, True))
        return sorted(out, key=lambda n: n.start)

    def load(self):
        notes = self.notes()
        t = np.arange(self.frames * 320) / SR
        audio = np.zeros_like(t)
        for n in notes:
            on = (t >= n.start) & (t < n.end + 0.05)
            f = 440.0 * 2 ** ((n.pitch - 69) / 12)
            audio[on] += 0.1 * (np.sin(2 * np.pi * f * t[on]) if not n.is_drum else np.sin(2e4 * t[on] ** 2))
        return audio.astype(np.float32), notes, max(n.end for n in notes)


@pytest.fixture(scope="module")
def song_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("chunks")
    songs = [SyntheticSong(song_id="long", split="train", frames=4000, seed=1),  # two full pieces
             SyntheticSong(song_id="short", split="train", frames=600, seed=2),
             SyntheticSong(song_id="held_out", split="validation", frames=900, seed=3)]  # fmt: skip
    summary = build_cache(songs, cache, workers=0, progress=False)
    assert summary["cached"] == 3
    return cache, {s.song_id: s for s in songs}


def scaled(x):  # ORIGINAL.md §1.1 by hand: clip to [ln 1e-5, 4], map to [-1, 1]
    return 2 * (np.clip(x, LN_MIN, LN_MAX) - LN_MIN) / (LN_MAX - LN_MIN) - 1


def test_examples_shapes_values_and_determinism(song_cache):
    cache, songs = song_cache
    ds = ChunkDataset(cache, seed=5, epoch_size=1234)
    assert len(ds) == 1234 and {s["id"] for s in ds.songs} == {"long", "short"}
    assert ds.num_frames == 4600 and len(ds.piece_song) == 3  # 2000 + 2000 + 600
    same = ChunkDataset(cache, seed=5)
    other = ChunkDataset(cache, seed=6)
    differs = 0
    for i in range(24):
        ex = ds[i]
        assert ex.tokens.shape == (2048,) and ex.tokens.dtype == torch.long
        assert ex.context.shape == (256, 128) and ex.target.shape == (256, 128)
        assert ex.context.dtype == ex.target.dtype == torch.float32 and ex.context_mask.dtype == torch.bool
        assert (ex.tokens == 1).sum() == 1  # one EOS, then padding
        k, c0, t0, valid = ds.window(i)
        n_ctx = t0 - c0
        assert 0 <= n_ctx <= 256 and 2 <= valid <= 256
        assert torch.equal(ex.context_mask, torch.arange(256) < n_ctx)
        mel = np.load(cache / "songs" / ds.songs[k]["id"] / "mel.npy").astype(np.float32)
        np.testing.assert_allclose(ex.target[:valid].numpy(), scaled(mel[t0 : t0 + valid]), atol=1e-6)
        assert (ex.target[valid:] == -1).all()
        np.testing.assert_allclose(ex.context[:n_ctx].numpy(), scaled(mel[c0:t0]), atol=1e-6)
        assert (ex.context[n_ctx:] == 0).all()
        # the carry-in tokens cover exactly the context's frames (nothing where the context is empty)
        assert int(ex.carry_frames) == n_ctx
        expected = tokenize_frames(ds.event_index(k), c0, n_ctx) if n_ctx else [0] * 2048
        assert ex.carry_tokens.tolist() == expected
        assert ex.target.min() >= -1 and ex.target.max() <= 1
        b = same[i]
        assert all(torch.equal(getattr(ex, f), getattr(b, f)) for f in ("tokens", "context", "context_mask", "target"))
        differs += ds.window(i) != other.window(i)
    assert differs >= 20

    batch = collate_examples([ds[0], ds[1], ds[2]])
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "tokens": (3, 2048),
        "context": (3, 256, 128),
        "context_mask": (3, 256),
        "target": (3, 256, 128),
        "velocity": (3, 256, 18),  # the velocity roll layout's columns (tests/test_velocity_roll.py)
        "carry_tokens": (3, 2048),  # what rings in from the context's frames (tests/test_score_roll.py)
        "carry_frames": (3,),
    }
    assert batch["tokens"].dtype == torch.long and batch["context_mask"].dtype == torch.bool

    val = ChunkDataset(cache, split="validation")
    assert {s["id"] for s in val.songs} == {"held_out"}
    train, val2 = data.open_training_datasets(cache, seed=0)
    assert train.split == "train" and val2.split == "validation"


def test_partial_and_empty_context_frequency(song_cache):
    cache, _ = song_cache
    ds = ChunkDataset(cache, seed=0)
    ds.piece_song, ds.piece_start, ds.piece_len = ds.piece_song[:2], ds.piece_start[:2], ds.piece_len[:2]
    windows = [ds.window(i) for i in range(20000)]  # two full 2000-frame pieces only
    ctx = np.array([t0 - c0 for _, c0, t0, _ in windows])
    valid = np.array([v for *_, v in windows])
    # start ~ U{-256..1742}: 1999 values, 256 of them below 0 (ORIGINAL.md §4.2: ~12.8%)
    assert np.mean(ctx < 256) == pytest.approx(256 / 1999, abs=0.01)
    assert 1 <= np.sum(ctx == 0) <= 40  # expected 10
    assert np.mean(valid < 256) == pytest.approx(254 / 1999, abs=0.01)
    assert valid.min() >= 2
    starts = np.array([t0 for _, _, t0, _ in windows])
    assert starts.min() >= 0 and (starts % 2000).max() <= 1998


def test_tokens_match_the_window_notes(song_cache):
    cache, songs = song_cache
    ds = ChunkDataset(cache, seed=11)
    checked_ties = 0
    for i in range(40):
        k, _, t0, valid = ds.window(i)
        song = songs[ds.songs[k]["id"]]
        notes = song.notes()
        tokens = ds[i].tokens.tolist()
        num_frames = num_frames_for(max(n.end for n in notes))
        lo = 2 * t0
        hi = math.inf if t0 + valid >= num_frames else 2 * (t0 + valid)
        step = lambda x: round(x * 100)  # noqa: E731  (MT3: Python round of time * 100)

        # tie section: the (program, pitch) of melodic notes sounding across the window start
        # (for a window past the song's last event, across that last event: ORIGINAL.md §2.3 edge case)
        last_step = max(max(step(n.start), step(n.end)) for n in notes)
        boundary = min(lo, last_step)
        prefix = tokens[: tokens.index(TIE_ID)]
        program, declared = None, []
        for tok in prefix:
            if 1135 <= tok < 1263:
                program = tok - 1135
            else:
                declared.append((program, tok - 1004))
        active = sorted({(n.program, n.pitch) for n in notes
                         if not n.is_drum and step(n.start) < boundary <= step(n.end)})  # fmt: skip
        assert declared == active
        checked_ties += bool(active)

        # events: decoding gives exactly the notes with an onset in the window
        decoded = tokens_to_notes(tokens, start_time=t0 / 50)
        expected = sorted((step(n.start), n.is_drum, 0 if n.is_drum else n.program, n.pitch)
                          for n in notes if lo <= step(n.start) < hi)  # fmt: skip
        got = sorted((round(d.start * 100), d.is_drum, d.program, d.pitch) for d in decoded)
        assert got == expected
        ends = {(step(n.start), n.program, n.pitch): step(n.end) for n in notes if not n.is_drum}
        for d in decoded:  # offsets inside the window decode to the note's end
            key = (round(d.start * 100), d.program, d.pitch)
            if not d.is_drum and ends[key] < hi:
                assert round(d.end * 100) == ends[key]
    assert checked_ties >= 10


def test_items_never_parse_midi_or_compute_mels(song_cache, monkeypatch):
    # An epoch must only slice the cache (issue 3): any MIDI parsing or mel computation per item
    # would raise here. (A property, not a timing: timed unit tests are flaky on a shared machine.)
    import specdiff.audio.mel
    import specdiff.midi.reader
    import specdiff.midi.tokenizer

    def forbidden(*args, **kwargs):
        raise AssertionError("ChunkDataset items must not parse MIDI or compute mels")

    cache, _ = song_cache
    ds = ChunkDataset(cache, seed=3)
    forbidden_names = [
        (specdiff.midi.reader, "midi_to_notes"),
        (specdiff.midi.tokenizer, "midi_to_notes"),
        (specdiff.midi.tokenizer, "midi_to_segments"),
        (specdiff.audio.mel, "log_mel"),
        (specdiff.audio.mel, "stft"),
    ]
    for module, name in forbidden_names:
        monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr("specdiff.data.cache.song_features", forbidden)
    items = [ds[i] for i in range(50)]
    assert len(items) == 50


# --------------------------------------------------------------------------------------------
# bundled demo corpus


def test_demo_corpus_manifest_matches_files():
    from symusic import Score

    manifest = corpus.load_manifest()
    entries = manifest["files"]
    files = corpus.demo_midi_files()
    assert len(files) == len(entries) >= 150
    assert sum(f.stat().st_size for f in files) < 3.5e6
    splits = {s: corpus.demo_midi_files(s) for s in corpus.SPLITS}
    assert sum(len(v) for v in splits.values()) == len(files) and all(splits.values())
    works = {}
    for e in entries:  # split by work: all movements of a work share one split
        assert works.setdefault(e["work"], e["split"]) == e["split"]
    for e, f in zip(entries, files):
        score = Score.from_file(str(f))
        melodic = [t for t in score.tracks if not t.is_drum and len(t.notes)]
        drums = [t for t in score.tracks if t.is_drum and len(t.notes)]
        assert [t.program for t in melodic] == e["programs"]
        assert bool(drums) == e["drums"]
    with_drums = sum(e["drums"] for e in entries)
    assert 0.15 * len(entries) <= with_drums <= 0.5 * len(entries)
    assert len({p for e in entries for p in e["programs"]}) >= 20
    assert corpus.split_of(files[0]) == entries[0]["split"]
    pairs = discover("demo")
    assert len(pairs) == len(files) and {p.split for p in pairs} == set(corpus.SPLITS)
