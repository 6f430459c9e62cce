"""The measurement core: the proxy modes compared on the request-routing path.

One function, `measure()`, per (mode, cluster size, affinity) point, used by
`kubenetem bench`, the demo and the pytest-benchmark suites alike. For a
synthetic cluster of N services x M endpoints (kubenetem.scenarios) seen
from one node it measures, with the mode synced from that node's view:

- decision time for new flows and for packets of established flows: every
  call timed on its own with `perf_counter_ns` (the timer's own cost, measured
  first, is subtracted), then median and p99; flows go to services drawn
  uniformly, from client pods on the node, after a warm-up connection to
  every service (engines that build per-destination plans lazily pay that
  once, not in the timed steady state); the established packet timed is
  each connection's second after its handshake (SYN, SYN-ACK, ACK untimed),
  what most packets of a connection are;
- the modeled kernel cost of those decisions: rules evaluated or lookups as
  the mode reports them, turned into microseconds by the mode's calibrated
  cost model where it has one (`modeled_latency_us(decision)`);
- full sync time, partial sync time after one service changes, objects in the
  ruleset, and the memory the synced mode holds (tracemalloc);
- balance: many new flows to one service, the share of each endpoint (max/min)
  and Pearson's chi-square against the mode's intended even split; with
  ClientIP affinity, the share of connections that stayed with their
  client's first endpoint.

Everything random comes from `seed`. This module measures, so it reads the
clock; it lives in kubenetem/, outside the sans-IO packages.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from netem.addr import int_to_ip
from netem.cluster import Cluster
from netem.packet import ACK, SYN, TCP, Packet
from proxy_modes import registry
from proxy_modes.base import Decision, ProxyMode
from proxy_modes.view import NodeView, ServiceEntry, ServicePortInfo, build_state, node_view

from .scenarios import synthetic_cluster
from .stats import chi_square, percentile

NODE = "node-1"
CLIENTS = 2000  # distinct client addresses
BALANCE_FLOWS = 20_000
STICKY_CLIENTS = 500
STICKY_CONNECTIONS = 5


@dataclass
class Balance:
    flows: int
    shares: dict[str, float]  # endpoint -> fraction of new flows
    max_min: float
    chi2: float
    p_value: float
    sticky: float | None = None  # with affinity: share that stayed with the first endpoint


@dataclass
class Point:
    mode: str
    services: int
    endpoints: int
    affinity: bool
    new_median_us: float
    new_p99_us: float
    est_median_us: float
    est_p99_us: float
    rules_per_new: float
    lookups_per_new: float
    modeled_kernel_us: float | None
    sync_s: float
    partial_sync_s: float
    objects: int
    memory_mb: float
    balance: Balance
    flows: int
    est_followed: float = 1.0  # share of the established packets that followed their connection


@dataclass
class Report:
    points: list[Point] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "seed": self.seed, "points": [asdict(p) for p in self.points]}


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
    }


def _timer_overhead_ns() -> int:
    """What a pair of perf_counter_ns() calls costs by itself (median)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(2000):
        t0 = clock()
        samples.append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2]


def _timed(
    route: Callable[[Packet, float], Decision], packets: Sequence[Packet], now: float
) -> tuple[list[float], list[Decision]]:
    """Per-call times in microseconds, timer overhead removed."""
    overhead = _timer_overhead_ns()
    clock = time.perf_counter_ns
    times: list[float] = []
    decisions: list[Decision] = []
    append_t, append_d = times.append, decisions.append
    for p in packets:
        t0 = clock()
        d = route(p, now)
        t1 = clock()
        append_t(max(t1 - t0 - overhead, 0) / 1000.0)
        append_d(d)
    times.sort()
    return times, decisions


def clients_of(view: NodeView, rng: random.Random) -> list[int]:
    """Client pod addresses on the measured node (its podCIDR, above the
    synthetic endpoints), as kube-proxy would see traffic from local pods."""
    cidr = view.pod_cidrs[0]
    base = cidr.last - CLIENTS - 2
    return [base + i for i in range(CLIENTS)]


