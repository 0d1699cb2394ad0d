"""The results: one rich table on the terminal, the same rows as JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import TIMES, Measurement


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "B":
        return f"{value / 1024:,.0f} KiB" if value >= 10 * 1024 else f"{value:,.0f} B"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.3f}{TIMES}" if ratio < 0.1 else f"{ratio:.2f}{TIMES}"


def _met(row: Measurement) -> str:
    if row.ours is None and row.note.startswith("not yet"):
        return "not yet"
    if row.note.startswith("crashed"):
        return "[red]CRASHED[/red]"
    return {True: "[green]yes[/green]", False: "[red]no[/red]", None: "—"}[row.met]


def table(rows: Sequence[Measurement], title: str) -> Table:
    """The results table: scenario, our median, baseline median, ratio, target, met?"""
    result = Table(title=title, show_lines=True, title_justify="left")
    result.add_column("scenario", max_width=58)
    result.add_column("ours", justify="right")
    result.add_column("baseline", justify="right")
    result.add_column("ratio", justify="right")
    result.add_column("target", justify="right")
    result.add_column("met?", justify="center")
    for row in rows:
        label = f"{row.scenario}\n[dim]{row.note}[/dim]" if row.note else row.scenario
        ours = "not yet" if row.note.startswith("not yet") else format_value(row.ours, row.unit)
        result.add_row(
            label,
            ours,
            format_value(row.baseline, row.unit),
            _ratio(row.ratio),
            "—" if row.target is None else row.target.describe(row.unit),
            _met(row),
        )
    return result


def print_table(rows: Sequence[Measurement], title: str) -> None:
    Console(width=150).print(table(rows, title))


def as_json(rows: Sequence[tuple[str, Measurement]], meta: dict[str, Any]) -> dict[str, Any]:
    """The run as JSON: ``meta``, the machine, and every row with its scenario's name."""
    return {
        **meta,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "rows": [
            {
                "name": name,
                "scenario": row.scenario,
                "ours": row.ours,
                "baseline": row.baseline,
                "unit": row.unit,
                "ratio": row.ratio,
                "target": None if row.target is None else row.target.describe(row.unit),
                "target_spec": None if row.target is None else asdict(row.target),
                "met": row.met,
                "note": row.note,
            }
            for name, row in rows
        ],
    }


def write_json(path: Path, rows: Sequence[tuple[str, Measurement]], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(as_json(rows, meta), indent=2, ensure_ascii=False) + "\n")
