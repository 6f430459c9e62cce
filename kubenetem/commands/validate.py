"""`kubenetem validate -f FILE...`: every problem, one line each; exit 2 if any."""

from __future__ import annotations

import argparse
import sys

from .common import add_files, load


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help="check manifests as the API server and controllers would")
    add_files(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cluster = load(args)  # raises ValidationErrors (all lines) on any problem
    slices = sum(len(v) for v in cluster.slices.values())
    print(
        f"ok: {len(cluster.services)} services, {len(cluster.pods)} pods, {len(cluster.nodes)} nodes, "
        f"{slices} endpointslices, {len(cluster.ingresses)} ingresses",
        file=sys.stderr,
    )
    return 0
