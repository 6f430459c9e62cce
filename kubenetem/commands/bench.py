"""`kubenetem bench`: the proxy modes compared as a cluster grows.

Measures every mode at every size (synthetic clusters of N services x M
endpoints, kubenetem.scenarios) with round robin and/or ClientIP affinity,
prints the table (or JSON) and optionally writes the charts. The numbers come
from kubenetem.bench, the same code the pytest-benchmark suites use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from netem.errors import UsageError
from proxy_modes import registry

from .. import bench, realkernel, report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="compare the proxy modes on the routing path as the cluster grows")
    p.add_argument("--modes", help="comma-separated modes (default: every mode this build has)")
    p.add_argument(
        "--services", default="100,1000,10000", help="comma-separated cluster sizes (default 100,1000,10000)"
    )
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service (default 10)")
    p.add_argument("--affinity", choices=["none", "clientip", "both"], default="both")
    p.add_argument("--flows", type=int, default=20000, help="new flows timed per point (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--plot", metavar="FILE.png", help="write the charts to this PNG file")
    p.add_argument(
        "--real",
        action="store_true",
        help="also measure the real kernel (root): rule loading and connect latency, iptables and nftables",
    )
    p.add_argument(
        "--real-nft-max",
        type=int,
        default=3000,
        metavar="N",
        help="largest size `nft -f` is asked to load with --real (default 3000; it takes minutes above)",
    )
    p.set_defaults(handler=run)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--services: not a list of numbers: {text!r}") from None
    if not sizes or any(n < 1 or n > 60000 for n in sizes):
        raise UsageError(f"--services: sizes must be between 1 and 60000 (got {text!r})")
    return sizes


def parse_modes(text: str | None) -> list[str]:
    known = registry.available()
    modes = [m.strip() for m in text.split(",") if m.strip()] if text else known
    unknown = [m for m in modes if m not in known]
    if unknown or not modes:
        raise UsageError(f"--modes: unknown mode {', '.join(unknown) or '(none)'} (available: {', '.join(known)})")
    return modes


def run(args: argparse.Namespace) -> int:
    modes = parse_modes(args.modes)
    sizes = parse_sizes(args.services)
    if not 1 <= args.endpoints <= 1000:
        raise UsageError(f"--endpoints must be between 1 and 1000 (got {args.endpoints})")
    if args.flows < 100:
        raise UsageError(f"--flows must be at least 100 (got {args.flows})")
    affinities = {"none": [False], "clientip": [True], "both": [False, True]}[args.affinity]
    plot_path = Path(args.plot) if args.plot else None
    if plot_path is not None and not plot_path.parent.resolve().is_dir():
        raise UsageError(f"--plot: no such directory {plot_path.parent}")
    if args.real:
        realkernel.check_root()
    console = Console(stderr=True)
    total = len(sizes) * len(affinities) * (len(modes) + 1) + (2 if args.real else 0)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("starting", total=total)

        def step(text: str) -> None:
            progress.update(task, description=text, advance=1)

        result = bench.sweep(modes, sizes, args.endpoints, affinities, args.seed, flows=args.flows, progress=step)
        real_points, notes = realkernel.measure(sizes, modes, args.real_nft_max, step) if args.real else ([], [])
    if args.output == "json":
        data = result.to_json()
        if args.real:
            data["real"] = realkernel.to_json(real_points, notes)
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        report.print_table(result)
        if args.real:
            report.print_real(real_points, notes)
    if plot_path is not None:
        report.plot(result, plot_path, realkernel.curves(real_points) if args.real else None)
        console.print(f"charts written to {plot_path}")
    return 0