def changed_view(view: NodeView) -> tuple[NodeView, tuple[str, str]]:
    """The same view with one service's last endpoint gone."""
    name, entry = next(iter(view.state.entries.items()))
    spn = entry.ports[0].name
    fewer = ServiceEntry(entry.ports, {**entry.endpoints, spn: entry.endpoints[spn][:-1]})
    return view.with_state(view.state.with_entry(name, fewer)), name


def _memory_mb(mode_name: str, view: NodeView, seed: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        mode = registry.create(mode_name, random.Random(seed))
        mode.sync(view)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del mode
    return (after - before) / 2**20


def _balance(
    mode: ProxyMode, view: NodeView, clients: list[int], affinity: bool, rng: random.Random, now: float
) -> Balance:
    """New flows from many clients to the last service (for rule-walking modes
    the worst position), counted per endpoint."""
    info = list(view.service_ports())[-1]
    endpoints = view.categorize(info).all_reachable
    counts: Counter[str] = Counter()
    flows = 0
    port = 20000
    if not affinity:
        for _ in range(BALANCE_FLOWS):
            port = port + 1 if port < 65000 else 20000
            d = mode.route(Packet(TCP, rng.choice(clients), port, info.cluster_ip, info.port), now)
            if d.endpoint is not None:
                counts[f"{int_to_ip(d.endpoint[0])}:{d.endpoint[1]}"] += 1
                flows += 1
        sticky = None
    else:
        stayed = total = 0
        for c in range(STICKY_CLIENTS):
            src = clients[c % len(clients)]
            first = None
            for k in range(STICKY_CONNECTIONS):
                port = port + 1 if port < 65000 else 20000
                d = mode.route(Packet(TCP, src, port, info.cluster_ip, info.port), now + k * 0.01)
                if d.endpoint is None:
                    continue
                text = f"{int_to_ip(d.endpoint[0])}:{d.endpoint[1]}"
                if k == 0:
                    first = text
                    counts[text] += 1  # the balance of first choices
                    flows += 1
                else:
                    total += 1
                    stayed += text == first
        sticky = stayed / total if total else None
    expected = [flows / len(endpoints)] * len(endpoints)
    observed = [counts.get(ep.text, 0) for ep in endpoints]
    stat, p = chi_square(observed, expected) if flows else (0.0, 1.0)
    shares = {ep.text: counts.get(ep.text, 0) / flows for ep in endpoints} if flows else {}
    low = min(observed) if observed else 0
    return Balance(flows, shares, (max(observed) / low) if low else float("inf"), stat, p, sticky)


def answer(mode: ProxyMode, syn: Packet, decision: Decision, node_ip: int, now: float) -> Packet:
    """Complete a handshake the node has seen the SYN of: the endpoint's
    SYN/ACK comes back through the node (to the node's address when the SYN
    was masqueraded, keeping the source port), and the client's ACK that
    follows is returned. Without the SYN/ACK a client's ACK would be INVALID
    to conntrack (tcp_conntracks: ack in SYN_SENT) and dropped by KUBE-FORWARD,
    so it would not be an established packet at all. Where the mode keeps a
    conntrack table the answer is its entry's reply tuple (for userspace that
    is kube-proxy's own socket, which the SYN was redirected to)."""
    conntrack = getattr(mode, "conntrack", None)
    hit = conntrack.lookup(syn[:5], now) if conntrack is not None else None
    if hit is not None:
        _, src, sport, dst, dport = hit[0].reply
        mode.route(Packet(TCP, src, sport, dst, dport, flags=SYN | ACK), now + 0.001)
    elif decision.endpoint is not None:
        ep_ip, ep_port = decision.endpoint
        dst = node_ip if decision.masquerade else syn.src
        mode.route(Packet(TCP, ep_ip, ep_port, dst, syn.sport, flags=SYN | ACK), now + 0.001)
    return syn._replace(flags=ACK)


def warm_up(mode: ProxyMode, infos: Sequence[ServicePortInfo], clients: list[int]) -> None:
    """One connection to every service before anything is timed, so that what
    an engine builds on a destination's first packet (compiled plans, caches)
    is in place: the timed decisions are the steady state. Its source ports
    (1..1023) are never used by the timed flows."""
    prepare = getattr(mode, "prepare", None)
    for n, info in enumerate(infos):
        packet = Packet(TCP, clients[n % len(clients)], 1 + n % 1023, info.cluster_ip, info.port)
        if prepare is not None:
            prepare(packet, 0.5)
        decision = mode.route(packet, 0.5)
        node_ip = clients[0]  # only used for masqueraded replies, which none of these are
        mode.route(answer(mode, packet, decision, node_ip, 0.5), 0.502)  # and an established packet


def measure(
    mode_name: str,
    cluster: Cluster,
    *,
    affinity: bool,
    flows: int = 20_000,
    seed: int = 0,
    memory_mb: float | None = None,
) -> Point:
    """One point: a mode on a synthetic cluster, seen from node-1. The memory
    a synced mode holds is measured (under tracemalloc, a slow sync) unless
    the caller already knows it for this mode and cluster size."""
    rng = random.Random(seed)
    state = build_state(cluster)
    view = node_view(cluster, state, NODE)
    infos = list(view.service_ports())
    endpoints = max((len(view.endpoints(i.name)) for i in infos), default=0)
    mode = registry.create(mode_name, random.Random(seed))
    t0 = time.perf_counter()
    ruleset = mode.sync(view)
    sync_s = time.perf_counter() - t0
    changed, _ = changed_view(view)
    t0 = time.perf_counter()
    mode.sync(changed)
    partial_s = time.perf_counter() - t0
    mode.sync(view)
    clients = clients_of(view, rng)
    warm_up(mode, infos, clients)
    targets = [infos[rng.randrange(len(infos))] for _ in range(flows)]
    new = [
        Packet(TCP, rng.choice(clients), 1024 + n % 60000, t.cluster_ip, t.port, flags=SYN)
        for n, t in enumerate(targets)
    ]
    now = 1.0
    new_times, decisions = _timed(mode.route, new, now)
    acks = [answer(mode, p, d, view.node_ip, now) for p, d in zip(new, decisions, strict=True)]
    for ack in acks:  # the handshake's last packet: engines may remember a decision from here on
        mode.route(ack, now + 0.002)
    est_times, est_decisions = _timed(mode.route, acks, now + 0.003)
    modeled = getattr(mode, "modeled_latency_us", None)
    kernel = (sum(modeled(d) for d in decisions) / len(decisions)) if modeled and decisions else None
    # The balance is counted on the same synced mode, from its state after the
    # timed flows (round-robin positions and affinity entries carry on).
    balance = _balance(mode, view, clients, affinity, rng, now + 1.0)
    return Point(
        mode=mode_name,
        services=len(infos),
        endpoints=endpoints,
        affinity=affinity,
        new_median_us=percentile(new_times, 50),
        new_p99_us=percentile(new_times, 99),
        est_median_us=percentile(est_times, 50),
        est_p99_us=percentile(est_times, 99),
        rules_per_new=sum(d.rules for d in decisions) / len(decisions),
        lookups_per_new=sum(d.lookups for d in decisions) / len(decisions),
        modeled_kernel_us=kernel,
        sync_s=sync_s,
        partial_sync_s=partial_s,
        objects=ruleset.objects,
        memory_mb=_memory_mb(mode_name, view, seed) if memory_mb is None else memory_mb,
        balance=balance,
        flows=flows,
        est_followed=sum(d.established and d.endpoint is not None for d in est_decisions) / len(est_decisions),
    )


def sweep(
    modes: Sequence[str],
    sizes: Sequence[int],
    endpoints: int,
    affinities: Sequence[bool],
    seed: int,
    flows: int = 20_000,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Every (size, affinity) cluster built once; every mode measured on it."""
    report = Report(machine=machine_info(), seed=seed)
    for services in sizes:
        for affinity in affinities:
            if progress:
                progress(f"building {services} services x {endpoints} endpoints")
            cluster = synthetic_cluster(services=services, endpoints=endpoints, nodes=10, affinity=affinity)
            for mode in modes:
                if progress:
                    progress(f"{mode}: {services} services, affinity {'ClientIP' if affinity else 'none'}")
                known = next((p.memory_mb for p in report.points if p.mode == mode and p.services == services), None)
                report.points.append(measure(mode, cluster, affinity=affinity, flows=flows, seed=seed, memory_mb=known))
            del cluster
    return report
