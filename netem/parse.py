"""Manifest mappings to typed objects, validated as the API server validates.

One function per kind. Each reads the fields the data plane depends on,
checks them the way the API server's validation does (pkg/apis/core/validation
ValidateService, ValidatePod, apps validation for workloads, discovery
validation for EndpointSlices) and records every problem in `Problems`, so a
file with five mistakes gets five lines. Checks that need the whole cluster
(ClusterIP inside the service CIDR, NodePort clashes) belong to `ipam`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import validation as v
from .addr import Cidr, is_ipv4, is_ipv6, parse_cidr, parse_ip
from .errors import Where
from .fields import Fields, Problems
from .objects import (
    LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME,
    ContainerPort,
    EndpointSlice,
    LabelSelector,
    Meta,
    Node,
    Pod,
    PodSpec,
    ProxyConfig,
    RawObject,
    Service,
    ServicePort,
    SliceEndpoint,
    SlicePort,
    Taint,
    Toleration,
    Workload,
)

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
CLUSTER_SCOPED = {"Namespace", "Node", "IngressClass", "ServiceCIDR", "KubeProxyConfiguration"}


def parse_meta(f: Fields, kind: str, name_rule: Callable[[str], str] = v.dns1123_subdomain) -> Meta:
    md = f.obj("metadata", required=True)
    if md is None:
        return Meta(name="", where=f.where.named(kind, "", ""))
    name = md.text("name")
    if not name:
        if md.text("generateName"):
            md.error("Required value: generateName is not supported here; give the object a name", "name")
        else:
            md.error("Required value", "name")
    namespace = "" if kind in CLUSTER_SCOPED else (md.text("namespace") or "default")
    where = f.where.named(kind, namespace, name)
    md.where = where
    f.where = where
    if name:
        problem = name_rule(name)
        if problem:
            md.error(problem, "name", name)
    if namespace:
        problem = v.dns1123_label(namespace)
        if problem:
            md.error(problem, "namespace", namespace)
    labels = md.string_map("labels")
    for key, value in labels.items():
        problem = v.label_key(key) or v.label_value(value)
        if problem:
            md.error(problem, f"labels.{key}", value)
    return Meta(
        name=name,
        namespace=namespace,
        labels=labels,
        annotations=md.string_map("annotations"),
        uid=md.text("uid"),
        creation_timestamp=md.text("creationTimestamp") or None,
        deletion_timestamp=md.text("deletionTimestamp") or None,
        where=where,
    )


# --- Services -------------------------------------------------------------


def parse_service(f: Fields) -> Service:
    meta = parse_meta(f, "Service", v.dns1035_label)
    svc = Service(meta=meta, raw=f.data)
    spec = f.obj("spec") or Fields({}, f.where, f.problems, "spec")
    svc.type = spec.text("type", "ClusterIP")
    if svc.type not in SERVICE_TYPES:
        spec.error('supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"', "type", svc.type)
        svc.type = "ClusterIP"
    _service_addresses(spec, svc)
    _service_ports(spec, svc)
    if spec.has("selector"):
        svc.selector = spec.string_map("selector")
        for key, value in svc.selector.items():
            problem = v.label_key(key) or v.label_value(value)
            if problem:
                spec.error(problem, f"selector.{key}", value)
        if not svc.selector:
            svc.selector = None  # an empty selector selects nothing for Services
    _service_affinity(spec, svc)
    _service_policies(spec, svc)
    svc.publish_not_ready_addresses = spec.flag("publishNotReadyAddresses")
    svc.allocate_lb_node_ports = spec.flag("allocateLoadBalancerNodePorts", True)
    svc.traffic_distribution = spec.text("trafficDistribution")
    _service_status(f, svc)
    return svc


def _service_addresses(spec: Fields, svc: Service) -> None:
    cluster_ip = spec.text("clusterIP")
    cluster_ips = spec.strings("clusterIPs")
    if not cluster_ip and cluster_ips:
        cluster_ip = cluster_ips[0]
    if cluster_ip and cluster_ips and cluster_ips[0] != cluster_ip:
        spec.error("must match clusterIP", "clusterIPs[0]", cluster_ips[0])
    if svc.type == "ExternalName":
        svc.external_name = spec.text("externalName", required=True)
        problem = v.dns1123_subdomain(svc.external_name.rstrip(".")) if svc.external_name else ""
        if problem:
            spec.error(problem, "externalName", svc.external_name)
        if cluster_ip:
            spec.error("may not be set for type ExternalName", "clusterIP", cluster_ip)
        return
    if cluster_ip == "None":
        svc.headless = True
        if svc.type != "ClusterIP":
            spec.error(f"may not be set to 'None' for {svc.type} services", "clusterIP", cluster_ip)
    elif cluster_ip:
        if is_ipv6(cluster_ip):
            spec.error("IPv6 is not supported by this emulator (IPv4 single-stack only)", "clusterIP", cluster_ip)
        else:
            try:
                svc.cluster_ip = parse_ip(cluster_ip)
            except ValueError:
                spec.error("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)", "clusterIP", cluster_ip)
    for index, text in enumerate(spec.strings("externalIPs")):
        try:
            ip = parse_ip(text)
        except ValueError:
            spec.error("must be a valid IP address", f"externalIPs[{index}]", text)
            continue
        if ip == 0 or ip >> 24 == 127 or ip >> 28 == 0xE:
            spec.error("may not be unspecified, loopback or multicast", f"externalIPs[{index}]", text)
            continue
        svc.external_ips.append(ip)


def _service_ports(spec: Fields, svc: Service) -> None:
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    raw_ports = spec.raw("ports")
    many = isinstance(raw_ports, list) and len(raw_ports) > 1
    for pf in spec.items("ports"):
        name = pf.text("name")
        if many and not name:
            pf.error("Required value", "name")
        if name:
            problem = v.dns1123_label(name)
            if problem:
                pf.error(problem, "name", name)
            elif name in seen_names:
                pf.error("Duplicate value", "name", name)
            seen_names.add(name)
        protocol = pf.text("protocol", "TCP")
        if v.protocol(protocol):
            pf.error(v.protocol(protocol), "protocol", protocol)
            protocol = "TCP"
        port = pf.number("port", required=True)
        if _is_int(pf.raw("port")) and v.port_number(port):
            pf.error(v.port_number(port), "port", port)
        if (port, protocol) in seen_ports:
            pf.error("Duplicate value", "", {"port": port, "protocol": protocol})
        seen_ports.add((port, protocol))
        target = _target_port(pf)
        node_port = pf.number("nodePort")
        if node_port and svc.type not in ("NodePort", "LoadBalancer"):
            pf.error("may not be used when `type` is 'ClusterIP'", "nodePort", node_port)
            node_port = 0
        svc.ports.append(ServicePort(name, protocol, port, target, node_port, pf.text("appProtocol")))
    if not svc.ports and svc.type != "ExternalName" and not svc.headless:
        spec.error("Required value", "ports")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _target_port(pf: Fields) -> int | str:
    target = pf.int_or_str("targetPort")
    if target is None:
        return 0
    if isinstance(target, str):
        if target.isdigit():
            target = int(target)  # the API server parses "8080" as a number
        else:
            problem = v.port_name(target)
            if problem:
                pf.error(problem, "targetPort", target)
                return 0
            return target
    if target == 0:
        return 0
    problem = v.port_number(target)
    if problem:
        pf.error(problem, "targetPort", target)
        return 0
    return target


def _service_affinity(spec: Fields, svc: Service) -> None:
    svc.session_affinity = spec.text("sessionAffinity", "None")
    if svc.session_affinity not in ("None", "ClientIP"):
        spec.error('supported values: "ClientIP", "None"', "sessionAffinity", svc.session_affinity)
        svc.session_affinity = "None"
    cfg = spec.obj("sessionAffinityConfig")
    client_ip = cfg.obj("clientIP") if cfg else None
    if client_ip is not None and client_ip.has("timeoutSeconds"):
        timeout = client_ip.number("timeoutSeconds")
        if not 0 < timeout <= 86400:
            client_ip.error("must be greater than 0 and less than 86400", "timeoutSeconds", timeout)
        elif svc.session_affinity != "ClientIP":
            client_ip.error("must not be set when sessionAffinity is None", "timeoutSeconds", timeout)
        else:
            svc.affinity_timeout = timeout


def _service_policies(spec: Fields, svc: Service) -> None:
    etp = spec.text("externalTrafficPolicy")
    if etp and not svc.externally_accessible:
        spec.error("may only be set for externally-accessible services", "externalTrafficPolicy", etp)
        etp = ""
    elif etp and etp not in ("Cluster", "Local"):
        spec.error('supported values: "Cluster", "Local"', "externalTrafficPolicy", etp)
        etp = "Cluster"
    if svc.externally_accessible and not etp:
        etp = "Cluster"
    svc.external_traffic_policy = etp
    itp = spec.text("internalTrafficPolicy", "Cluster")
    if itp not in ("Cluster", "Local"):
        spec.error('supported values: "Cluster", "Local"', "internalTrafficPolicy", itp)
        itp = "Cluster"
    svc.internal_traffic_policy = "" if svc.type == "ExternalName" else itp
    for index, text in enumerate(spec.strings("loadBalancerSourceRanges")):
        if svc.type != "LoadBalancer":
            spec.error("may only be used when `type` is 'LoadBalancer'", "loadBalancerSourceRanges", text)
            break
        try:
            svc.lb_source_ranges.append(parse_cidr(text.strip(), strict=False))
        except ValueError:
            spec.error("must be a list of IP ranges (e.g. 10.0.0.0/8)", f"loadBalancerSourceRanges[{index}]", text)
    hcnp = spec.number("healthCheckNodePort")
    if hcnp and not (svc.type == "LoadBalancer" and etp == "Local"):
        spec.error(
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            "healthCheckNodePort",
            hcnp,
        )
        hcnp = 0
    svc.health_check_node_port = hcnp


def _service_status(f: Fields, svc: Service) -> None:
    status = f.obj("status")
    lb = status.obj("loadBalancer") if status else None
    if lb is None:
        return
    for ing in lb.items("ingress"):
        text = ing.text("ip")
        if not text:
            continue
        try:
            ip = parse_ip(text)
        except ValueError:
            ing.error("must be a valid IP address", "ip", text)
            continue
        mode = ing.text("ipMode", "VIP")
        if mode not in ("VIP", "Proxy"):
            ing.error('supported values: "Proxy", "VIP"', "ipMode", mode)
        (svc.lb_ingress_proxy_ips if mode == "Proxy" else svc.lb_ingress_ips).append(ip)


# --- Pods and workloads ---------------------------------------------------


def parse_pod_spec(spec: Fields, require_containers: bool = True) -> PodSpec:
    ports: list[ContainerPort] = []
    seen: set[str] = set()
    containers = 0
    # FindPort (pkg/api/v1/pod/util.go) looks through the containers, then the
    # sidecars (init containers with restartPolicy Always); the ports of other
    # init containers are validated but never name a Service's targetPort.
    for container_key in ("containers", "initContainers"):
        for c in spec.items(container_key, required=require_containers and container_key == "containers"):
            containers += container_key == "containers"
            serves = container_key == "containers" or c.text("restartPolicy") == "Always"
            for p in c.items("ports"):
                number = p.number("containerPort", required=True)
                if _is_int(p.raw("containerPort")) and v.port_number(number):
                    p.error(v.port_number(number), "containerPort", number)
                name = p.text("name")
                if name:
                    problem = v.port_name(name)
                    if problem:
                        p.error(problem, "name", name)
                    elif name in seen:
                        p.error("Duplicate value", "name", name)
                    seen.add(name)
                protocol = p.text("protocol", "TCP")
                if v.protocol(protocol):
                    p.error(v.protocol(protocol), "protocol", protocol)
                if serves:
                    ports.append(ContainerPort(name, number, protocol))
    raw_containers = spec.raw("containers")
    if require_containers and isinstance(raw_containers, list) and not raw_containers:
        spec.error("Required value: must have at least one container", "containers")
    tolerations = tuple(
        Toleration(t.text("key"), t.text("operator", "Equal"), t.text("value"), t.text("effect"))
        for t in spec.items("tolerations")
    )
    node_selector = spec.string_map("nodeSelector")
    hostname = spec.text("hostname")
    subdomain = spec.text("subdomain")
    for key, value in (("hostname", hostname), ("subdomain", subdomain)):
        if value and v.dns1123_label(value):
            spec.error(v.dns1123_label(value), key, value)
    return PodSpec(
        ports=tuple(ports),
        node_name=spec.text("nodeName"),
        node_selector=node_selector,
        tolerations=tolerations,
        host_network=spec.flag("hostNetwork"),
        hostname=hostname,
        subdomain=subdomain,
        restart_policy=spec.text("restartPolicy", "Always"),
        containers=max(containers, 1),
    )


def parse_pod(f: Fields) -> Pod:
    meta = parse_meta(f, "Pod")
    spec_f = f.obj("spec", required=True) or Fields({}, f.where, f.problems, "spec")
    pod = Pod(meta=meta, spec=parse_pod_spec(spec_f), raw=f.data)
    status = f.obj("status")
    if status is not None:
        pod.phase = status.text("phase", "Running")
        ip_text = status.text("podIP")
        if ip_text:
            try:
                pod.pod_ip = parse_ip(ip_text)
            except ValueError:
                status.error("must be a valid IPv4 address", "podIP", ip_text)
        ready = None
        for cond in status.items("conditions"):
            if cond.text("type") == "Ready":
                ready = cond.text("status") == "True"
        # A pod with a status but no Ready condition is not ready yet, as the
        # kubelet has not reported it; one without any status is assumed to
        # be running and ready (what it becomes in a healthy cluster).
        pod.ready = bool(ready) if status.has("conditions") or status.has("phase") else True
        if pod.phase != "Running":
            pod.ready = False
    return pod


WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")


def parse_label_selector(f: Fields | None, key_path: str = "selector") -> LabelSelector | None:
    if f is None:
        return None
    labels = f.string_map("matchLabels")
    exprs = []
    for e in f.items("matchExpressions"):
        op = e.text("operator", required=True)
        values = tuple(e.strings("values"))
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            e.error('supported values: "DoesNotExist", "Exists", "In", "NotIn"', "operator", op)
            continue
        if op in ("In", "NotIn") and not values:
            e.error("must be specified when `operator` is 'In' or 'NotIn'", "values")
        if op in ("Exists", "DoesNotExist") and values:
            e.error("may not be specified when `operator` is 'Exists' or 'DoesNotExist'", "values")
        exprs.append((e.text("key", required=True), op, values))
    return LabelSelector(tuple(sorted(labels.items())), tuple(exprs))


def parse_workload(f: Fields, kind: str) -> Workload:
    meta = parse_meta(f, kind)
    spec = f.obj("spec", required=True) or Fields({}, f.where, f.problems, "spec")
    selector = parse_label_selector(spec.obj("selector", required=True))
    template = spec.obj("template", required=True)
    tmeta_f = template.obj("metadata") if template else None
    labels = tmeta_f.string_map("labels") if tmeta_f else {}
    tmeta = Meta(
        name="",
        namespace=meta.namespace,
        labels=labels,
        annotations=tmeta_f.string_map("annotations") if tmeta_f else {},
        where=meta.where,
    )
    tspec_f = template.obj("spec", required=True) if template else None
    tspec = parse_pod_spec(tspec_f) if tspec_f else PodSpec()
    if selector is not None and template is not None:
        if not selector.match_labels and not selector.match_expressions:
            spec.error("empty selector is invalid for deployment", "selector")
        elif not selector.matches(labels):
            template.error(
                f"`selector` does not match template `labels` (selector {selector.as_dict()})",
                "metadata.labels",
                labels,
            )
    replicas = 1
    if kind != "DaemonSet":
        replicas = spec.number("replicas", 1)
        if replicas < 0:
            spec.error("must be greater than or equal to 0", "replicas", replicas)
            replicas = 0
        if replicas > 100000:
            spec.error("too many replicas for the emulator (at most 100000)", "replicas", replicas)
            replicas = 0
    template_raw = template.data if template else {}
    return Workload(
        kind=kind,
        meta=meta,
        selector=selector or LabelSelector(),
        template_meta=tmeta,
        template=tspec,
        replicas=replicas,
        service_name=spec.text("serviceName") if kind == "StatefulSet" else "",
        template_raw=template_raw,
        raw=f.data,
    )


# --- Nodes ------------------------------------------------------------------


def parse_node(f: Fields) -> Node:
    meta = parse_meta(f, "Node")
    node = Node(meta=meta, raw=f.data)
    spec = f.obj("spec")
    if spec is not None:
        cidrs = spec.strings("podCIDRs") or ([spec.text("podCIDR")] if spec.text("podCIDR") else [])
        for index, text in enumerate(cidrs):
            if is_ipv6(text.partition("/")[0]):
                continue  # dual-stack node: the IPv4 family is what we model
            try:
                node.pod_cidrs.append(parse_cidr(text))
            except ValueError as exc:
                spec.error(str(exc), f"podCIDRs[{index}]", text)
        node.unschedulable = spec.flag("unschedulable")
        taints = []
        for t in spec.items("taints"):
            effect = t.text("effect", required=True)
            if effect and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                t.error('supported values: "NoExecute", "NoSchedule", "PreferNoSchedule"', "effect", effect)
            taints.append(Taint(t.text("key", required=True), t.text("value"), effect))
        node.taints = tuple(taints)
    status = f.obj("status")
    if status is not None:
        for a in status.items("addresses"):
            kind, text = a.text("type"), a.text("address")
            if kind in ("InternalIP", "ExternalIP") and is_ipv4(text):
                attr = "internal_ip" if kind == "InternalIP" else "external_ip"
                if getattr(node, attr) is None:
                    setattr(node, attr, parse_ip(text))
            elif kind in ("InternalIP", "ExternalIP") and not is_ipv6(text):
                a.error("must be a valid IP address", "address", text)
        for cond in status.items("conditions"):
            if cond.text("type") == "Ready":
                node.ready = cond.text("status") == "True"
    return node


# --- EndpointSlices and Endpoints -----------------------------------------


def parse_endpoint_slice(f: Fields) -> EndpointSlice:
    meta = parse_meta(f, "EndpointSlice")
    slice_ = EndpointSlice(meta=meta, service_name=meta.labels.get(LABEL_SERVICE_NAME, ""), raw=f.data)
    slice_.managed_by = meta.labels.get(LABEL_MANAGED_BY, "")
    slice_.address_type = f.text("addressType", required=True)
    if slice_.address_type and slice_.address_type not in ("IPv4", "IPv6", "FQDN"):
        f.error('supported values: "FQDN", "IPv4", "IPv6"', "addressType", slice_.address_type)
    for ep in f.items("endpoints"):
        addresses: list[int] = []
        for index, text in enumerate(ep.strings("addresses")):
            if slice_.address_type != "IPv4":
                continue
            try:
                addresses.append(parse_ip(text))
            except ValueError:
                ep.error("must be a valid IPv4 address", f"addresses[{index}]", text)
        if not ep.strings("addresses"):
            ep.error("Required value: must contain at least 1 address", "addresses")
        cond = ep.obj("conditions")
        hints = ep.obj("hints")
        slice_.endpoints.append(
            SliceEndpoint(
                addresses=tuple(addresses),
                ready=_opt_bool(cond, "ready"),
                serving=_opt_bool(cond, "serving"),
                terminating=_opt_bool(cond, "terminating"),
                node_name=ep.text("nodeName"),
                zone=ep.text("zone"),
                hostname=ep.text("hostname"),
                target_ref=_target_ref(ep.obj("targetRef")),
                zone_hints=tuple(z.text("name") for z in hints.items("forZones")) if hints else (),
                node_hints=tuple(z.text("name") for z in hints.items("forNodes")) if hints else (),
            )
        )
    for p in f.items("ports"):
        port = p.number("port") if p.has("port") else None
        if port is not None and _is_int(p.raw("port")) and v.port_number(port):
            p.error(v.port_number(port), "port", port)
        protocol = p.text("protocol", "TCP")
        if v.protocol(protocol):
            p.error(v.protocol(protocol), "protocol", protocol)
        name = p.text("name") if p.has("name") else ""
        slice_.ports.append(SlicePort(name, port, protocol, p.text("appProtocol")))
    return slice_


def _opt_bool(f: Fields | None, key: str) -> bool | None:
    if f is None or not f.has(key):
        return None
    return f.flag(key)


def _target_ref(f: Fields | None) -> tuple[str, str, str] | None:
    if f is None:
        return None
    return (f.text("kind"), f.text("namespace"), f.text("name"))


def parse_endpoints(f: Fields) -> tuple[Meta, list[tuple[list[SlicePort], list[SliceEndpoint]]]]:
    """A legacy core/v1 Endpoints object, as subsets of (ports, endpoints)."""
    meta = parse_meta(f, "Endpoints")
    subsets = []
    for s in f.items("subsets"):
        ports = []
        for p in s.items("ports"):
            port = p.number("port", required=True)
            if _is_int(p.raw("port")) and v.port_number(port):
                p.error(v.port_number(port), "port", port)
            ports.append(SlicePort(p.text("name"), port, p.text("protocol", "TCP"), p.text("appProtocol")))
        endpoints = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in s.items(key):
                text = a.text("ip", required=True)
                try:
                    ip = parse_ip(text)
                except ValueError:
                    if text:
                        a.error("must be a valid IPv4 address", "ip", text)
                    continue
                endpoints.append(
                    SliceEndpoint(
                        (ip,),
                        ready,
                        None,
                        None,
                        a.text("nodeName"),
                        "",
                        a.text("hostname"),
                        _target_ref(a.obj("targetRef")),
                    )
                )
        subsets.append((ports, endpoints))
    return meta, subsets


# --- Other kinds --------------------------------------------------------------


def parse_service_cidr(f: Fields) -> tuple[Meta, list[Cidr]]:
    meta = parse_meta(f, "ServiceCIDR")
    spec = f.obj("spec", required=True)
    cidrs: list[Cidr] = []
    if spec is not None:
        for index, text in enumerate(spec.strings("cidrs")):
            if is_ipv6(text.partition("/")[0]):
                continue
            try:
                cidr = parse_cidr(text)
            except ValueError as exc:
                spec.error(str(exc), f"cidrs[{index}]", text)
                continue
            if cidr.length > 30:
                spec.error("prefix is too small for a service range (at most /30)", f"cidrs[{index}]", text)
                continue
            cidrs.append(cidr)
        if not spec.strings("cidrs"):
            spec.error("Required value", "cidrs")
    return meta, cidrs


def parse_raw(f: Fields, kind: str) -> RawObject:
    name_rule = v.dns1123_subdomain
    meta = parse_meta(f, kind, name_rule)
    return RawObject(kind=kind, api_version=f.text("apiVersion"), meta=meta, body=f.data)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go duration string ("30s", "1m0s", "1h30m") in seconds; None if invalid."""
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


