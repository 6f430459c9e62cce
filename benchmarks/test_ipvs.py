"""IPVS mode speed: new-flow decisions, established packets, building the state.

Targets (issue 4): a new flow's decision at most 1.5 us median, an
established flow's packet at most 0.5 us, flat from 100 to 30,000 services x
10 endpoints, with rr and with persistence; building the IPVS state for 10k
services x 10 endpoints at most 1 s. The curve is the `services` parameter.
The sizes come from benchmarks/conftest.py (only the smallest under
`--benchmark-disable`); the big tables are built once per session.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from kubenetem.scenarios import synthetic_cluster
from netem.packet import ACK, SYN, TCP, Packet
from proxy_modes.base import Decision, Verdict
from proxy_modes.ipvs.engine import IpvsMode, Service
from proxy_modes.ipvs.rules import VirtualServerSpec
from proxy_modes.ipvs.schedulers import F_PERSISTENT
from proxy_modes.view import build_state, node_view

ENDPOINTS = 10
FLOWS = 300_000  # distinct new flows prepared per benchmark
SERVICE_BASE = (172 << 24) | (30 << 16)
POD_BASE = (10 << 24) | (180 << 16)


_TABLES: dict[tuple[int, bool], IpvsMode] = {}


def table(services: int, persistent: bool) -> IpvsMode:
    """services x 10 endpoints programmed the way `ipvsadm -R` would (the
    route path does not care how the table was built; building from a view
    is measured separately)."""
    key = (services, persistent)
    if key not in _TABLES:
        mode = IpvsMode(random.Random(0))
        for i in range(services):
            spec = VirtualServerSpec(TCP, SERVICE_BASE + i, 80, "rr")
            if persistent:
                spec.flags, spec.timeout = F_PERSISTENT, 10800
            svc = Service(spec)
            for j in range(ENDPOINTS):
                svc.add_dest(POD_BASE + i * ENDPOINTS + j, 8080, 1)
            mode.services[spec.key] = svc
        _TABLES[key] = mode
    return _TABLES[key]


def packets(services: int, flags: int, count: int, seed: int) -> list[Packet]:
    """Flows from many clients to services spread over the whole table."""
    rng = random.Random(seed)
    return [
        Packet(
            TCP,
            (10 << 24) | rng.randrange(1 << 20),
            1024 + n % 60000,
            SERVICE_BASE + rng.randrange(services),
            80,
            flags=flags,
        )
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
    mode = table(services, persistent)
    pkts = packets(services, SYN, 1000 if benchmark.disabled else FLOWS, seed=services)
    step = cycle(mode, pkts)
    result = (
        benchmark.pedantic(step, rounds=FLOWS // 20, iterations=1, warmup_rounds=100)
        if not benchmark.disabled
        else benchmark(step)
    )
    assert result.verdict is Verdict.DNAT and not result.established


@pytest.mark.parametrize("persistent", [False, True], ids=["rr", "persistent"])
def test_established_packet(benchmark, services: int, persistent: bool) -> None:  # type: ignore[no-untyped-def]
    mode = table(services, persistent)
    opened = packets(services, SYN, 1000 if benchmark.disabled else 20_000, seed=services + 1)
    for p in opened:
        mode.route(p, 1.0)
    acks = [p._replace(flags=ACK) for p in opened] * (1 if benchmark.disabled else 50)
    step = cycle(mode, acks)
    result = benchmark(step)
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
