"""Cold start of ``specdiff synth``: a 5 s MIDI file on the bundled model, each run a fresh process.

    python benchmarks/cold_start.py                                   # this checkout
    python benchmarks/cold_start.py --baseline /tmp/specdiff-before   # and another checkout, alternately

For every checkout it runs ``python -m specdiff synth five.mid -o out.wav --seed 0 -q`` ``--runs``
times (checkouts alternate run by run, so a busy machine hurts both alike) and records the wall
time and the process's CPU time (user + system). One more run under ``python -X importtime`` gives
the import times of the heavy packages and tells whether ``torch._dynamo`` and ``diffusers`` were
imported at all. Bytecode is cached as for an installed package (``PYTHONDONTWRITEBYTECODE`` is
dropped for the runs). Writes ``results/cold_start.json`` and ``results/cold_start.md``.

On a machine shared with other jobs, wall times mean little (the other jobs decide them); CPU times
and the import breakdown are steadier, and ratios between checkouts measured alternately are the
most robust numbers. ``--threads 1`` avoids the pathological slow-down of two torch threads on two
cores that are already busy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Packages whose import time is reported (cumulative microseconds of their first import).
WATCHED = ("torch", "torch._dynamo", "diffusers", "sympy", "numpy", "scipy", "soundfile", "safetensors")


def write_five_second_midi(path: Path) -> Path:
    """A piano phrase of 5 s at 120 bpm: a melody in half-beats over two held bass notes."""
    tpq = 480
    ticks_per_second = 2 * tpq
    melody = [60, 64, 67, 72, 67, 64, 60, 62, 65, 69]
    notes = [(p, 0.5 * i, 0.5 * i + 0.45) for i, p in enumerate(melody)] + [(48, 0.0, 2.5), (43, 2.5, 5.0)]
    events = []
    for pitch, start, end in notes:
        events.append((round(start * ticks_per_second), 1, bytes([0x90, pitch, 100])))
        events.append((round(end * ticks_per_second), 0, bytes([0x80, pitch, 0])))

    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            out.append(0x80 | (value & 0x7F))
        return bytes(reversed(out))

    body, now = bytearray(varlen(0) + bytes([0xC0, 0])), 0
    for tick, _, message in sorted(events):
        body += varlen(tick - now) + message
        now = tick
    body += varlen(0) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq)
    path.write_bytes(header + b"MTrk" + struct.pack(">I", len(body)) + bytes(body))
    return path


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(checkout)
    return env


def synth_command(midi: Path, out: Path, threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "specdiff", "synth", str(midi), "-o", str(out), "--seed", "0", "-q"]
    return command + (["--threads", str(threads)] if threads else [])


def timed_run(checkout: Path, command: list[str]) -> dict[str, float]:
    """Wall and CPU seconds (user + system, of the child alone) of one run."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=checkout, env=_env(checkout), stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed in {checkout}:\n{stderr}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def import_breakdown(checkout: Path, command: list[str]) -> dict[str, float | None]:
    """Cumulative import seconds of the :data:`WATCHED` packages (None: never imported)."""
    run = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], cwd=checkout, env=_env(checkout), capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    found: dict[str, float | None] = dict.fromkeys(WATCHED)
    total = 0.0
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        if not cumulative.isdigit():
            continue
        if name in found and found[name] is None:
            found[name] = int(cumulative) / 1e6
        raw = line.split("|")[2]
        if len(raw) - len(raw.lstrip()) == 1:  # a top-level import (nested ones are indented further)
            total += int(cumulative) / 1e6
    return {**found, "all_imports": total}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    return {f"{key}_median": statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s")} | {
        f"{key}_min": min(r[key] for r in runs) for key in ("wall_s", "cpu_s")
    }


def _seconds(imports: dict, key: str) -> str:
    return "not imported" if imports[key] is None else f"{imports[key]:.2f}"


def markdown(results: dict) -> str:
    names = list(results["checkouts"])
    lines = [
        "# Cold start: `specdiff synth` of a 5 s MIDI file on the bundled model",
        "",
        f"{results['runs']} fresh processes per checkout, alternating; threads: "
        f"{results['threads'] or 'torch default'}; {results['cpus']} CPUs, load average "
        f"{results['load_average']} at the start.",
        "",
        "| checkout | wall median s | wall min s | CPU median s | CPU min s | imports s | torch s | torch._dynamo s "
        "| diffusers s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = results["checkouts"][name]
        imports = r["imports"]
        lines.append(
            f"| {name} | {r['wall_s_median']:.2f} | {r['wall_s_min']:.2f} | {r['cpu_s_median']:.2f} | "
            f"{r['cpu_s_min']:.2f} | {imports['all_imports']:.2f} | {_seconds(imports, 'torch')} | "
            f"{_seconds(imports, 'torch._dynamo')} | {_seconds(imports, 'diffusers')} |"
        )
    if len(names) == 2:
        before, after = (results["checkouts"][n] for n in names[::-1])
        lines += [
            "",
            f"Ratio {names[1]} / {names[0]}: wall {before['wall_s_median'] / after['wall_s_median']:.2f}x, "
            f"CPU {before['cpu_s_median'] / after['cpu_s_median']:.2f}x (medians).",
        ]
    lines += [
        "",
        "Import times come from one extra `python -X importtime` run each (cumulative, first import).",
        "On a machine shared with other jobs the wall times depend on them; CPU times and ratios are steadier.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alternately (e.g. before a change)")
    parser.add_argument("--runs", type=int, default=3, help="runs per checkout (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="synth --threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = parser.parse_args()

    checkouts = {"this checkout": ROOT}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory(prefix="specdiff-cold-") as tmp:
        midi = write_five_second_midi(Path(tmp) / "five.mid")
        command = synth_command(midi, Path(tmp) / "five.wav", args.threads)
        for checkout in checkouts.values():  # warm-up: bytecode caches, page cache
            timed_run(checkout, command)
        for i in range(args.runs):
            for name, checkout in checkouts.items():
                runs[name].append(timed_run(checkout, command))
                print(f"run {i + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        imports = {name: import_breakdown(checkout, command) for name, checkout in checkouts.items()}
    results = {
        "runs": args.runs,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average": round(load, 2),
        "checkouts": {
            name: {"path": str(checkouts[name]), **summarize(runs[name]), "runs": runs[name], "imports": imports[name]}
            for name in checkouts
        },
    }
    sys.path.insert(0, str(ROOT))
    from specdiff.atomic import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "cold_start.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "cold_start.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
