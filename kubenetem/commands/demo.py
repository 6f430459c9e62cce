"""`kubenetem demo`: the tool's main job on the bundled example cluster.

It loads examples/ (a namespace with an nginx Deployment, the Service types
people use, two nodes, a KubeProxyConfiguration and an Ingress), shows what
the control plane made of it, shows kube-proxy's view on each node, and
traces a packet through every proxy mode that is available.
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys

from netem.addr import int_to_ip
from netem.packet import TCP, Packet
from proxy_modes import registry
from proxy_modes.view import build_state, node_view

from .. import examples_dir, tables
from .common import load


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the tool on the bundled example cluster")
    p.add_argument("--seed", type=int, default=1, help="seed for random choices (default 1)")
    p.set_defaults(handler=run)


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    args.files = [str(examples_dir())]
    cluster = load(args)
    now = datetime.datetime.now(datetime.UTC)
    _say(f"== The example cluster ({examples_dir()})")
    _say()
    _say("What the API server and the controllers made of it (kubenetem get services -A):")
    services = tables.kinds(cluster)["services"]
    sys.stdout.write(tables.tabulate(tables.service_rows(services, True, False, now)))
    _say()
    _say("EndpointSlices the controller wrote (kubenetem get endpointslices -A):")
    sys.stdout.write(tables.tabulate(tables.slice_rows(tables.kinds(cluster)["endpointslices"], True, False, now)))
    state = build_state(cluster)
    for name in cluster.nodes:
        view = node_view(cluster, state, name)
        _say()
        _say(f"kube-proxy's view on {name} ({int_to_ip(view.node_ip)}):")
        for info in view.service_ports():
            cat = view.categorize(info)
            local = sum(view.is_local(e) for e in cat.all_reachable)
            extra = f", NodePort {info.node_port}" if info.node_port else ""
            extra += f", ClientIP affinity {info.sticky_seconds}s" if info.session_affinity else ""
            _say(f"  {info.name!s:<24} {info!s:<24} {len(cat.all_reachable)} endpoints ({local} local){extra}")
    _trace_modes(cluster, state, args.seed)
    return 0


def _trace_modes(cluster, state, seed: int) -> None:  # type: ignore[no-untyped-def]
    modes = registry.available()
    _say()
    if not modes:
        _say("No proxy mode engines are installed in this build yet.")
        return
    web = state.entries.get(("dev", "web"))
    if web is None:
        return
    info = web.ports[0]
    client = next(p for p in cluster.pods if p.pod_ip is not None)
    packet = Packet(TCP, client.pod_ip, 40000, info.cluster_ip, info.port)
    for name in modes:
        mode = registry.create(name, random.Random(seed))
        mode.sync(node_view(cluster, state, None))
        _say(f"== {name}")
        sys.stdout.write(mode.trace(packet, 0.0).to_text())
