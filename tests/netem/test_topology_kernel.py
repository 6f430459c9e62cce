"""Topology against the kernel: a node's tables built in a network namespace.

For a node of the model we create a namespace with `eth0` (a veth whose peer
sits in a second namespace of ours, so it has carrier), the bridge `cni0`
with one port (a veth pair inside the node namespace), the addresses, and
`ip route add` for every route that is not the kernel's own. Then the
kernel's `ip route`, `ip route show table local` and `ip route get` must
print exactly what the model prints. No packet is sent; nothing touches the
root namespace; both namespaces are removed afterwards, also on failure.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netem.addr import Cidr, int_to_ip, parse_cidr, parse_ip
from netem.cluster import load_cluster
from netem.topology import UPLINK, NodeNet, Route, Topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_counter = itertools.count()


def sh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False)


def ok(*args: str) -> None:
    done = sh(*args)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"


class KernelNode:
    """A namespace holding one node's interfaces and routes."""

    def __init__(self, net: NodeNet) -> None:
        n = next(_counter)
        self.ns = f"kn-netem-{os.getpid()}-{n}-node"
        self.lan = f"kn-netem-{os.getpid()}-{n}-lan"
        self.net = net

    def build(self) -> None:
        ns, lan, net = self.ns, self.lan, self.net
        ok("ip", "netns", "add", ns)
        ok("ip", "netns", "add", lan)
        ok("ip", "-n", ns, "link", "set", "lo", "up")
        ok("ip", "-n", ns, "link", "add", UPLINK, "type", "veth", "peer", "name", "lan0", "netns", lan)
        ok("ip", "-n", lan, "link", "set", "lan0", "up")
        ok("ip", "-n", ns, "addr", "add", f"{int_to_ip(net.ip)}/{net.subnet.length}", "dev", UPLINK)
        ok("ip", "-n", ns, "link", "set", UPLINK, "up")
        if net.bridge_ip is not None:
            ok("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
            ok("ip", "-n", ns, "addr", "add", f"{int_to_ip(net.bridge_ip)}/{net.pod_cidrs[0].length}", "dev", "cni0")
            ok("ip", "-n", ns, "link", "add", "vport0", "type", "veth", "peer", "name", "vport1")
            ok("ip", "-n", ns, "link", "set", "vport0", "master", "cni0")
            for dev in ("vport0", "vport1", "cni0"):
                ok("ip", "-n", ns, "link", "set", dev, "up")
        for route in net.main.routes:
            if route.proto != "kernel":
                self.add(route)

    def add(self, route: Route) -> None:
        args = ["ip", "-n", self.ns, "route", "add", "default" if route.dst.length == 0 else str(route.dst)]
        if route.via is not None:
            args += ["via", int_to_ip(route.via)]
        args += ["dev", route.dev] + (["onlink"] if route.onlink else [])
        ok(*args)

    def remove(self) -> None:
        sh("ip", "netns", "del", self.ns)
        sh("ip", "netns", "del", self.lan)

    def routes(self, table: str = "main") -> str:
        done = sh("ip", "-n", self.ns, "-4", "route", "show", "table", table)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def get(self, destinations: list[int]) -> list[str]:
        """`ip route get` for each destination, in one `ip -batch` run: two lines each."""
        batch = "".join(f"route get {int_to_ip(d)}\n" for d in destinations)
        done = sh("ip", "-n", self.ns, "-batch", "-", stdin=batch)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines(keepends=True)
        assert len(lines) == 2 * len(destinations)
        return [lines[i] + lines[i + 1] for i in range(0, len(lines), 2)]


@pytest.fixture
def kernel_node(request: pytest.FixtureRequest) -> Iterator[KernelNode]:
    net: NodeNet = request.param
    node = KernelNode(net)
    try:
        node.build()
        yield node
    finally:
        node.remove()


def example() -> Topology:
    return load_topology([str(EXAMPLES)])


def load_topology(paths: list[str]) -> Topology:
    return Topology.from_cluster(load_cluster(paths))


def four_nodes() -> Topology:
    """Four nodes, one of them on another subnet (its routes need `onlink`)."""
    from kubenetem.scenarios import synthetic_cluster

    cluster = synthetic_cluster(4, 3, nodes=4)
    last = cluster.nodes[sorted(cluster.nodes)[-1]]
    last.internal_ip = parse_ip("192.168.7.9")
    return Topology.from_cluster(cluster)


def nested() -> NodeNet:
    """The example's worker-1 with prefixes nested inside each other."""
    topo = example()
    for text, via in [
        ("10.0.0.0/8", "192.168.0.50"),
        ("10.244.0.0/16", "192.168.0.51"),
        ("10.244.3.0/26", "192.168.0.52"),
        ("10.244.3.64/26", "192.168.0.53"),
        ("10.244.3.7/32", "192.168.0.54"),
        ("10.244.1.128/25", "192.168.0.55"),  # inside the connected podCIDR
        ("172.16.0.0/12", "192.168.0.56"),
        ("203.0.113.0/24", "192.168.0.57"),
        ("203.0.113.0/25", "192.168.0.58"),
    ]:
        topo.add_route("worker-1", Route(parse_cidr(text), UPLINK, via=parse_ip(via)))
    return topo.node("worker-1")


NETS = {
    "example-worker-1": example().node("worker-1"),
    "example-worker-2": example().node("worker-2"),
    "four-nodes-first": four_nodes().node(),
    "nested": nested(),
}


def probes(net: NodeNet, topo_pods: list[int], n: int = 150) -> list[int]:
    """Addresses worth asking about: own, pods, neighbours, edges of every prefix, random ones."""
    rnd = random.Random(net.name)
    out = [net.ip, 0x7F000001, 0x7F000005, 0x7F0000FF, parse_ip("203.0.113.5"), *topo_pods]
    if net.bridge_ip is not None:
        out.append(net.bridge_ip)
    for route in net.main.routes + net.local.routes:
        cidr: Cidr = route.dst
        out += [cidr.network, cidr.last, min(cidr.last, cidr.network + 1)]
        if route.via is not None:
            out.append(route.via)
    out += [rnd.randrange(0x0A000000, 0x0B000000) for _ in range(n)]
    out += [rnd.getrandbits(32) for _ in range(n // 3)]
    return [d for d in dict.fromkeys(out) if d >> 24 not in (0, 224, 225, 239, 240, 255) and d >> 28 != 0xE]


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_node", list(NETS.values()), ids=list(NETS), indirect=True)
def test_ip_route_matches_the_kernel(kernel_node: KernelNode) -> None:
    net = kernel_node.net
    topo = Topology()
    topo.nodes[net.name] = net
    assert kernel_node.routes("main") == topo.render(net.name)
    assert kernel_node.routes("local") == topo.render(net.name, table="local")


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_node", list(NETS.values()), ids=list(NETS), indirect=True)
def test_ip_route_get_matches_the_kernel(kernel_node: KernelNode) -> None:
    net = kernel_node.net
    topo = Topology()
    topo.nodes[net.name] = net
    destinations = probes(net, list(net.pods))
    kernel = kernel_node.get(destinations)
    ours = [topo.route_get(net.name, d) for d in destinations]
    mismatches = [(int_to_ip(d), k, o) for d, k, o in zip(destinations, kernel, ours, strict=True) if k != o]
    assert not mismatches, mismatches[:5]
    assert len(destinations) > 150


@pytest.mark.kernel
def test_unreachable_without_a_default_route() -> None:
    cluster = load_cluster([str(EXAMPLES)])
    net = Topology.from_cluster(cluster, gateway=False).node("worker-1")
    node = KernelNode(net)
    try:
        node.build()
        done = sh("ip", "-n", node.ns, "route", "get", "203.0.113.5")
        assert done.returncode != 0 and "Network is unreachable" in done.stderr
    finally:
        node.remove()
    topo = Topology()
    topo.nodes[net.name] = net
    with pytest.raises(Exception, match="Network is unreachable"):
        topo.route_get(net.name, parse_ip("203.0.113.5"))
