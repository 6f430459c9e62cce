"""IPVS mode speed: new-flow decisions, established packets, building the state.

Targets (issue 4): a new flow's decision at most 1.5 us median, an
established flow's packet at most 0.5 us, flat from 100 to 30,000 services x
10 endpoints, with rr and with persistence; building the IPVS state for 10k
services x 10 endpoints at most 1 s. The curve is the `services` parameter.
The sizes come from benchmarks/conftest.py (only the smallest under
`--benchmark-disable`); the tables are synced from synthetic clusters (the
rules IPVS sits among included), built once per session and warmed up with
`prepare()` per service (each real server's plan for the flows' client key,
what `kubenetem bench` does too), so a new flow is timed in the steady state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from kubenetem.scenarios import synthetic_cluster
from netem.packet import ACK, SYN, TCP, Packet
from proxy_modes.base import Decision, Verdict
from proxy_modes.ipvs.engine import IpvsMode
from proxy_modes.view import build_state, node_view

ENDPOINTS = 10
CLIENT = (10 << 24) | 5  # a pod: the flows' clients share its walk key (in the cluster CIDR, in no set)
FLOWS = 20_000  # distinct new flows per benchmark (warm-up included)


_TABLES: dict[tuple[int, bool], tuple[IpvsMode, list[tuple[int, int]]]] = {}


def table(services: int, persistent: bool) -> tuple[IpvsMode, list[tuple[int, int]]]:
    """A node synced from services x 10 endpoints (ClientIP affinity: a
    persistent service), kube-proxy's iptables rules and ipsets included, so
    a decision pays for their walk as the mode does it; and the services'
    (VIP, port). Built once per session."""
    key = (services, persistent)
    if key not in _TABLES:
        cluster = synthetic_cluster(services, ENDPOINTS, affinity=persistent, mode="ipvs")
        view = node_view(cluster, build_state(cluster), "node-1")
        mode = IpvsMode(random.Random(0))
        mode.program(view)
        vips = [(info.cluster_ip, info.port) for info in view.service_ports()]
        for vip, port in vips:  # warm-up, as `kubenetem bench` does: the timed decisions are the steady state
            mode.prepare(Packet(TCP, CLIENT, 1, vip, port, flags=SYN), 0.5)
        del cluster, view
        _TABLES[key] = (mode, vips)
    return _TABLES[key]


def packets(vips: list[tuple[int, int]], flags: int, count: int, seed: int) -> list[Packet]:
    """Flows from many pods (in the cluster CIDR) to services spread over the whole table."""
    rng = random.Random(seed)
    return [
        Packet(TCP, (10 << 24) | rng.randrange(1 << 20), 1024 + n % 60000, *rng.choice(vips), flags=flags)
        for n in range(count)
    ]


def cycle(mode: IpvsMode, pkts: list[Packet]) -> Callable[[], Decision]:
    it: Iterator[Packet] = iter(pkts)
    route = mode.route

    def step() -> Decision:
        return route(next(it), 1.0)

    return step


@pytest.mark.parametrize("persistent", [False, True], ids=["rr", "persistent"])
def test_new_flow_decision(benchmark, services: int, persistent: bool) -> None:  # type: ignore[no-untyped-def]
    mode, vips = table(services, persistent)
    pkts = packets(vips, SYN, 1000 if benchmark.disabled else FLOWS + 1000, seed=services)
    step = cycle(mode, pkts)
    # Each call takes a new flow; ten per timed round keep the timer's own
    # cost (a few hundred ns) out of the figure.
    result = (
        benchmark.pedantic(step, rounds=FLOWS // 10 - 100, iterations=10, warmup_rounds=100)
        if not benchmark.disabled
        else benchmark(step)
    )
    assert result.verdict is Verdict.DNAT and not result.established and result.rules > 0


@pytest.mark.parametrize("persistent", [False, True], ids=["rr", "persistent"])
def test_established_packet(benchmark, services: int, persistent: bool) -> None:  # type: ignore[no-untyped-def]
    mode, vips = table(services, persistent)
    opened = packets(vips, SYN, 1000 if benchmark.disabled else 20_000, seed=services + 1)
    for p in opened:
        mode.route(p, 1.0)
    acks = [p._replace(flags=ACK) for p in opened] * (1 if benchmark.disabled else 12)
    step = cycle(mode, acks)
    # Ten packets per timed round, as for new flows; the warm-up takes each
    # connection's first established packet (its decision made once).
    result = (
        benchmark.pedantic(step, rounds=20_000, iterations=10, warmup_rounds=2_000)
        if not benchmark.disabled
        else benchmark(step)
    )
    assert result.verdict is Verdict.DNAT and result.established


@pytest.fixture(scope="session")
def view_10k(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    quick = request.config.getoption("benchmark_disable", False)
    cluster = synthetic_cluster(200 if quick else 10_000, ENDPOINTS, mode="ipvs")
    view = node_view(cluster, build_state(cluster), "node-1")
    IpvsMode(random.Random(0)).program(view)  # categorise once, as kube-proxy's caches would be warm
    return view


def test_build_ipvs_state_10k(benchmark, view_10k) -> None:  # type: ignore[no-untyped-def]
    def build() -> int:
        return IpvsMode(random.Random(0)).program(view_10k)

    objects = benchmark.pedantic(build, rounds=3, iterations=1) if not benchmark.disabled else benchmark(build)
    assert objects == sum(1 + ENDPOINTS for _ in view_10k.service_ports())
