"""Synthetic clusters of any size, without YAML: the benchmarks' input.

`synthetic_cluster(services=N, endpoints=M)` builds N Services with M ready
pods each, spread over `nodes` nodes, through the same controllers as a
manifest would go (ClusterIPs, pod IPs, EndpointSlices), so a benchmark
measures the real pipeline on a cluster of the size it names. Addresses
follow kube-proxy's own tests: ClusterIPs from 172.30.0.0/16, pod IPs from
10.180.0.0/16 upwards (one /16 per node), nodes from 192.168.0.2.
`manifests(...)` writes the same cluster as YAML (Services and Deployments),
for measuring the loader.
"""

from __future__ import annotations

from netem.addr import Cidr, parse_cidr
from netem.cluster import Cluster, ClusterBuilder
from netem.gcpause import paused_gc
from netem.objects import ContainerPort, Meta, Node, Pod, PodSpec, ProxyConfig, Service, ServicePort

SERVICE_CIDR = parse_cidr("172.30.0.0/16")
FIRST_POD_NETWORK = parse_cidr("10.180.0.0/16")
NODE_IP_BASE = parse_cidr("192.168.0.0/24").network + 2


def node_name(index: int) -> str:
    return f"node-{index + 1}"


def service_name(index: int) -> tuple[str, str]:
    """(namespace, name) of the i-th synthetic service: ten namespaces."""
    return (f"ns{index % 10}", f"svc{index}")


def synthetic_cluster(
    services: int = 100,
    endpoints: int = 10,
    nodes: int = 10,
    affinity: bool = False,
    node_ports: bool = False,
    udp: bool = False,
    mode: str = "iptables",
) -> Cluster:
    """N services x M endpoints; deterministic (no randomness involved)."""
    if nodes > 75:
        raise ValueError("at most 75 nodes (one /16 of 10.180.0.0 upwards each)")
    with paused_gc():
        return _build(services, endpoints, nodes, affinity, node_ports, udp, mode)


def _build(
    services: int, endpoints: int, nodes: int, affinity: bool, node_ports: bool, udp: bool, mode: str
) -> Cluster:
    builder = ClusterBuilder()
    config = ProxyConfig(mode=mode, cluster_cidrs=[parse_cidr("10.0.0.0/8")])
    builder.cluster.proxy_config = config
    builder.cluster.service_cidrs = [SERVICE_CIDR]
    for n in range(nodes):
        name = node_name(n)
        cidr = Cidr(FIRST_POD_NETWORK.network + (n << 16), 16)
        builder.add_node(
            Node(
                meta=Meta(name=name, labels={"kubernetes.io/hostname": name}),
                pod_cidrs=[cidr],
                internal_ip=NODE_IP_BASE + n,
            )
        )
    protocol = "UDP" if udp else "TCP"
    container_ports = (ContainerPort("http", 8080, protocol),)
    names = [node_name(n) for n in range(nodes)]
    specs = [PodSpec(ports=container_ports, node_name=name) for name in names]
    add_pod = builder.add_pod
    pod_no = 0
    for i in range(services):
        ns, name = service_name(i)
        selector = {"app": name}
        svc = Service(
            meta=Meta(name=name, namespace=ns),
            type="NodePort" if node_ports else "ClusterIP",
            selector=selector,
            ports=[ServicePort("p80", protocol, 80, 8080)],
            session_affinity="ClientIP" if affinity else "None",
            external_traffic_policy="Cluster" if node_ports else "",
        )
        builder.add_service(svc)
        for j in range(endpoints):
            # Pods of a node share one (read-only) spec, as a workload's do.
            add_pod(Pod(Meta(f"{name}-{j}", ns, selector), specs[pod_no % nodes]))
            pod_no += 1
    return builder.build()


def manifests(services: int = 100, endpoints: int = 10) -> str:
    """The same shape of cluster as YAML: a Service and a Deployment each."""
    out = [
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: kubernetes\n"
        "spec:\n  cidrs: [172.30.0.0/16]\n",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "mode: iptables\nclusterCIDR: 10.0.0.0/8\n",
    ]
    for n in range(10):
        name = node_name(n)
        cidr = Cidr(FIRST_POD_NETWORK.network + (n << 16), 16)
        out.append(f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {cidr}\n")
    for i in range(services):
        ns, name = service_name(i)
        out.append(
            f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"spec:\n  selector:\n    app: {name}\n  ports:\n  - name: p80\n    port: 80\n    targetPort: 8080\n"
        )
        out.append(
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"spec:\n  replicas: {endpoints}\n  selector:\n    matchLabels:\n      app: {name}\n"
            f"  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n"
            f"      - name: app\n        image: registry.k8s.io/pause:3.10\n        ports:\n"
            f"        - containerPort: 8080\n"
        )
    return "---\n".join(out)