PROXY_MODES = ("", "iptables", "ipvs", "nftables", "userspace")


def parse_proxy_config(f: Fields) -> ProxyConfig:
    cfg = ProxyConfig(where=f.where.named("KubeProxyConfiguration", "", ""), given=True)
    f.where = cfg.where
    mode = f.text("mode")
    if mode not in PROXY_MODES:
        f.error('supported values: "iptables", "ipvs", "nftables" (and "userspace" here)', "mode", mode)
    cfg.mode = mode or "iptables"
    for index, text in enumerate(t.strip() for t in f.text("clusterCIDR").split(",") if t.strip()):
        if is_ipv6(text.partition("/")[0]):
            continue
        try:
            cfg.cluster_cidrs.append(parse_cidr(text))
        except ValueError as exc:
            f.error(str(exc), "clusterCIDR" if index == 0 else f"clusterCIDR[{index}]", text)
    cfg.hostname_override = f.text("hostnameOverride")
    ipt = f.obj("iptables")
    if ipt is not None:
        cfg.masquerade_all = ipt.flag("masqueradeAll")
        _masquerade_bit(ipt, cfg)
        cfg.localhost_node_ports = ipt.flag("localhostNodePorts", True)
        cfg.min_sync_period = _duration(ipt, "minSyncPeriod", cfg.min_sync_period)
        cfg.sync_period = _duration(ipt, "syncPeriod", cfg.sync_period)
    nft = f.obj("nftables")
    if nft is not None and cfg.mode == "nftables":
        cfg.masquerade_all = nft.flag("masqueradeAll", cfg.masquerade_all)
        _masquerade_bit(nft, cfg)
    ipvs = f.obj("ipvs")
    if ipvs is not None:
        _ipvs_config(ipvs, cfg)
    for index, text in enumerate(f.strings("nodePortAddresses")):
        if text != "primary":
            try:
                parse_cidr(text)
            except ValueError:
                f.error("must be a valid CIDR or 'primary'", f"nodePortAddresses[{index}]", text)
                continue
        cfg.node_port_addresses.append(text)
    _detect_local(f, cfg)
    ct = f.obj("conntrack")
    if ct is not None:
        cfg.conntrack_tcp_established = _duration(ct, "tcpEstablishedTimeout", cfg.conntrack_tcp_established)
        cfg.conntrack_tcp_close_wait = _duration(ct, "tcpCloseWaitTimeout", cfg.conntrack_tcp_close_wait)
        cfg.conntrack_udp = _duration(ct, "udpTimeout", 0)
        cfg.conntrack_udp_stream = _duration(ct, "udpStreamTimeout", 0)
    _userspace_config(f, cfg)
    return cfg


