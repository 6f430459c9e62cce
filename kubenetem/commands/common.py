"""What every sub-command shares: `-f FILE...`, loading, writing output files."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from netem.cluster import Cluster, load_cluster
from netem.errors import UsageError


def add_files(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=required,
        metavar="FILE",
        help="manifest file or directory (YAML or JSON, `-` for stdin); repeatable",
    )


def add_node(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", help="the node whose view to use (default: the first node by name)")


def load(args: argparse.Namespace) -> Cluster:
    files = [f for group in (args.files or []) for f in group.split(",") if f] if args.files else []
    cluster = load_cluster(files)
    if cluster.ignored:
        kinds = ", ".join(f"{kind} ({count})" for kind, count in sorted(cluster.ignored.items()))
        print(f"kubenetem: ignored kinds the data plane does not use: {kinds}", file=sys.stderr)
    return cluster


def write_output(path: str, text: str) -> None:
    """Write a file whole or not at all (a temporary file renamed into place)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {path}: no such directory {directory}")
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".kubenetem-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
