"""`kubenetem routes -f FILE... [--node NODE]`: a node's routing table as `ip route` prints it.

The tables are those of a host-gateway network (netem/topology.py): the
node's connected routes, one route per other node's podCIDR via that node, a
default route. `--table local` shows the local table, `--get IP` answers as
`ip route get IP` would on that node.
"""

from __future__ import annotations

import argparse
import sys

from netem.addr import parse_ip
from netem.errors import UsageError
from netem.topology import Topology

from .common import add_files, add_node, load, write_output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("routes", help="print a node's routing table as `ip route` would")
    add_files(p)
    add_node(p)
    p.add_argument("--table", choices=["main", "local"], default="main", help="which table (default: main)")
    p.add_argument("--get", metavar="IP", help="the route to IP, as `ip route get IP` prints it")
    p.add_argument("--node-prefix", type=int, default=24, metavar="N", help="the node subnet length (default: 24)")
    p.add_argument("--no-default-route", action="store_true", help="no default route via the node subnet's .1")
    p.add_argument("-o", "--output-file", help="write to this file instead of stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 8 <= args.node_prefix <= 32:
        raise UsageError("--node-prefix: a prefix length between 8 and 32", value=args.node_prefix)
    topology = Topology.from_cluster(load(args), node_prefix=args.node_prefix, gateway=not args.no_default_route)
    if args.get is not None:
        try:
            dst = parse_ip(args.get)
        except ValueError:
            raise UsageError("--get: not an IPv4 address", value=args.get) from None
        text = topology.route_get(args.node, dst)
    else:
        text = topology.render(args.node, args.table)
    if args.output_file:
        write_output(args.output_file, text)
    else:
        sys.stdout.write(text)
    return 0
