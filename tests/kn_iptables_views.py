"""Building proxy views by hand for the iptables tests, the way kube-proxy's
own proxier_test.go builds its fake proxier: services and endpoint slices
without a cluster, node "test-node" at 192.168.0.2, cluster CIDR 10.0.0.0/8."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from netem.addr import parse_cidr, parse_ip
from netem.objects import ProxyConfig
from netem.packet import K8S_PROTOCOLS
from proxy_modes.view import EndpointInfo, NodeView, ProxyState, ServiceEntry, ServicePortInfo, ServicePortName

NODE = "test-node"
NODE_IP = "192.168.0.2"


def port(
    ns: str, name: str, ip: str, port: int = 80, port_name: str = "p80", protocol: str = "TCP", **kw: Any
) -> ServicePortInfo:
    """One service port; keyword arguments are ServicePortInfo fields, with
    addresses given as text (external_ips, lb_vips) and CIDRs as text (lb_source_ranges)."""
    for key in ("external_ips", "lb_vips"):
        if key in kw:
            kw[key] = tuple(parse_ip(a) for a in kw[key])
    if "lb_source_ranges" in kw:
        kw["lb_source_ranges"] = tuple(parse_cidr(c.strip(), strict=False) for c in kw["lb_source_ranges"])
    if not kw.get("external_policy_local"):
        # newBaseServiceInfo keeps healthCheckNodePort only when NeedsHealthCheck (Local policy).
        kw.pop("health_check_node_port", None)
    if kw.get("session_affinity") and "sticky_seconds" not in kw:
        kw["sticky_seconds"] = 10800
    spn = ServicePortName(ns, name, port_name, protocol)
    return ServicePortInfo(spn, parse_ip(ip), port, K8S_PROTOCOLS[protocol], **kw)


def ep(ip: str, port: int = 80, node: str = "", **kw: Any) -> EndpointInfo:
    return EndpointInfo(parse_ip(ip), port, f"{ip}:{port}", node_name=node, **kw)


def state(*services: tuple[ServicePortInfo, list[EndpointInfo]]) -> ProxyState:
    entries: dict[tuple[str, str], ServiceEntry] = {}
    grouped: dict[tuple[str, str], list[tuple[ServicePortInfo, list[EndpointInfo]]]] = {}
    for info, eps in services:
        grouped.setdefault(info.name.service, []).append((info, eps))
    for key, items in grouped.items():
        ports = tuple(info for info, _ in items)
        endpoints = {info.name: tuple(sorted(eps, key=lambda e: e.text)) for info, eps in items if eps}
        entries[key] = ServiceEntry(ports, endpoints)
    return ProxyState(entries)


def view(st: ProxyState, node: str = NODE, node_ip: str = NODE_IP, **config: Any) -> NodeView:
    cfg = ProxyConfig(cluster_cidrs=[parse_cidr("10.0.0.0/8")])
    cfg = replace(cfg, **config)
    return NodeView(st, node, (parse_ip(node_ip),), cfg)
