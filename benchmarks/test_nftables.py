"""kube-proxy's nftables mode at scale (issue 9's targets).

- a new connection's decision: at most 1.5 us median, flat from 100 to 30,000
  services x 10 endpoints (`test_new_flow_decision`: the ruleset's answer,
  compiled plan included; `test_new_flow_route` adds the conntrack entry the
  connection leaves behind, netem.conntrack, shared by every mode);
- a full render of 10,000 services at most 1.5 s (`test_full_render`, with
  cold chain-name caches: every SHA-256 computed);
- a partial sync of one change at most 20 ms (`test_partial_sync`);
- the kernel's own `nft -f` load time against the service count
  (`test_kernel_load`, marked kernel). It grows steeply, so by default only
  100 and 1,000 services run; KUBENETEM_NFT_LOAD_SIZES=100,1000,3000,10000
  (etc.) measures more of the curve.

Big clusters are built once per module (kubenetem.scenarios is the slow part).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubenetem.scenarios import synthetic_cluster
from netem.packet import Packet
from proxy_modes.nftables import rules as nft_rules
from proxy_modes.nftables.engine import NftablesMode
from proxy_modes.view import NodeView, ServiceEntry, build_state, node_view

ENDPOINTS = 10
SAMPLE = 1000  # destinations the per-flow benchmarks spread over
_views: dict[int, NodeView] = {}


def cluster_view(services: int) -> NodeView:
    if services not in _views:
        cluster = synthetic_cluster(services=services, endpoints=ENDPOINTS, nodes=10)
        _views[services] = node_view(cluster, build_state(cluster))
    return _views[services]


def synced(services: int, seed: int = 0) -> NftablesMode:
    m = NftablesMode(random.Random(seed))
    m.sync(cluster_view(services))
    return m


def new_flows(view: NodeView, count: int, destinations: int = SAMPLE) -> list[Packet]:
    """`count` distinct new TCP connections from pods, in rotation over
    `destinations` ClusterIPs spread across the cluster."""
    total = sum(1 for _ in view.service_ports())
    infos = list(itertools.islice(view.service_ports(), 0, None, max(1, total // destinations)))[:destinations]
    return [
        Packet(
            6, 0x0A000000 + (n >> 14), 1024 + (n & 0x3FFF), infos[n % len(infos)].cluster_ip, infos[n % len(infos)].port
        )
        for n in range(count)
    ]


def cycling(packets: list[Packet], on_wrap: Callable[[], None] | None = None) -> Iterator[Packet]:
    while True:
        yield from packets
        if on_wrap is not None:
            on_wrap()


def decision_benchmark(benchmark: Any, services: int, destinations: int) -> None:
    m = synced(services)
    packets = new_flows(cluster_view(services), 50_000, destinations)
    decide = m.engine.decide
    for p in packets[:destinations]:  # every destination's plan explored first
        m.engine.prepare(p, 0.0)
    flow = cycling(packets)

    def one() -> object:
        return decide(next(flow), 1.0)

    out = benchmark(one)
    assert out.decision.endpoint is not None
    benchmark.extra_info["plans"] = len(m.engine.plans)


@pytest.mark.benchmark(group="nftables: new-flow decision, 100 destinations in rotation (target 1.5 us)")
def test_new_flow_decision(benchmark: Any, services: int) -> None:
    decision_benchmark(benchmark, services, 100)


@pytest.mark.benchmark(group="nftables: new-flow decision, 1,000 destinations in rotation")
def test_new_flow_decision_wide(benchmark: Any, services: int) -> None:
    """The same with ten times the plans in use: more of them miss the CPU cache."""
    decision_benchmark(benchmark, services, 1000)


@pytest.mark.benchmark(group="nftables: new connection routed, conntrack entry included")
def test_new_flow_route(benchmark: Any, services: int) -> None:
    m = synced(services)
    packets = new_flows(cluster_view(services), 200_000)
    route = m.route
    for p in packets[:SAMPLE]:  # every destination's plan explored first
        m.engine.prepare(p, 0.0)
    flow = cycling(packets, m.conntrack.flush)

    def one() -> object:
        return route(next(flow), 1.0)

    d = benchmark(one)
    assert not d.established


@pytest.mark.benchmark(group="nftables: first connection to a destination (literal walk + plan start)")
def test_first_packet_to_a_destination(benchmark: Any, services: int, pytestconfig: pytest.Config) -> None:
    m = synced(services)
    packets = iter(new_flows(cluster_view(services), 100_000))

    def first() -> object:
        m.engine.plans.clear()
        m.engine.fast.clear()
        return m.engine.decide(next(packets), 0.0)

    benchmark.pedantic(first, rounds=1 if quick(pytestconfig) else 200, iterations=1)


@pytest.mark.benchmark(group="nftables: one destination's whole plan explored")
def test_whole_plan(benchmark: Any, services: int, pytestconfig: pytest.Config) -> None:
    m = synced(services)
    packets = iter(new_flows(cluster_view(services), 100_000))

    def whole() -> None:
        m.engine.plans.clear()
        m.engine.fast.clear()
        m.engine.prepare(next(packets), 0.0)

    benchmark.pedantic(whole, rounds=1 if quick(pytestconfig) else 50, iterations=1)


@pytest.mark.benchmark(group="nftables: full render (target 1.5 s at 10k services)")
def test_full_render(benchmark: Any, services: int) -> None:
    view = cluster_view(services)

    def setup() -> tuple[tuple[NftablesMode], dict[str, Any]]:
        nft_rules._hashed.cache_clear()  # cold: every chain name hashed again
        nft_rules.service_chain_base.cache_clear()
        return (NftablesMode(random.Random(0)),), {}

    def render(m: NftablesMode) -> int:
        return m.sync(view).objects

    rounds = 1 if services >= 10000 else 3
    objects = benchmark.pedantic(render, setup=setup, rounds=rounds, iterations=1)
    assert objects >= services * (2 + 2 * ENDPOINTS)
    benchmark.extra_info["rules"] = objects


@pytest.mark.benchmark(group="nftables: partial sync of one change (target 20 ms)")
def test_partial_sync(benchmark: Any, services: int, pytestconfig: pytest.Config) -> None:
    m = synced(services)
    base = cluster_view(services)
    name = next(iter(base.state.entries))
    entry = base.state.entries[name]
    fewer = ServiceEntry(entry.ports, {spn: eps[:-1] for spn, eps in entry.endpoints.items()})
    views = itertools.cycle([base.with_state(base.state.with_entry(name, e)) for e in (fewer, entry)])

    def one() -> object:
        return m.sync(next(views))

    result = benchmark.pedantic(one, rounds=2 if quick(pytestconfig) else 40, iterations=1)
    assert result.partial and result.changed == 1


def load_sizes(config: pytest.Config) -> list[int]:
    text = os.environ.get("KUBENETEM_NFT_LOAD_SIZES")
    if text:
        return [int(n) for n in text.split(",") if n]
    return [100] if quick(config) else [100, 1000]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "load_services" in metafunc.fixturenames:
        sizes = load_sizes(metafunc.config)
        metafunc.parametrize("load_services", sizes, ids=[f"{n}svc" for n in sizes])


_netns = itertools.count()


def quick(config: pytest.Config) -> bool:
    """Inside `make test` (--benchmark-disable) each body runs once, small."""
    return bool(config.getoption("benchmark_disable", default=False))


@pytest.mark.kernel
@pytest.mark.benchmark(group="nftables: kernel load with nft -f")
def test_kernel_load(benchmark: Any, load_services: int) -> None:
    from proxy_modes.nftables.kernel import Nft

    text = synced(load_services).dump()
    names: list[str] = []

    def setup() -> tuple[tuple[Nft], dict[str, Any]]:
        name = f"bnft-{os.getpid()}-{next(_netns)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        names.append(name)
        return (Nft(name),), {}

    def load(nft: Nft) -> float:
        return nft.load(text)

    try:
        rounds = 3 if load_services <= 1000 else 1
        seconds = benchmark.pedantic(load, setup=setup, rounds=rounds, iterations=1)
        assert seconds > 0
        benchmark.extra_info["rules"] = text.count("\nadd rule ")
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=60)


@pytest.mark.kernel
@pytest.mark.benchmark(group="nftables: kernel connect latency through the table")
def test_kernel_connect_latency(benchmark: Any, load_services: int) -> None:
    """A real TCP connection from a pod to a ClusterIP, through a node whose
    table also holds `load_services` other services: the verdict maps keep
    the kernel's cost flat. The benchmark times a batch of 20 connections
    (agent round trip included); extra_info has the per-connection latency
    the client measured."""
    from nft_helpers import Port, Svc, config

    from netem.netns import Topology
    from proxy_modes.view import ProxyState

    others = cluster_view(load_services)
    web = Svc(
        "bench",
        "web",
        "172.31.0.41",
        [Port("http", 80)],
        endpoints=[(f"10.181.0.{n}", "test-node", {"http": 8080}) for n in (1, 2, 3)],
    )
    state = ProxyState({**others.state.entries, ("bench", "web"): web.entry()})
    view = NodeView(state, "test-node", (0xC0A80002,), config(), service_cidrs=others.service_cidrs)
    m = NftablesMode(random.Random(0))
    text = m.sync(view).text
    with Topology("bnft") as topo:
        node = topo.node(["192.168.0.2"])
        for n in (1, 2, 3):
            topo.leaf(f"pod-{n}", [f"10.181.0.{n}"]).serve(8080)
        client = topo.leaf("client", ["10.181.1.9"])
        # The node routes what it has no route for (service addresses) to the
        # outside host, so that it answers the client's ARP for them (proxy ARP).
        topo.leaf("outside", ["203.0.113.10"], default_route=True)
        node.run(["nft", "-f", "-"], input=text)
        elapsed: list[float] = []

        def batch() -> int:
            replies = client.connect_many("172.31.0.41", 80, count=20, timeout=1.0)
            elapsed.extend(r.elapsed for r in replies)
            return sum(r.status == "ok" for r in replies)

        ok = benchmark.pedantic(batch, rounds=10, iterations=1)
        assert ok == 20
        elapsed.sort()
        benchmark.extra_info["connect_median_us"] = round(elapsed[len(elapsed) // 2] * 1e6, 1)
        benchmark.extra_info["services"] = load_services + 1
