"""The proxy's view: what kube-proxy builds from Services and EndpointSlices
(serviceport.go, endpointslicecache.go) and how it categorises endpoints
(topology.go CategorizeEndpoints; cases after its topology_test.go)."""

from __future__ import annotations

import pytest
from kn_helpers import cluster_of

from kubenetem.scenarios import synthetic_cluster
from netem.addr import parse_ip
from proxy_modes.changes import ChangeTracker, diff_states
from proxy_modes.view import (
    EndpointInfo,
    ServicePortInfo,
    ServicePortName,
    build_state,
    categorize_endpoints,
    node_view,
)

SPN = ServicePortName("ns1", "svc1", "p80", "TCP")


def ep(
    ip: str,
    node: str = "",
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    zones: tuple[str, ...] = (),
) -> EndpointInfo:
    return EndpointInfo(parse_ip(ip), 80, f"{ip}:80", ready, serving, terminating, node, "", frozenset(zones))


def info(itp_local: bool = False, etp_local: bool = False, node_port: int = 0) -> ServicePortInfo:
    return ServicePortInfo(
        SPN,
        parse_ip("172.30.0.41"),
        80,
        6,
        node_port=node_port,
        internal_policy_local=itp_local,
        external_policy_local=etp_local,
    )


def texts(eps: tuple[EndpointInfo, ...]) -> list[str]:
    return [e.text for e in eps]


def test_service_port_name_strings() -> None:
    assert str(SPN) == "ns1/svc1:p80"
    assert str(ServicePortName("ns1", "svc1", "", "UDP")) == "ns1/svc1"
    assert str(info()) == "172.30.0.41:80/TCP"


def test_cluster_policy_uses_ready_endpoints() -> None:
    eps = (ep("10.0.0.0", "host0"), ep("10.0.0.1", "host1", ready=False, serving=False))
    c = categorize_endpoints(eps, info(), "host0", "")
    assert texts(c.cluster) == ["10.0.0.0:80"] and c.local == () and c.has_any
    assert c.all_reachable == c.cluster


def test_terminating_fallback_when_nothing_is_ready() -> None:
    eps = (
        ep("10.0.0.0", "host0", ready=False, serving=True, terminating=True),
        ep("10.0.0.1", "host1", ready=False, serving=False, terminating=True),
    )
    c = categorize_endpoints(eps, info(), "host0", "")
    assert texts(c.cluster) == ["10.0.0.0:80"] and c.has_any


def test_internal_local_uses_local_endpoints_only() -> None:
    eps = (ep("10.0.0.0", "host0"), ep("10.0.0.1", "host1"))
    c = categorize_endpoints(eps, info(itp_local=True), "host1", "")
    assert c.cluster == () and texts(c.local) == ["10.0.0.1:80"] and texts(c.all_reachable) == ["10.0.0.1:80"]
    none_here = categorize_endpoints(eps, info(itp_local=True), "host2", "")
    assert none_here.local == () and none_here.has_any  # endpoints exist elsewhere


def test_external_local_keeps_cluster_endpoints_for_short_circuit() -> None:
    eps = (ep("10.0.0.0", "host0"), ep("10.0.0.1", "host1"))
    c = categorize_endpoints(eps, info(etp_local=True, node_port=30080), "host1", "")
    assert texts(c.cluster) == ["10.0.0.0:80", "10.0.0.1:80"] and texts(c.local) == ["10.0.0.1:80"]
    assert c.all_reachable == c.cluster


def test_local_terminating_fallback_merges_into_all_reachable() -> None:
    eps = (ep("10.0.0.0", "host0"), ep("10.0.0.1", "host1", ready=False, serving=True, terminating=True))
    c = categorize_endpoints(eps, info(etp_local=True, node_port=30080), "host1", "")
    assert texts(c.local) == ["10.0.0.1:80"] and texts(c.cluster) == ["10.0.0.0:80"]
    assert texts(c.all_reachable) == ["10.0.0.0:80", "10.0.0.1:80"]


def test_zone_hints_filter_cluster_endpoints_only_when_complete() -> None:
    eps = (ep("10.0.0.0", zones=("z1",)), ep("10.0.0.1", zones=("z2",)))
    assert texts(categorize_endpoints(eps, info(), "n", "z1").cluster) == ["10.0.0.0:80"]
    assert len(categorize_endpoints(eps, info(), "n", "z9").cluster) == 2  # no endpoint for my zone
    partial = (ep("10.0.0.0", zones=("z1",)), ep("10.0.0.1"))
    assert len(categorize_endpoints(partial, info(), "n", "z1").cluster) == 2


EXAMPLE = """
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
  sessionAffinity: ClientIP
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 12
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: i}]}
"""


def test_state_from_a_cluster() -> None:
    c = cluster_of(EXAMPLE)
    state = build_state(c)
    assert list(state.entries) == [("default", "web")]  # headless services are skipped, as kube-proxy does
    (http, dns) = state.entries[("default", "web")].ports
    assert str(http.name) == "default/web:http" and http.protocol == 6 and dns.protocol == 17
    assert http.session_affinity and http.sticky_seconds == 10800
    eps = state.endpoints(http.name)
    assert len(eps) == 12 and all(e.port == 8080 for e in eps)
    assert [e.text for e in eps] == sorted(e.text for e in eps)  # sorted as text: .10 before .2
    assert eps[0].text.endswith(".10:8080") or eps[0].text < eps[1].text
    v1, v2 = node_view(c, state, "n1"), node_view(c, state, "n2")
    assert v1.state is v2.state
    assert sum(v1.is_local(e) for e in eps) + sum(v2.is_local(e) for e in eps) == 12


def test_change_tracker_collapses_undone_changes() -> None:
    c = cluster_of(EXAMPLE)
    state = build_state(c)
    name = ("default", "web")
    entry = state.entries[name]
    tracker = ChangeTracker()
    assert tracker.update(name, entry, None)
    assert not tracker.update(name, None, entry)  # deleted then re-added: nothing to do
    tracker.update(name, entry, None)
    assert tracker.checkout() == {name: (entry, None)} and not tracker


def test_diff_states_finds_exactly_the_changed_service() -> None:
    c = synthetic_cluster(services=50, endpoints=3, nodes=2)
    old = build_state(c)
    name = ("ns3", "svc13")
    entry = old.entries[name]
    spn = entry.ports[0].name
    fewer = type(entry)(entry.ports, {spn: entry.endpoints[spn][:2]})
    new = old.with_entry(name, fewer)
    assert diff_states(old, new) == {name: (entry, fewer)}
    assert diff_states(old, old.with_entry(name, None)) == {name: (entry, None)}
    assert diff_states(old, build_state(c)) == {}


@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_synthetic_cluster_matches_its_promise(node: str) -> None:
    c = synthetic_cluster(services=20, endpoints=4, nodes=2, affinity=True)
    view = node_view(c, build_state(c), node)
    infos = list(view.service_ports())
    assert len(infos) == 20 and all(i.session_affinity for i in infos)
    assert all(len(view.endpoints(i.name)) == 4 for i in infos)
    assert all(e.text.startswith("10.18") for i in infos for e in view.endpoints(i.name))
