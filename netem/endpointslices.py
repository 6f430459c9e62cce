"""The EndpointSlice controller and the mirroring controller, played once.

For a Service with a selector, endpoints are the selected pods that have an
IP and are not in a terminal phase (terminating pods stay, marked so), with
the conditions pkg/controller/endpointslice sets:
`serving` = the pod is Ready, `terminating` = it has a deletionTimestamp,
`ready` = serving and not terminating (or publishNotReadyAddresses).
A named targetPort is resolved per pod against its container ports of the
same protocol; pods that resolve the service's ports differently go to
different slices, as slices group endpoints by their port set, and a slice
holds at most 100 endpoints (the controller's default maxEndpointsPerSlice).
A Service whose selector matches nothing still gets one empty placeholder
slice. Services without a selector keep the EndpointSlices they were given,
and legacy Endpoints are mirrored into slices as the mirroring controller
does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .objects import (
    LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME,
    LABEL_ZONE,
    MANAGED_BY_CONTROLLER,
    MANAGED_BY_MIRRORING,
    EndpointSlice,
    Meta,
    Node,
    Pod,
    Service,
    SliceEndpoint,
    SlicePort,
)
from .workloads import generate_name

MAX_ENDPOINTS_PER_SLICE = 100
LABEL_HEADLESS = "service.kubernetes.io/headless"


class PodIndex:
    """Pods by namespace and by (namespace, label, value), for selector lookups."""

    def __init__(self, pods: Iterable[Pod]) -> None:
        self.by_label: dict[tuple[str, str, str], list[Pod]] = defaultdict(list)
        self.by_namespace: dict[str, list[Pod]] = defaultdict(list)
        for pod in pods:
            ns = pod.meta.namespace
            self.by_namespace[ns].append(pod)
            for key, value in pod.meta.labels.items():
                self.by_label[(ns, key, value)].append(pod)

    def select(self, namespace: str, selector: dict[str, str]) -> list[Pod]:
        if not selector:
            return []
        lists = [self.by_label.get((namespace, k, v), []) for k, v in selector.items()]
        smallest = min(lists, key=len)
        if len(lists) == 1:
            return list(smallest)
        return [p for p in smallest if all(p.meta.labels.get(k) == v for k, v in selector.items())]


def _in_endpoints(pod: Pod) -> bool:
    """ShouldPodBeInEndpoints(pod, includeTerminating=true)."""
    if pod.pod_ip is None:
        return False
    if pod.phase in ("Succeeded", "Failed") and pod.spec.restart_policy != "Always":
        return False
    return pod.phase not in ("Succeeded", "Failed")


def _resolve_ports(svc: Service, pod: Pod) -> tuple[SlicePort, ...]:
    ports = []
    for sp in svc.ports:
        target = sp.resolved_target
        if isinstance(target, str):
            number = next((cp.port for cp in pod.spec.ports if cp.name == target and cp.protocol == sp.protocol), None)
            if number is None:
                continue  # the controller leaves a port out for pods that lack it
        else:
            number = target
        ports.append(SlicePort(sp.name, number, sp.protocol, sp.app_protocol))
    return tuple(ports)


def _endpoint(svc: Service, pod: Pod, zone: str) -> SliceEndpoint:
    """podToEndpoint() of the EndpointSlice controller."""
    serving = pod.ready
    terminating = pod.meta.deletion_timestamp is not None
    ready = svc.publish_not_ready_addresses or (serving and not terminating)
    spec = pod.spec
    # ShouldSetHostname: only when the pod's subdomain names this Service.
    hostname = spec.hostname if spec.hostname and spec.subdomain == svc.meta.name else ""
    assert pod.pod_ip is not None
    return SliceEndpoint(
        (pod.pod_ip,),
        ready,
        serving,
        terminating,
        spec.node_name,
        zone,
        hostname,
        ("Pod", pod.meta.namespace, pod.meta.name),
    )


def _apply_hints(svc: Service, endpoints: list[SliceEndpoint]) -> None:
    """trafficDistribution hints (KEP-4444; endpointslice trafficdist.go, the
    prefer-close heuristic's update): each ready endpoint is hinted for its
    own zone when it has one, and for its own node (PreferSameNode) when it
    has one; endpoints that are not ready get no hints. Whether hints are
    usable at all is kube-proxy's decision (topology.go), per node."""
    mode = svc.traffic_distribution
    if mode not in ("PreferClose", "PreferSameZone", "PreferSameNode"):
        return
    for i, ep in enumerate(endpoints):
        if ep.ready is not True:  # endpointReady: the Ready condition set and true
            continue
        zone_hints = (ep.zone,) if ep.zone else ()
        node_hints = (ep.node_name,) if mode == "PreferSameNode" and ep.node_name else ()
        endpoints[i] = ep._replace(zone_hints=zone_hints, node_hints=node_hints)


def _slice_meta(svc: Service, seed: str, managed_by: str) -> Meta:
    labels = {k: v for k, v in svc.meta.labels.items() if k not in (LABEL_SERVICE_NAME, LABEL_MANAGED_BY)}
    labels[LABEL_SERVICE_NAME] = svc.meta.name
    labels[LABEL_MANAGED_BY] = managed_by
    if svc.headless:
        labels[LABEL_HEADLESS] = ""
    name = generate_name(f"{svc.meta.name}-", seed)
    return Meta(name=name, namespace=svc.meta.namespace, labels=labels, where=svc.meta.where)


def node_zones(nodes: dict[str, Node]) -> dict[str, str]:
    return {name: node.meta.labels.get(LABEL_ZONE, "") for name, node in nodes.items()}


def reconcile_service(svc: Service, index: PodIndex, zones: dict[str, str]) -> list[EndpointSlice]:
    """The slices the EndpointSlice controller keeps for one selector Service
    (`zones`: each node's topology.kubernetes.io/zone label)."""
    assert svc.selector is not None
    ns, name = svc.meta.namespace, svc.meta.name
    # Pods of one workload share their ports tuple: resolve it once, and
    # group by the identity of the resolved tuple (no hashing of ports).
    resolved: dict[int, tuple[SlicePort, ...]] = {}
    by_ports: dict[int, tuple[tuple[SlicePort, ...], list[SliceEndpoint]]] = {}
    for pod in index.select(ns, svc.selector):
        if not _in_endpoints(pod):
            continue
        ports = resolved.get(id(pod.spec.ports))
        if ports is None:
            ports = _resolve_ports(svc, pod)
            for other in resolved.values():
                if other == ports:
                    ports = other  # same port set from another template: one slice group
                    break
            resolved[id(pod.spec.ports)] = ports
        group = by_ports.get(id(ports))
        if group is None:
            group = by_ports[id(ports)] = (ports, [])
        group[1].append(_endpoint(svc, pod, zones.get(pod.spec.node_name, "")))
    groups = dict(by_ports.values())
    slices: list[EndpointSlice] = []
    for group_no, (ports, endpoints) in enumerate(sorted(groups.items(), key=lambda kv: _ports_key(kv[0]))):
        endpoints.sort(key=lambda ep: ep.addresses)
        _apply_hints(svc, endpoints)
        for start in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
            meta = _slice_meta(svc, f"{ns}/{name}/{group_no}/{start}", MANAGED_BY_CONTROLLER)
            slices.append(
                EndpointSlice(
                    meta=meta,
                    service_name=name,
                    endpoints=endpoints[start : start + MAX_ENDPOINTS_PER_SLICE],
                    ports=list(ports),
                    managed_by=MANAGED_BY_CONTROLLER,
                )
            )
    if not slices:
        meta = _slice_meta(svc, f"{ns}/{name}/placeholder", MANAGED_BY_CONTROLLER)
        slices.append(EndpointSlice(meta=meta, service_name=name, managed_by=MANAGED_BY_CONTROLLER))
    return slices


def _ports_key(ports: tuple[SlicePort, ...]) -> tuple[tuple[str, int, str], ...]:
    return tuple((p.name or "", p.port or 0, p.protocol) for p in ports)


def mirror_endpoints(svc: Service, subsets: list[tuple[list[SlicePort], list[SliceEndpoint]]]) -> list[EndpointSlice]:
    """EndpointSlices the mirroring controller makes from a legacy Endpoints."""
    slices = []
    for number, (ports, endpoints) in enumerate(subsets):
        for start in range(0, max(len(endpoints), 1), MAX_ENDPOINTS_PER_SLICE):
            meta = _slice_meta(
                svc, f"{svc.meta.namespace}/{svc.meta.name}/mirror/{number}/{start}", MANAGED_BY_MIRRORING
            )
            meta.labels.pop(LABEL_HEADLESS, None)
            slices.append(
                EndpointSlice(
                    meta=meta,
                    service_name=svc.meta.name,
                    endpoints=endpoints[start : start + MAX_ENDPOINTS_PER_SLICE],
                    ports=list(ports),
                    managed_by=MANAGED_BY_MIRRORING,
                )
            )
    return slices
