"""The typed cluster model: the parts of Kubernetes objects the data plane reads.

Each class keeps what kube-proxy, the EndpointSlice controller, the scheduler
stand-in and the Ingress controller need, with addresses already as ints, plus
`raw` (the manifest as given) so that `kubenetem get -o yaml` can return the
object the way the API server would: the user's fields, defaulted and
allocated. Objects are plain mutable dataclasses because the controllers fill
them in (ClusterIPs, NodePorts, pod IPs, node assignment) once, at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .addr import Cidr
from .errors import Where

NO_WHERE = Where()

# Well-known labels and annotations.
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY_CONTROLLER = "endpointslice-controller.k8s.io"
MANAGED_BY_MIRRORING = "endpointslicemirroring-controller.k8s.io"
LABEL_POD_TEMPLATE_HASH = "pod-template-hash"


@dataclass(slots=True)
class Meta:
    name: str
    namespace: str = ""  # "" for cluster-scoped objects
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    where: Where = NO_WHERE

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector (matchLabels AND matchExpressions).

    A Service's selector is the matchLabels-only case. `None` selectors are
    represented by the absence of a LabelSelector, never by an empty one: an
    empty LabelSelector matches everything, as in Kubernetes.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def as_dict(self) -> dict[str, str]:
        return dict(self.match_labels)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(slots=True)
class PodSpec:
    """The scheduling- and endpoint-relevant parts of a pod spec or template."""

    ports: tuple[ContainerPort, ...] = ()
    node_name: str = ""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    host_network: bool = False
    hostname: str = ""
    subdomain: str = ""
    restart_policy: str = "Always"
    containers: int = 1


@dataclass(slots=True)
class Pod:
    meta: Meta
    spec: PodSpec
    pod_ip: int | None = None
    phase: str = "Running"
    ready: bool = True  # the Ready condition
    owner: tuple[str, str] | None = None  # (kind, name) of the controller
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class Node:
    meta: Meta
    pod_cidrs: list[Cidr] = field(default_factory=list)
    internal_ip: int | None = None
    external_ip: int | None = None
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    raw: dict[str, Any] | None = None
    # Objects the loader made up (no Node objects given) are not printed as
    # if the user had written them.
    implicit: bool = False

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def zone(self) -> str:
        return self.meta.labels.get(LABEL_ZONE, "")


@dataclass(slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str  # 0 means "same as port", as the API server defaults it
    node_port: int = 0
    app_protocol: str = ""

    @property
    def resolved_target(self) -> int | str:
        return self.target_port or self.port


@dataclass(slots=True)
class Service:
    meta: Meta
    type: str = "ClusterIP"
    selector: dict[str, str] | None = None
    cluster_ip: int | None = None  # allocated or given; None when headless or ExternalName
    headless: bool = False
    ports: list[ServicePort] = field(default_factory=list)
    session_affinity: str = "None"
    affinity_timeout: int = 10800
    external_ips: list[int] = field(default_factory=list)
    lb_ingress_ips: list[int] = field(default_factory=list)  # status.loadBalancer.ingress (VIP mode)
    lb_ingress_proxy_ips: list[int] = field(default_factory=list)  # ipMode: Proxy
    lb_source_ranges: list[Cidr] = field(default_factory=list)
    external_traffic_policy: str = ""  # "" unless externally accessible
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    external_name: str = ""
    publish_not_ready_addresses: bool = False
    traffic_distribution: str = ""
    allocate_lb_node_ports: bool = True
    raw: dict[str, Any] | None = None

    @property
    def externally_accessible(self) -> bool:
        """apiservice.ExternallyAccessible(): LB, NodePort, or ClusterIP with externalIPs."""
        return self.type in ("LoadBalancer", "NodePort") or (self.type == "ClusterIP" and bool(self.external_ips))


class SliceEndpoint(NamedTuple):
    """One endpoint of an EndpointSlice (a NamedTuple: there are 300,000 of
    them in a large cluster and they are built far more often than read)."""

    addresses: tuple[int, ...]
    ready: bool | None = True
    serving: bool | None = True
    terminating: bool | None = False
    node_name: str = ""
    zone: str = ""
    hostname: str = ""
    target_ref: tuple[str, str, str] | None = None  # (kind, namespace, name)
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str | None
    port: int | None
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(slots=True)
class EndpointSlice:
    meta: Meta
    service_name: str
    address_type: str = "IPv4"
    endpoints: list[SliceEndpoint] = field(default_factory=list)
    ports: list[SlicePort] = field(default_factory=list)
    managed_by: str = ""
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class Workload:
    """A Deployment, ReplicaSet, StatefulSet or DaemonSet: a pod factory."""

    kind: str
    meta: Meta
    selector: LabelSelector
    template_meta: Meta
    template: PodSpec
    replicas: int = 1
    service_name: str = ""  # StatefulSet.spec.serviceName
    template_raw: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class RawObject:
    """An object passed through to another layer (Ingress, IngressClass, Secret)."""

    kind: str
    api_version: str
    meta: Meta
    body: dict[str, Any]


@dataclass(slots=True)
class ProxyConfig:
    """The KubeProxyConfiguration fields the data plane depends on
    (kubeproxy.config.k8s.io/v1alpha1), with kube-proxy's defaults."""

    mode: str = "iptables"
    cluster_cidrs: list[Cidr] = field(default_factory=list)
    masquerade_all: bool = False
    masquerade_bit: int = 14
    ipvs_scheduler: str = "rr"
    ipvs_strict_arp: bool = False
    ipvs_tcp_timeout: float = 0  # 0 = leave the kernel's value
    ipvs_tcp_fin_timeout: float = 0
    ipvs_udp_timeout: float = 0
    ipvs_exclude_cidrs: list[Cidr] = field(default_factory=list)
    node_port_addresses: list[str] = field(default_factory=list)  # CIDRs or "primary"
    localhost_node_ports: bool = True
    detect_local_mode: str = "ClusterCIDR"
    detect_local_bridge: str = ""
    detect_local_prefix: str = ""
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    hostname_override: str = ""
    conntrack_tcp_established: float = 86400
    conntrack_tcp_close_wait: float = 3600
    conntrack_udp: float = 0
    conntrack_udp_stream: float = 0
    # userspace mode: the address the proxy listens on (0 = 0.0.0.0), the
    # range its proxy ports come from ((0, 0) = let the kernel pick) and the
    # idle timeout of its UDP client associations.
    bind_address: int = 0
    port_range: tuple[int, int] = (0, 0)  # (base, size) as utilnet.PortRange
    udp_idle_timeout: float = 0.25
    where: Where = NO_WHERE
    given: bool = False  # a KubeProxyConfiguration was in the input

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit
