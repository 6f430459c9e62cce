"""The proxy's view: Services and endpoints the way kube-proxy holds them.

kube-proxy does not look at Services and EndpointSlices directly; it turns
them into a ServicePortMap (one `ServicePortInfo` per `ns/name:port`, see
pkg/proxy/serviceport.go newBaseServiceInfo) and an EndpointsMap (per service
port, its endpoints sorted by their `IP:port` text, pkg/proxy/
endpointslicecache.go), and each sync categorises a port's endpoints for the
node it runs on (pkg/proxy/topology.go CategorizeEndpoints). This module is
that view. Every mode renders its rules from it and nothing else.

The part that is the same on every node (`ProxyState`) is built once and
shared; a `NodeView` adds the node (name, IPs, zone, config) and computes
locality and categorisation lazily, so the views of a 100-node cluster cost
almost nothing more than one. Entries are immutable and a new state shares
every unchanged entry with the old one, so "what changed" is an identity
check per service (`diff_states`), as cheap as kube-proxy's change tracker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from netem.addr import Cidr, int_to_ip
from netem.cluster import Cluster
from netem.gcpause import paused_gc
from netem.ipam import DEFAULT_SERVICE_CIDR
from netem.objects import EndpointSlice, ProxyConfig, Service
from netem.packet import K8S_PROTOCOLS

NamespacedName = tuple[str, str]


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """pkg/proxy ServicePortName: `ns/name:port` (no `:port` when unnamed)."""

    namespace: str
    name: str
    port: str
    protocol: str  # "TCP", "UDP" or "SCTP"

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def service(self) -> NamespacedName:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    """BaseServicePortInfo: what one service port asks of the data plane."""

    name: ServicePortName
    cluster_ip: int
    port: int
    protocol: int  # IP protocol number
    node_port: int = 0
    session_affinity: bool = False  # ClientIP
    sticky_seconds: int = 0
    external_ips: tuple[int, ...] = ()
    lb_vips: tuple[int, ...] = ()
    lb_source_ranges: tuple[Cidr, ...] = ()
    health_check_node_port: int = 0
    external_policy_local: bool = False
    internal_policy_local: bool = False
    target_port: int | str = 0  # as given; endpoints carry the resolved port

    def __str__(self) -> str:
        return f"{int_to_ip(self.cluster_ip)}:{self.port}/{self.name.protocol}"

    @property
    def externally_accessible(self) -> bool:
        return self.node_port != 0 or bool(self.lb_vips) or bool(self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with externalTrafficPolicy Local, Cluster endpoints are needed
        # to short-circuit traffic from pods on this node.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)


_NO_HINTS: frozenset[str] = frozenset()


class EndpointInfo(NamedTuple):
    """BaseEndpointInfo, without `isLocal`: that depends on the node asking.
    A NamedTuple because a large cluster has hundreds of thousands."""

    ip: int
    port: int
    text: str  # "ip:port": the sort key and the name kube-proxy hashes
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    zone_hints: frozenset[str] = _NO_HINTS
    node_hints: frozenset[str] = _NO_HINTS

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One Service as kube-proxy sees it: its ports and their endpoints."""

    ports: tuple[ServicePortInfo, ...]
    endpoints: Mapping[ServicePortName, tuple[EndpointInfo, ...]]


@dataclass(frozen=True, slots=True)
class Categorized:
    cluster: tuple[EndpointInfo, ...]
    local: tuple[EndpointInfo, ...]
    all_reachable: tuple[EndpointInfo, ...]
    has_any: bool


