"""Nodes, the pods on them, and each node's routing tables in a host-gateway network.

The network modelled is the one flannel's host-gw backend (or kube-router,
or any "routes to the other nodes' pod ranges" setup) builds on nodes that
share one L2 segment: each node has `eth0` with its InternalIP in the node
subnet, a bridge `cni0` holding `.1` of its podCIDR (host-local IPAM keeps
`.1` for the gateway), one veth per pod on the bridge, and in the main table
one route per remote podCIDR via that node's IP. A default route via the
node subnet's `.1` carries everything else (outside clients). The kernel adds
the rest: the connected routes of eth0 and cni0 (`proto kernel scope link
src ...`) and the local table (`local` for each own address, `broadcast` for
each subnet's last address, loopback).

Lookups are the kernel's for a node without policy rules: the local table
first, then main, each longest-prefix-first. A table is compiled into one
dict per prefix length, tried from the longest, so a lookup costs a handful
of dict probes. Text comes out as `ip route` and `ip route get` print it,
down to the trailing space; tests build the same tables in network
namespaces and compare the kernel's answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .addr import Cidr, int_to_ip, prefix_mask
from .errors import UsageError

if TYPE_CHECKING:
    from .cluster import Cluster

UPLINK = "eth0"
BRIDGE = "cni0"
LOOPBACK = "lo"
LOOPBACK_NET = Cidr(0x7F000000, 8)


@dataclass(frozen=True, slots=True)
class Route:
    """One route as `ip route` shows it (type, dst, via, dev, proto, scope, src, flags)."""

    dst: Cidr
    dev: str
    via: int | None = None
    src: int | None = None  # preferred source (RTA_PREFSRC)
    proto: str = ""  # "kernel" for connected routes; "" is boot, which ip does not print
    scope: str = ""  # "link", "host"; "" is universe
    kind: str = "unicast"  # "local", "broadcast"
    onlink: bool = False

    def text(self, table: str = "") -> str:
        """The line `ip route` prints (with its trailing space)."""
        parts = [] if self.kind == "unicast" else [self.kind]
        parts.append(_dst_text(self.dst))
        if self.via is not None:
            parts += ["via", int_to_ip(self.via)]
        parts += ["dev", self.dev]
        if table:
            parts += ["table", table]
        if self.proto:
            parts += ["proto", self.proto]
        if self.scope:
            parts += ["scope", self.scope]
        if self.src is not None:
            parts += ["src", int_to_ip(self.src)]
        if self.onlink:
            parts.append("onlink")
        return " ".join(parts) + " "


def _dst_text(dst: Cidr) -> str:
    if dst.length == 0:
        return "default"
    return int_to_ip(dst.network) if dst.length == 32 else str(dst)


class Table:
    """A routing table compiled for longest-prefix match: one dict per prefix length."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: list[Route] = []
        self._by_length: dict[int, dict[int, Route]] = {}
        self._probes: tuple[tuple[int, dict[int, Route]], ...] = ()

    def add(self, route: Route) -> None:
        exact = self._by_length.setdefault(route.dst.length, {})
        if route.dst.network in exact:
            # The kernel refuses a second route to the same prefix (no metrics here).
            raise UsageError(f"route to {route.dst} exists already in table {self.name} (RTNETLINK: File exists)")
        exact[route.dst.network] = route
        self.routes.append(route)
        self._probes = tuple(
            (prefix_mask(length), self._by_length[length]) for length in sorted(self._by_length, reverse=True)
        )

    def lookup(self, dst: int) -> Route | None:
        for mask, routes in self._probes:
            route = routes.get(dst & mask)
            if route is not None:
                return route
        return None

    def sorted(self) -> list[Route]:
        """The fib trie's dump order: by network address, longer prefixes first."""
        return sorted(self.routes, key=lambda r: (r.dst.network, -r.dst.length))


class PodNet(NamedTuple):
    namespace: str
    name: str
    ip: int
    node: str
    veth: str  # the host side of the pod's veth, a port of the bridge ("" for hostNetwork)


@dataclass(slots=True)
class NodeNet:
    """One node's addresses, pods and tables."""

    name: str
    ip: int
    subnet: Cidr  # the node network on eth0
    pod_cidrs: tuple[Cidr, ...]
    bridge_ip: int | None  # .1 of the first podCIDR
    main: Table = field(default_factory=lambda: Table("main"))
    local: Table = field(default_factory=lambda: Table("local"))
    pods: dict[int, PodNet] = field(default_factory=dict)

    def lookup(self, dst: int) -> tuple[str, Route] | None:
        """fib_lookup(): ("local", route) or ("main", route); None is unreachable."""
        for mask, routes in self.local._probes:  # Table.lookup, inlined: the hot path
            route = routes.get(dst & mask)
            if route is not None:
                return ("local", route)
        for mask, routes in self.main._probes:
            route = routes.get(dst & mask)
            if route is not None:
                return ("main", route)
        return None

    def source_for(self, route: Route) -> int:
        """The source address `ip route get` reports: prefsrc, else the device's address."""
        if route.src is not None:
            return route.src
        return self.bridge_ip if route.dev == BRIDGE and self.bridge_ip is not None else self.ip


class Hop(NamedTuple):
    """One forwarding decision on the way from a source to a destination."""

    node: str  # the node that decides ("" when the source is outside)
    table: str  # "local", "main"
    route: Route
    next_hop: int  # the gateway, or the destination itself when on-link
    to: str  # what receives the packet: "node:NAME", "pod:NS/NAME", "local", "outside"

    def text(self) -> str:
        """`worker-1: 10.244.2.0/24 via 192.168.0.3 dev eth0 -> node:worker-2`."""
        return f"{self.node}: {self.route.text().rstrip()} -> {self.to}"

    def to_json(self) -> dict[str, str]:
        return {
            "node": self.node,
            "table": self.table,
            "route": self.route.text().rstrip(),
            "next_hop": int_to_ip(self.next_hop),
            "to": self.to,
        }


