"""The synthetic task of benchmarks/conditioning_probe.py: its tokens and targets agree."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from specdiff.midi.pitch import midi_to_hz
from specdiff.midi.tokenizer import tokens_to_notes

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("conditioning_probe", ROOT / "benchmarks" / "conditioning_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_timed_target_lights_each_fundamental_from_onset_to_release():
    tokens, target = probe.make_example(3, "timed")
    notes = tokens_to_notes(tokens[tokens > 0].tolist())
    assert 2 <= len(notes) <= 6
    lit = target > -1.0
    for note in notes:  # each note sounds at its fundamental from its onset to its release
        k = probe.mel_bin(midi_to_hz([note.pitch])[0])
        assert lit[round(note.start * 50) : min(256, round(note.end * 50)), k].all()
    first_onset = round(min(n.start for n in notes) * 50)
    assert not lit[:first_onset].any()  # silence before the first note
    # every lit bin is a harmonic of some note
    allowed = {probe.mel_bin(midi_to_hz([n.pitch])[0] * h) for n in notes for h in (1, 2, 3)}
    assert set(np.nonzero(lit.any(0).numpy())[0].tolist()) <= allowed


def test_static_target_is_the_same_in_every_frame():
    _, target = probe.make_example(5, "static")
    assert torch.equal(target, target[:1].expand_as(target))
    assert (target > -1).any()


def test_probe_runs_and_writes_its_curve(tmp_path):
    out = tmp_path / "curve.json"
    assert (
        probe.main(
            [
                "--steps",
                "2",
                "--every",
                "1",
                "--val",
                "2",
                "--d-model",
                "64",
                "--layers",
                "1",
                "--shift-init",
                "position",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    curve = json.loads(out.read_text())["curve"]
    assert [row["step"] for row in curve] == [1, 2]
    assert all(row["with_notes"] > 0 and row["no_notes"] > 0 for row in curve)
    assert all(row["gain"] == (row["floor"] - row["with_notes"]) / row["floor"] for row in curve)


def test_floor_is_the_error_of_the_mean_target():
    val = probe.make_batch(range(100, 104), "static")
    mean = torch.stack([probe.make_example(i, "static")[1] for i in range(8)]).mean(0)
    assert abs(probe.floor_error("static", val, examples=8) - float(((mean - val["target"]) ** 2).mean())) < 1e-9
    assert probe.floor_error("static", val, examples=8) > 0
