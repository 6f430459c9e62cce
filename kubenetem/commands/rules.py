"""`kubenetem rules --mode MODE -f FILE...`: the ruleset a node's kube-proxy
would program, in the real tool's format (iptables-restore, nft -f,
ipvsadm). Modes with more than one view of their state (IPVS: ipsets,
addresses) take `--show` and `--format`."""

from __future__ import annotations

import argparse
import random
import sys

from netem.errors import UsageError
from proxy_modes import registry
from proxy_modes.view import build_state, node_view

from .common import add_files, add_node, load, write_output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rules", help="print the ruleset a node's kube-proxy would program")
    add_files(p)
    add_node(p)
    p.add_argument("--mode", help="proxy mode (default: the KubeProxyConfiguration's, else iptables)")
    p.add_argument("--show", help="another part of the mode's state (mode-specific, e.g. ipsets)")
    p.add_argument("--format", dest="fmt", help="another output format (mode-specific, e.g. save)")
    p.add_argument("--stats", action="store_true", help="with counters (modes that have them)")
    p.add_argument("--rate", action="store_true", help="with rates (modes that have them)")
    p.add_argument("-o", "--output-file", help="write to this file instead of stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cluster = load(args)
    mode = registry.create(args.mode or cluster.proxy_config.mode, random.Random(0))
    mode.sync(node_view(cluster, build_state(cluster), args.node))
    options = {
        k: v for k, v in (("show", args.show), ("fmt", args.fmt), ("stats", args.stats), ("rate", args.rate)) if v
    }
    if options:
        render = getattr(mode, "dump_with", None)
        if render is None:
            raise UsageError(f"mode {mode.name} has no --{next(iter(options)).replace('fmt', 'format')} option")
        text = render(**options)
    else:
        text = mode.dump()
    if args.output_file:
        write_output(args.output_file, text)
    else:
        sys.stdout.write(text)
    return 0
