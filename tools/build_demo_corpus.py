#!/usr/bin/env python
"""Build the bundled demo MIDI corpus (specdiff/assets/demo_midi) from music21's corpus.

This is an offline, run-once tool: music21 is needed here only, never at run time.

    pip install music21
    python tools/build_demo_corpus.py            # writes specdiff/assets/demo_midi/

What it does (deterministic for a given --seed and music21 version):
1. Picks multi-part works from music21's core corpus: Bach chorales, string-quartet movements
   (Beethoven, Mozart, Haydn, Schumann), Renaissance/medieval polyphony (Monteverdi, Palestrina,
   trecento, Josquin) and a few single pieces. Works that music21 cannot convert are skipped.
2. Converts each to MIDI (tempo kept when the score has one, else a random 72-120 qpm), and
   re-assigns General MIDI programs from an ensemble template (piano, strings, brass, winds,
   saxes, guitar band, organ, choir, synth, or a random mix), the lowest part getting a bass
   instrument. Only Slakh class programs are used (ORIGINAL.md §2.5), so the timbre matches the token.
3. Adds a meter-aligned kick/snare/hi-hat track on channel 10 to a fraction of the pieces.
4. Splits by *work* (all movements of a quartet go to the same split) into train / validation /
   test, and records everything in manifest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.render import PROGRAM_RANGES, gm_program_name  # noqa: E402

OUT_DIR = ROOT / "specdiff" / "assets" / "demo_midi"
TPQ = 960  # resampled from music21's 10080; exact for duplets and triplets

# collection -> (corpus path prefixes, how many works to take at most)
SELECTION = {
    "bach_chorales": (("bach/bwv",), 120),
    "string_quartets": (("beethoven/", "mozart/k", "haydn/", "schumann_robert/opus41"), 40),
    "madrigals": (("monteverdi/madrigal",), 24),
    "palestrina": (("palestrina/",), 24),
    "trecento": (("trecento/",), 20),
    "josquin": (("josquin/",), 8),
    "misc": (
        (
            "schumann_clara/", "joplin/", "corelli/", "cpebach/", "handel/", "schubert/",
            "verdi/", "weber/", "beach/", "liliuokalani/", "johnson_j_r/", "luca/",
            "lusitano/", "ciconia/", "webern/", "mozart/k545", "chopin/",
        ),
        20,
    ),
}  # fmt: skip
MAX_FILE_BYTES = 60_000  # keep the bundle small: skip the few very long movements

# Ensemble templates: (name, weight, upper-part programs, bass-part programs, drum probability)
TEMPLATES = [
    ("piano", 0.13, (0,), (0,), 0.2),
    ("electric_piano", 0.05, (4,), (4, 33), 0.5),
    ("strings", 0.16, (40, 41, 48), (42, 43), 0.05),
    ("brass", 0.09, (56, 60, 57, 61), (58, 57), 0.2),
    ("woodwinds", 0.1, (73, 68, 71, 69), (70,), 0.1),
    ("saxes", 0.05, (64, 66, 67), (67,), 0.5),
    ("guitar_band", 0.12, (24, 26, 29, 16, 0), (33, 32), 0.8),
    ("organ", 0.04, (16,), (16, 32), 0.2),
    ("choir", 0.04, (52,), (52,), 0.0),
    ("synth", 0.06, (80, 88, 50), (33,), 0.8),
    ("mixed", 0.16, tuple(PROGRAM_RANGES), (32, 33, 42, 43, 58, 70), 0.4),
]
DRUM_KITS = (0, 0, 0, 8, 16, 24, 25, 32, 40)  # GM2/GS kit numbers in bank 128 (0 = standard)
KICK, SNARE, CLOSED_HAT, PEDAL_HAT, RIDE, CRASH = 36, 38, 42, 44, 51, 49


def stable_hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16)


def corpus_rel(path) -> str:
    parts = Path(path).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("corpus") + 1 :])


def select_works(seed: int) -> list[tuple[str, str]]:
    """(collection, corpus path) pairs, a fixed random sample of each collection."""
    from music21 import corpus

    rels = sorted(corpus_rel(p) for p in corpus.getCorePaths())
    rels = [r for r in rels if r.rsplit(".", 1)[-1] in ("mxl", "xml", "musicxml", "krn", "abc")]
    chosen = []
    taken = set()
    for collection, (prefixes, limit) in SELECTION.items():
        pool = [r for r in rels if r.startswith(prefixes) and r not in taken]
        # one encoding per work (beethoven ships both .krn and .mxl for some movements)
        by_stem: dict[str, str] = {}
        for r in pool:
            stem = r.rsplit(".", 1)[0]
            if stem not in by_stem or r.endswith("mxl"):
                by_stem[stem] = r
        pool = sorted(by_stem.values(), key=lambda r: stable_hash(f"{seed}:{r}"))
        # take up to 3x the limit as candidates: some fail to convert or are too big
        chosen += [(collection, r) for r in pool[: 3 * limit]]
        taken.update(pool)
    return chosen


def work_id(rel: str) -> str:
    """Movements of one multi-movement work share an id, so they land in the same split."""
    parent, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
    if name.startswith("movement") and parent:
        return parent
    return rel.rsplit(".", 1)[0]


def convert(rel: str, rng: np.random.Generator):
    """music21 score -> (symusic Score at TPQ, info dict) or raises."""
    from music21 import corpus, stream, tempo
    from symusic import Score, Tempo

    parsed = corpus.parse(rel)
    if isinstance(parsed, stream.Opus):  # abc files hold one voice per tune: merge them
        parsed = parsed.mergeScores()
    parts = list(parsed.parts)
    if len(parts) < 2 and not rel.startswith(("joplin", "schumann_clara", "chopin", "mozart/k545")):
        raise ValueError("single part")
    has_tempo = bool(parsed.recurse().getElementsByClass(tempo.MetronomeMark))
    first = parts[0].getElementsByClass(stream.Measure).first()
    pickup_ql = float(first.duration.quarterLength) if first is not None and first.paddingLeft > 0 else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = parsed.write("midi", fp=os.path.join(tmp, "x.mid"))
        score = Score.from_file(str(path))
    score = score.resample(TPQ, min_dur=1)
    score.tracks = [t for t in score.tracks if len(t.notes) > 0]
    if len(score.tracks) == 0:
        raise ValueError("no notes")
    if not has_tempo:
        qpm = float(rng.integers(72, 121))
        score.tempos = [Tempo(0, qpm=qpm, ttype="tick")]
    return score, {"pickup_ql": pickup_ql, "title": _title(parsed), "composer": _composer(parsed, rel)}


def _title(parsed) -> str:
    md = parsed.metadata
    title = (md.title or md.movementName or "") if md is not None else ""
    return str(title).strip()


def _composer(parsed, rel: str) -> str:
    md = parsed.metadata
    composer = md.composer if md is not None else None
    return str(composer).strip() if composer else rel.split("/", 1)[0]


def assign_programs(score, rng: np.random.Generator) -> tuple[str, float]:
    """Give the score's tracks programs from a random ensemble template (in place)."""
    weights = np.array([t[1] for t in TEMPLATES])
    name, _, upper, bass, drum_prob = TEMPLATES[rng.choice(len(TEMPLATES), p=weights / weights.sum())]
    medians = [float(np.median(t.notes.numpy()["pitch"])) for t in score.tracks]
    order = np.argsort(medians)  # lowest part first
    n = len(score.tracks)
    for rank, idx in enumerate(order):
        track = score.tracks[int(idx)]
        track.is_drum = False
        pool = bass if (rank == 0 and n > 1) else upper
        fitting = [p for p in pool if PROGRAM_RANGES[p][0] <= medians[idx] <= PROGRAM_RANGES[p][1]]
        pool = fitting or pool
        if name in ("strings", "brass", "woodwinds", "saxes") and rank > 0:
            # orchestral sections: the higher the part, the higher the instrument
            pool_sorted = sorted(pool, key=lambda p: PROGRAM_RANGES[p][1])
            k = min(len(pool_sorted) - 1, (rank - 1) * len(pool_sorted) // max(n - 1, 1))
            program = pool_sorted[k] if rng.random() < 0.7 else pool_sorted[rng.integers(len(pool_sorted))]
        else:
            program = pool[rng.integers(len(pool))]
        track.program = int(program)
    return name, drum_prob


def _bar_pattern(num: int, den: int, hat: int, sparse: bool) -> list[tuple[float, int, int]]:
    """(offset in quarters, drum pitch, velocity) hits of one bar in this meter."""
    compound = den == 8 and num % 3 == 0 and num >= 6
    if compound:
        beat, nbeats, sub = 1.5, num // 3, 0.5
    elif den <= 2:  # half-note meters: count quarter beats
        beat, nbeats, sub = 1.0, int(num * 4 / den), 0.5
    else:
        beat, nbeats, sub = 4.0 / den, num, 2.0 / den
    hits = []
    for b in range(nbeats):
        last = b == nbeats - 1 and nbeats > 1
        if b % 2 == 0 and not (last and nbeats % 2 == 1):
            hits.append((b * beat, KICK, 100 if b == 0 else 88))
        else:
            hits.append((b * beat, SNARE, 92))
    bar_len = nbeats * beat
    step = beat if sparse else sub
    for k in range(int(round(bar_len / step))):
        offset = k * step
        on_beat = abs(offset / beat - round(offset / beat)) < 1e-6
        hits.append((offset, hat, 78 if on_beat else 60))
    return hits


def add_drums(score, pickup_ql: float, rng: np.random.Generator) -> int:
    """Append a kick/snare/hat track on channel 10 following the score's bars. Returns the kit."""
    from symusic import Note, Track

    tpq = score.ticks_per_quarter
    end = max(t.end() for t in score.tracks)
    start = min(t.start() for t in score.tracks)
    sigs = sorted({(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures})
    if not sigs or sigs[0][0] > 0:
        sigs.insert(0, (0, 4, 4))
    hat = int(rng.choice([CLOSED_HAT, CLOSED_HAT, PEDAL_HAT, RIDE]))
    sparse = bool(rng.random() < 0.3)
    crash_every = int(rng.choice([0, 4, 8]))
    kit = int(rng.choice(DRUM_KITS))
    track = Track(name="Drums", program=kit, is_drum=True, ttype="tick")
    bar_index = 0
    for i, (t0, num, den) in enumerate(sigs):
        t1 = sigs[i + 1][0] if i + 1 < len(sigs) else end
        bar = int(round(tpq * 4 * num / den))
        anchor = t0 + (int(round(pickup_ql * tpq)) if i == 0 else 0)
        pattern = _bar_pattern(num, den, hat, sparse)
        bar_start = anchor - bar * ((anchor - t0 + bar - 1) // bar)  # first bar at or before t0
        while bar_start < t1:
            if bar_start >= anchor and crash_every and bar_index % crash_every == 0:
                track.notes.append(Note(bar_start, tpq // 4, CRASH, 96, "tick"))
            for offset, pitch, velocity in pattern:
                t = bar_start + int(round(offset * tpq))
                if max(t0, start) <= t < min(t1, end):
                    v = int(np.clip(velocity + rng.integers(-8, 9), 1, 127))
                    track.notes.append(Note(t, max(tpq // 8, 1), pitch, v, "tick"))
            if bar_start >= anchor:
                bar_index += 1
            bar_start += bar
    track.notes.sort()
    score.tracks.append(track)
    return kit


def assign_splits(entries: list[dict], seed: int, fraction: float) -> None:
    """Per collection, the works with the smallest hashes go to test, the next to validation."""
    by_collection: dict[str, list[str]] = {}
    for e in entries:
        works = by_collection.setdefault(e["collection"], [])
        if e["work"] not in works:
            works.append(e["work"])
    split_of = {}
    for works in by_collection.values():
        works = sorted(works, key=lambda w: stable_hash(f"split{seed}:{w}"))
        k = max(1, round(fraction * len(works))) if len(works) >= 3 else 0
        for i, w in enumerate(works):
            split_of[w] = "test" if i < k else "validation" if i < 2 * k else "train"
    for e in entries:
        e["split"] = split_of[e["work"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-fraction", type=float, default=0.07, help="of works, each for validation and test")
    ap.add_argument("--limit-scale", type=float, default=1.0, help="scale every collection's limit (for quick trials)")
    ap.add_argument(
        "--work-timeout",
        type=int,
        default=60,
        help="seconds one work may take to convert; slower ones (whole multi-movement works "
        "that would exceed the size limit anyway) are skipped",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    def _too_slow(signum, frame):
        raise TimeoutError(f"conversion took over {args.work_timeout} s")

    signal.signal(signal.SIGALRM, _too_slow)
    import music21
    from symusic import Score

    args.out.mkdir(parents=True, exist_ok=True)
    entries, failures = [], []
    counts: dict[str, int] = {}
    t_start = time.time()
    for collection, rel in select_works(args.seed):
        limit = max(1, int(SELECTION[collection][1] * args.limit_scale))
        if counts.get(collection, 0) >= limit:
            continue
        rng = np.random.default_rng(stable_hash(f"{args.seed}:{rel}"))
        signal.alarm(args.work_timeout)
        try:
            score, info = convert(rel, rng)
            template, drum_prob = assign_programs(score, rng)
            kit = add_drums(score, info["pickup_ql"], rng) if rng.random() < drum_prob else None
            data = score.dumps_midi()
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"too large ({len(data)} bytes)")
            Score.from_midi(data)  # must read back
            signal.alarm(0)
        except Exception as exc:
            signal.alarm(0)  # music21 conversions fail in many ways; skip those works
            failures.append({"source": rel, "reason": f"{type(exc).__name__}: {str(exc)[:120]}"})
            print(f"skip {rel}: {failures[-1]['reason']}", flush=True)
            continue
        name = rel.rsplit(".", 1)[0].replace("/", "__").replace(" ", "_")
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) + ".mid"
        (args.out / name).write_bytes(data)
        seconds = score.to("second")
        melodic = [t for t in score.tracks if not t.is_drum]
        entries.append({
            "file": name,
            "source": f"music21 corpus: {rel}",
            "work": work_id(rel),
            "collection": collection,
            "composer": info["composer"],
            "title": info["title"],
            "template": template,
            "programs": [int(t.program) for t in melodic],
            "program_names": [gm_program_name(int(t.program)) for t in melodic],
            "drums": kit is not None,
            "drum_kit": kit,
            "num_notes": int(sum(len(t.notes) for t in score.tracks)),
            "duration_s": round(float(seconds.end()), 2),
            "bytes": len(data),
        })  # fmt: skip
        counts[collection] = counts.get(collection, 0) + 1
        print(
            f"[{len(entries)}] {rel} -> {template}{' +drums' if kit is not None else ''} "
            f"({len(data)} B, {time.time() - t_start:.0f}s)",
            flush=True,
        )
    assign_splits(entries, args.seed, args.split_fraction)
    keep = {e["file"] for e in entries}
    for stale in args.out.glob("*.mid"):  # files of an earlier build that this one did not make
        if stale.name not in keep:
            stale.unlink()
    manifest = {
        "description": "Demo MIDI corpus made from music21's corpus by tools/build_demo_corpus.py "
        "(public-domain scores; programs re-assigned, drums generated).",
        "music21_version": music21.__version__,
        "seed": args.seed,
        "files": entries,
        "skipped": failures,
    }
    tmp = args.out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, args.out / "manifest.json")
    total = sum(e["bytes"] for e in entries)
    hours = sum(e["duration_s"] for e in entries) / 3600
    print(
        f"{len(entries)} files, {total / 1e6:.2f} MB, {hours:.2f} h, "
        f"{sum(e['drums'] for e in entries)} with drums, {len(failures)} skipped"
    )


if __name__ == "__main__":
    main()
