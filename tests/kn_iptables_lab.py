"""The cluster the iptables kernel tests use, as real manifests, and the lab
that puts its node's rules into a namespace next to the engine.

One node ("test-node", 192.168.0.2) sees every kind of Service kube-proxy
handles: ClusterIP, NodePort, LoadBalancer with source ranges, externalIPs,
external and internal traffic policy Local (with and without local
endpoints), no endpoints, only terminating endpoints, UDP, ClientIP
affinity, a hairpin service and one with four endpoints for the
distribution. Every endpoint address lives in one "pods" namespace, whose
servers answer with the address they were reached on, so a reply says which
endpoint the kernel chose.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from netem.cluster import load_cluster
from netem.netns import Host, Topology
from proxy_modes.iptables.engine import IptablesMode
from proxy_modes.iptables.kernel import KernelIptables, load_node
from proxy_modes.view import NodeView, build_state, node_view

NODE_IP = "192.168.0.2"
POD_PORT = 8080
UDP_PORT = 5353

# name -> (spec fields, [(endpoint ip, node, condition)])
SERVICES: dict[str, tuple[dict[str, Any], list[tuple[str, str, str]]]] = {
    "svc-a": (
        {"clusterIP": "172.30.0.10"},
        [
            ("10.180.0.1", "test-node", "ready"),
            ("10.180.0.2", "other-node", "ready"),
            ("10.180.0.3", "other-node", "ready"),
        ],
    ),
    "svc-np": (
        {"clusterIP": "172.30.0.11", "type": "NodePort", "nodePort": 30080},
        [("10.180.0.4", "other-node", "ready")],
    ),
    "svc-lb": (
        {
            "clusterIP": "172.30.0.12",
            "type": "LoadBalancer",
            "nodePort": 30081,
            "loadBalancerSourceRanges": ["203.0.113.0/25"],
            "lb": "5.6.7.8",
        },
        [("10.180.0.5", "other-node", "ready")],
    ),
    "svc-local": (
        {
            "clusterIP": "172.30.0.13",
            "type": "LoadBalancer",
            "nodePort": 30082,
            "externalTrafficPolicy": "Local",
            "externalIPs": ["192.168.99.22"],
            "lb": "5.6.7.9",
        },
        [("10.180.0.6", "test-node", "ready"), ("10.180.0.7", "other-node", "ready")],
    ),
    "svc-local-none": (
        {"clusterIP": "172.30.0.14", "type": "NodePort", "nodePort": 30083, "externalTrafficPolicy": "Local"},
        [("10.180.0.8", "other-node", "ready")],
    ),
    "svc-itp": (
        {"clusterIP": "172.30.0.15", "internalTrafficPolicy": "Local"},
        [("10.180.0.9", "test-node", "ready"), ("10.180.0.10", "other-node", "ready")],
    ),
    "svc-itp-none": (
        {"clusterIP": "172.30.0.16", "internalTrafficPolicy": "Local"},
        [("10.180.0.11", "other-node", "ready")],
    ),
    "svc-empty": (
        {"clusterIP": "172.30.0.17", "type": "NodePort", "nodePort": 30084, "externalIPs": ["192.168.99.23"]},
        [],
    ),
    "svc-term": ({"clusterIP": "172.30.0.18"}, [("10.180.0.12", "other-node", "terminating")]),
    "svc-udp": (
        {"clusterIP": "172.30.0.19", "protocol": "UDP"},
        [("10.180.0.13", "test-node", "ready"), ("10.180.0.14", "other-node", "ready")],
    ),
    "svc-sticky": (
        {"clusterIP": "172.30.0.20", "sessionAffinity": "ClientIP"},
        [
            ("10.180.0.15", "test-node", "ready"),
            ("10.180.0.16", "other-node", "ready"),
            ("10.180.0.17", "other-node", "ready"),
        ],
    ),
    "svc-hairpin": ({"clusterIP": "172.30.0.21"}, [("10.180.0.18", "test-node", "ready")]),
    "svc-dist": (
        {"clusterIP": "172.30.0.22"},
        [(f"10.180.0.{i}", "other-node", "ready") for i in range(19, 23)],
    ),
    "svc-ext": (
        {"clusterIP": "172.30.0.23", "externalIPs": ["192.168.99.33"]},
        [("10.180.0.23", "other-node", "ready")],
    ),
}
CONDITIONS = {
    "ready": {"ready": True, "serving": True, "terminating": False},
    "terminating": {"ready": False, "serving": True, "terminating": True},
}


def manifest(services: dict[str, tuple[dict[str, Any], list[tuple[str, str, str]]]] = SERVICES, **proxy: Any) -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["172.30.0.0/16"]},
        },
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clusterCIDR": "10.0.0.0/8",
            **proxy,
        },
    ]
    for i, name in enumerate(("test-node", "other-node")):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": {"podCIDR": f"10.180.{100 + i}.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{2 + i}"}]},
            }
        )
    for name, (spec, endpoints) in services.items():
        docs += _service(name, dict(spec), endpoints)
    return yaml.safe_dump_all(docs, sort_keys=False)


def _service(name: str, spec: dict[str, Any], endpoints: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    protocol = spec.pop("protocol", "TCP")
    port = 53 if protocol == "UDP" else 80
    target = UDP_PORT if protocol == "UDP" else POD_PORT
    svc_port: dict[str, Any] = {"name": "p", "port": port, "targetPort": target, "protocol": protocol}
    if "nodePort" in spec:
        svc_port["nodePort"] = spec.pop("nodePort")
    lb = spec.pop("lb", None)
    affinity = spec.get("sessionAffinity")
    if affinity:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    svc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {**spec, "ports": [svc_port]},
    }
    if lb:
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": lb}]}}
    docs = [svc]
    if endpoints:
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-1",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": [ip], "nodeName": node, "conditions": CONDITIONS[cond]}
                    for ip, node, cond in endpoints
                ],
                "ports": [{"name": "p", "port": target, "protocol": protocol}],
            }
        )
    return docs


def load_view(directory: Path, text: str) -> NodeView:
    path = directory / "cluster.yaml"
    path.write_text(text)
    cluster = load_cluster([str(path)])
    return node_view(cluster, build_state(cluster), "test-node")


def endpoint_ips(services: dict[str, tuple[dict[str, Any], list[tuple[str, str, str]]]] = SERVICES) -> list[str]:
    return sorted({ip for _, eps in services.values() for ip, _, _ in eps}, key=lambda a: tuple(map(int, a.split("."))))


@dataclass
class Lab:
    """A node namespace loaded with the mode's rules, and the mode itself."""

    backend: str
    mode: IptablesMode
    kernel: KernelIptables
    node: Host
    pods: Host
    outside: Host  # 203.0.113.10 (inside the LB source range) and .200 (outside it)
    podclient: Host  # 10.180.5.5: a pod on this node, as a client
    topo: Topology
    hosts: dict[str, Host] = field(default_factory=dict)


def open_lab(backend: str, view: NodeView, prefix: str, extra_pod_ips: list[str] | None = None) -> Lab:
    mode = IptablesMode(random.Random(1))
    mode.sync(view)
    assert mode.last is not None
    topo = Topology(prefix)
    try:
        node = topo.node([NODE_IP])
        pods = topo.leaf("pods", extra_pod_ips or endpoint_ips())
        outside = topo.leaf("outside", ["203.0.113.10", "203.0.113.200"], default_route=True)
        podclient = topo.leaf("podclient", ["10.180.5.5"])
        pods.serve(POD_PORT)
        pods.serve(UDP_PORT, "udp")
        kernel = KernelIptables(node, backend)
        load_node(kernel, mode.last.full)
    except BaseException:
        topo.close()
        raise
    return Lab(backend, mode, kernel, node, pods, outside, podclient, topo)
