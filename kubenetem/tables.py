"""Tables laid out the way `kubectl get` lays them out.

Columns and cell formats follow kubectl's printers
(pkg/printers/internalversion/printers.go: printService, printEndpointSlice,
printPod, printNode, printIngress) and the layout is Go's tabwriter with
kubectl's settings (minwidth 10, padding 3, the last column unpadded), so a
table here lines up exactly like one from a real cluster.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from netem.addr import int_to_ip
from netem.cluster import Cluster
from netem.objects import EndpointSlice, Node, Pod, RawObject, Service


def tabulate(rows: Sequence[Sequence[str]], minwidth: int = 10, padding: int = 3) -> str:
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    widths = [0] * ncols
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell) + padding, minwidth)
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        cells.append(row[-1])
        lines.append("".join(cells))
    return "\n".join(lines) + "\n"


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, now: datetime.datetime) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        when = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<unknown>"
    return human_duration((now - when).total_seconds())


def _with_ns(all_ns: bool, ns: str, row: list[str]) -> list[str]:
    return [ns, *row] if all_ns else row


# --- per kind ---------------------------------------------------------------


def service_rows(services: list[Service], all_ns: bool, wide: bool, now: datetime.datetime) -> list[list[str]]:
    header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"] + (["SELECTOR"] if wide else [])
    rows = [_with_ns(all_ns, "NAMESPACE", header)]
    for svc in services:
        row = [
            svc.meta.name,
            svc.type,
            _cluster_ip(svc),
            _external_ip(svc),
            _ports(svc),
            age(svc.meta.creation_timestamp, now),
        ]
        if wide:
            row.append(",".join(f"{k}={v}" for k, v in sorted((svc.selector or {}).items())) or "<none>")
        rows.append(_with_ns(all_ns, svc.meta.namespace, row))
    return rows


def _cluster_ip(svc: Service) -> str:
    if svc.type == "ExternalName":
        return "<none>"
    if svc.headless:
        return "None"
    return int_to_ip(svc.cluster_ip) if svc.cluster_ip is not None else "<none>"


def _external_ip(svc: Service) -> str:
    """getServiceExternalIP()."""
    external = [int_to_ip(ip) for ip in svc.external_ips]
    if svc.type in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if svc.type == "ExternalName":
        return svc.external_name
    lb = [int_to_ip(ip) for ip in svc.lb_ingress_ips + svc.lb_ingress_proxy_ips]
    if external:
        return ",".join(lb + external)
    return ",".join(lb) or "<pending>"


def _ports(svc: Service) -> str:
    if not svc.ports:
        return "<none>"
    parts = []
    for p in svc.ports:
        parts.append(f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}")
    return ",".join(parts)


def slice_rows(slices: list[EndpointSlice], all_ns: bool, wide: bool, now: datetime.datetime) -> list[list[str]]:
    rows = [_with_ns(all_ns, "NAMESPACE", ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"])]
    for s in slices:
        ports = ",".join(str(p.port) for p in s.ports if p.port is not None) or "<unset>"
        addresses = [int_to_ip(a) for ep in s.endpoints for a in ep.addresses]
        if len(addresses) > 3:
            endpoints = ",".join(addresses[:3]) + f" + {len(addresses) - 3} more..."
        else:
            endpoints = ",".join(addresses) or "<unset>"
        row = [s.meta.name, s.address_type, ports, endpoints, age(s.meta.creation_timestamp, now)]
        rows.append(_with_ns(all_ns, s.meta.namespace, row))
    return rows


def pod_rows(pods: list[Pod], all_ns: bool, wide: bool, now: datetime.datetime) -> list[list[str]]:
    header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        header += ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    rows = [_with_ns(all_ns, "NAMESPACE", header)]
    for pod in pods:
        total = pod.spec.containers
        status = "Terminating" if pod.meta.deletion_timestamp else pod.phase
        row = [
            pod.meta.name,
            f"{total if pod.ready else 0}/{total}",
            status,
            "0",
            age(pod.meta.creation_timestamp, now),
        ]
        if wide:
            row += [
                int_to_ip(pod.pod_ip) if pod.pod_ip is not None else "<none>",
                pod.spec.node_name or "<none>",
                "<none>",
                "<none>",
            ]
        rows.append(_with_ns(all_ns, pod.meta.namespace, row))
    return rows


def node_rows(nodes: list[Node], wide: bool, now: datetime.datetime) -> list[list[str]]:
    header = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    if wide:
        header += ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    rows = [header]
    for node in nodes:
        status = "Ready" if node.ready else "NotReady"
        if node.unschedulable:
            status += ",SchedulingDisabled"
        roles = sorted(
            k.split("/", 1)[1] for k in node.meta.labels if k.startswith("node-role.kubernetes.io/") and "/" in k
        )
        info = _node_info(node)
        row = [
            node.name,
            status,
            ",".join(r for r in roles if r) or "<none>",
            age(node.meta.creation_timestamp, now),
            info.get("kubeletVersion", ""),
        ]
        if wide:
            row += [
                int_to_ip(node.internal_ip) if node.internal_ip is not None else "<none>",
                int_to_ip(node.external_ip) if node.external_ip is not None else "<none>",
                info.get("osImage", "<unknown>"),
                info.get("kernelVersion", "<unknown>"),
                info.get("containerRuntimeVersion", "<unknown>"),
            ]
        rows.append(row)
    return rows


def _node_info(node: Node) -> dict[str, str]:
    status = (node.raw or {}).get("status")
    info = status.get("nodeInfo") if isinstance(status, dict) else None
    return {k: v for k, v in info.items() if isinstance(v, str)} if isinstance(info, dict) else {}


def ingress_rows(ingresses: list[RawObject], all_ns: bool, wide: bool, now: datetime.datetime) -> list[list[str]]:
    rows = [_with_ns(all_ns, "NAMESPACE", ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"])]
    for ing in ingresses:
        spec = ing.body.get("spec") if isinstance(ing.body.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        hosts = [r.get("host") for r in spec.get("rules") or [] if isinstance(r, dict) and r.get("host")]
        host_text = ",".join(str(h) for h in hosts[:4]) + (f" + {len(hosts) - 4} more..." if len(hosts) > 4 else "")
        ports = "80, 443" if spec.get("tls") else "80"
        row = [
            ing.meta.name,
            str(spec.get("ingressClassName") or "<none>"),
            host_text or "*",
            _ingress_address(ing.body),
            ports,
            age(ing.meta.creation_timestamp, now),
        ]
        rows.append(_with_ns(all_ns, ing.meta.namespace, row))
    return rows


def _ingress_address(body: dict[str, Any]) -> str:
    status = body.get("status")
    lb = status.get("loadBalancer") if isinstance(status, dict) else None
    ingress = lb.get("ingress") if isinstance(lb, dict) else None
    if not isinstance(ingress, list):
        return ""
    return ",".join(str(i.get("ip") or i.get("hostname")) for i in ingress if isinstance(i, dict))


def filter_namespace(items: list[Any], namespace: str | None) -> list[Any]:
    if namespace is None:
        return items
    return [i for i in items if i.meta.namespace == namespace]


def kinds(cluster: Cluster) -> dict[str, list[Any]]:
    return {
        "services": sorted(cluster.services.values(), key=lambda s: s.meta.key),
        "endpointslices": sorted(cluster.all_slices(), key=lambda s: s.meta.key),
        "pods": sorted(cluster.pods, key=lambda p: p.meta.key),
        "nodes": list(cluster.nodes.values()),
        "ingresses": sorted(cluster.ingresses, key=lambda i: i.meta.key),
    }
