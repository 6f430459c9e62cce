"""iptables mode speed: new-flow decisions, established packets, rendering, partial syncs.

Targets (issue 3): a new flow's decision at 30,000 services x 10 endpoints
at most 5 us median (the kernel walks ~30,000 rules for the last service; we
count them without walking them), a packet of an established flow at most
0.5 us, a full render of 10k x 10 at most 1.5 s, a partial sync of one
changed service among 10k at most 20 ms. Each decision also records the
rules it counted and the kernel latency the calibrated cost model reads from
that count (`proxy_modes/netfilter/cost.py`).

Sizes come from benchmarks/conftest.py (only the smallest under
`--benchmark-disable`); each size's cluster and synced mode are built once
per session, with every chain compiled, so the decisions measured are the
steady state (the first packet to a chain pays its compilation once).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterator

import pytest

from kubenetem.scenarios import synthetic_cluster
from netem.packet import ACK, SYN, TCP, Packet
from proxy_modes.base import Decision, Verdict
from proxy_modes.iptables.engine import IptablesMode
from proxy_modes.iptables.rules import Renderer
from proxy_modes.netfilter import cost
from proxy_modes.view import NodeView, ServicePortInfo, build_state, node_view

ENDPOINTS = 10
FLOWS = 200_000

_VIEWS: dict[int, NodeView] = {}
_MODES: dict[int, IptablesMode] = {}


def view_of(services: int) -> NodeView:
    if services not in _VIEWS:
        cluster = synthetic_cluster(services, ENDPOINTS)
        _VIEWS[services] = node_view(cluster, build_state(cluster), "node-1")
    return _VIEWS[services]


def mode_of(services: int) -> IptablesMode:
    if services not in _MODES:
        mode = IptablesMode(random.Random(0))
        mode.sync(view_of(services))
        assert mode.nf is not None
        mode.nf.compile_all()
        _MODES[services] = mode
    return _MODES[services]


def ports(services: int) -> list[ServicePortInfo]:
    return sorted(view_of(services).service_ports(), key=lambda i: i.name)


def packets(services: int, count: int, seed: int, flags: int = SYN) -> list[Packet]:
    """New flows from many pods (10.x: the local-traffic detector's range)
    to services spread over the whole table."""
    rng = random.Random(seed)
    infos = ports(services)
    out = []
    for n in range(count):
        info = infos[rng.randrange(len(infos))]
        out.append(
            Packet(TCP, (10 << 24) | rng.randrange(1 << 20), 1024 + n % 60000, info.cluster_ip, info.port, flags=flags)
        )
    return out


def cycle(mode: IptablesMode, pkts: list[Packet], now: float) -> Callable[[], Decision]:
    it: Iterator[Packet] = iter(pkts)
    route = mode.route

    def step() -> Decision:
        return route(next(it), now)

    return step


def test_new_flow_decision(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    mode = mode_of(services)
    pkts = packets(services, 1000 if benchmark.disabled else FLOWS, seed=services)
    step = cycle(mode, pkts, 1.0)
    if benchmark.disabled:
        result = benchmark(step)
    else:
        # Ten flows per timed round, as the IPVS benchmark times them (one
        # timer call per packet weighs on a decision this short), and about
        # 50,000 in all: conntrack's table grows with every new flow.
        result = benchmark.pedantic(step, rounds=5_000, iterations=10, warmup_rounds=100)
    assert result.verdict is Verdict.DNAT and not result.established
    # What the kernel would walk for these flows (the position of the service in KUBE-SERVICES).
    sample = [mode.route(p, 2.0).rules for p in packets(services, 200, seed=services + 7)]
    rules = statistics.median(sample)
    benchmark.extra_info["rules_evaluated_median"] = rules
    benchmark.extra_info["rules_evaluated_max"] = max(sample)
    benchmark.extra_info["modeled_kernel_us_median"] = round(cost.DEFAULT.latency_us(int(rules)), 1)


def test_last_service_rule_count(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    """The worst case the kernel pays: the last service in KUBE-SERVICES."""
    mode = mode_of(services)
    last = ports(services)[-1]
    pkts = [Packet(TCP, (10 << 24) | n, 2000 + n % 60000, last.cluster_ip, last.port) for n in range(20_000)]
    result = benchmark(cycle(mode, pkts, 3.0))
    assert result.verdict is Verdict.DNAT
    assert result.rules >= services  # the walk passed every earlier service's rule
    benchmark.extra_info["rules_evaluated"] = result.rules
    benchmark.extra_info["modeled_kernel_us"] = round(cost.DEFAULT.latency_us(result.rules), 1)


def test_established_packet(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    mode = mode_of(services)
    opened = packets(services, 1000 if benchmark.disabled else 20_000, seed=services + 1)
    acks = []
    for p in opened:
        d = mode.route(p, 5.0)
        assert d.endpoint is not None
        # The handshake, so the entry is ESTABLISHED (an ACK right after a SYN would be INVALID).
        mode.route(Packet(TCP, d.endpoint[0], d.endpoint[1], p.src, p.sport, flags=SYN | ACK), 5.0)
        acks.append(p._replace(flags=ACK))
    for p in acks:
        mode.route(p, 5.0)  # the first ACK walks the filter table once; later ones hit the entry's cache
    step = cycle(mode, acks * (1 if benchmark.disabled else 12), 6.0)
    # Ten packets per timed round (as for new flows and in the IPVS benchmark).
    result = (
        benchmark.pedantic(step, rounds=20_000, iterations=10, warmup_rounds=2_000)
        if not benchmark.disabled
        else benchmark(step)
    )
    assert result.verdict is Verdict.DNAT and result.established


def test_full_render(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    view = view_of(services)
    view.categorize(next(iter(view.service_ports())))  # views come categorised from kube-proxy's caches

    def render() -> int:
        return Renderer().sync(view).rules

    rules = benchmark.pedantic(render, rounds=3, iterations=1) if not benchmark.disabled else benchmark(render)
    assert rules > services * ENDPOINTS * 3


def test_partial_sync_of_one_service(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    """One service's endpoints change back and forth; every sync is partial."""
    mode = IptablesMode(random.Random(0))
    view = view_of(services)
    mode.sync(view)
    key = ports(services)[services // 2].name.service
    entry = view.state.entries[key]
    (spn, eps), *_ = entry.endpoints.items()
    fewer = type(entry)(entry.ports, {spn: eps[:-1]})
    states = [view.state.with_entry(key, fewer), view.state]
    views = [view.with_state(s) for s in states]
    flip = iter(range(10**9))

    def sync() -> bool:
        return mode.sync(views[next(flip) % 2]).partial

    partial = benchmark.pedantic(sync, rounds=40, iterations=1) if not benchmark.disabled else benchmark(sync)
    assert partial


@pytest.mark.kernel
def test_kernel_cost_curve(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The kernel's own curve, measured with the namespace harness: connect
    latency to the first and the last service, and iptables-restore time,
    against the number of services (what cost.py is calibrated from)."""
    from proxy_modes.iptables import kernel

    sizes = [100, 1000] if benchmark.disabled else [100, 1000, 10000]
    connects = 60 if benchmark.disabled else 300

    def measure() -> list[kernel.CurvePoint]:
        return kernel.measure_curve(((n, kernel.one_endpoint_view(n)) for n in sizes), "nft", connects)

    points = benchmark.pedantic(measure, rounds=1, iterations=1) if not benchmark.disabled else benchmark(measure)
    assert [p.services for p in points] == sizes
    assert all(p.rules_last - p.rules_first == p.services - 1 for p in points)
    for p in points:
        key = f"{p.services}svc"
        benchmark.extra_info[f"connect_first_us_{key}"] = round(p.connect_first_us, 1)
        benchmark.extra_info[f"connect_last_us_{key}"] = round(p.connect_last_us, 1)
        benchmark.extra_info[f"restore_s_{key}"] = round(p.restore_s, 3)
        benchmark.extra_info[f"modeled_last_us_{key}"] = round(cost.DEFAULT.latency_us(p.rules_last), 1)
