"""The `kubenetem` command: one sub-command per module in `kubenetem.commands`.

Every sub-command module has `register(subparsers)` that adds its parser and
sets `handler`. Errors the user can cause are `KubenetemError`s: they are
printed one line each on stderr and the exit status is 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from netem.errors import KubenetemError

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubenetem",
        description="Emulate the Kubernetes Service and Ingress data plane: kube-proxy's modes, "
        "an nginx Ingress controller, and the network between them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"kubenetem.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except KubenetemError as exc:
        for line in exc.line().splitlines():
            print(line, file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `kubenetem rules ... | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
