"""`kubenetem bench --real`: the real kernel's own curves, beside the emulator's.

For each size, one-endpoint services are rendered by the iptables and the
nftables modes, loaded into a node namespace built with netem.netns (a
client, the node, a pod, an outside host: both ends of every veth in
namespaces made here, all removed afterwards), and two things are timed:
how long the kernel takes to load the rules (`iptables-restore`, `nft -f`),
and a real TCP connect from the client to the last service's ClusterIP
(for iptables, the end of KUBE-SERVICES: the whole chain is walked; for
nftables, a verdict-map lookup). Needs root. `nft -f` grows steeply with the
number of rules (minutes at 10,000 services here), so nftables sizes above
`nft_max` are skipped and said so.
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from netem.addr import int_to_ip
from netem.errors import UsageError


@dataclass
class RealPoint:
    mode: str
    services: int
    load_s: float
    connect_last_us: float


def check_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("--real needs root (it builds network namespaces and loads rules into the kernel)")


def iptables_curve(sizes: Sequence[int], connects: int = 60) -> list[RealPoint]:
    from proxy_modes.iptables.kernel import measure_curve, one_endpoint_view

    points = measure_curve(((n, one_endpoint_view(n)) for n in sizes), "nft", connects, prefix="knreal")
    return [RealPoint("iptables", p.services, p.restore_s, p.connect_last_us) for p in points]


def nftables_curve(sizes: Sequence[int], connects: int = 60) -> list[RealPoint]:
    from netem.netns import Topology
    from proxy_modes.iptables.kernel import one_endpoint_view
    from proxy_modes.nftables.engine import NftablesMode
    from proxy_modes.nftables.kernel import Nft

    out = []
    for n in sizes:
        view = one_endpoint_view(n)
        text = NftablesMode(random.Random(0)).sync(view).text
        last = sorted(view.service_ports(), key=lambda i: i.name)[-1]
        ep = view.endpoints(last.name)[0]
        with Topology("knrealn") as topo:
            node = topo.node([int_to_ip(ip) for ip in view.node_ips])
            topo.leaf("pod", [int_to_ip(ep.ip)]).serve(ep.port)
            client = topo.leaf("client", ["10.0.0.5"])
            # Service addresses have no route on the node; with a default
            # route to an outside host the node answers the client's ARP.
            topo.leaf("outside", ["203.0.113.10"], default_route=True)
            load_s = Nft(node.netns).load(text)
            replies = client.connect_many(int_to_ip(last.cluster_ip), last.port, count=connects)
            ok = [r.elapsed for r in replies if r.status == "ok"]
        if len(ok) < connects // 2:
            raise RuntimeError(f"nftables, {n} services: too few connects answered ({len(ok)}/{connects})")
        out.append(RealPoint("nftables", n, load_s, statistics.median(ok) * 1e6))
    return out


def measure(
    sizes: Sequence[int], modes: Sequence[str], nft_max: int, progress: Callable[[str], None] | None = None
) -> tuple[list[RealPoint], list[str]]:
    """Both curves (for the modes asked for); returns the points and notes."""
    check_root()
    points: list[RealPoint] = []
    notes: list[str] = []
    if "iptables" in modes:
        if progress:
            progress(f"real kernel: iptables at {', '.join(map(str, sizes))} services")
        points += iptables_curve(sizes)
    if "nftables" in modes:
        kept = [n for n in sizes if n <= nft_max]
        skipped = [n for n in sizes if n > nft_max]
        if skipped:
            notes.append(
                f"nftables skipped at {', '.join(map(str, skipped))} services: `nft -f` takes minutes "
                f"there on this kernel (raise --real-nft-max to measure)"
            )
        if kept:
            if progress:
                progress(f"real kernel: nftables at {', '.join(map(str, kept))} services")
            points += nftables_curve(kept)
    return points, notes


def to_json(points: list[RealPoint], notes: list[str]) -> dict[str, Any]:
    return {"points": [asdict(p) for p in points], "notes": notes}


def curves(points: list[RealPoint]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{"connect": {mode: [(services, us)]}, "load": {mode: [(services, s)]}} for the charts."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {"connect": {}, "load": {}}
    for p in points:
        out["connect"].setdefault(p.mode, []).append((p.services, p.connect_last_us))
        out["load"].setdefault(p.mode, []).append((p.services, p.load_s))
    return out