@dataclass(frozen=True, slots=True)
class ProxyState:
    """The cluster-wide part of the view, shared by every node."""

    entries: Mapping[NamespacedName, ServiceEntry]

    def service_ports(self) -> Iterator[ServicePortInfo]:
        for entry in self.entries.values():
            yield from entry.ports

    def endpoints(self, spn: ServicePortName) -> tuple[EndpointInfo, ...]:
        entry = self.entries.get(spn.service)
        return entry.endpoints.get(spn, ()) if entry is not None else ()

    def with_entry(self, name: NamespacedName, entry: ServiceEntry | None) -> ProxyState:
        """A new state with one service replaced (None removes it)."""
        entries = dict(self.entries)
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry
        return ProxyState(entries)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class NodeView:
    """The view of one node: the shared state plus who and where it is."""

    state: ProxyState
    node_name: str
    node_ips: tuple[int, ...]
    config: ProxyConfig
    zone: str = ""
    pod_cidrs: tuple[Cidr, ...] = ()
    service_cidrs: tuple[Cidr, ...] = ()  # the cluster's ServiceCIDRs (nftables drops unallocated ClusterIPs)
    _categorized: dict[ServicePortName, Categorized] = field(default_factory=dict, repr=False)

    @property
    def node_ip(self) -> int:
        return self.node_ips[0]

    def service_ports(self) -> Iterator[ServicePortInfo]:
        return self.state.service_ports()

    def endpoints(self, spn: ServicePortName) -> tuple[EndpointInfo, ...]:
        return self.state.endpoints(spn)

    def is_local(self, ep: EndpointInfo) -> bool:
        return bool(self.node_name) and ep.node_name == self.node_name

    def categorize(self, info: ServicePortInfo) -> Categorized:
        hit = self._categorized.get(info.name)
        if hit is None:
            hit = categorize_endpoints(self.endpoints(info.name), info, self.node_name, self.zone)
            self._categorized[info.name] = hit
        return hit

    def with_state(self, state: ProxyState) -> NodeView:
        return NodeView(
            state, self.node_name, self.node_ips, self.config, self.zone, self.pod_cidrs, self.service_cidrs
        )


def categorize_endpoints(
    endpoints: tuple[EndpointInfo, ...], info: ServicePortInfo, node_name: str, zone: str
) -> Categorized:
    """CategorizeEndpoints (pkg/proxy/topology.go): usable Cluster endpoints
    (topology-filtered Ready ones, else serving-terminating ones), usable
    Local endpoints (local Ready ones, else local serving-terminating ones),
    their union, and whether any usable endpoint exists anywhere."""
    if not endpoints:
        return Categorized((), (), (), False)
    cluster: tuple[EndpointInfo, ...] = ()
    local: tuple[EndpointInfo, ...] = ()
    has_any = False
    topology = ""
    if info.uses_cluster_endpoints:
        topology = _topology_mode(endpoints, node_name, zone)
        cluster = tuple(ep for ep in endpoints if ep.ready and _available(ep, topology, node_name, zone))
        if not cluster:
            cluster = tuple(ep for ep in endpoints if ep.serving and ep.terminating)
        has_any = bool(cluster)
    if not info.uses_local_endpoints:
        return Categorized(cluster, (), cluster, has_any)
    local_ready = local_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.node_name == node_name
        elif ep.serving and ep.terminating:
            has_any = True
            local_terminating = local_terminating or ep.node_name == node_name
    use_terminating = False
    if local_ready:
        local = tuple(ep for ep in endpoints if ep.node_name == node_name and ep.ready)
    elif local_terminating:
        use_terminating = True
        local = tuple(ep for ep in endpoints if ep.node_name == node_name and ep.serving and ep.terminating)
    if not info.uses_cluster_endpoints:
        return Categorized((), local, local, has_any)
    if not topology and not use_terminating:
        return Categorized(cluster, local, cluster, has_any)
    merged = {ep.text: ep for ep in cluster}
    merged.update((ep.text, ep) for ep in local)
    return Categorized(cluster, local, tuple(sorted(merged.values(), key=lambda e: e.text)), has_any)


def _topology_mode(endpoints: tuple[EndpointInfo, ...], node_name: str, zone: str) -> str:
    """topologyModeFromHints(): PreferSameNode if every ready endpoint has a
    node hint and one is for this node; else PreferSameZone likewise for zones."""
    ready = [ep for ep in endpoints if ep.ready]
    if not ready:
        return ""
    if all(ep.node_hints for ep in ready) and any(node_name in ep.node_hints for ep in ready):
        return "PreferSameNode"
    if all(ep.zone_hints for ep in ready) and any(zone in ep.zone_hints for ep in ready):
        return "PreferSameZone"
    return ""


def _available(ep: EndpointInfo, mode: str, node_name: str, zone: str) -> bool:
    if not mode:
        return True
    if mode == "PreferSameNode":
        return node_name in ep.node_hints
    return zone in ep.zone_hints


# --- building the view from a cluster ----------------------------------------


