"""The iptables mode against the real kernel (nf_tables backend and iptables-legacy).

The mode's rules for "test-node" are loaded into a node namespace with
iptables-restore; clients in other namespaces connect, servers in the pods
namespace answer with the address they were reached on and the source they
saw. For every flow the engine's prediction (verdict, every reachable
endpoint, masquerade) must be what the kernel does; then the balancing
distribution, session affinity and an established connection across a
rules change; and `iptables-save` must print what our model says the
kernel holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kn_iptables_lab import NODE_IP, SERVICES, Lab, load_view, manifest, open_lab

from kubenetem.stats import chi2_sf, chi_square
from netem.addr import int_to_ip, parse_ip
from netem.netns import Host
from netem.packet import ACK, SYN, TCP, UDP, Packet
from proxy_modes.base import Verdict
from proxy_modes.iptables.kernel import by_chain
from proxy_modes.netfilter import syntax

pytestmark = pytest.mark.kernel
BACKENDS = ["nft", "legacy"]


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    view = load_view(tmp_path_factory.mktemp("cluster"), manifest())
    lab = open_lab(request.param, view, f"ipt{request.param[0]}")
    try:
        yield lab
    finally:
        lab.topo.close()


@dataclass(frozen=True)
class Flow:
    client: str  # "outside", "denied" (outside, not in the LB source range), "pod", "node", "hairpin"
    dst: str
    port: int
    expect: Verdict  # what kube-proxy's rules should do (stated by hand, checked against the engine)
    proto: str = "tcp"


FLOWS = [
    Flow("pod", "172.30.0.10", 80, Verdict.DNAT),  # ClusterIP from a pod: three endpoints, no masquerade
    Flow("outside", "172.30.0.10", 80, Verdict.DNAT),  # ... from outside the cluster CIDR: masqueraded
    Flow("node", "172.30.0.10", 80, Verdict.DNAT),  # ... from the node itself (nat OUTPUT)
    Flow("pod", "172.30.0.11", 80, Verdict.DNAT),
    Flow("outside", NODE_IP, 30080, Verdict.DNAT),  # NodePort via the LOCAL dst-type rule
    Flow("node", "127.0.0.1", 30080, Verdict.DNAT),  # NodePort on localhost (route_localnet)
    Flow("node", NODE_IP, 30080, Verdict.DNAT),
    Flow("outside", "5.6.7.8", 80, Verdict.DNAT),  # LoadBalancer IP, source inside loadBalancerSourceRanges
    Flow("denied", "5.6.7.8", 80, Verdict.DROP),  # ... outside them: KUBE-PROXY-FIREWALL
    Flow("denied", NODE_IP, 30081, Verdict.DNAT),  # NodePorts are not subject to source ranges
    Flow("outside", "172.30.0.12", 80, Verdict.DNAT),
    Flow("outside", "5.6.7.9", 80, Verdict.DNAT),  # externalTrafficPolicy Local: the local endpoint, source kept
    Flow("outside", "192.168.99.22", 80, Verdict.DNAT),  # ... via its externalIP
    Flow("outside", NODE_IP, 30082, Verdict.DNAT),  # ... via its NodePort
    Flow("pod", "5.6.7.9", 80, Verdict.DNAT),  # pod traffic to an external address short-circuits to all endpoints
    Flow("node", "5.6.7.9", 80, Verdict.DNAT),  # so does the node's own, masqueraded
    Flow("pod", "172.30.0.13", 80, Verdict.DNAT),
    Flow("outside", NODE_IP, 30083, Verdict.DROP),  # Local policy, no local endpoint: dropped
    Flow("node", NODE_IP, 30083, Verdict.DNAT),  # ... but LOCAL sources are routed to the cluster chain
    Flow("pod", "172.30.0.14", 80, Verdict.DNAT),
    Flow("pod", "172.30.0.15", 80, Verdict.DNAT),  # internalTrafficPolicy Local: only the local endpoint
    Flow("pod", "172.30.0.16", 80, Verdict.DROP),  # ... with none: dropped
    Flow("pod", "172.30.0.17", 80, Verdict.REJECT),  # no endpoints: rejected
    Flow("outside", NODE_IP, 30084, Verdict.REJECT),
    Flow("outside", "192.168.99.23", 80, Verdict.REJECT),
    Flow("pod", "172.30.0.18", 80, Verdict.DNAT),  # only a terminating (serving) endpoint: still used
    Flow("pod", "172.30.0.19", 53, Verdict.DNAT, "udp"),
    Flow("outside", "172.30.0.19", 53, Verdict.DNAT, "udp"),
    Flow("hairpin", "172.30.0.21", 80, Verdict.DNAT),  # a pod reaching itself: masqueraded (hairpin)
    Flow("outside", "192.168.99.33", 80, Verdict.DNAT),  # externalIP, Cluster policy: masqueraded
    Flow("pod", "172.30.0.22", 80, Verdict.DNAT),
    Flow("node", "172.30.0.19", 53, Verdict.DNAT, "udp"),
]
SOURCES = {
    "outside": "203.0.113.10",
    "denied": "203.0.113.200",
    "pod": "10.180.5.5",
    "node": NODE_IP,
    "hairpin": "10.180.0.18",
}


def _client(lab: Lab, flow: Flow) -> tuple[Host, str]:
    host = {"outside": lab.outside, "denied": lab.outside, "pod": lab.podclient, "node": lab.node, "hairpin": lab.pods}[
        flow.client
    ]
    src = SOURCES[flow.client]
    if flow.client == "node" and flow.dst.startswith("127."):
        src = "127.0.0.1"
    return host, src


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f"{f.client}->{f.dst}:{f.port}/{f.proto}")
def test_each_flow_reaches_what_the_engine_predicts(lab: Lab, flow: Flow) -> None:
    host, src = _client(lab, flow)
    proto = TCP if flow.proto == "tcp" else UDP
    packet = Packet(proto, parse_ip(src), 40000, parse_ip(flow.dst), flow.port, local=flow.client == "node")
    assert lab.mode.nf is not None
    outcomes = lab.mode.nf.explore(packet, 0.0)
    verdicts = {o.verdict for o in outcomes}
    assert verdicts == {flow.expect}, f"engine: {verdicts}"
    if flow.expect in (Verdict.DROP, Verdict.REJECT):
        reply = host.connect(flow.dst, flow.port, flow.proto, src=src, timeout=0.4)
        assert reply.status == ("timeout" if flow.expect == Verdict.DROP else "refused"), reply
        return
    predicted = {f"{int_to_ip(o.endpoint[0])}:{o.endpoint[1]}": o.masquerade for o in outcomes if o.endpoint}
    replies = host.connect_many(flow.dst, flow.port, flow.proto, src=src, count=max(1, 12 * len(predicted)))
    assert {r.status for r in replies} == {"ok"}, replies
    assert {r.server for r in replies} == set(predicted), "the endpoints reached"
    for reply in replies:
        want_src = NODE_IP if predicted[reply.server] else src
        assert reply.seen_ip == want_src, f"{reply.server}: masquerade predicted {predicted[reply.server]}"


def test_the_flows_cover_every_kind_of_rule() -> None:
    covered = {(f.client, f.expect) for f in FLOWS}
    assert len(FLOWS) >= 30
    assert {
        ("outside", Verdict.DROP),
        ("denied", Verdict.DROP),
        ("pod", Verdict.REJECT),
        ("hairpin", Verdict.DNAT),
    } <= covered
    assert any(f.proto == "udp" for f in FLOWS) and any(f.dst.startswith("127.") for f in FLOWS)


def test_iptables_save_prints_the_rules_the_engine_holds(lab: Lab) -> None:
    ours = by_chain(syntax.save(lab.mode.tables))
    kernel = by_chain(lab.kernel.save())
    for table_chain, rules in ours.items():
        assert kernel.get(table_chain) == rules, table_chain
    assert set(kernel) == set(ours)


def chi_square_p(observed: list[int], expected: list[float]) -> float:
    """p-value of Pearson's chi-square test (kubenetem.stats, shared with the benchmarks)."""
    return chi_square(observed, expected)[1]


