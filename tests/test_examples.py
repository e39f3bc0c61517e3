"""Bundled examples by name (specdiff.midi.examples) and `specdiff examples`."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdiff import cli
from specdiff.data.corpus import DEMO_MIDI_DIR, load_manifest
from specdiff.errors import SpecdiffError
from specdiff.midi.examples import DEFAULT_EXAMPLE, FEATURED, all_examples, featured_examples, find_example, suggestions


def test_every_demo_file_is_an_example_named_after_it():
    files = [entry["file"] for entry in load_manifest()["files"]]
    examples = all_examples()
    assert [f"{e.name}.mid" for e in examples] == files
    assert all(e.path.parent == DEMO_MIDI_DIR and e.path.is_file() for e in examples)
    assert len({e.name.lower() for e in examples}) == len(examples), "names must be unique, case aside"


def test_featured_examples_are_short_held_out_pieces_with_different_bands():
    featured = featured_examples()
    assert [e.name for e in featured] == list(FEATURED) and FEATURED[0] == DEFAULT_EXAMPLE
    # The bundled model never trained on them, and each is quick to synthesize.
    assert all(e.split == "test" and e.duration_s < 40 for e in featured)
    assert len({e.instruments for e in featured}) == len(featured)


@pytest.mark.parametrize("spelling", ["bach__bwv318", "BACH__BWV318", "bach__bwv318.mid", " bach__bwv318 "])
def test_find_example_accepts_case_and_a_mid_suffix(spelling):
    assert find_example(spelling).name == "bach__bwv318"


def test_names_with_dots_are_found_whole():
    example = find_example("bach__bwv113.8")
    assert example.path.name == "bach__bwv113.8.mid" and "Viola" in example.instruments


@pytest.mark.parametrize(
    "query, expected",
    [
        ("bach_bwv318", "bach__bwv318"),  # a typo
        ("bwv318", "bach__bwv318"),  # part of the name
        ("MOZART", None),  # part of several names, any case
    ],
)
def test_unknown_names_suggest_close_matches(query, expected):
    with pytest.raises(SpecdiffError) as err:
        find_example(query)
    message = str(err.value)
    assert "\n" not in message and f"unknown example {query!r}" in message
    assert "specdiff examples --all" in message
    close = message.split("close matches: ")[1].split(";")[0].split(", ")
    assert 1 <= len(close) <= 5
    if expected is not None:
        assert expected in close
    else:
        assert all(query.lower() in name.lower() for name in close)


def test_nothing_close_gives_no_suggestions():
    with pytest.raises(SpecdiffError) as err:
        find_example("zzzzqqq")
    assert "close matches" not in str(err.value)
    assert suggestions("zzzzqqq", [e.name for e in all_examples()]) == []


def test_examples_command_lists_the_featured_ones_by_default(capsys):
    assert cli.main(["examples"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(FEATURED)
    assert "Acoustic Grand Piano" in lines[0] and "29.7 s" in lines[0]
    assert "+ drums" in out  # bach__bwv90.5 has a drum track
    assert "--all" in err and f"--example {DEFAULT_EXAMPLE}" in err  # hints on stderr: stdout pipes


def test_examples_command_all(capsys):
    assert cli.main(["examples", "--all"]) == 0
    # One line per example, also where a score's composer field runs over several lines.
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [e.name for e in all_examples()] and len(names) == len(load_manifest()["files"])


def test_synth_help_names_the_featured_examples(capsys):
    assert cli.main(["synth", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--example NAME" in text and all(name in text for name in FEATURED)
    assert f"specdiff synth --example {DEFAULT_EXAMPLE}" in text


def test_the_readme_counts_the_examples_right():
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert f"all {len(all_examples())} files of the bundled demo corpus" in readme