def _userspace_config(f: Fields, cfg: ProxyConfig) -> None:
    """bindAddress, portRange and udpIdleTimeout: what the userspace proxier reads."""
    bind = f.text("bindAddress")
    if bind and not is_ipv6(bind):
        try:
            cfg.bind_address = parse_ip(bind)
        except ValueError:
            f.error("must be a valid IP address", "bindAddress", bind)
    text = f.text("portRange").strip()
    if text:
        # utilnet.ParsePortRange: "low-high" or a single port.
        low, _, high = text.partition("-")
        if not (low.isdigit() and (high or low).isdigit() and 0 < int(low) <= int(high or low) < 65536):
            f.error('must be a port range "low-high" within 1-65535', "portRange", text)
        else:
            cfg.port_range = (int(low), int(high or low) - int(low) + 1)
    cfg.udp_idle_timeout = _duration(f, "udpIdleTimeout", cfg.udp_idle_timeout)


def _masquerade_bit(f: Fields, cfg: ProxyConfig) -> None:
    if f.has("masqueradeBit"):
        bit = f.number("masqueradeBit", 14)
        if not 0 <= bit <= 31:
            f.error("must be within the range [0, 31]", "masqueradeBit", bit)
        else:
            cfg.masquerade_bit = bit


IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")


def _ipvs_config(ipvs: Fields, cfg: ProxyConfig) -> None:
    scheduler = ipvs.text("scheduler") or "rr"
    if scheduler not in IPVS_SCHEDULERS:
        ipvs.error("unknown IPVS scheduler (" + ", ".join(IPVS_SCHEDULERS) + ")", "scheduler", scheduler)
    else:
        cfg.ipvs_scheduler = scheduler
    cfg.ipvs_strict_arp = ipvs.flag("strictARP")
    cfg.ipvs_tcp_timeout = _duration(ipvs, "tcpTimeout", 0)
    cfg.ipvs_tcp_fin_timeout = _duration(ipvs, "tcpFinTimeout", 0)
    cfg.ipvs_udp_timeout = _duration(ipvs, "udpTimeout", 0)
    for index, text in enumerate(ipvs.strings("excludeCIDRs")):
        try:
            cfg.ipvs_exclude_cidrs.append(parse_cidr(text, strict=False))
        except ValueError:
            ipvs.error("must be a valid CIDR", f"excludeCIDRs[{index}]", text)