def test_chi_square_helper_knows_its_table() -> None:
    # chi-square 7.815 with 3 degrees of freedom is the 5% point; 16.27 the 0.1% point.
    assert chi_square_p([1], [1]) == 1.0
    assert abs(chi2_sf(7.815, 3) - 0.05) < 1e-3
    assert abs(chi2_sf(16.27, 3) - 0.001) < 1e-4


def test_two_thousand_connections_follow_the_engine_probabilities(lab: Lab) -> None:
    assert lab.mode.nf is not None
    packet = Packet(TCP, parse_ip("10.180.5.5"), 40000, parse_ip("172.30.0.22"), 80)
    reach = {f"{int_to_ip(r.ip)}:{r.port}": float(r.probability) for r in lab.mode.nf.reach(packet, 0.0)}
    assert len(reach) == 4
    replies = lab.podclient.connect_many("172.30.0.22", 80, count=2000)
    counts = Counter(r.server for r in replies if r.status == "ok")
    assert sum(counts.values()) == 2000 and set(counts) == set(reach)
    names = sorted(reach)
    p_kernel = chi_square_p([counts[n] for n in names], [2000 * reach[n] for n in names])
    assert p_kernel > 0.001, (counts, reach)
    # The engine itself, sampled the same way, passes the same test.
    engine = Counter(lab.mode.route(packet._replace(sport=20000 + i), float(i)).endpoint_text() for i in range(2000))
    assert chi_square_p([engine[n] for n in names], [2000 * reach[n] for n in names]) > 0.001


def test_client_ip_affinity_sticks_in_both(lab: Lab) -> None:
    replies = lab.outside.connect_many("172.30.0.20", 80, src="203.0.113.10", count=25)
    assert len({r.server for r in replies}) == 1 and replies[0].status == "ok"
    # In the engine: a client it has not seen picks at random, then sticks.
    chosen = {
        lab.mode.route(
            Packet(TCP, parse_ip("203.0.113.77"), 30000 + i, parse_ip("172.30.0.20"), 80), 100.0 + i
        ).endpoint
        for i in range(25)
    }
    assert len(chosen) == 1
    trace = lab.mode.trace(Packet(TCP, parse_ip("203.0.113.77"), 31000, parse_ip("172.30.0.20"), 80), 200.0)
    assert trace.affinity is not None and trace.affinity.startswith("hit:")


