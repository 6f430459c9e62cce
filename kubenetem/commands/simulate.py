"""`kubenetem simulate`: traffic through the cluster, event by event.

Clients open connections to the cluster's services through the chosen proxy
mode on every node, over netem links, while pods die, scale and roll; the
report gives each service's and endpoint's share of connections, latency
percentiles, failed and retried connections (text or JSON), and `--pcap`
writes every simulated packet for tshark/Wireshark.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from netem.errors import UsageError
from netem.sim import REFUSED, TIMEOUT

from ..simulation import Event, Kill, Rollout, Scale, SimConfig, simulate
from .common import add_files, load

_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_TIME = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ns|us|ms|s|m)?$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="simulate traffic through the cluster (links, modes, pods dying)")
    add_files(p)
    p.add_argument("--mode", help="proxy mode (default: the KubeProxyConfiguration's)")
    p.add_argument("--clients", type=int, default=10, metavar="N", help="client processes (default 10)")
    p.add_argument("--connections", type=int, default=10, metavar="K", help="connections per client (default 10)")
    p.add_argument("--duration", default="10s", metavar="TIME", help="each client spreads its connections over this")
    p.add_argument("--link", metavar="NETEM", help='netem options for every link, e.g. "delay 10ms loss 1%%"')
    p.add_argument(
        "--kill",
        action="append",
        default=[],
        metavar="pod/NAME@TIME[:refused]",
        help="the pod dies at TIME: deleted (its address goes silent; default) or, with :refused, its process died",
    )
    p.add_argument("--scale", action="append", default=[], metavar="deployment/NAME=N@TIME", help="scale a Deployment")
    p.add_argument("--rollout", action="append", default=[], metavar="deployment/NAME@TIME", help="a rolling update")
    p.add_argument(
        "--propagation",
        metavar="TIME",
        help="from a change to every node's sync (default: kube-proxy's minSyncPeriod, 1s)",
    )
    p.add_argument("--grace", default="30s", metavar="TIME", help="a terminating pod serves this long (default 30s)")
    p.add_argument("--service", action="append", default=[], metavar="NS/NAME", help="only these services")
    p.add_argument("--outside", action="store_true", help="clients outside the cluster, to NodePorts on every node")
    p.add_argument("--request-bytes", type=int, default=100, metavar="N", help="request payload (default 100)")
    p.add_argument("--response-bytes", type=int, default=1000, metavar="N", help="response payload (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument("--pcap", metavar="FILE", help="write every simulated packet to this pcap file")
    p.set_defaults(handler=run)


def parse_time(text: str, option: str) -> float:
    """Seconds from `5s`, `500ms`, `1.5s`, `2m` (a bare number is seconds)."""
    m = _TIME.match(text.strip())
    if m is None:
        raise UsageError(f"{option}: not a time like 5s, 500ms or 1.5s", value=text)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_events(args: argparse.Namespace) -> list[Event]:
    events: list[Event] = []
    for text in args.kill:
        m = re.match(r"^pod/([^@]+)@([^:]+)(?::(\w+))?$", text)
        if m is None:
            raise UsageError("--kill: want pod/NAME@TIME or pod/NAME@TIME:refused", value=text)
        how = {None: TIMEOUT, "timeout": TIMEOUT, "deleted": TIMEOUT, "refused": REFUSED}.get(m.group(3))
        if how is None:
            raise UsageError("--kill: the suffix must be :refused (or :timeout, the default)", value=text)
        events.append(Kill(m.group(1), parse_time(m.group(2), "--kill"), how))
    for text in args.scale:
        m = re.match(r"^deployment/([^=]+)=(\d+)@(.+)$", text)
        if m is None:
            raise UsageError("--scale: want deployment/NAME=REPLICAS@TIME", value=text)
        events.append(Scale(m.group(1), int(m.group(2)), parse_time(m.group(3), "--scale")))
    for text in args.rollout:
        m = re.match(r"^deployment/([^@]+)@(.+)$", text)
        if m is None:
            raise UsageError("--rollout: want deployment/NAME@TIME", value=text)
        events.append(Rollout(m.group(1), parse_time(m.group(2), "--rollout")))
    return events


def config_from(args: argparse.Namespace, default_mode: str) -> SimConfig:
    for option in ("clients", "connections", "request_bytes", "response_bytes"):
        if getattr(args, option) < (1 if option in ("clients", "connections") else 0):
            raise UsageError(f"--{option.replace('_', '-')} is too small", value=getattr(args, option))
    return SimConfig(
        mode=args.mode or default_mode,
        clients=args.clients,
        connections=args.connections,
        duration=parse_time(args.duration, "--duration"),
        link=args.link,
        events=parse_events(args),
        seed=args.seed,
        propagation=None if args.propagation is None else parse_time(args.propagation, "--propagation"),
        services=list(args.service),
        outside=args.outside,
        grace=parse_time(args.grace, "--grace"),
        request_bytes=args.request_bytes,
        response_bytes=args.response_bytes,
        capture=bool(args.pcap),
    )


def run(args: argparse.Namespace) -> int:
    cluster = load(args)
    config = config_from(args, cluster.proxy_config.mode)
    if config.link is not None:
        from netem.netem_spec import parse_netem

        parse_netem(config.link)  # a bad --link is one clear error before anything runs
    report = simulate(cluster, config)
    if args.pcap:
        from netem.pcap import write as write_pcap

        assert report.sim.captured is not None
        write_pcap(args.pcap, report.sim.captured)
    if args.output == "json":
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text())
    return 0
