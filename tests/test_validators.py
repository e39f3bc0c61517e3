"""The command line's shared argument types (specdiff/commands/validators.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from specdiff.commands import validators as v


@pytest.mark.parametrize(
    "parse, good, bad",
    [
        (v.positive_int, [("1", 1), ("20", 20)], ["0", "-3", "2.5", "x"]),
        (v.non_negative_int, [("0", 0), ("7", 7)], ["-1", "1e3", ""]),
        (v.positive_float, [("0.5", 0.5), ("3", 3.0)], ["0", "-1", "inf", "nan", "x"]),
        (v.non_negative_float, [("0", 0.0), ("2.5", 2.5)], ["-0.1", "inf", "nan"]),
        (v.seed, [("0", 0), (str(2**63 - 1), 2**63 - 1)], ["-1", str(2**63), "1.0"]),
        (v.port, [("0", 0), ("65535", 65535)], ["65536", "-1", "http"]),
    ],
)
def test_each_type_accepts_its_range_and_rejects_the_rest(parse, good, bad):
    for text, value in good:
        assert parse(text) == value and type(parse(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_a_bad_number_is_a_usage_error_not_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "specdiff", "synth", "x.mid", "-o", str(tmp_path / "a.wav"),
                          "--steps", "0"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "--steps: must be at least 1, got 0" in out.stderr and "Traceback" not in out.stderr
