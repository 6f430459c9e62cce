"""Which endpoints a node's kube-proxy uses, from manifests through the
controllers (EndpointSlice, mirroring) to the proxy's view: cases where the
real controllers and kube-proxy decide something a simpler model would not."""

from __future__ import annotations

from netem.cluster import build_cluster
from netem.manifests import parse_text
from proxy_modes.view import build_state, node_view

NODES = """
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
"""


def service(extra: str = "", target: str = "8080") -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: s, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: a}}
  ports: [{{name: http, port: 80, targetPort: {target}}}]
{extra}"""


def pod(name: str, node: str, ip: str, ready: bool = True, meta: str = "", spec: str = "") -> str:
    status = "True" if ready else "False"
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: a}}{meta}}}
spec: {{nodeName: {node}, containers: [{{name: c, image: x}}]{spec}}}
status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "{status}"}}]}}
"""


def cluster_endpoints(text: str, node: str = "n1") -> list[str]:
    c = build_cluster(parse_text(text))
    view = node_view(c, build_state(c), node)
    (info,) = view.service_ports()
    return [ep.text for ep in view.categorize(info).cluster]


def test_prefer_same_node_works_without_zone_labels() -> None:
    """trafficdist.go hints each ready endpoint for its own node even when
    nodes have no zone; topology.go then keeps node n1's traffic on n1."""
    text = NODES + service("  trafficDistribution: PreferSameNode") + pod("p1", "n1", "10.244.1.5")
    text += pod("p2", "n2", "10.244.2.5")
    assert cluster_endpoints(text) == ["10.244.1.5:8080"]


def test_an_unready_endpoint_without_a_zone_does_not_switch_hints_off() -> None:
    """Only ready endpoints get hints (and only they count for topology.go)."""
    zoned = NODES.replace("{name: n1}", "{name: n1, labels: {topology.kubernetes.io/zone: z1}}").replace(
        "{name: n2}", "{name: n2, labels: {topology.kubernetes.io/zone: z2}}"
    )
    zoned += "---\napiVersion: v1\nkind: Node\nmetadata: {name: n3}\n"
    text = zoned + service("  trafficDistribution: PreferClose") + pod("p1", "n1", "10.244.1.5")
    text += pod("p2", "n2", "10.244.2.5") + pod("p3", "n3", "10.244.3.5", ready=False)
    assert cluster_endpoints(text) == ["10.244.1.5:8080"]


def test_a_reused_ip_keeps_the_copy_that_is_not_terminating() -> None:
    """endpointslicecache.go addEndpoints: a terminating pod and a new pod on
    the same address; the new, ready one is the endpoint."""
    text = NODES + service() + pod("a-old", "n1", "10.244.1.5", meta=', deletionTimestamp: "2024-01-01T00:00:00Z"')
    text += pod("b-new", "n1", "10.244.1.5") + pod("c-other", "n1", "10.244.1.9")
    assert cluster_endpoints(text) == ["10.244.1.5:8080", "10.244.1.9:8080"]


def test_a_named_port_on_a_plain_init_container_names_nothing() -> None:
    """FindPort looks through the containers and the sidecars (restartPolicy
    Always) only."""
    init = ", initContainers: [{name: init, image: x, ports: [{name: web, containerPort: 9090}]}]"
    assert cluster_endpoints(NODES + service(target="web") + pod("p1", "n1", "10.244.1.5", spec=init)) == []
    sidecar = init.replace("image: x,", "image: x, restartPolicy: Always,")
    assert cluster_endpoints(NODES + service(target="web") + pod("p1", "n1", "10.244.1.5", spec=sidecar)) == [
        "10.244.1.5:9090"
    ]


def test_endpoints_labelled_skip_mirror_are_not_mirrored() -> None:
    text = """
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: s, namespace: default, labels: {endpointslice.kubernetes.io/skip-mirror: "LABEL"}}
subsets:
- addresses: [{ip: 10.244.1.7}]
  ports: [{name: http, port: 8080}]
"""
    assert cluster_endpoints(NODES + text.replace("LABEL", "true")) == []
    assert cluster_endpoints(NODES + text.replace("LABEL", "false")) == ["10.244.1.7:8080"]