def test_an_established_connection_keeps_its_endpoint_across_a_rules_change(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    spec, _ = SERVICES["svc-a"]
    ips = ["10.180.0.1", "10.180.0.2", "10.180.0.3", "10.180.0.4"]
    before = {"svc-a": (spec, [(ip, "other-node", "ready") for ip in ips[:3]])}
    directory = tmp_path_factory.mktemp("change")
    for backend in BACKENDS:
        lab = open_lab(backend, load_view(directory, manifest(before)), f"ipx{backend[0]}", extra_pod_ips=ips)
        try:
            _established_across_change(lab, directory, spec, ips)
        finally:
            lab.topo.close()


def _established_across_change(lab: Lab, directory: object, spec: dict[str, object], ips: list[str]) -> None:
    handle, first = lab.podclient.open("172.30.0.10", 80, src="10.180.5.5", sport=45000)
    assert first.status == "ok"
    kernel_ep = first.server_ip
    # The engine's own connection, handshake and all.
    client, cip = parse_ip("10.180.5.5"), parse_ip("172.30.0.10")
    d = lab.mode.route(Packet(TCP, client, 45000, cip, 80, flags=SYN), 1.0)
    assert d.endpoint is not None
    engine_ep = int_to_ip(d.endpoint[0])
    lab.mode.route(Packet(TCP, d.endpoint[0], d.endpoint[1], client, 45000, flags=SYN | ACK), 1.1)
    lab.mode.route(Packet(TCP, client, 45000, cip, 80, flags=ACK), 1.2)
    # Both chosen endpoints leave the service; a new one joins.
    remaining = [*[ip for ip in ips[:3] if ip not in (kernel_ep, engine_ep)][:1], ips[3]]
    after = {"svc-a": (spec, [(ip, "other-node", "ready") for ip in remaining])}
    ruleset = lab.mode.sync(load_view(directory, manifest(after)))  # type: ignore[arg-type]
    assert ruleset.partial
    lab.kernel.restore(ruleset.text, noflush=True)
    # The kernel's partial restore and our model of it agree.
    assert by_chain(lab.kernel.save()) == by_chain(syntax.save(lab.mode.tables))
    again = lab.podclient.send(handle)
    assert again.status == "ok" and again.server_ip == kernel_ep and again.local == first.local
    later = lab.mode.route(Packet(TCP, client, 45000, cip, 80, flags=ACK), 2.0)
    assert later.established and later.endpoint == d.endpoint
    fresh = lab.podclient.connect_many("172.30.0.10", 80, count=20)
    assert {r.server_ip for r in fresh} == set(remaining)
    engine_fresh = {
        int_to_ip(lab.mode.route(Packet(TCP, client, 46000 + i, cip, 80), 3.0).endpoint[0])  # type: ignore[index]
        for i in range(40)
    }
    assert engine_fresh == set(remaining)
    lab.podclient.close_connection(handle)


def test_masquerade_all_masquerades_pod_traffic_too(tmp_path_factory: pytest.TempPathFactory) -> None:
    view = load_view(tmp_path_factory.mktemp("masqall"), manifest(iptables={"masqueradeAll": True}))
    lab = open_lab("nft", view, "iptm")
    try:
        packet = Packet(TCP, parse_ip("10.180.5.5"), 40000, parse_ip("172.30.0.11"), 80)
        assert lab.mode.route(packet, 0.0).masquerade
        reply = lab.podclient.connect("172.30.0.11", 80)
        assert (reply.status, reply.seen_ip) == ("ok", NODE_IP)
    finally:
        lab.topo.close()


def test_large_cluster_mode_rules_load_and_work(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Past 1000 endpoints kube-proxy drops the per-endpoint comments; the
    kernel must take that ruleset and still balance the same way."""
    big = {f"10.181.{i // 250}.{i % 250 + 1}" for i in range(1001)}
    services = dict(SERVICES)
    services["svc-big"] = ({"clusterIP": "172.30.1.1"}, [(ip, "other-node", "ready") for ip in sorted(big)])
    view = load_view(tmp_path_factory.mktemp("large"), manifest(services))
    lab = open_lab("nft", view, "iptl")
    try:
        assert lab.mode.last is not None and lab.mode.last.large
        seps = [line for line in lab.mode.last.full.splitlines() if line.startswith("-A KUBE-SEP-")]
        assert seps and not any("--comment" in line for line in seps)
        reply = lab.podclient.connect("172.30.0.11", 80)
        assert reply.status == "ok" and reply.server_ip == "10.180.0.4"
        assert by_chain(lab.kernel.save()) == by_chain(syntax.save(lab.mode.tables))
    finally:
        lab.topo.close()
