"""Clusters for the userspace tests: selector-less Services with hand-written
EndpointSlices, so every endpoint is known and fixed."""

from __future__ import annotations

import random
from pathlib import Path

from netem.cluster import Cluster, load_cluster
from proxy_modes.userspace.engine import UserspaceMode
from proxy_modes.view import NodeView, build_state, node_view

NODE = """apiVersion: v1
kind: Node
metadata: {name: node-1}
status:
  addresses: [{type: InternalIP, address: 192.168.0.2}]
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [172.30.0.0/16]}
"""


def service(
    name: str,
    ip: str,
    endpoints: list[str],
    port: int = 80,
    target: int = 8080,
    proto: str = "TCP",
    extra: str = "",
    ep_port_name: str = "p",
) -> str:
    eps = "".join(f"- addresses: [{a}]\n" for a in endpoints)
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: ns}}
spec:
  clusterIP: {ip}
  ports: [{{name: p, port: {port}, protocol: {proto}}}]
{extra}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: ns
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: {ep_port_name}, port: {target}, protocol: {proto}}}]
endpoints:
{eps}"""


def write_cluster(tmp_path: Path, *docs: str, config: str = "") -> Cluster:
    text = "---\n".join([NODE, *docs] + ([config] if config else []))
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return load_cluster([str(path)])


def view_of(cluster: Cluster) -> NodeView:
    return node_view(cluster, build_state(cluster), "node-1")


def synced(cluster: Cluster, seed: int = 1) -> UserspaceMode:
    mode = UserspaceMode(random.Random(seed))
    mode.sync(view_of(cluster))
    return mode
