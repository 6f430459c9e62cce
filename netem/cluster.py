"""A cluster: manifests in, the state a real control plane would reach out.

`load_cluster(paths)` reads the manifests, validates every object, and plays
the controllers the data plane depends on (IPAM, the workload controllers and
a scheduler, the EndpointSlice and mirroring controllers) so that the result
is what `kubectl get` would show after the cluster settled. `ClusterBuilder`
is the same pipeline for objects built in Python (the scenario generator),
without YAML. All problems are collected; if there are any, one
`ValidationErrors` carries them all, one line each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .addr import Cidr
from .endpointslices import PodIndex, mirror_endpoints, node_zones, reconcile_service
from .errors import KubenetemError, ValidationError, ValidationErrors, Where
from .fields import Problems
from .gcpause import paused_gc
from .ipam import allocate_nodes, allocate_pod_ips, allocate_services
from .manifests import Document, read_paths
from .objects import (
    MANAGED_BY_CONTROLLER,
    EndpointSlice,
    Meta,
    Node,
    Pod,
    ProxyConfig,
    RawObject,
    Service,
    SliceEndpoint,
    SlicePort,
    Workload,
)
from .parse import (
    CLUSTER_SCOPED,
    WORKLOAD_KINDS,
    fields_of,
    parse_endpoint_slice,
    parse_endpoints,
    parse_meta,
    parse_node,
    parse_pod,
    parse_proxy_config,
    parse_raw,
    parse_service,
    parse_service_cidr,
    parse_workload,
)
from .workloads import check_node_names, expand_workloads, schedule

DEFAULT_NODE_NAME = "node-1"

# The apiVersions a current API server serves for each kind we read.
API_VERSIONS: dict[str, tuple[str, ...]] = {
    "Namespace": ("v1",),
    "Node": ("v1",),
    "Pod": ("v1",),
    "Service": ("v1",),
    "Endpoints": ("v1",),
    "Secret": ("v1",),
    "EndpointSlice": ("discovery.k8s.io/v1",),
    "Deployment": ("apps/v1",),
    "ReplicaSet": ("apps/v1",),
    "StatefulSet": ("apps/v1",),
    "DaemonSet": ("apps/v1",),
    "Ingress": ("networking.k8s.io/v1",),
    "IngressClass": ("networking.k8s.io/v1",),
    "ServiceCIDR": ("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
    "KubeProxyConfiguration": ("kubeproxy.config.k8s.io/v1alpha1",),
}


@dataclass
class Cluster:
    namespaces: dict[str, Meta] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)  # sorted by name
    pods: list[Pod] = field(default_factory=list)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    slices: dict[tuple[str, str], list[EndpointSlice]] = field(default_factory=dict)
    workloads: list[Workload] = field(default_factory=list)
    ingresses: list[RawObject] = field(default_factory=list)
    ingress_classes: list[RawObject] = field(default_factory=list)
    secrets: list[RawObject] = field(default_factory=list)
    service_cidrs: list[Cidr] = field(default_factory=list)
    proxy_config: ProxyConfig = field(default_factory=ProxyConfig)
    ignored: Counter[str] = field(default_factory=Counter)

    def node(self, name: str | None = None) -> Node:
        """A node by name; without a name, the first one (sorted by name)."""
        if name is None:
            return next(iter(self.nodes.values()))
        try:
            return self.nodes[name]
        except KeyError:
            from .errors import UsageError

            raise UsageError(f"no node named {name!r} (nodes: {', '.join(self.nodes)})") from None

    def all_slices(self) -> list[EndpointSlice]:
        return [s for key in sorted(self.slices) for s in self.slices[key]]


class ClusterBuilder:
    """Collects typed objects, then runs the controllers in `build()`."""

    def __init__(self) -> None:
        self.problems = Problems()
        self.cluster = Cluster()
        self._seen: dict[tuple[str, str, str], Where] = {}
        self._pods: list[Pod] = []
        self._pod_names: set[tuple[str, str]] = set()
        self._given_slices: list[EndpointSlice] = []
        self._endpoints: dict[tuple[str, str], list[tuple[list[SlicePort], list[SliceEndpoint]]]] = {}
        self._proxy_config_seen = False

    # -- adding objects ------------------------------------------------------

    def _claim(self, kind: str, meta: Meta) -> bool:
        if not meta.name:
            return False
        key = (kind, meta.namespace, meta.name)
        if key in self._seen:
            first = self._seen[key]
            self.problems.add(
                ValidationError(
                    f"duplicate object: {kind} {meta.namespace + '/' if meta.namespace else ''}{meta.name} "
                    f"is also defined in {first.describe() or 'the input'}",
                    meta.where,
                )
            )
            return False
        self._seen[key] = meta.where
        return True

    def add_service(self, svc: Service) -> None:
        if self._claim("Service", svc.meta):
            self.cluster.services[svc.meta.key] = svc

    def add_pod(self, pod: Pod) -> None:
        meta = pod.meta
        key = (meta.namespace, meta.name)
        if key not in self._pod_names and meta.name:
            # The common case, inlined: a large cluster adds 300,000 pods.
            self._pod_names.add(key)
            self._seen[("Pod", *key)] = meta.where
            self._pods.append(pod)
        elif self._claim("Pod", meta):
            self._pods.append(pod)

    def add_node(self, node: Node) -> None:
        if self._claim("Node", node.meta):
            self.cluster.nodes[node.name] = node

    def add_workload(self, workload: Workload) -> None:
        if self._claim(workload.kind, workload.meta):
            self.cluster.workloads.append(workload)

    def add_document(self, doc: Document) -> None:
        obj, where = doc.obj, doc.where
        f = fields_of(obj, where, self.problems)
        kind = f.text("kind", required=True)
        api_version = f.text("apiVersion", required=True)
        if not kind:
            return
        f.where = where = _named_where(where, kind, obj.get("metadata"))
        served = API_VERSIONS.get(kind)
        if served is None:
            self.cluster.ignored[kind] += 1
            return
        if api_version and api_version not in served:
            f.error(
                f'no kind "{kind}" is served in version "{api_version}" (use {" or ".join(served)})',
                "apiVersion",
                api_version,
            )
            return
        self._dispatch(kind, f)

    def _dispatch(self, kind: str, f) -> None:  # type: ignore[no-untyped-def]
        c = self.cluster
        if kind == "Service":
            self.add_service(parse_service(f))
        elif kind == "Pod":
            self.add_pod(parse_pod(f))
        elif kind == "Node":
            self.add_node(parse_node(f))
        elif kind in WORKLOAD_KINDS:
            self.add_workload(parse_workload(f, kind))
        elif kind == "EndpointSlice":
            s = parse_endpoint_slice(f)
            if self._claim(kind, s.meta):
                if not s.service_name:
                    f.error(
                        "EndpointSlice has no kubernetes.io/service-name label; kube-proxy ignores it",
                        "metadata.labels",
                    )
                self._given_slices.append(s)
        elif kind == "Endpoints":
            meta, subsets = parse_endpoints(f)
            if self._claim(kind, meta) and _mirrored(meta):
                self._endpoints[meta.key] = subsets
        elif kind == "Namespace":
            meta = parse_meta(f, kind)
            if self._claim(kind, meta):
                c.namespaces[meta.name] = meta
        elif kind == "ServiceCIDR":
            meta, cidrs = parse_service_cidr(f)
            if self._claim(kind, meta):
                c.service_cidrs.extend(cidrs)
        elif kind == "KubeProxyConfiguration":
            if self._proxy_config_seen:
                f.error("only one KubeProxyConfiguration may be given")
                return
            self._proxy_config_seen = True
            c.proxy_config = parse_proxy_config(f)
        else:
            raw = parse_raw(f, kind)
            if self._claim(kind, raw.meta):
                {"Ingress": c.ingresses, "IngressClass": c.ingress_classes, "Secret": c.secrets}[kind].append(raw)

    # -- running the controllers ----------------------------------------------

    def build(self) -> Cluster:
        with paused_gc():
            return self._build()

    def _build(self) -> Cluster:
        c = self.cluster
        self._nodes()
        self._check_slices()
        errors: list[KubenetemError] = []
        errors += allocate_nodes(list(c.nodes.values()), c.proxy_config.cluster_cidrs)
        errors += allocate_services(c.services.values(), c.service_cidrs)
        nodes = list(c.nodes.values())
        counts = {n.name: 0 for n in nodes}
        explicit = [p for p in self._pods if p.spec.node_name]
        schedule(explicit, nodes, counts)
        generated = expand_workloads(c.workloads, nodes, self._pod_names, counts)
        schedule([p for p in self._pods if not p.spec.node_name], nodes, counts)
        errors += check_node_names(self._pods, c.nodes)
        c.pods = self._pods + generated
        errors += allocate_pod_ips(c.pods, c.nodes)
        for e in errors:
            self.problems.add(e)
        if self.problems:
            raise ValidationErrors(self.problems.errors)
        self._endpoint_slices()
        return c

    def _nodes(self) -> None:
        c = self.cluster
        if not c.nodes:
            names = {DEFAULT_NODE_NAME} | {p.spec.node_name for p in self._pods if p.spec.node_name}
            for name in sorted(names):
                c.nodes[name] = Node(meta=Meta(name=name, labels={"kubernetes.io/hostname": name}), implicit=True)
        c.nodes = dict(sorted(c.nodes.items()))

    def _check_slices(self) -> None:
        for s in self._given_slices:
            svc = self.cluster.services.get((s.meta.namespace, s.service_name))
            if svc is not None and svc.selector is not None and s.managed_by == MANAGED_BY_CONTROLLER:
                continue  # the controller owns it and rewrites it from the selector
            self.cluster.slices.setdefault((s.meta.namespace, s.service_name), []).append(s)

    def _endpoint_slices(self) -> None:
        c = self.cluster
        index = PodIndex(c.pods)
        zones = node_zones(c.nodes)
        for key in sorted(c.services):
            svc = c.services[key]
            if svc.type == "ExternalName":
                continue
            if svc.selector is not None:
                made = reconcile_service(svc, index, zones)
                c.slices[key] = made + [s for s in c.slices.get(key, [])]
            elif key in self._endpoints:
                c.slices[key] = c.slices.get(key, []) + mirror_endpoints(svc, self._endpoints[key])


def _mirrored(meta: Meta) -> bool:
    """The EndpointSlice mirroring controller's shouldMirror
    (pkg/controller/endpointslicemirroring/utils.go): not an Endpoints object
    labelled skip-mirror, nor a leader-election lock."""
    if meta.labels.get("endpointslice.kubernetes.io/skip-mirror") == "true":
        return False
    return "control-plane.alpha.kubernetes.io/leader" not in meta.annotations


def _named_where(where: Where, kind: str, metadata: object) -> Where:
    """The document's location labelled with its kind and name, when they can
    be read, so even an error found before parsing says which object."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return where.named(kind, "", "")
    namespace = metadata.get("namespace")
    if kind in CLUSTER_SCOPED:
        namespace = ""
    elif not isinstance(namespace, str) or not namespace:
        namespace = "default"
    return where.named(kind, namespace, metadata["name"])


def build_cluster(documents: list[Document]) -> Cluster:
    builder = ClusterBuilder()
    for doc in documents:
        builder.add_document(doc)
    return builder.build()


def load_cluster(paths: list[str], stdin_text: str | None = None) -> Cluster:
    with paused_gc():
        return build_cluster(read_paths(paths, stdin_text))