class Topology:
    """Every node's network, built from a cluster the way a host-gateway network would be."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeNet] = {}
        self.pods: dict[int, PodNet] = {}  # pod IP -> where it lives
        self.node_ips: dict[int, str] = {}

    # -- building --

    @classmethod
    def from_cluster(cls, cluster: Cluster, node_prefix: int = 24, gateway: bool = True) -> Topology:
        """Nodes with InternalIP and podCIDRs, their pods, host-gw routes, a default route.

        `node_prefix` is the node subnet on eth0 (kind and kubeadm setups put
        nodes in one /24 or /16); `gateway` adds `default via <subnet>.1`
        unless a node holds that address.
        """
        topo = cls()
        for node in cluster.nodes.values():
            if node.internal_ip is None:
                continue
            subnet = Cidr(node.internal_ip & prefix_mask(node_prefix), node_prefix)
            bridge = node.pod_cidrs[0].network + 1 if node.pod_cidrs else None
            topo.nodes[node.name] = NodeNet(node.name, node.internal_ip, subnet, tuple(node.pod_cidrs), bridge)
            topo.node_ips[node.internal_ip] = node.name
        for net in topo.nodes.values():
            topo._kernel_routes(net)
            if gateway and net.subnet.length < 31:
                gw = net.subnet.network + 1
                if gw not in topo.node_ips:
                    net.main.add(Route(Cidr(0, 0), UPLINK, via=gw))
            for other in topo.nodes.values():
                if other is net:
                    continue
                for cidr in other.pod_cidrs:
                    net.main.add(Route(cidr, UPLINK, via=other.ip, onlink=other.ip not in net.subnet))
        for pod in sorted(cluster.pods, key=lambda p: p.meta.key):
            topo._attach(pod.meta.namespace, pod.meta.name, pod.pod_ip, pod.spec.node_name, pod.spec.host_network)
        return topo

    def _kernel_routes(self, net: NodeNet) -> None:
        """What the kernel adds for the addresses on lo, eth0 and cni0."""
        net.local.add(Route(LOOPBACK_NET, LOOPBACK, src=0x7F000001, proto="kernel", scope="host", kind="local"))
        net.local.add(Route(Cidr(0x7F000001, 32), LOOPBACK, src=0x7F000001, proto="kernel", scope="host", kind="local"))
        net.local.add(
            Route(Cidr(LOOPBACK_NET.last, 32), LOOPBACK, src=0x7F000001, proto="kernel", scope="link", kind="broadcast")
        )
        addresses = [(UPLINK, net.ip, net.subnet)]
        if net.bridge_ip is not None:
            addresses.append((BRIDGE, net.bridge_ip, Cidr(net.pod_cidrs[0].network, net.pod_cidrs[0].length)))
        for dev, ip, subnet in addresses:
            net.local.add(Route(Cidr(ip, 32), dev, src=ip, proto="kernel", scope="host", kind="local"))
            if subnet.length < 31:
                net.local.add(Route(Cidr(subnet.last, 32), dev, src=ip, proto="kernel", scope="link", kind="broadcast"))
            if subnet.length < 32:
                net.main.add(Route(subnet, dev, src=ip, proto="kernel", scope="link"))

    def _attach(self, namespace: str, name: str, ip: int | None, node: str, host_network: bool) -> None:
        net = self.nodes.get(node)
        if ip is None or net is None:
            return  # not scheduled or no address yet: not on the network
        veth = "" if host_network else _veth_name(namespace, name)
        pod = PodNet(namespace, name, ip, node, veth)
        if not host_network:
            net.pods[ip] = pod
            self.pods[ip] = pod

    def add_pod(self, namespace: str, name: str, ip: int, node: str) -> PodNet:
        """A pod attached to `node`'s bridge after the fact (a simulation's
        client pods, pods of a scale-up)."""
        self.node(node)
        if ip in self.pods:
            raise UsageError(f"address {int_to_ip(ip)} is taken by pod {self.pods[ip].namespace}/{self.pods[ip].name}")
        self._attach(namespace, name, ip, node, False)
        return self.pods[ip]

    def add_route(self, node: str, route: Route) -> None:
        """`ip route add` on one node (main table)."""
        self.node(node).main.add(route)

    # -- questions --

    def node(self, name: str | None = None) -> NodeNet:
        if name is None:
            if not self.nodes:
                raise UsageError("the cluster has no nodes with an address")
            return self.nodes[min(self.nodes)]
        try:
            return self.nodes[name]
        except KeyError:
            raise UsageError(f"no node named {name!r} (nodes: {', '.join(sorted(self.nodes))})") from None

    def node_of(self, ip: int) -> str | None:
        """The node an address lives on: a pod's node, or the node itself."""
        pod = self.pods.get(ip)
        if pod is not None:
            return pod.node
        return self.node_ips.get(ip)

    def render(self, node: str | None = None, table: str = "main") -> str:
        """`ip route` (`ip route show table local` for table="local")."""
        net = self.node(node)
        chosen = net.local if table == "local" else net.main
        return "".join(route.text() + "\n" for route in chosen.sorted())

    def route_get(self, node: str | None, dst: int) -> str:
        """`ip route get DST` on the node, or UsageError as ip's own error."""
        net = self.node(node)
        found = net.lookup(dst)
        if found is None:
            raise UsageError(f"{int_to_ip(dst)}: RTNETLINK answers: Network is unreachable")
        table, route = found
        src = int_to_ip(net.source_for(route))
        if table == "local":
            if route.kind == "local":
                return f"local {int_to_ip(dst)} dev {LOOPBACK} src {src} uid 0 \n    cache <local> \n"
            return f"broadcast {int_to_ip(dst)} dev {route.dev} src {src} uid 0 \n    cache <local,brd> \n"
        via = f" via {int_to_ip(route.via)}" if route.via is not None else ""
        return f"{int_to_ip(dst)}{via} dev {route.dev} src {src} uid 0 \n    cache \n"

    def path(self, src: int, dst: int, max_hops: int = 16) -> list[Hop]:
        """The forwarding decisions from `src` to `dst`, node by node.

        A pod sends to its node (the default route of a pod is its bridge);
        a node's address sends from itself; any other source is outside and
        enters at the node owning `dst` (as a NodePort or a routed packet
        would). The walk ends at a pod, a node's own address, or the outside.
        """
        start = self.node_of(src)
        if start is None:
            start = self.node_of(dst)
            if start is None:
                return []
        return self.walk(start, dst, max_hops)

    def walk(self, node: str, dst: int, max_hops: int = 16) -> list[Hop]:
        """The forwarding decisions for `dst` from `node` on (after a proxy's DNAT, say)."""
        hops: list[Hop] = []
        for _ in range(max_hops):
            net = self.node(node)
            found = net.lookup(dst)
            if found is None:
                return hops
            table, route = found
            next_hop = route.via if route.via is not None else dst
            if table == "local":
                hops.append(Hop(node, table, route, dst, "local"))
                return hops
            if route.dev == BRIDGE:
                pod = net.pods.get(dst)
                to = f"pod:{pod.namespace}/{pod.name}" if pod else "nothing"
                hops.append(Hop(node, table, route, dst, to))
                return hops
            target = self.node_ips.get(next_hop)
            if target is None:
                hops.append(Hop(node, table, route, next_hop, "outside"))
                return hops
            hops.append(Hop(node, table, route, next_hop, f"node:{target}"))
            node = target
        return hops


def _veth_name(namespace: str, name: str) -> str:
    """A stable stand-in for the CNI bridge plugin's random `veth` + 8 hex digits."""
    return "veth" + hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:8]
