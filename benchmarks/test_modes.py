"""The proxy modes side by side (issue 8): one pytest-benchmark group per
measure and cluster size, one benchmark per mode in it, so that
`pytest benchmarks/test_modes.py --benchmark-only` prints the comparison.

Measures: a new flow's decision and an established flow's packet, with round
robin and with ClientIP affinity; a full sync and a sync after one service
changed. Clusters are kubenetem.scenarios' N services x 10 endpoints seen
from node-1, built once per size; every mode is warmed up first (a
connection and an established packet per service), as `kubenetem bench`
does, so the timed decisions are the steady state.
"""

from __future__ import annotations

import itertools
import random
from functools import cache
from typing import Any

import pytest

from kubenetem.bench import answer, changed_view, clients_of, warm_up
from kubenetem.scenarios import synthetic_cluster
from netem.packet import SYN, TCP, Packet
from proxy_modes import registry
from proxy_modes.base import ProxyMode, Verdict
from proxy_modes.view import NodeView, build_state, node_view

MODES = registry.available()
ENDPOINTS = 10
FLOWS = 50_000


@cache
def view(services: int, affinity: bool) -> NodeView:
    cluster = synthetic_cluster(services=services, endpoints=ENDPOINTS, nodes=10, affinity=affinity)
    return node_view(cluster, build_state(cluster), "node-1")


@cache
def warmed(mode_name: str, services: int, affinity: bool) -> tuple[ProxyMode, list[Packet]]:
    v = view(services, affinity)
    mode = registry.create(mode_name, random.Random(0))
    mode.sync(v)
    infos = list(v.service_ports())
    clients = clients_of(v, random.Random(1))
    warm_up(mode, infos, clients)
    rng = random.Random(2)
    packets = [
        Packet(TCP, rng.choice(clients), 1024 + n % 60000, info.cluster_ip, info.port, flags=SYN)
        for n, info in enumerate(rng.choice(infos) for _ in range(FLOWS))
    ]
    return mode, packets


def _group(benchmark: Any, what: str, services: int, affinity: bool) -> None:
    benchmark.group = f"{what}, {services} services x {ENDPOINTS}, {'ClientIP' if affinity else 'round robin'}"


@pytest.mark.parametrize("affinity", [False, True], ids=["rr", "clientip"])
@pytest.mark.parametrize("mode_name", MODES)
def test_new_flow(benchmark: Any, mode_name: str, services: int, affinity: bool) -> None:
    _group(benchmark, "new flow", services, affinity)
    mode, packets = warmed(mode_name, services, affinity)
    it = iter(packets if not benchmark.disabled else packets[:200])
    route = mode.route

    def step() -> Any:
        return route(next(it), 1.0)

    result = benchmark.pedantic(step, rounds=200, iterations=100) if not benchmark.disabled else benchmark(step)
    assert result.verdict is Verdict.DNAT and result.endpoint is not None


@pytest.mark.parametrize("affinity", [False, True], ids=["rr", "clientip"])
@pytest.mark.parametrize("mode_name", MODES)
def test_established_packet(benchmark: Any, mode_name: str, services: int, affinity: bool) -> None:
    _group(benchmark, "established packet", services, affinity)
    mode, packets = warmed(mode_name, services, affinity)
    opened = packets[-5000:] if not benchmark.disabled else packets[-100:]
    node_ip = view(services, affinity).node_ip
    # Fresh flows (test_new_flow's rounds never reach them), each handshake
    # completed (its ACK routed once) before anything is timed.
    handshakes = [answer(mode, p, mode.route(p, 2.0), node_ip, 2.0) for p in opened]
    assert all(mode.route(ack, 2.0005).established for ack in handshakes)
    acks = itertools.cycle(handshakes)
    route = mode.route

    def step() -> Any:
        return route(next(acks), 2.001)

    result = benchmark.pedantic(step, rounds=200, iterations=100) if not benchmark.disabled else benchmark(step)
    assert result.endpoint is not None and result.established


@pytest.mark.parametrize("mode_name", MODES)
def test_full_sync(benchmark: Any, mode_name: str, services: int) -> None:
    benchmark.group = f"full sync, {services} services x {ENDPOINTS}"
    v = view(services, False)

    def sync() -> int:
        return registry.create(mode_name, random.Random(0)).sync(v).objects

    rounds = 1 if services >= 10000 or benchmark.disabled else 3
    assert benchmark.pedantic(sync, rounds=rounds, iterations=1) > 0


@pytest.mark.parametrize("mode_name", MODES)
def test_one_change_sync(benchmark: Any, mode_name: str, services: int) -> None:
    benchmark.group = f"sync after one service changed, {services} services x {ENDPOINTS}"
    base = view(services, False)
    changed, _ = changed_view(base)
    mode = registry.create(mode_name, random.Random(0))
    mode.sync(base)
    views = itertools.cycle([changed, base])

    def sync() -> int:
        return mode.sync(next(views)).objects

    rounds = 2 if benchmark.disabled else 20
    assert benchmark.pedantic(sync, rounds=rounds, iterations=1) > 0
