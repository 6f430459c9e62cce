"""The controllers the data plane depends on, played deterministically:
IPAM, workload controllers and scheduling, EndpointSlices."""

from __future__ import annotations

import re

import pytest
from kn_helpers import cluster_of, errors_of

from netem.addr import int_to_ip, parse_cidr, parse_ip
from netem.endpointslices import MAX_ENDPOINTS_PER_SLICE
from netem.ipam import DEFAULT_SERVICE_CIDR
from netem.objects import LABEL_MANAGED_BY, LABEL_SERVICE_NAME

NODES = """
apiVersion: v1
kind: Node
metadata: {name: a, labels: {topology.kubernetes.io/zone: z1}}
---
apiVersion: v1
kind: Node
metadata: {name: b, labels: {topology.kubernetes.io/zone: z2}}
spec:
  taints: [{key: dedicated, value: db, effect: NoSchedule}]
---
apiVersion: v1
kind: Node
metadata: {name: c, labels: {disk: ssd}}
"""


def service(name: str, extra: str = "", ns: str = "default") -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
{extra}"""


def deployment(name: str, replicas: int, extra_spec: str = "", port_name: str = "http") -> str:
    return f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{extra_spec}      containers: [{{name: c, image: i, ports: [{{name: {port_name}, containerPort: 8080}}]}}]
"""


# --- IPAM -------------------------------------------------------------------


def test_cluster_ips_are_stable_whatever_else_is_in_the_input() -> None:
    one = cluster_of(service("web"))
    many = cluster_of("".join(service(f"s{i}") for i in range(50)) + service("web"))
    ip = one.services[("default", "web")].cluster_ip
    assert ip is not None and ip == many.services[("default", "web")].cluster_ip
    assert ip in DEFAULT_SERVICE_CIDR
    # Dynamic addresses come from the upper band (KEP-3070): not the first 256.
    assert ip - DEFAULT_SERVICE_CIDR.network >= 256
    ips = [s.cluster_ip for s in many.services.values()]
    assert len(set(ips)) == len(ips)


def test_service_cidr_objects_set_the_range() -> None:
    cidr = "---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\n"
    cidr += "spec: {cidrs: [172.30.0.0/16]}\n"
    c = cluster_of(cidr + service("web"))
    assert int_to_ip(c.services[("default", "web")].cluster_ip or 0).startswith("172.30.")
    given = service("web2", "  clusterIP: 10.96.0.10\n")
    assert "The range of valid IPs is 172.30.0.0/16" in errors_of(cidr + given)[0]


def test_explicit_cluster_ip_is_kept_and_not_handed_out_twice() -> None:
    text = service("a", "  clusterIP: 10.96.0.10\n") + service("b", "  clusterIP: 10.96.0.10\n")
    assert "provided IP is already allocated" in errors_of(text)[0]


def test_node_ports_are_allocated_from_the_upper_band() -> None:
    text = service("web", "  type: NodePort\n")
    port = cluster_of(text).services[("default", "web")].ports[0].node_port
    assert 30000 + 86 <= port <= 32767


def test_nodes_get_pod_cidrs_and_addresses_in_name_order() -> None:
    c = cluster_of(NODES)
    assert [n.name for n in c.nodes.values()] == ["a", "b", "c"]
    assert [str(n.pod_cidrs[0]) for n in c.nodes.values()] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert [int_to_ip(n.internal_ip or 0) for n in c.nodes.values()] == ["192.168.0.2", "192.168.0.3", "192.168.0.4"]


def test_without_nodes_there_is_one_default_node() -> None:
    c = cluster_of(deployment("web", 2))
    assert list(c.nodes) == ["node-1"]
    assert all(p.spec.node_name == "node-1" for p in c.pods)
    assert sorted(int_to_ip(p.pod_ip or 0) for p in c.pods) == ["10.244.0.2", "10.244.0.3"]


# --- workloads and scheduling ------------------------------------------------


def test_deployment_pods_are_named_and_spread_like_a_real_cluster() -> None:
    c = cluster_of(NODES + deployment("web", 4))
    names = [p.meta.name for p in c.pods]
    assert all(
        re.fullmatch(r"web-[bcdfghjklmnpqrstvwxz2456789]{8,10}-[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names
    )
    assert len({n.rsplit("-", 1)[0] for n in names}) == 1  # one ReplicaSet (pod-template-hash)
    assert len(set(names)) == 4
    # b is tainted: pods spread over a and c only, evenly.
    assert sorted(p.spec.node_name for p in c.pods) == ["a", "a", "c", "c"]
    assert all(p.meta.labels["pod-template-hash"] == names[0].split("-")[1] for p in c.pods)


def test_node_selector_tolerations_statefulset_and_daemonset() -> None:
    ssd = "      nodeSelector: {disk: ssd}\n"
    tolerate = (
        "      tolerations: [{key: dedicated, operator: Exists}]\n"
        "      nodeSelector: {topology.kubernetes.io/zone: z2}\n"
    )
    sts = """
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: c, image: i}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, image: i}]}
"""
    c = cluster_of(NODES + deployment("fast", 3, ssd) + deployment("pinned", 1, tolerate) + sts)
    by_owner: dict[str, list[str]] = {}
    for p in c.pods:
        by_owner.setdefault(p.meta.labels["app"], []).append(p.spec.node_name)
    assert by_owner["fast"] == ["c", "c", "c"]
    assert by_owner["pinned"] == ["b"]
    assert sorted(by_owner["agent"]) == ["a", "c"]  # b's taint is not tolerated
    db = sorted((p for p in c.pods if p.meta.labels["app"] == "db"), key=lambda p: p.meta.name)
    assert [p.meta.name for p in db] == ["db-0", "db-1"]
    assert db[0].spec.hostname == "db-0" and db[0].spec.subdomain == "db"


def test_pod_on_a_missing_node_is_an_error() -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: ghost, containers: [{name: c, image: i}]}\n"
    assert "spec.nodeName: node not found (got 'ghost')" in errors_of(NODES + "---\n" + pod)[0]


