"""Presenting benchmark results: the table, the charts and the report folder.

The table is one row per (mode, size, affinity) point, the numbers a person
compares modes by. Charts are time against the number of services on a log
axis, one line per mode (dashed with ClientIP affinity), drawn with
matplotlib's Agg backend so no display is needed. The report folder holds
report.md (the machine, the table, the charts), the PNGs and the raw JSON.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .bench import Point, Report

SPEED = (
    "mode",
    "services",
    "affinity",
    "new µs p50",
    "p99",
    "est. µs p50",
    "p99",
    "rules/new",
    "lookups/new",
    "kernel µs",
    "sync s",
    "1-change ms",
    "objects",
    "MB",
)
BALANCE = ("mode", "services", "affinity", "flows", "max/min", "χ² p", "sticky")


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _key(p: Point) -> list[str]:
    return [p.mode, str(p.services), "ClientIP" if p.affinity else "none"]


def speed_rows(points: Sequence[Point]) -> list[list[str]]:
    return [
        [
            *_key(p),
            _num(p.new_median_us),
            _num(p.new_p99_us),
            _num(p.est_median_us),
            _num(p.est_p99_us),
            _num(p.rules_per_new, 1),
            _num(p.lookups_per_new, 1),
            _num(p.modeled_kernel_us, 1),
            _num(p.sync_s, 3),
            _num(p.partial_sync_s * 1000, 1),
            str(p.objects),
            _num(p.memory_mb, 1),
        ]
        for p in points
    ]


def balance_rows(points: Sequence[Point]) -> list[list[str]]:
    return [
        [
            *_key(p),
            str(p.balance.flows),
            _num(p.balance.max_min),
            _num(p.balance.p_value, 3),
            _num(p.balance.sticky, 3) if p.balance.sticky is not None else "-",
        ]
        for p in points
    ]


def _rich_table(title: str, columns: Sequence[str], body: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="left" if name in ("mode", "affinity") else "right", no_wrap=True)
    for row in body:
        table.add_row(*row)
    return table


def print_table(report: Report, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(_rich_table("speed: decisions, syncs and size", SPEED, speed_rows(report.points)))
    console.print(
        _rich_table("quality of the balancing (new flows to one service)", BALANCE, balance_rows(report.points))
    )
    m = report.machine
    console.print(
        f"machine: {m.get('cpu')} x{m.get('cpus')}, {m.get('implementation')} {m.get('python')}, "
        f"{m.get('platform')}; seed {report.seed}"
    )


def print_real(points: Sequence[Any], notes: Sequence[str], console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    body = [[p.mode, str(p.services), _num(p.load_s, 3), _num(p.connect_last_us, 1)] for p in points]
    console.print(_rich_table("the real kernel (network namespaces)", REAL, body))
    for note in notes:
        console.print(note)


REAL = ("mode", "services", "load rules s", "connect to last service µs")


def markdown_table(columns: Sequence[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


CHARTS = (
    ("new_median_us", "new-flow decision, median (µs)"),
    ("est_median_us", "established-flow packet, median (µs)"),
    ("modeled_kernel_us", "modeled kernel cost per new flow (µs)"),
    ("sync_s", "full sync (s)"),
)


def _minor_labels(low: float, high: float) -> Any:
    """Label a log axis's minor ticks where they do not crowd: all of them
    within a decade, 2 and 5 within two decades, none beyond."""
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter

    def two_and_five(y: float, _pos: int) -> str:
        mantissa = round(y / 10 ** math.floor(math.log10(y) + 1e-9))
        return f"{y:g}" if mantissa in (2, 5) else ""

    if high < 8 * low:
        return FormatStrFormatter("%g")
    if high < 150 * low:
        return FuncFormatter(two_and_five)
    return NullFormatter()


def plot(report: Report, path: Path, real: dict[str, dict[str, list[tuple[int, float]]]] | None = None) -> None:
    """One PNG, one panel per measure, time against services (log axes);
    with `real` (realkernel.curves), two more panels for the real kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    panels = list(CHARTS)
    if real:
        panels += [
            ("real:connect", "real kernel: connect to the last service (µs)"),
            ("real:load", "real kernel: loading the rules (s)"),
        ]
    ncols = 2
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 4.0 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    modes = sorted({p.mode for p in report.points})
    for ax, (attr, title) in zip(flat, panels, strict=False):
        if attr.startswith("real:"):
            for name, curve in sorted((real or {}).get(attr[5:], {}).items()):
                xs, ys = zip(*sorted(curve), strict=True) if curve else ((), ())
                ax.plot(xs, ys, marker="s", label=f"{name} (kernel)")
        else:
            for mode in modes:
                for affinity in (False, True):
                    pts = sorted(
                        (p for p in report.points if p.mode == mode and p.affinity == affinity),
                        key=lambda p: p.services,
                    )
                    values = [(p.services, getattr(p, attr)) for p in pts if getattr(p, attr) is not None]
                    if not values:
                        continue
                    xs, ys = zip(*values, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker="o",
                        linestyle="--" if affinity else "-",
                        label=f"{mode}{' + ClientIP' if affinity else ''}",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("services (x endpoints each)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(_minor_labels(*ax.get_ylim()))
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                "no mode in this run has\na calibrated cost model" if attr == "modeled_kernel_us" else "no data",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_folder(report: Report, folder: Path, intro: str = "", extra: dict[str, Any] | None = None) -> list[Path]:
    """report.md, chart.png and results.json in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    chart = folder / "chart.png"
    plot(report, chart)
    data = report.to_json()
    if extra:
        data.update(extra)
    (folder / "results.json").write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    m = report.machine
    text = intro + "\n## Speed\n\n" + markdown_table(SPEED, speed_rows(report.points))
    text += "\n## Quality of the balancing\n\n" + markdown_table(BALANCE, balance_rows(report.points))
    text += (
        f"\nMeasured on {m.get('cpu')} ({m.get('cpus')} CPUs), {m.get('implementation')} {m.get('python')}, "
        f"{m.get('platform')}, seed {report.seed}. Decision times are medians and 99th percentiles of "
        "per-call times after the timer's own cost; the kernel column is the modeled cost of the same "
        "decisions (rules walked or lookups made, through the mode's calibrated cost model).\n"
    )
    text += "\n![time against services](chart.png)\n"
    (folder / "report.md").write_text(text)
    return [folder / "report.md", chart, folder / "results.json"]