def _detect_local(f: Fields, cfg: ProxyConfig) -> None:
    mode = f.text("detectLocalMode") or "ClusterCIDR"
    if mode not in ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix"):
        f.error(
            'supported values: "BridgeInterface", "ClusterCIDR", "InterfaceNamePrefix", "NodeCIDR"',
            "detectLocalMode",
            mode,
        )
        mode = "ClusterCIDR"
    cfg.detect_local_mode = mode
    detect = f.obj("detectLocal")
    if detect is not None:
        cfg.detect_local_bridge = detect.text("bridgeInterface")
        cfg.detect_local_prefix = detect.text("interfaceNamePrefix")
    if mode == "BridgeInterface" and not cfg.detect_local_bridge:
        f.error("Required value: bridgeInterface for detectLocalMode BridgeInterface", "detectLocal.bridgeInterface")
    if mode == "InterfaceNamePrefix" and not cfg.detect_local_prefix:
        f.error(
            "Required value: interfaceNamePrefix for detectLocalMode InterfaceNamePrefix",
            "detectLocal.interfaceNamePrefix",
        )


def _duration(f: Fields, key: str, default: float) -> float:
    raw: Any = f.raw(key)
    if raw is None:
        return default
    text = f.text(key)
    seconds = parse_duration(text)
    if seconds is None:
        f.error('must be a duration such as "30s" or "1h0m0s"', key, text)
        return default
    return seconds


def fields_of(obj: dict[str, Any], where: Where, problems: Problems) -> Fields:
    return Fields(obj, where, problems)
