"""`kubenetem trace`: why did my packet go to that pod?

Either from manifests (`--mode MODE -f FILE...`, the node's view synced into
the mode) or from a ruleset captured on a real node (`--iptables-save FILE`,
`--ipvsadm-save FILE`, `--nft-ruleset FILE` with `--local-ip`), then one
packet traced step by step, or `--connections N` new connections in a row
to show the balancing sequence.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from netem.addr import int_to_ip, parse_ip
from netem.errors import UsageError
from netem.packet import Packet, parse_hostport, proto_number
from netem.topology import Hop, Topology
from proxy_modes import registry
from proxy_modes.base import ProxyMode, Trace
from proxy_modes.view import build_state, node_view

from .common import add_files, add_node, load

# Captured rulesets: option -> the mode that reads it.
CAPTURES = {"iptables_save": "iptables", "ipvsadm_save": "ipvs", "nft_ruleset": "nftables"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("trace", help="trace a packet through a proxy mode, step by step")
    add_files(p, required=False)
    add_node(p)
    p.add_argument("--mode", help="proxy mode (default: the KubeProxyConfiguration's, else iptables)")
    p.add_argument("--iptables-save", metavar="FILE", help="trace through a captured `iptables-save` dump")
    p.add_argument("--ipvsadm-save", metavar="FILE", help="trace through a captured `ipvsadm -S -n` dump")
    p.add_argument("--nft-ruleset", metavar="FILE", help="trace through a captured `nft list ruleset`")
    p.add_argument(
        "--local-ip",
        action="append",
        default=[],
        metavar="IP",
        help="an address of the node (for captured rulesets; repeatable)",
    )
    p.add_argument("--src", required=True, metavar="IP", help="source address")
    p.add_argument("--dst", required=True, metavar="IP:PORT", help="destination address and port")
    p.add_argument("--proto", default="tcp", choices=["tcp", "udp", "sctp"])
    p.add_argument("--sport", type=int, default=40000, help="source port (default 40000)")
    p.add_argument("--from-node", action="store_true", help="the node itself sends the packet (nat OUTPUT)")
    p.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="send N new connections (source port counting up) and list the endpoint of each",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random choices (default 0)")
    p.add_argument("--hops", action="store_true", help="also the route hops from the node to where the packet goes")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(handler=run)


def _mode(args: argparse.Namespace) -> ProxyMode:
    rng = random.Random(args.seed)
    captured = [(opt, getattr(args, opt)) for opt in CAPTURES if getattr(args, opt)]
    if len(captured) > 1:
        raise UsageError("give only one of --iptables-save, --ipvsadm-save, --nft-ruleset")
    if captured:
        if args.files:
            raise UsageError("give either -f FILE... or a captured ruleset, not both")
        option, path = captured[0]
        mode = registry.create(CAPTURES[option], rng)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        local_ips = [_ip(t, "--local-ip") for t in args.local_ip]
        mode.load_capture(text, local_ips, path)  # type: ignore[attr-defined]
        return mode
    if not args.files:
        raise UsageError("give -f FILE... (manifests) or a captured ruleset (--iptables-save FILE, ...)")
    cluster = load(args)
    mode = registry.create(args.mode or cluster.proxy_config.mode, rng)
    mode.sync(node_view(cluster, build_state(cluster), args.node))
    return mode


def _ip(text: str, option: str) -> int:
    try:
        return parse_ip(text)
    except ValueError:
        raise UsageError(f"{option}: not an IPv4 address: {text!r}") from None


def run(args: argparse.Namespace) -> int:
    mode = _mode(args)
    src = _ip(args.src, "--src")
    dst, dport = parse_hostport(args.dst)
    proto = proto_number(args.proto)
    if not 0 < args.sport < 65536:
        raise UsageError(f"--sport must be between 1 and 65535 (got {args.sport})")
    trace = mode.trace(Packet(proto, src, args.sport, dst, dport, local=args.from_node), 0.0)
    if args.connections:
        # The traced packet is the first of the N connections.
        first = trace.decision.endpoint_text() if trace.decision.endpoint else str(trace.decision.verdict)
        more = sequence(mode, proto, src, args.sport, dst, dport, args.connections, args.from_node, start=1)
        trace.sequence = [first, *more]
    hops = _hops(args, trace) if args.hops else None
    _print(trace, args.output, hops)
    return 0


def _hops(args: argparse.Namespace, trace: Trace) -> list[Hop]:
    """The node's routing decisions for the packet after the mode (its DNAT target, else its dst)."""
    if not args.files:
        raise UsageError("--hops needs the cluster's manifests (-f FILE...)")
    topology = Topology.from_cluster(load(args))
    endpoint = trace.decision.endpoint
    return topology.walk(topology.node(args.node).name, endpoint[0] if endpoint else trace.packet.dst)


def sequence(
    mode: ProxyMode, proto: int, src: int, sport: int, dst: int, dport: int, count: int, local: bool, start: int = 0
) -> list[str]:
    """New connections number `start` to `count - 1`: the source port counts
    up from `sport` (wrapping above 1023), each routed 1 ms after the last."""
    out = []
    for n in range(start, count):
        port = 1024 + (sport - 1024 + n) % (65536 - 1024)
        decision = mode.route(Packet(proto, src, port, dst, dport, local=local), float(n) * 0.001)
        out.append(
            f"{int_to_ip(decision.endpoint[0])}:{decision.endpoint[1]}" if decision.endpoint else str(decision.verdict)
        )
    return out


def _print(trace: Trace, output: str, hops: list[Hop] | None = None) -> None:
    if output == "json":
        data = trace.to_json()
        if hops is not None:
            data["hops"] = [hop.to_json() for hop in hops]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(trace.to_text())
        if hops is not None:
            sys.stdout.write("hops:\n" + "".join(f"  {hop.text()}\n" for hop in hops))
