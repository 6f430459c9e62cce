"""Topology without the kernel: tables from the cluster, paths, the compiled lookup.

(The same tables are compared with the kernel's in test_topology_kernel.py.)
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from netem.addr import Cidr, parse_cidr, parse_ip, prefix_mask
from netem.cluster import load_cluster
from netem.errors import UsageError
from netem.topology import UPLINK, Route, Table, Topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

WORKER_1 = """\
default via 192.168.0.1 dev eth0 \n\
10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1 \n\
10.244.2.0/24 via 192.168.0.3 dev eth0 \n\
192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2 \n\
"""


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology.from_cluster(load_cluster([str(EXAMPLES)]))


def test_example_table(topo: Topology) -> None:
    assert topo.render("worker-1") == WORKER_1
    assert topo.render() == WORKER_1  # the first node by name


def test_every_remote_pod_cidr_has_one_route_via_its_node(topo: Topology) -> None:
    net = topo.node("worker-2")
    via = {str(r.dst): r.via for r in net.main.routes if r.via is not None and r.dst.length}
    assert via == {"10.244.1.0/24": parse_ip("192.168.0.2")}


def test_pods_are_attached_to_their_nodes(topo: Topology) -> None:
    assert len(topo.pods) == 3
    for ip, pod in topo.pods.items():
        assert topo.node_of(ip) == pod.node
        assert ip in topo.node(pod.node).pod_cidrs[0]
        assert pod.veth.startswith("veth") and len(pod.veth) == 12
    assert topo.node_of(parse_ip("192.168.0.3")) == "worker-2"
    assert topo.node_of(parse_ip("10.9.9.9")) is None


def test_path_from_a_pod_to_a_pod_on_another_node(topo: Topology) -> None:
    src = next(ip for ip, p in topo.pods.items() if p.node == "worker-2")
    dst_pod = next(p for p in topo.pods.values() if p.node == "worker-1")
    hops = topo.path(src, dst_pod.ip)
    assert [(h.node, h.to) for h in hops] == [
        ("worker-2", "node:worker-1"),
        ("worker-1", f"pod:{dst_pod.namespace}/{dst_pod.name}"),
    ]
    assert hops[0].next_hop == parse_ip("192.168.0.2") and hops[0].route.dev == UPLINK


def test_path_to_outside_and_to_a_node(topo: Topology) -> None:
    pod = next(iter(topo.pods.values()))
    out = topo.path(pod.ip, parse_ip("203.0.113.5"))
    assert [(h.to, h.next_hop) for h in out] == [("outside", parse_ip("192.168.0.1"))]
    other = "worker-2" if pod.node == "worker-1" else "worker-1"
    to_node = topo.path(pod.ip, topo.node(other).ip)
    assert [h.to for h in to_node] == [f"node:{other}", "local"]


def test_path_from_outside_enters_at_the_destination_node(topo: Topology) -> None:
    pod = next(iter(topo.pods.values()))
    hops = topo.path(parse_ip("203.0.113.9"), pod.ip)
    assert [(h.node, h.to) for h in hops] == [(pod.node, f"pod:{pod.namespace}/{pod.name}")]


def test_route_get_text(topo: Topology) -> None:
    assert topo.route_get("worker-1", parse_ip("10.244.2.7")) == (
        "10.244.2.7 via 192.168.0.3 dev eth0 src 192.168.0.2 uid 0 \n    cache \n"
    )
    assert topo.route_get("worker-1", parse_ip("10.244.1.1")).startswith("local 10.244.1.1 dev lo src 10.244.1.1 ")


def test_errors(topo: Topology) -> None:
    with pytest.raises(UsageError, match="no node named 'worker-9'"):
        topo.node("worker-9")
    with pytest.raises(UsageError, match="exists already"):
        topo.add_route("worker-1", Route(parse_cidr("10.244.2.0/24"), UPLINK, via=parse_ip("192.168.0.9")))
    no_gw = Topology.from_cluster(load_cluster([str(EXAMPLES)]), gateway=False)
    with pytest.raises(UsageError, match="Network is unreachable"):
        no_gw.route_get("worker-1", parse_ip("8.8.8.8"))


def test_compiled_lookup_equals_a_literal_walk() -> None:
    """The per-length dicts answer what scanning every route for the longest match answers."""
    rnd = random.Random(3)
    table = Table("main")
    seen = set()
    for _ in range(300):
        length = rnd.choice([0, 8, 12, 16, 20, 24, 25, 26, 28, 30, 32])
        network = rnd.getrandbits(32) & prefix_mask(length) & 0x0FFFFFFF | 0x0A000000 & prefix_mask(length)
        if (network, length) in seen:
            continue
        seen.add((network, length))
        table.add(Route(Cidr(network, length), UPLINK, via=len(seen)))

    def literal(dst: int) -> Route | None:
        matching = [r for r in table.routes if dst & prefix_mask(r.dst.length) == r.dst.network]
        return max(matching, key=lambda r: r.dst.length, default=None)

    for dst in [rnd.getrandbits(32) for _ in range(3000)] + [r.dst.network for r in table.routes]:
        assert table.lookup(dst) == literal(dst)


def test_host_network_pods_are_not_on_the_bridge() -> None:
    cluster = load_cluster([str(EXAMPLES)])
    pod = cluster.pods[0]
    pod.spec.host_network = True
    topo = Topology.from_cluster(cluster)
    assert pod.pod_ip not in topo.pods
    assert len(topo.pods) == len([p for p in cluster.pods if p.pod_ip is not None]) - 1
