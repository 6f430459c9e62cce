"""The iptables mode on a real kernel: load rules into a node namespace the way
kube-proxy does, read them back, and measure what the kernel pays.

`KernelIptables(host, backend)` drives `iptables-restore` / `iptables-save`
inside a `netem.netns` host (the nf_tables backend, or iptables-legacy) and
`conntrack`; `sync(mode_ruleset, first)` applies a sync like kube-proxy
(the first with the built-in jump rules, later ones with --noflush).
`measure_curve()` builds the kernel's cost curve (connect latency to the
last service, and iptables-restore time, against the number of services) that
`cost.py` is calibrated from.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass

from netem.addr import int_to_ip
from netem.netns import Host, Topology
from proxy_modes.view import NodeView

from . import rules, syntax

BACKENDS = {
    "nft": ("iptables-nft-restore", "iptables-nft-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
}


class KernelIptables:
    """iptables of one namespace."""

    def __init__(self, host: Host, backend: str = "nft") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        self.host = host
        self.backend = backend
        self.restore_cmd, self.save_cmd = BACKENDS[backend]

    def restore(self, text: str, noflush: bool = False) -> float:
        """iptables-restore the text; returns the seconds it took."""
        argv = [self.restore_cmd, *(["--noflush"] if noflush else [])]
        start = time.perf_counter()
        self.host.run(argv, input=text, timeout=900)
        return time.perf_counter() - start

    def save(self) -> str:
        """iptables-save without its comment lines and with zeroed counters."""
        out = []
        for line in self.host.run([self.save_cmd], timeout=900).splitlines():
            if line.startswith("#"):
                continue
            if line.startswith(":"):
                name, policy = line[1:].split()[:2]
                line = f":{name} {policy} [0:0]"
            out.append(line)
        return "\n".join(out) + "\n"

    def tables(self) -> syntax.Tables:
        return syntax.parse_save(self.save(), f"{self.save_cmd} output")

    def flush_conntrack(self) -> None:
        self.host.run(["conntrack", "-F"], check=False)

    def conntrack(self) -> str:
        return self.host.run(["conntrack", "-L"], check=False)


def load_node(kernel: KernelIptables, rendered_full: str, localhost_nodeports: bool = True) -> float:
    """A first sync: the full restore input plus kube-proxy's jump rules."""
    return kernel.restore(rules.node_text(rendered_full, localhost_nodeports))


def by_chain(text: str) -> dict[str, list[str]]:
    """Rule lines per (table, chain), in order: chain order differs between
    iptables-save backends and our printing, rule order within a chain may not."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            out.setdefault(f"{table} {line[1:].split()[0]}", [])
        elif line.startswith("-A "):
            out.setdefault(f"{table} {line.split()[1]}", []).append(line)
    return out


# --- the kernel's cost curve ---------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    services: int
    rules: int  # rules the engine counts for a connection to the last service
    connect_us: float  # median connect() latency to the last service
    baseline_us: float  # median connect() latency straight to the endpoint (no service rules hit)
    restore_s: float  # iptables-restore time of the full ruleset
    ruleset_rules: int


def measure_curve(
    views: Iterable[tuple[int, NodeView]], backend: str = "nft", connects: int = 200, prefix: str = "iptc"
) -> list[CurvePoint]:
    """For each (service count, view): load the view's rules into a fresh node
    namespace and time connects to the last service's ClusterIP (the last rule
    in KUBE-SERVICES) and straight to its first endpoint. The caller builds
    the views (e.g. synthetic clusters with one endpoint per service)."""
    import random

    from netem.packet import Packet

    from .mode import IptablesMode

    points = []
    for count, view in views:
        mode = IptablesMode(random.Random(0))
        ruleset = mode.sync(view)
        assert mode.last is not None
        infos = sorted(view.service_ports(), key=lambda i: i.name)
        last = infos[-1]
        endpoint = view.endpoints(last.name)[0]
        decision = mode.route(Packet(6, 0x0A000005, 40000, last.cluster_ip, last.port), 0.0)
        with Topology(prefix) as topo:
            node = topo.node([int_to_ip(ip) for ip in view.node_ips])
            pod = topo.leaf("pod", [int_to_ip(endpoint.ip)])
            client = topo.leaf("client", ["10.0.0.5"], default_route=True)
            pod.serve(endpoint.port)
            kernel = KernelIptables(node, backend)
            restore_s = load_node(kernel, mode.last.full)
            target = int_to_ip(last.cluster_ip)
            client.connect_many(target, last.port, count=20)  # warm ARP and caches
            via_service = client.connect_many(target, last.port, count=connects)
            direct = client.connect_many(int_to_ip(endpoint.ip), endpoint.port, count=connects)
        ok = [r.elapsed for r in via_service if r.status == "ok"]
        if len(ok) < connects // 2:
            raise RuntimeError(f"{count} services: only {len(ok)} of {connects} connects answered")
        points.append(
            CurvePoint(
                count,
                decision.rules,
                statistics.median(ok) * 1e6,
                statistics.median(r.elapsed for r in direct if r.status == "ok") * 1e6,
                restore_s,
                ruleset.objects,
            )
        )
    return points


def iptables_available(backend: str = "nft") -> bool:
    cmd = BACKENDS[backend][0]
    try:
        subprocess.run([cmd, "--version"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True
