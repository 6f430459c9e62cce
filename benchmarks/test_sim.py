"""Simulator speed: packets per second through client, node (each mode), link and pod.

Targets (issue 7): at least 200,000 simulated packets per second, and a
one-minute simulated run of 1,000 clients in under a minute of wall time.
A "packet" is one a client or a pod (or a user-space proxy) sends, however
many links it then crosses; `pps` in extra_info is packets / the run's min
time (setup excluded: the cluster, the nodes' first syncs and the clients
are built in `setup`, outside the timing). Two shapes: `local` (one node:
client veth -> node -> pod veth) and `cluster` (ten nodes: most endpoints
are a node away, one more link and a forwarding node per packet). Under
`--benchmark-disable` each body runs once on a small load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from kubenetem.scenarios import synthetic_cluster
from kubenetem.simulation import SimConfig, prepare
from netem.cluster import Cluster
from netem.sim import OK, Sim
from proxy_modes import registry

from .conftest import quick

SHAPES = {"local": 1, "cluster": 10}


@pytest.fixture(scope="module")
def clusters() -> dict[str, Cluster]:
    return {shape: synthetic_cluster(services=100, endpoints=10, nodes=n) for shape, n in SHAPES.items()}


def _record(benchmark: Any, packets: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        best = stats.stats.min
        benchmark.extra_info["packets"] = packets
        benchmark.extra_info["pps_min_time"] = round(packets / best)
        benchmark.extra_info["pps_median_time"] = round(packets / stats.stats.median)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", registry.available())
def test_packets_per_second(
    benchmark: Callable[..., Any], clusters: dict[str, Cluster], mode: str, shape: str, request: pytest.FixtureRequest
) -> None:
    small = quick(request.config)
    config = SimConfig(
        mode=mode,
        clients=20 if small else 200,
        connections=5 if small else 25,
        duration=5.0,
        link="delay 1ms",
    )
    sims: list[Sim] = []

    def setup() -> tuple[tuple[Sim], dict[str, Any]]:
        sim, _ = prepare(clusters[shape], config)
        sims.append(sim)
        return (sim,), {}

    benchmark.pedantic(Sim.run, setup=setup, rounds=1 if small else 5, iterations=1)  # type: ignore[call-arg]
    sim = sims[-1]
    assert len(sim.records) == config.clients * config.connections
    assert all(r[2] == OK for r in sim.records)
    _record(benchmark, sim.sent)


def test_one_minute_of_a_thousand_clients(
    benchmark: Callable[..., Any], clusters: dict[str, Cluster], request: pytest.FixtureRequest
) -> None:
    """1,000 client pods over ten nodes, one connection a second each for a
    simulated minute (60,000 connections, 480,000 packets), IPVS, 1 ms links:
    the whole run, setup included, in under a minute of wall time."""
    small = quick(request.config)
    config = SimConfig(
        mode="ipvs",
        clients=50 if small else 1000,
        connections=60,
        duration=60.0,
        link="delay 1ms",
    )
    result: list[tuple[Sim, float]] = []

    def run() -> None:
        start = time.perf_counter()
        sim, _ = prepare(clusters["cluster"], config)
        sim.run()
        result.append((sim, time.perf_counter() - start))

    benchmark.pedantic(run, rounds=1, iterations=1)  # type: ignore[call-arg]
    sim, wall = result[-1]
    assert len(sim.records) == config.clients * 60
    assert max(r[1] for r in sim.records) >= 59 * 1_000_000_000  # a full simulated minute
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["wall_s"] = round(wall, 2)
        benchmark.extra_info["packets"] = sim.sent
        benchmark.extra_info["pps"] = round(sim.sent / wall)
