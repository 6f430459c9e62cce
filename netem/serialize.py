"""Objects back to the API's JSON form, as the API server would return them.

The user's own fields are kept as written; what the API server and the
controllers add is filled in: defaults (protocol, targetPort, sessionAffinity,
traffic policies, ipFamilies...), allocations (clusterIP, nodePort,
healthCheckNodePort, podCIDR, pod IPs, nodeName) and a deterministic `uid`.
Controller-made objects (pods of workloads, EndpointSlices) are built the way
their controllers write them. Nothing here prints; the CLI dumps the dicts.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from .addr import int_to_ip
from .objects import (
    EndpointSlice,
    Meta,
    Node,
    Pod,
    RawObject,
    Service,
    Workload,
)

_UID_NAMESPACE = uuid.UUID("6f1c3a52-7a55-4d5e-9a1e-6b75656e6574")


def uid_for(kind: str, namespace: str, name: str) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, f"{kind}/{namespace}/{name}"))


def _metadata(raw: dict[str, Any] | None, kind: str, meta: Meta) -> dict[str, Any]:
    md: dict[str, Any] = copy.deepcopy(raw["metadata"]) if raw and isinstance(raw.get("metadata"), dict) else {}
    md["name"] = meta.name
    if meta.namespace:
        md["namespace"] = meta.namespace
    if meta.labels:
        md["labels"] = dict(meta.labels)
    if meta.annotations:
        md["annotations"] = dict(meta.annotations)
    md["uid"] = meta.uid or uid_for(kind, meta.namespace, meta.name)
    if meta.creation_timestamp:
        md["creationTimestamp"] = meta.creation_timestamp
    return md


def list_object(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


def service_object(svc: Service) -> dict[str, Any]:
    raw = svc.raw or {}
    spec: dict[str, Any] = copy.deepcopy(raw["spec"]) if isinstance(raw.get("spec"), dict) else {}
    spec["type"] = svc.type
    spec["sessionAffinity"] = svc.session_affinity
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.type == "ExternalName":
        spec["externalName"] = svc.external_name
    else:
        ip = "None" if svc.headless else int_to_ip(svc.cluster_ip) if svc.cluster_ip is not None else ""
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        spec["ipFamilies"] = ["IPv4"]
        spec["ipFamilyPolicy"] = "SingleStack"
        spec["internalTrafficPolicy"] = svc.internal_traffic_policy
    if svc.external_traffic_policy:
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    if svc.type == "LoadBalancer":
        spec["allocateLoadBalancerNodePorts"] = svc.allocate_lb_node_ports
    ports = []
    for p in svc.ports:
        port: dict[str, Any] = {"port": p.port, "protocol": p.protocol, "targetPort": p.resolved_target}
        if p.name:
            port["name"] = p.name
        if p.node_port:
            port["nodePort"] = p.node_port
        if p.app_protocol:
            port["appProtocol"] = p.app_protocol
        ports.append(port)
    if ports:
        spec["ports"] = ports
    status: dict[str, Any] = (
        copy.deepcopy(raw["status"]) if isinstance(raw.get("status"), dict) else {"loadBalancer": {}}
    )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(raw, "Service", svc.meta),
        "spec": spec,
        "status": status,
    }


def endpoint_slice_object(s: EndpointSlice) -> dict[str, Any]:
    if s.raw is not None:
        out = copy.deepcopy(s.raw)
        out["metadata"] = _metadata(s.raw, "EndpointSlice", s.meta)
        return out
    endpoints = []
    for ep in s.endpoints:
        e: dict[str, Any] = {
            "addresses": [int_to_ip(a) for a in ep.addresses],
            "conditions": {
                k: v
                for k, v in (("ready", ep.ready), ("serving", ep.serving), ("terminating", ep.terminating))
                if v is not None
            },
        }
        if ep.hostname:
            e["hostname"] = ep.hostname
        if ep.node_name:
            e["nodeName"] = ep.node_name
        if ep.target_ref:
            kind, ns, name = ep.target_ref
            e["targetRef"] = {"kind": kind, "name": name, "namespace": ns, "uid": uid_for(kind, ns, name)}
        if ep.zone:
            e["zone"] = ep.zone
        if ep.zone_hints or ep.node_hints:
            hints: dict[str, Any] = {}
            if ep.zone_hints:
                hints["forZones"] = [{"name": z} for z in ep.zone_hints]
            if ep.node_hints:
                hints["forNodes"] = [{"name": n} for n in ep.node_hints]
            e["hints"] = hints
        endpoints.append(e)
    md = _metadata(None, "EndpointSlice", s.meta)
    md["generateName"] = f"{s.service_name}-"
    md["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": "Service",
            "name": s.service_name,
            "uid": uid_for("Service", s.meta.namespace, s.service_name),
        }
    ]
    ports = []
    for p in s.ports:
        port: dict[str, Any] = {"name": p.name or "", "port": p.port, "protocol": p.protocol}
        if p.app_protocol:
            port["appProtocol"] = p.app_protocol
        ports.append(port)
    return {
        "addressType": s.address_type,
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": endpoints or None,
        "kind": "EndpointSlice",
        "metadata": md,
        "ports": ports or None,
    }


def pod_object(pod: Pod, workloads: dict[tuple[str, str], Workload] | None = None) -> dict[str, Any]:
    spec: dict[str, Any]
    raw: dict[str, Any]
    if pod.raw is not None:
        raw = pod.raw
        spec = copy.deepcopy(raw["spec"]) if isinstance(raw.get("spec"), dict) else {}
    else:
        raw = {}
        template = _owner_template(pod, workloads or {})
        spec = copy.deepcopy(template.get("spec", {})) if isinstance(template.get("spec"), dict) else {}
    if pod.spec.node_name:
        spec["nodeName"] = pod.spec.node_name
    if pod.spec.hostname:
        spec["hostname"] = pod.spec.hostname
    if pod.spec.subdomain:
        spec["subdomain"] = pod.spec.subdomain
    md = _metadata(raw, "Pod", pod.meta)
    if pod.owner is not None:
        kind, name = pod.owner
        if pod.raw is None and kind != "StatefulSet":
            md["generateName"] = f"{name}-"
        md["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "blockOwnerDeletion": True,
                "controller": True,
                "kind": kind,
                "name": name,
                "uid": uid_for(kind, pod.meta.namespace, name),
            }
        ]
    status: dict[str, Any] = {"phase": pod.phase}
    if pod.pod_ip is not None:
        status["podIP"] = int_to_ip(pod.pod_ip)
        status["podIPs"] = [{"ip": int_to_ip(pod.pod_ip)}]
    status["conditions"] = [{"status": "True" if pod.ready else "False", "type": "Ready"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec, "status": status}


def _owner_template(pod: Pod, workloads: dict[tuple[str, str], Workload]) -> dict[str, Any]:
    if pod.owner is None:
        return {}
    kind, name = pod.owner
    ns = pod.meta.namespace
    if kind == "ReplicaSet":
        for (wns, wname), w in workloads.items():
            if wns == ns and name.startswith(f"{wname}-") and w.kind == "Deployment":
                return w.template_raw
    owner = workloads.get((ns, name))
    return owner.template_raw if owner is not None else {}


def node_object(node: Node) -> dict[str, Any]:
    raw = node.raw or {}
    spec: dict[str, Any] = copy.deepcopy(raw["spec"]) if isinstance(raw.get("spec"), dict) else {}
    if node.pod_cidrs:
        spec["podCIDR"] = str(node.pod_cidrs[0])
        spec["podCIDRs"] = [str(c) for c in node.pod_cidrs]
    status: dict[str, Any] = copy.deepcopy(raw["status"]) if isinstance(raw.get("status"), dict) else {}
    addresses: list[Any] = status["addresses"] if isinstance(status.get("addresses"), list) else []
    if node.internal_ip is not None and not any(
        isinstance(a, dict) and a.get("type") == "InternalIP" for a in addresses
    ):
        addresses = [
            {"address": int_to_ip(node.internal_ip), "type": "InternalIP"},
            {"address": node.name, "type": "Hostname"},
            *addresses,
        ]
    status["addresses"] = addresses
    if "conditions" not in status:
        status["conditions"] = [{"status": "True" if node.ready else "False", "type": "Ready"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _metadata(raw, "Node", node.meta),
        "spec": spec,
        "status": status,
    }


def raw_object(obj: RawObject) -> dict[str, Any]:
    out = copy.deepcopy(obj.body)
    out["metadata"] = _metadata(obj.body, obj.kind, obj.meta)
    if obj.kind == "Ingress" and "status" not in out:
        out["status"] = {"loadBalancer": {}}
    return out
