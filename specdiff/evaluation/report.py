"""The evaluation's report: the Markdown table of :func:`specdiff.evaluation.evaluate.evaluate`'s results
and their JSON-safe form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("seconds", "audio s", "{:.1f}"),
    ("generated_f1", "onset F1 (ours) ↑", "{:.3f}"),
    ("reference_f1", "onset F1 (reference) ↑", "{:.3f}"),
    ("f1_ratio", "F1 ratio ↑", "{:.3f}"),
    ("log_mel_l1", "log-mel L1 ↓", "{:.3f}"),
    ("mr_stft_log_l1", "MR-STFT log L1 ↓", "{:.3f}"),
    ("spectral_convergence", "spectral conv. ↓", "{:.3f}"),
    ("x_real_time", "x real time ↑", "{:.2f}"),
)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None and numpy scalars as Python numbers, for JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def format_cell(value: Any, fmt: str) -> str:
    """``value`` formatted with ``fmt``, or a dash when it is missing or not finite."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return fmt.format(value)
    return "–"


def markdown_report(results: Mapping[str, Any]) -> str:
    """The readable table: one row per piece, a mean row, then the Fréchet distance and notes."""
    s = results["settings"]
    rows, summary = results["pieces"], results["summary"]
    columns = [c for c in TABLE_COLUMNS if any(c[0] in r for r in rows)]
    lines = [
        f"# Evaluation of {results['model']}",
        "",
        f"{s['scheduler']} sampler, {s['steps']} steps, guidance {s['guidance']:g}, seed {s['seed']}"
        + (f", first {s['max_seconds']:g} s of each piece" if s.get("max_seconds") else ""),
        "",
        "| piece | " + " | ".join(header for _, header, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for r in rows:
        lines.append(f"| {r['piece']} | " + " | ".join(format_cell(r.get(key), fmt) for key, _, fmt in columns) + " |")
    lines.append("| **mean** | " + " | ".join(format_cell(summary.get(key), fmt) for key, _, fmt in columns) + " |")
    lines += [
        "",
        f"Fréchet distance, {summary['embedding']} embedding ({summary['windows_generated']} generated vs "
        f"{summary['windows_reference']} reference windows"
        + (f", {summary['windows_dropped']} non-finite dropped" if summary.get("windows_dropped") else "")
        + f"): {format_cell(summary.get('frechet_distance'), '{:.3f}')}",
        "",
        f"- Transcription: {results['transcription']}.",
    ]
    if any("f1_ratio" in r for r in rows):
        lines.append(
            "- F1 ratio = onset F1 of our audio / onset F1 of the reference audio (mean row: ratio of the means)."
        )
    lines += [
        "- References: " + "; ".join(sorted({r["reference"] for r in rows})) + ".",
        "- Reconstruction distances compare with the reference audio over their common length.",
    ]
    skipped = results.get("skipped") or []
    if skipped:
        lines.append(
            f"- Skipped, cannot be synthesized ({len(skipped)}): "
            + "; ".join(f"{s['piece']} ({s['reason']})" for s in skipped)
            + "."
        )
    broken = [f"{r['piece']} ({r['nonfinite_samples']})" for r in rows if r.get("nonfinite_samples")]
    if broken:
        lines.append("- Non-finite generated samples, scored as silence: " + ", ".join(broken) + ".")
    lines += [
        f"- Embedding: {results.get('embedding', summary['embedding'])}.",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["TABLE_COLUMNS", "format_cell", "markdown_report", "json_safe"]
