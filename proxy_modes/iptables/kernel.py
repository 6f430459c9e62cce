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
from proxy_modes.netfilter import syntax
from proxy_modes.view import NodeView

from . import rules

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
    rules_first: int  # rules the engine counts for a connection to the first service
    rules_last: int  # ... and to the last one (the end of KUBE-SERVICES)
    connect_first_us: float  # median connect latency to the first service's ClusterIP
    connect_last_us: float  # ... and to the last one's
    restore_s: float  # iptables-restore time of the full ruleset
    ruleset_rules: int


def measure_curve(
    views: Iterable[tuple[int, NodeView]], backend: str = "nft", connects: int = 300, prefix: str = "iptc"
) -> list[CurvePoint]:
    """For each (service count, view): load the view's rules into a fresh node
    namespace and time connects to the first and the last service's ClusterIP
    (the ends of KUBE-SERVICES), in alternating batches so drift cancels.
    Every service needs an endpoint; the first and last must differ."""
    import random

    from netem.packet import Packet

    from .engine import IptablesMode

    points = []
    for count, view in views:
        mode = IptablesMode(random.Random(0))
        ruleset = mode.sync(view)
        assert mode.last is not None
        # kube-proxy writes KUBE-SERVICES in service order: the first and the last rule.
        infos = sorted(view.service_ports(), key=lambda i: i.name)
        first, last = infos[0], infos[-1]
        rules: list[int] = []
        for info in (first, last):
            rules.append(mode.route(Packet(6, 0x0A000005, 40000 + len(rules), info.cluster_ip, info.port), 0.0).rules)
        eps = [view.endpoints(i.name)[0] for i in (first, last)]
        with Topology(prefix) as topo:
            node = topo.node([int_to_ip(ip) for ip in view.node_ips])
            pod = topo.leaf("pod", sorted({int_to_ip(ep.ip) for ep in eps}))
            client = topo.leaf("client", ["10.0.0.5"], default_route=True)
            for port in {ep.port for ep in eps}:
                pod.serve(port)
            kernel = KernelIptables(node, backend)
            restore_s = load_node(kernel, mode.last.full)
            samples: dict[int, list[float]] = {0: [], 1: []}
            batch = max(10, connects // 6)
            for _ in range(max(1, connects // batch)):
                for which, info in enumerate((first, last)):
                    replies = client.connect_many(int_to_ip(info.cluster_ip), info.port, count=batch)
                    samples[which] += [r.elapsed for r in replies if r.status == "ok"]
        if min(len(v) for v in samples.values()) < connects // 2:
            raise RuntimeError(f"{count} services: too few connects answered")
        points.append(
            CurvePoint(
                count,
                rules[0],
                rules[1],
                statistics.median(samples[0]) * 1e6,
                statistics.median(samples[1]) * 1e6,
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


def one_endpoint_view(services: int) -> NodeView:
    """N services with one endpoint each (ClusterIPs from 172.30.0.0/16,
    pods from 10.180.0.0/14), on node-1 at 192.168.0.2: the calibration's
    input, built directly (the CLI's synthetic clusters live above this package)."""
    from netem.addr import parse_cidr
    from netem.objects import ProxyConfig
    from netem.packet import TCP
    from proxy_modes.view import EndpointInfo, ProxyState, ServiceEntry, ServicePortInfo, ServicePortName

    entries = {}
    for i in range(services):
        ns, name = f"ns{i % 10}", f"svc{i}"
        spn = ServicePortName(ns, name, "p80", "TCP")
        pod = (10 << 24) | (180 << 16) + i + 1
        ep = EndpointInfo(pod, 8080, f"{int_to_ip(pod)}:8080", node_name="node-1")
        info = ServicePortInfo(spn, (172 << 24) | (30 << 16) + i + 1, 80, TCP)
        entries[(ns, name)] = ServiceEntry((info,), {spn: (ep,)})
    config = ProxyConfig(cluster_cidrs=[parse_cidr("10.0.0.0/8")])
    return NodeView(ProxyState(entries), "node-1", ((192 << 24) | (168 << 16) | 2,), config)


def calibrate(counts: list[int], backends: list[str], connects: int = 300) -> str:
    """Measure the curve on this kernel and print it as cost.py's constants."""
    from proxy_modes.netfilter import cost

    out = []
    for backend in backends:
        points = []
        for p in measure_curve(((n, one_endpoint_view(n)) for n in counts), backend, connects):
            restore = round(p.restore_s, 3)
            points.append(cost.Point(p.services, p.rules_first, round(p.connect_first_us, 1), restore, p.ruleset_rules))
            points.append(cost.Point(p.services, p.rules_last, round(p.connect_last_us, 1), restore, p.ruleset_rules))
        model = cost.fit(backend, points)
        out.append(f"{backend.upper()}_POINTS = (")
        out += [f"    {p!r}," for p in points]
        out.append(")")
        out.append(
            f"# fit: base {model.base_us:.1f} us + {model.per_rule_ns:.2f} ns/rule; "
            f"restore {model.restore_base_s:.3f} s + {model.restore_per_rule_us:.2f} us/rule"
        )
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "calibrate":
        sizes = [int(n) for n in sys.argv[2].split(",")] if len(sys.argv) > 2 else [100, 1000, 5000, 10000, 30000]
        print(calibrate(sizes, ["nft", "legacy"]))
    else:
        sys.exit("usage: python -m proxy_modes.iptables.kernel calibrate [N,N,...]")
