"""Address management, played deterministically: what the control plane allocates.

- ClusterIPs from the service CIDR(s) (ServiceCIDR objects, else kubeadm's
  10.96.0.0/12). Like the API server's allocator (KEP-3070) the range is split
  into a lower band kept for static IPs and an upper band for dynamic ones;
  where the real allocator picks a random free address in the upper band, we
  start at a hash of `namespace/name` and probe forward, so an address depends
  only on the Service, not on what else is in the input or the order of files.
- NodePorts from 30000-32767 the same way (KEP-3668 bands).
- Node podCIDRs: /24s of the cluster CIDR (kube-controller-manager's default
  --node-cidr-mask-size) in node-name order; node InternalIPs from
  192.168.0.2 upwards when a Node gives none.
- Pod IPs from the node's podCIDR from .2 (host-local IPAM keeps .1 for the
  bridge), in (namespace, name) order; hostNetwork pods get the node's IP.

Error messages repeat the API server's, so they read the same as kubectl's.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from operator import attrgetter

from .addr import Cidr, int_to_ip, parse_cidr
from .errors import AllocationError, KubenetemError, ValidationError
from .objects import Node, Pod, Service

DEFAULT_SERVICE_CIDR = parse_cidr("10.96.0.0/12")
DEFAULT_CLUSTER_CIDR = parse_cidr("10.244.0.0/16")
NODE_CIDR_MASK = 24
NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767
DEFAULT_NODE_NETWORK = parse_cidr("192.168.0.0/24")


def _stable_hash(key: str) -> int:
    return zlib.crc32(key.encode())


class BandAllocator:
    """A range [first, last] with a static lower band and a dynamic upper band."""

    def __init__(self, first: int, last: int, lower_band: int) -> None:
        self.first = first
        self.last = last
        self.lower_band = lower_band
        self.used: set[int] = set()

    def __contains__(self, value: int) -> bool:
        return self.first <= value <= self.last

    def allocate(self, key: str) -> int | None:
        upper_first = self.first + self.lower_band
        for lo, hi in ((upper_first, self.last), (self.first, upper_first - 1)):
            size = hi - lo + 1
            if size <= 0:
                continue
            start = _stable_hash(key) % size
            for step in range(size):
                candidate = lo + (start + step) % size
                if candidate not in self.used:
                    self.used.add(candidate)
                    return candidate
        return None


def _service_band(size: int) -> int:
    """calculateRangeOffset(): min(max(16, size/16), 256) addresses kept static."""
    return min(max(16, size // 16), 256)


def _node_port_band(size: int) -> int:
    """The NodePort allocator's static band: min(max(16, size/32), 128)."""
    return min(max(16, size // 32), 128)


class ServiceIPs:
    """The ClusterIP allocator over one or more service CIDRs."""

    def __init__(self, cidrs: list[Cidr]) -> None:
        self.cidrs = cidrs or [DEFAULT_SERVICE_CIDR]
        # Network and broadcast addresses are never handed out (IPv4).
        self.bands = [BandAllocator(c.network + 1, c.last - 1, _service_band(c.size)) for c in self.cidrs]

    def describe(self) -> str:
        return ",".join(str(c) for c in self.cidrs)

    def reserve(self, ip: int) -> str:
        """Take a user-given ClusterIP; returns the API server's complaint or ""."""
        for band in self.bands:
            if ip in band:
                if ip in band.used:
                    return f"failed to allocate IP {int_to_ip(ip)}: provided IP is already allocated"
                band.used.add(ip)
                return ""
        return (
            f"failed to allocate IP {int_to_ip(ip)}: provided IP is not in the valid range. "
            f"The range of valid IPs is {self.describe()}"
        )

    def allocate(self, key: str) -> int | None:
        for band in self.bands:
            ip = band.allocate(key)
            if ip is not None:
                return ip
        return None


def allocate_services(services: Iterable[Service], cidrs: list[Cidr]) -> list[KubenetemError]:
    """Fill in ClusterIPs, NodePorts and health-check NodePorts."""
    errors: list[KubenetemError] = []
    ordered = sorted(services, key=lambda s: s.meta.key)
    ips = ServiceIPs(cidrs)
    ports = BandAllocator(NODE_PORT_MIN, NODE_PORT_MAX, _node_port_band(NODE_PORT_MAX - NODE_PORT_MIN + 1))
    # Static (user-given) values first, so that dynamic ones never take them.
    for svc in ordered:
        if svc.cluster_ip is not None:
            problem = ips.reserve(svc.cluster_ip)
            if problem:
                errors.append(ValidationError(problem, svc.meta.where, "spec.clusterIP"))
                svc.cluster_ip = None
        _reserve_node_ports(svc, ports, errors)
    for svc in ordered:
        key = f"{svc.meta.namespace}/{svc.meta.name}"
        if svc.cluster_ip is None and not svc.headless and svc.type != "ExternalName":
            svc.cluster_ip = ips.allocate(key)
            if svc.cluster_ip is None:
                errors.append(
                    AllocationError(
                        f"failed to allocate a serviceIP: range is full ({ips.describe()})",
                        svc.meta.where,
                        "spec.clusterIP",
                    )
                )
        if svc.type == "NodePort" or (svc.type == "LoadBalancer" and svc.allocate_lb_node_ports):
            by_port: dict[int, int] = {}
            for index, port in enumerate(svc.ports):
                if port.node_port:
                    continue
                # The same service port number over TCP and UDP shares one NodePort.
                if port.port in by_port:
                    port.node_port = by_port[port.port]
                    continue
                value = ports.allocate(f"{key}:{port.port}/{port.protocol}")
                if value is None:
                    errors.append(AllocationError("range is full", svc.meta.where, f"spec.ports[{index}].nodePort"))
                    continue
                port.node_port = by_port[port.port] = value
        if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local" and not svc.health_check_node_port:
            value = ports.allocate(f"{key}:healthcheck")
            if value is None:
                errors.append(AllocationError("range is full", svc.meta.where, "spec.healthCheckNodePort"))
            else:
                svc.health_check_node_port = value
    return errors


def _reserve_node_ports(svc: Service, ports: BandAllocator, errors: list[KubenetemError]) -> None:
    mine: dict[int, str] = {}
    given = [(f"spec.ports[{i}].nodePort", p.node_port, p.protocol) for i, p in enumerate(svc.ports) if p.node_port]
    if svc.health_check_node_port:
        given.append(("spec.healthCheckNodePort", svc.health_check_node_port, "TCP"))
    for path, value, protocol in given:
        if value not in ports:
            errors.append(
                ValidationError(
                    "provided port is not in the valid range. "
                    f"The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}",
                    svc.meta.where,
                    path,
                    value,
                )
            )
            continue
        if value in mine:
            if mine[value] == protocol:
                errors.append(ValidationError("Duplicate value", svc.meta.where, path, value))
            continue  # one Service may use a NodePort for both TCP and UDP
        if value in ports.used:
            errors.append(ValidationError("provided port is already allocated", svc.meta.where, path, value))
            continue
        ports.used.add(value)
        mine[value] = protocol


def allocate_nodes(nodes: list[Node], cluster_cidrs: list[Cidr]) -> list[KubenetemError]:
    """Give every node an InternalIP and a podCIDR (nodes sorted by name)."""
    errors: list[KubenetemError] = []
    taken_ips = {n.internal_ip for n in nodes if n.internal_ip is not None}
    next_ip = DEFAULT_NODE_NETWORK.network + 2
    for node in nodes:
        if node.internal_ip is None:
            while next_ip in taken_ips:
                next_ip += 1
            if next_ip >= DEFAULT_NODE_NETWORK.last:
                errors.append(AllocationError("no free node address in 192.168.0.0/24", node.meta.where))
                break
            node.internal_ip = next_ip
            taken_ips.add(next_ip)
    given = [c for n in nodes for c in n.pod_cidrs]
    for i, a in enumerate(given):
        for b in given[i + 1 :]:
            if a.overlaps(b):
                owner = next(n for n in nodes if b in n.pod_cidrs)
                errors.append(
                    ValidationError(f"podCIDR {b} overlaps {a} of another node", owner.meta.where, "spec.podCIDR")
                )
    subnets = _subnets(cluster_cidrs or [DEFAULT_CLUSTER_CIDR], NODE_CIDR_MASK)
    for node in nodes:
        if node.pod_cidrs:
            continue
        for subnet in subnets:
            if not any(subnet.overlaps(c) for c in given):
                node.pod_cidrs.append(subnet)
                given.append(subnet)
                break
        else:
            errors.append(
                AllocationError(
                    "no free podCIDR left in the cluster CIDR "
                    + ",".join(str(c) for c in cluster_cidrs or [DEFAULT_CLUSTER_CIDR]),
                    node.meta.where,
                    "spec.podCIDR",
                )
            )
    return errors


def _subnets(cidrs: list[Cidr], mask: int) -> Iterable[Cidr]:
    for cidr in cidrs:
        length = max(mask, cidr.length)
        step = 1 << (32 - length)
        for network in range(cidr.network, cidr.last + 1, step):
            yield Cidr(network, length)


_pod_order = attrgetter("meta.namespace", "meta.name")


def allocate_pod_ips(pods: list[Pod], nodes: dict[str, Node]) -> list[KubenetemError]:
    """Pod IPs from each node's podCIDR, in (namespace, name) order."""
    errors: list[KubenetemError] = []
    taken: set[int] = {p.pod_ip for p in pods if p.pod_ip is not None}
    # Per node: the next candidate and the last usable address of its podCIDR.
    cursor: dict[str, list[int]] = {
        name: [node.pod_cidrs[0].network + 2, node.pod_cidrs[0].last] for name, node in nodes.items() if node.pod_cidrs
    }
    for pod in sorted(pods, key=_pod_order):
        if pod.pod_ip is not None or pod.phase in ("Succeeded", "Failed"):
            continue
        node = nodes.get(pod.spec.node_name)
        if node is None:
            continue  # unscheduled: no IP, as in a real cluster (Pending)
        if pod.spec.host_network:
            pod.pod_ip = node.internal_ip
            continue
        slot = cursor.get(node.name)
        if slot is None:
            continue
        ip = slot[0]
        if taken:
            while ip in taken:
                ip += 1
        if ip >= slot[1]:
            errors.append(AllocationError(f"node {node.name}: podCIDR {node.pod_cidrs[0]} is full", pod.meta.where))
            continue
        pod.pod_ip = ip
        slot[0] = ip + 1
    return errors