def service_entry(svc: Service, slices: list[EndpointSlice]) -> ServiceEntry | None:
    """serviceToServiceMap + the EndpointSliceCache for one Service; None for
    what kube-proxy skips (headless, ExternalName, no ClusterIP)."""
    if svc.type == "ExternalName" or svc.headless or svc.cluster_ip is None:
        return None
    etp_local = svc.external_traffic_policy == "Local" and svc.externally_accessible
    itp_local = svc.internal_traffic_policy == "Local"
    affinity = svc.session_affinity == "ClientIP"
    ns, name = svc.meta.namespace, svc.meta.name
    ports: list[ServicePortInfo] = []
    by_name: dict[tuple[str, str], ServicePortName] = {}
    for p in svc.ports:
        spn = ServicePortName(ns, name, p.name, p.protocol)
        by_name[(p.name, p.protocol)] = spn
        ports.append(
            ServicePortInfo(
                name=spn,
                cluster_ip=svc.cluster_ip,
                port=p.port,
                protocol=K8S_PROTOCOLS[p.protocol],
                node_port=p.node_port,
                session_affinity=affinity,
                sticky_seconds=svc.affinity_timeout if affinity else 0,
                external_ips=tuple(svc.external_ips),
                lb_vips=tuple(svc.lb_ingress_ips),
                lb_source_ranges=tuple(svc.lb_source_ranges),
                health_check_node_port=svc.health_check_node_port,
                external_policy_local=etp_local,
                internal_policy_local=itp_local,
                target_port=p.target_port,
            )
        )
    return ServiceEntry(tuple(ports), _endpoints_map(slices, by_name))


def _endpoints_map(
    slices: list[EndpointSlice], by_name: dict[tuple[str, str], ServicePortName]
) -> dict[ServicePortName, tuple[EndpointInfo, ...]]:
    """EndpointSliceCache.endpointInfoByServicePort: endpoints matched to
    service ports by port name and protocol, de-duplicated by `ip:port`
    (the first slice wins), sorted by that text (byEndpoint)."""
    found: dict[ServicePortName, dict[str, EndpointInfo]] = {}
    for s in slices:
        if s.address_type != "IPv4":
            continue
        for sp in s.ports:
            spn = by_name.get((sp.name or "", sp.protocol))
            if spn is None or not sp.port:
                continue
            bucket = found.setdefault(spn, {})
            suffix = f":{sp.port}"
            port = sp.port
            for ep in s.endpoints:
                if not ep.addresses:
                    continue
                ip = ep.addresses[0]
                text = int_to_ip(ip) + suffix
                if text in bucket and ep.terminating is True:
                    # endpointslicecache.go addEndpoints: a copy of an address
                    # seen already replaces it unless this one is terminating
                    # (an IP reused by a new pod while the old one terminates).
                    continue
                bucket[text] = EndpointInfo(
                    ip,
                    port,
                    text,
                    ep.ready is not False,
                    ep.serving is not False,
                    ep.terminating is True,
                    ep.node_name,
                    ep.zone,
                    frozenset(ep.zone_hints) if ep.zone_hints else _NO_HINTS,
                    frozenset(ep.node_hints) if ep.node_hints else _NO_HINTS,
                )
    return {spn: tuple(bucket[k] for k in sorted(bucket)) for spn, bucket in found.items() if bucket}


def build_state(cluster: Cluster) -> ProxyState:
    entries: dict[NamespacedName, ServiceEntry] = {}
    with paused_gc():
        for key, svc in cluster.services.items():
            entry = service_entry(svc, cluster.slices.get(key, []))
            if entry is not None:
                entries[key] = entry
    return ProxyState(entries)


def node_view(cluster: Cluster, state: ProxyState, node_name: str | None = None) -> NodeView:
    node = cluster.node(node_name)
    ips = tuple(ip for ip in (node.internal_ip, node.external_ip) if ip is not None)
    # Without ServiceCIDR objects the ClusterIPs came from the default range
    # (netem.ipam), which is then the cluster's one ServiceCIDR.
    service_cidrs = tuple(cluster.service_cidrs) or (DEFAULT_SERVICE_CIDR,)
    return NodeView(state, node.name, ips, cluster.proxy_config, node.zone, tuple(node.pod_cidrs), service_cidrs)


def build_views(cluster: Cluster) -> dict[str, NodeView]:
    """Every node's view (sharing one ProxyState)."""
    state = build_state(cluster)
    return {name: node_view(cluster, state, name) for name in cluster.nodes}
