"""Link and topology speed: the per-packet cost the simulator pays for netem and routing.

The simulator's target (issue 7) is 200,000 packets/s through client, node
(any mode), link and pod, i.e. 5 us per packet for everything; a packet
crosses one or two links and one or two route lookups, so the link should
cost well under 1 us per packet in its common configurations and a route
lookup a fraction of that. Each round sends BATCH packets through a fresh
link (`ns_per_packet` in extra_info is the mean divided by BATCH). Under
`--benchmark-disable` every body runs once with a small batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from netem.addr import parse_ip
from netem.link import Link
from netem.packet import TCP, Packet
from netem.topology import Topology

CONFIGS = {
    "none": "",
    "delay": "delay 10ms",
    "delay-rate": "delay 10ms rate 100mbit",
    "jitter": "delay 10ms 2ms",
    "jitter-normal-loss": "delay 10ms 2ms 25% distribution normal loss 1%",
    "gemodel": "delay 5ms loss gemodel 1% 10% 70% 0.1%",
    "everything": "delay 10ms 2ms reorder 1% 50% gap 3 duplicate 1% corrupt 0.1% loss 1% rate 1gbit",
}


def batch_size(config: pytest.Config) -> int:
    return 200 if config.getoption("benchmark_disable", default=False) else 20_000


def traffic(n: int) -> tuple[list[Packet], list[int]]:
    rng = random.Random(1)
    packets = [Packet(TCP, 0x0A000000 | rng.randrange(1 << 16), 1024 + i % 60000, 0x0AB40001, 8080) for i in range(n)]
    times = [i * 20_000 for i in range(n)]  # 50,000 packets/s on the link
    return packets, times


def per_packet(benchmark: pytest.FixtureRequest, n: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["ns_per_packet"] = round(stats.stats.mean / n * 1e9)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_link_send(benchmark: Callable[..., object], name: str, request: pytest.FixtureRequest) -> None:
    n = batch_size(request.config)
    packets, times = traffic(n)
    text = CONFIGS[name]

    def run() -> int:
        send = Link.from_tc(text, random.Random(7)).send
        delivered = 0
        for packet, now in zip(packets, times, strict=True):
            delivered += len(send(packet, now))
        return delivered

    delivered = benchmark(run)
    assert 0.9 * n < delivered <= 1.1 * n  # type: ignore[operator]
    per_packet(benchmark, n)  # type: ignore[arg-type]


def test_loop_baseline(benchmark: Callable[..., object], request: pytest.FixtureRequest) -> None:
    """The same loop around a function that only builds the delivery: the part not the link's."""
    n = batch_size(request.config)
    packets, times = traffic(n)

    def deliver(packet: Packet, now: int) -> list[tuple[int, Packet, int]]:
        return [(now, packet, 0)]

    def run() -> int:
        delivered = 0
        for packet, now in zip(packets, times, strict=True):
            delivered += len(deliver(packet, now))
        return delivered

    assert benchmark(run) == n
    per_packet(benchmark, n)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["delay", "slot"])
def test_link_enqueue_dequeue(benchmark: Callable[..., object], name: str, request: pytest.FixtureRequest) -> None:
    """The qdisc interface (needed for `slot`): enqueue, then dequeue at every wakeup."""
    n = batch_size(request.config)
    packets, times = traffic(n)
    text = {"delay": "delay 10ms", "slot": "delay 1ms slot 1ms 2ms packets 100"}[name]

    def run() -> int:
        link = Link.from_tc(text, random.Random(7))
        delivered = 0
        for packet, now in zip(packets, times, strict=True):
            while link.wakeup is not None and link.wakeup < now:
                delivered += len(link.dequeue(link.wakeup))
            delivered += len(link.enqueue(packet, now))
        while link.wakeup is not None:
            delivered += len(link.dequeue(link.wakeup))
        return delivered + link.stats.overlimits

    assert benchmark(run) == n  # every packet left or met the limit
    per_packet(benchmark, n)  # type: ignore[arg-type]


def test_route_lookup(benchmark: Callable[..., object], request: pytest.FixtureRequest) -> None:
    """fib lookups on a node of a 50-node cluster (49 remote pod ranges, local table, default)."""
    from kubenetem.scenarios import synthetic_cluster

    topo = Topology.from_cluster(synthetic_cluster(10, 10, nodes=50))
    node = topo.node()
    rng = random.Random(3)
    n = batch_size(request.config)
    destinations = [rng.choice(list(topo.pods)) for _ in range(n // 2)] + [rng.getrandbits(32) for _ in range(n // 2)]

    def run() -> int:
        lookup = node.lookup
        return sum(1 for d in destinations if lookup(d) is not None)

    assert benchmark(run) == n
    per_packet(benchmark, n)  # type: ignore[arg-type]
    assert topo.path(parse_ip("203.0.113.5"), destinations[0])