# --- EndpointSlices ----------------------------------------------------------------


def slices_of(c, name: str):  # type: ignore[no-untyped-def]
    return c.slices[("default", name)]


def test_slice_conditions_follow_pod_state() -> None:
    pods = ""
    for name, status in (
        ("ready", ""),
        ("notready", "status: {phase: Running, conditions: [{type: Ready, status: 'False'}]}"),
        ("terminating", "status: {phase: Running, conditions: [{type: Ready, status: 'True'}]}"),
        ("done", "status: {phase: Succeeded}"),
    ):
        deletion = "  deletionTimestamp: '2026-01-01T00:00:00Z'\n" if name == "terminating" else ""
        pods += f"""
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
{deletion}spec: {{containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]}}
{status}
"""
    c = cluster_of(service("web") + pods)
    (s,) = slices_of(c, "web")
    by_pod = {ep.target_ref[2]: ep for ep in s.endpoints if ep.target_ref}
    assert set(by_pod) == {"ready", "notready", "terminating"}  # a Succeeded pod is left out
    assert (by_pod["ready"].ready, by_pod["ready"].serving, by_pod["ready"].terminating) == (True, True, False)
    assert (by_pod["notready"].ready, by_pod["notready"].serving) == (False, False)
    assert (by_pod["terminating"].ready, by_pod["terminating"].serving, by_pod["terminating"].terminating) == (
        False,
        True,
        True,
    )
    assert [(p.name, p.port, p.protocol) for p in s.ports] == [("http", 8080, "TCP")]
    assert s.meta.labels[LABEL_SERVICE_NAME] == "web"
    assert s.meta.labels[LABEL_MANAGED_BY] == "endpointslice-controller.k8s.io"


def test_named_target_port_resolved_per_pod_into_separate_slices() -> None:
    c = cluster_of(
        service("web")
        + deployment("web", 2)
        + deployment("web-canary", 1)
        .replace("{app: web-canary}", "{app: web, track: canary}")
        .replace("containerPort: 8080", "containerPort: 9090")
    )
    slices = slices_of(c, "web")
    assert sorted(s.ports[0].port for s in slices) == [8080, 9090]
    assert sorted(len(s.endpoints) for s in slices) == [1, 2]


def test_pods_without_the_named_port_get_a_slice_without_it() -> None:
    c = cluster_of(service("web") + deployment("web", 1, port_name="metrics"))
    (s,) = slices_of(c, "web")
    assert s.ports == [] and len(s.endpoints) == 1


def test_at_most_100_endpoints_per_slice_and_a_placeholder_when_empty() -> None:
    c = cluster_of(service("web") + deployment("web", 250) + service("empty"))
    assert sorted(len(s.endpoints) for s in slices_of(c, "web")) == [50, MAX_ENDPOINTS_PER_SLICE, 100]
    (placeholder,) = slices_of(c, "empty")
    assert placeholder.endpoints == [] and placeholder.ports == []
    names = [s.meta.name for s in slices_of(c, "web")]
    assert all(re.fullmatch(r"web-[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names) and len(set(names)) == 3


def test_publish_not_ready_addresses_and_hostnames() -> None:
    text = service("db", "  publishNotReadyAddresses: true\n  clusterIP: None\n").replace(
        "targetPort: http", "targetPort: 5432"
    )
    text += """
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: c, image: i}]}
status: {phase: Running, conditions: [{type: Ready, status: 'False'}]}
"""
    (s,) = slices_of(cluster_of(text), "db")
    (ep,) = s.endpoints
    assert ep.ready is True and ep.serving is False and ep.hostname == "db-0"
    assert s.meta.labels["service.kubernetes.io/headless"] == ""


def test_selectorless_services_keep_given_slices_and_mirror_endpoints() -> None:
    text = """
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{name: pg, port: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext}
subsets:
- addresses: [{ip: 192.0.2.10}]
  notReadyAddresses: [{ip: 192.0.2.11}]
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-1, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.20], conditions: {ready: true}}]
ports: [{name: '', port: 8080, protocol: TCP}]
"""
    c = cluster_of(text)
    (mirrored,) = slices_of(c, "ext")
    assert mirrored.managed_by == "endpointslicemirroring-controller.k8s.io"
    assert [(int_to_ip(e.addresses[0]), e.ready) for e in mirrored.endpoints] == [
        ("192.0.2.10", True),
        ("192.0.2.11", False),
    ]
    (manual,) = slices_of(c, "manual")
    assert manual.meta.name == "manual-1" and manual.endpoints[0].addresses == (parse_ip("192.0.2.20"),)


@pytest.mark.parametrize("mode", ["PreferClose", "PreferSameNode"])
def test_traffic_distribution_hints(mode: str) -> None:
    text = NODES.replace("effect: NoSchedule", "effect: PreferNoSchedule").replace(
        "{disk: ssd}", "{disk: ssd, topology.kubernetes.io/zone: z3}"
    )
    text += service("web", f"  trafficDistribution: {mode}\n") + deployment("web", 3)
    (s,) = slices_of(cluster_of(text), "web")
    for ep in s.endpoints:
        assert ep.zone_hints == (ep.zone,)
        assert ep.node_hints == ((ep.node_name,) if mode == "PreferSameNode" else ())
    assert parse_cidr("10.244.0.0/16").network <= s.endpoints[0].addresses[0]
