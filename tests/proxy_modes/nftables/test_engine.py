"""Packets through the nftables engine, against kube-proxy's own packet-flow tests.

The flow tables restate pkg/proxy/nftables/proxier_test.go (TestClusterIPGeneral,
TestLoadBalancer, TestNodePorts, TestExternalTrafficPolicyLocal/Cluster,
TestNoEndpointsReject, TestInternalExternalMasquerade): for each packet, the
endpoints a new connection can reach (or DROP/REJECT, or "" when no rule
touches it) and whether it is masqueraded. Then what their tracer does not
check: the exact random choice, affinity over time, conntrack across rule
changes, the cost accounting, and the compiled plans against the literal walk.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from nft_helpers import (
    EXTERNAL_CLIENT,
    EXTERNAL_CLIENT_BLOCKED,
    NODE_IP,
    NODE_IP_ALT,
    TEST_EXTERNAL_IP,
    Flows,
    Port,
    Svc,
    config,
    mode,
    rich_services,
    three_endpoints,
    view,
)

from kubenetem.stats import chi_square
from netem.addr import parse_ip
from netem.conntrack import CLOSE_WAIT, INVALID, NONE, ORIGINAL, tcp_next_state
from netem.errors import RulesetError
from netem.packet import ACK, FIN, PSH, RST, SYN, TCP, UDP, Packet
from proxy_modes.base import Decision, Verdict
from proxy_modes.nftables import engine
from proxy_modes.nftables.engine import CT_INVALID, CT_NEW, NftablesMode
from proxy_modes.nftables.ruleset import dump_commands, list_ruleset
from proxy_modes.view import EndpointInfo, ProxyState, ServiceEntry

Flow = tuple[str, str, int, str, bool]  # src, dst, port, output, masq


def run(m: NftablesMode, flows: list[Flow], proto: str = "tcp") -> None:
    f = Flows(m)
    for src, dst, port, output, masq in flows:
        got = f(src, dst, port, proto)
        assert got == (output, masq), f"{src} -> {dst}:{port}"


def test_cluster_ip_general() -> None:
    m = mode(
        [
            Svc(
                "ns1", "svc1", "172.30.0.41", [Port("http", 80)], endpoints=[("10.180.0.1", "test-node", {"http": 80})]
            ),
            Svc(
                "ns2",
                "svc2",
                "172.30.0.42",
                [
                    Port("http", 80),
                    Port("https", 443),
                    Port("dns-udp", 53, "UDP"),
                    Port("dns-tcp", 53),
                    Port("dns-sctp", 53, "SCTP"),
                ],
                endpoints=[
                    (ip, node, {"http": 80, "https": 8443, "dns-udp": 53, "dns-tcp": 5353, "dns-sctp": 53})
                    for ip, node in (("10.180.0.1", "test-node"), ("10.180.2.1", "node2"))
                ],
            ),
        ]
    )
    both = "10.180.0.1:{0}, 10.180.2.1:{0}"
    run(
        m,
        [
            ("10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
            ("10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),  # hairpin
            ("10.180.0.2", "172.30.0.42", 80, both.format(80), False),
            ("10.180.0.2", "172.30.0.42", 443, both.format(8443), False),
            ("10.180.0.2", "172.30.0.42", 53, both.format(5353), False),
            ("10.180.0.2", "172.30.0.41", 443, "REJECT", False),  # svc1 has no port 443
            ("10.180.0.2", "172.30.0.50", 80, "DROP", False),  # unallocated ClusterIP
        ],
    )
    run(m, [("10.180.0.2", "172.30.0.42", 53, both.format(53), False)], "udp")
    run(m, [("10.180.0.2", "172.30.0.42", 53, both.format(53), False)], "sctp")
    # A UDP packet to a TCP-only port is rejected (the iptables mode lets it through).
    run(m, [("10.180.0.2", "172.30.0.42", 80, "REJECT", False)], "udp")


def test_load_balancer_source_ranges() -> None:
    m = mode(
        [
            Svc(
                "ns1",
                "svc1",
                "172.30.0.41",
                [Port("p80", 80, node_port=3001)],
                type="LoadBalancer",
                lb_ips=["1.2.3.4", "5.6.7.8"],
                source_ranges=["192.168.0.0/24", " 203.0.113.0/25"],
                endpoints=[("10.180.0.1", "", {"p80": 80})],
            )
        ]
    )
    ep = "10.180.0.1:80"
    run(
        m,
        [
            ("10.0.0.2", "172.30.0.41", 80, ep, False),
            (EXTERNAL_CLIENT, NODE_IP, 3001, ep, True),
            (EXTERNAL_CLIENT_BLOCKED, NODE_IP, 3001, ep, True),  # NodePorts ignore the source ranges
            (EXTERNAL_CLIENT, "1.2.3.4", 80, ep, True),
            (EXTERNAL_CLIENT, "5.6.7.8", 80, ep, True),
            (EXTERNAL_CLIENT_BLOCKED, "1.2.3.4", 80, "DROP", False),
            (EXTERNAL_CLIENT_BLOCKED, "5.6.7.8", 80, "DROP", False),
            ("10.0.0.2", "1.2.3.4", 80, "DROP", False),
            ("10.0.0.2", "5.6.7.8", 80, "DROP", False),
            (NODE_IP, "1.2.3.4", 80, ep, True),
            (NODE_IP, "5.6.7.8", 80, ep, True),
            ("1.2.3.4", "1.2.3.4", 80, ep, True),  # the node's own LB traffic, SNATted to the VIP
            ("5.6.7.8", "5.6.7.8", 80, ep, True),
        ],
    )


@pytest.mark.parametrize("addresses", [None, ["192.168.0.0/24", "192.168.1.0/24"]])
def test_node_ports(addresses: list[str] | None) -> None:
    cfg = config() if addresses is None else config(node_port_addresses=addresses)
    m = mode(
        [
            Svc(
                "ns1",
                "svc1",
                "172.30.0.41",
                [Port("p80", 80, node_port=3001)],
                endpoints=[("10.180.0.1", "", {"p80": 80}), ("10.180.2.1", "test-node", {"p80": 80})],
            )
        ],
        cfg,
    )
    both = "10.180.0.1:80, 10.180.2.1:80"
    run(
        m,
        [
            ("10.0.0.2", "172.30.0.41", 80, both, False),
            (EXTERNAL_CLIENT, NODE_IP, 3001, both, True),
            (NODE_IP, NODE_IP, 3001, both, True),
            (EXTERNAL_CLIENT, NODE_IP_ALT, 3001, both if addresses else "", bool(addresses)),
        ],
    )


def etp_service(local: bool) -> Svc:
    return Svc(
        "ns1",
        "svc1",
        "172.30.0.41",
        [Port("p80", 80, node_port=3001)],
        type="LoadBalancer",
        etp_local=local,
        external_ips=[TEST_EXTERNAL_IP],
        lb_ips=["1.2.3.4"],
        endpoints=[("10.180.0.1", "", {"p80": 80}), ("10.180.2.1", "test-node", {"p80": 80})],
    )


def test_external_traffic_policy_local() -> None:
    both, local = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
    run(
        mode([etp_service(True)]),
        [
            ("10.0.0.2", "172.30.0.41", 80, both, False),
            ("10.0.0.2", TEST_EXTERNAL_IP, 80, both, False),
            (EXTERNAL_CLIENT, TEST_EXTERNAL_IP, 80, local, False),
            ("10.0.0.2", "1.2.3.4", 80, both, False),
            (EXTERNAL_CLIENT, "1.2.3.4", 80, local, False),
            ("10.0.0.2", NODE_IP, 3001, both, False),
            (EXTERNAL_CLIENT, NODE_IP, 3001, local, False),
        ],
    )


def test_external_traffic_policy_cluster() -> None:
    both = "10.180.0.1:80, 10.180.2.1:80"
    run(
        mode([etp_service(False)]),
        [
            ("10.0.0.2", "172.30.0.41", 80, both, False),
            ("10.0.0.2", TEST_EXTERNAL_IP, 80, both, True),
            (EXTERNAL_CLIENT, TEST_EXTERNAL_IP, 80, both, True),
            ("10.0.0.2", "1.2.3.4", 80, both, True),
            (EXTERNAL_CLIENT, "1.2.3.4", 80, both, True),
            ("10.0.0.2", NODE_IP, 3001, both, True),
            (EXTERNAL_CLIENT, NODE_IP, 3001, both, True),
        ],
    )


def test_no_endpoints_reject() -> None:
    m = mode(
        [
            Svc(
                "ns1",
                "svc1",
                "172.30.0.41",
                [Port("p80", 80, node_port=3001)],
                type="LoadBalancer",
                external_ips=[TEST_EXTERNAL_IP],
                lb_ips=["1.2.3.4"],
            )
        ]
    )
    run(
        m,
        [
            ("10.0.0.2", "172.30.0.41", 80, "REJECT", False),
            (EXTERNAL_CLIENT, TEST_EXTERNAL_IP, 80, "REJECT", False),
            ("10.0.0.2", NODE_IP, 3001, "REJECT", False),
            (EXTERNAL_CLIENT, NODE_IP, 3001, "REJECT", False),
            ("10.0.0.2", "1.2.3.4", 80, "REJECT", False),
            (EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT", False),
        ],
    )


def masquerade_services() -> list[Svc]:
    def svc(n: int, **kw: object) -> Svc:
        return Svc(
            f"ns{n}",
            f"svc{n}",
            f"172.30.0.4{n}",
            [Port("p80", 80, node_port=3000 + n)],
            type="LoadBalancer",
            lb_ips=[["1.2.3.4", "5.6.7.8", "9.10.11.12"][n - 1]],
            endpoints=[(f"10.180.0.{n}", "test-node", {"p80": 80}), (f"10.180.1.{n}", "remote", {"p80": 80})],
            **kw,  # type: ignore[arg-type]
        )

    return [svc(1), svc(2, etp_local=True), svc(3, itp_local=True)]


S1, S2, S3 = "10.180.0.1:80, 10.180.1.1:80", "10.180.0.2:80, 10.180.1.2:80", "10.180.0.3:80, 10.180.1.3:80"
POD, EXT = "10.0.0.2", EXTERNAL_CLIENT
# TestInternalExternalMasquerade: (name, src, dst, port, output, masq) in the base case.
MASQUERADE_FLOWS = [
    ("pod to ClusterIP", POD, "172.30.0.41", 80, S1, False),
    ("pod to NodePort", POD, NODE_IP, 3001, S1, True),
    ("pod to LB", POD, "1.2.3.4", 80, S1, True),
    ("node to ClusterIP", NODE_IP, "172.30.0.41", 80, S1, True),
    ("node to NodePort", NODE_IP, NODE_IP, 3001, S1, True),
    ("node to LB", NODE_IP, "1.2.3.4", 80, S1, True),
    ("external to ClusterIP", EXT, "172.30.0.41", 80, S1, True),
    ("external to NodePort", EXT, NODE_IP, 3001, S1, True),
    ("external to LB", EXT, "1.2.3.4", 80, S1, True),
    ("pod to ClusterIP with eTP:Local", POD, "172.30.0.42", 80, S2, False),
    ("pod to NodePort with eTP:Local", POD, NODE_IP, 3002, S2, False),
    ("pod to LB with eTP:Local", POD, "5.6.7.8", 80, S2, False),
    ("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, S2, True),
    ("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, S1, True),
    ("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, S2, True),
    ("external to ClusterIP with eTP:Local", EXT, "172.30.0.42", 80, S2, True),
    ("external to NodePort with eTP:Local", EXT, NODE_IP, 3002, "10.180.0.2:80", False),
    ("external to LB with eTP:Local", EXT, "5.6.7.8", 80, "10.180.0.2:80", False),
    ("pod to ClusterIP with iTP:Local", POD, "172.30.0.43", 80, "10.180.0.3:80", False),
    ("pod to NodePort with iTP:Local", POD, NODE_IP, 3003, S3, True),
    ("pod to LB with iTP:Local", POD, "9.10.11.12", 80, S3, True),
    ("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80", True),
    ("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, S3, True),
    ("node to LB with iTP:Local", NODE_IP, "9.10.11.12", 80, S3, True),
    ("external to ClusterIP with iTP:Local", EXT, "172.30.0.43", 80, "10.180.0.3:80", True),
    ("external to NodePort with iTP:Local", EXT, NODE_IP, 3003, S3, True),
    ("external to LB with iTP:Local", EXT, "9.10.11.12", 80, S3, True),
]
NO_DETECTOR = {
    "node to ClusterIP": (None, False),
    "node to ClusterIP with eTP:Local": (None, False),
    "node to ClusterIP with iTP:Local": (None, False),
    "external to ClusterIP": (None, False),
    "external to ClusterIP with eTP:Local": (None, False),
    "external to ClusterIP with iTP:Local": (None, False),
    "pod to NodePort with eTP:Local": ("10.180.0.2:80", None),
    "pod to LB with eTP:Local": ("10.180.0.2:80", None),
}
MASQ_ALL = {
    "pod to ClusterIP": (None, True),
    "pod to ClusterIP with eTP:Local": (None, True),
    "pod to ClusterIP with iTP:Local": (None, True),
}


@pytest.mark.parametrize(
    ("case", "cfg", "overrides"),
    [
        ("base", {}, {}),
        ("no LocalTrafficDetector", {"cluster_cidrs": []}, NO_DETECTOR),
        ("masqueradeAll", {"masquerade_all": True}, MASQ_ALL),
        (
            "masqueradeAll, no LocalTrafficDetector",
            {"masquerade_all": True, "cluster_cidrs": []},
            {**{k: v for k, v in NO_DETECTOR.items() if v[0] is not None}, **MASQ_ALL},
        ),
    ],
)
def test_internal_external_masquerade(
    case: str, cfg: dict[str, object], overrides: dict[str, tuple[str | None, bool | None]]
) -> None:
    m = mode(masquerade_services(), config(**cfg))
    flows = []
    for name, src, dst, port, output, masq in MASQUERADE_FLOWS:
        new_output, new_masq = overrides.get(name, (None, None))
        flows.append(
            (src, dst, port, output if new_output is None else new_output, masq if new_masq is None else new_masq)
        )
    run(m, flows)


def test_terminating_endpoints_are_used_only_when_nothing_else_is() -> None:
    svc = Svc("ns1", "svc1", "172.30.1.1", [Port("", 80)], type="LoadBalancer", lb_ips=["1.2.3.4"])
    entry = svc.entry()
    spn = entry.ports[0].name
    eps = (
        EndpointInfo(parse_ip("10.0.1.4"), 80, "10.0.1.4:80", ready=False, serving=False, terminating=True),
        EndpointInfo(parse_ip("10.0.1.5"), 80, "10.0.1.5:80", ready=False, serving=True, terminating=True),
    )
    state = ProxyState({("ns1", "svc1"): ServiceEntry(entry.ports, {spn: eps})})
    v = view([])
    v.state = state
    m = NftablesMode(random.Random(0))
    m.sync(v)
    run(m, [("10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80", False), (EXT, "1.2.3.4", 80, "10.0.1.5:80", True)])


# --- beyond kube-proxy's tracer ---------------------------------------------------


def packet(src: str, sport: int, dst: str, dport: int, proto: int = TCP, **kw: object) -> Packet:
    return Packet(proto, parse_ip(src), sport, parse_ip(dst), dport, **kw)  # type: ignore[arg-type]


def test_cost_is_the_rules_and_lookups_of_the_walk() -> None:
    m = mode([three_endpoints()])
    d = m.route(packet("10.0.0.2", 1000, "172.30.0.41", 80), 0.0)
    # prerouting: filter-prerouting-pre-dnat 1 + firewall-check 1; nat-prerouting 1 +
    # services 1 (vmap hit); service chain: masquerade check 1 + numgen 1; endpoint
    # chain: hairpin check 1 + dnat 1; forward: filter-forward 2 + endpoints check 1 +
    # cluster-ips-check 2; postrouting: nat-postrouting 1 + masquerading 1.
    assert (d.rules, d.lookups) == (15, 6)
    # firewall-ips, service-ips, numgen, no-endpoint-services, @cluster-ips, conntrack.
    assert d.endpoint is not None
    m.route(Packet(TCP, *d.endpoint, parse_ip("10.0.0.2"), 1000, flags=SYN | ACK), 0.05)
    again = m.route(packet("10.0.0.2", 1000, "172.30.0.41", 80, flags=ACK), 0.1)
    assert again.established and again.endpoint == d.endpoint and (again.rules, again.lookups) == (3, 1)
    dropped = m.route(packet("10.0.0.2", 1001, "172.30.0.99", 80), 0.2)
    assert dropped.verdict is Verdict.DROP and (dropped.rules, dropped.lookups) == (10, 6)


def test_probabilities_are_exact() -> None:
    m = mode([three_endpoints()])
    trace = m.trace(packet("10.0.0.2", 1000, "172.30.0.41", 80), 0.0)
    assert [(r.port, r.probability) for r in trace.endpoints] == [(80, Fraction(1, 3))] * 3
    assert trace.decision.endpoint in {(r.ip, r.port) for r in trace.endpoints}
    assert any(s.kind == "schedule" for s in trace.steps)


def uniform_p(counts: list[int]) -> float:
    """p-value of Pearson's chi-square against an even split (kubenetem.stats)."""
    return chi_square(counts, [sum(counts) / len(counts)] * len(counts))[1]


def test_numgen_distribution_is_uniform() -> None:
    m = mode([three_endpoints()], seed=11)
    counts = {1: 0, 2: 0, 3: 0}
    for n in range(30000):
        d = m.route(packet("10.0.0.2", 1024 + n, "172.30.0.41", 80), n * 1e-4)
        assert d.endpoint is not None
        counts[d.endpoint[0] & 0xFF] += 1
    assert uniform_p(list(counts.values())) > 0.001


def test_affinity_sticks_until_the_timeout() -> None:
    m = mode([three_endpoints(affinity_seconds=30)], seed=4)
    first = m.route(packet("10.0.0.2", 1000, "172.30.0.41", 80), 0.0).endpoint
    for n in range(1, 20):
        assert m.route(packet("10.0.0.2", 1000 + n, "172.30.0.41", 80), n).endpoint == first
    # Each connection refreshed the entry (update): 29 s after the last one it still holds.
    assert m.route(packet("10.0.0.2", 2000, "172.30.0.41", 80), 19 + 29.9).endpoint == first
    trace = m.trace(packet("10.0.0.2", 2001, "172.30.0.41", 80), 49.0)
    assert trace.affinity is not None and trace.affinity.startswith("hit:")
    assert [(r.ip, r.port) for r in trace.endpoints] == [first]
    # After 30 s of silence the entry has expired (now >= expiry): balanced again.
    later = m.trace(packet("10.0.0.2", 2002, "172.30.0.41", 80), 49.0 + 30)
    assert len(later.endpoints) == 3 and later.affinity is not None and later.affinity.startswith("new:")
    seen = {m.route(packet(f"10.0.1.{n}", 1000, "172.30.0.41", 80), 100.0).endpoint for n in range(60)}
    assert len(seen) == 3  # other clients are balanced independently
    assert "expires" in list_ruleset(m.table, 100.0)


def test_established_connections_survive_a_rules_change() -> None:
    svc = three_endpoints()
    m = NftablesMode(random.Random(2))
    m.sync(view([svc]))
    tcp = [packet("10.0.0.2", 1000 + n, "172.30.0.41", 80) for n in range(12)]
    udp = [packet("10.0.0.2", 3000 + n, "172.30.0.41", 80, UDP) for n in range(12)]
    svc.ports.append(Port("dns", 80, "UDP"))
    for _, _, ports in svc.endpoints:
        ports["dns"] = 80
    m.sync(view([svc]))
    before = {p: m.route(p, 1.0).endpoint for p in tcp + udp}
    for p in tcp:  # each handshake answered, so later ACKs are valid
        ep = before[p]
        assert ep is not None
        m.route(Packet(TCP, *ep, p.src, p.sport, flags=SYN | ACK), 1.0)
    gone = (parse_ip("10.180.0.1"), 80)
    assert gone in before.values()
    # The endpoint 10.180.0.1 goes away.
    svc.endpoints = svc.endpoints[1:]
    result = m.sync(view([svc]))
    assert result.partial
    for p in tcp:
        d = m.route(p._replace(flags=ACK), 2.0)
        assert d.established and d.endpoint == before[p]  # TCP keeps its endpoint, even the removed one
    for p in udp:
        d = m.route(p, 2.0)
        if before[p] == gone:
            # kube-proxy's conntrack reconciler deleted the entry: balanced again.
            assert not d.established and d.endpoint != gone
        else:
            assert d.established and d.endpoint == before[p]
    # New TCP connections never reach the removed endpoint.
    news = {m.route(packet("10.0.0.3", 5000 + n, "172.30.0.41", 80), 3.0).endpoint for n in range(50)}
    assert gone not in news and len(news) == 2


def test_reply_packets_and_invalid_segments() -> None:
    m = mode([three_endpoints()])
    d = m.route(packet(EXT, 1000, NODE_IP, 3001), 0.0)
    assert d.verdict is Verdict.DNAT and d.masquerade
    entry = m.conntrack.entries()[0]
    reply = Packet(TCP, *entry.reply[1:], flags=SYN | ACK)
    back = m.route(reply, 0.1)
    assert back.established and back.verdict is Verdict.ACCEPT
    # A FIN that belongs to no connection cannot open one: ct state invalid, no NAT.
    fin = m.route(packet("10.0.0.2", 1200, "172.30.0.41", 80, flags=FIN), 0.2)
    assert fin.verdict is Verdict.ACCEPT and fin.endpoint is None
    assert len(m.conntrack.entries()) == 1


def test_node_to_local_nodeport_loops_back() -> None:
    m = mode([three_endpoints()])
    d = m.route(packet(NODE_IP, 1000, NODE_IP, 3001, local=True), 0.0)
    assert d.verdict is Verdict.DNAT and d.masquerade


def walk_untracked(eng: engine.Engine, p: Packet, now: float) -> Decision:
    """The literal answer for a packet without a conntrack entry: a TCP
    segment that cannot open a connection is ct state invalid; one that can
    is walked as new and its connection committed."""
    opens = p.proto != TCP or tcp_next_state(ORIGINAL, p.flags, NONE) < INVALID
    out, _ = eng.walk(p, now, CT_NEW if opens else CT_INVALID)
    if opens:
        eng.commit_new(p, out, now)
    return out.decision


@pytest.mark.parametrize(("seed", "cache"), [(1, 200_000), (2, 200_000), (3, 5)])
def test_compiled_plans_equal_the_literal_walk(seed: int, cache: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path against the literal walk, packet by packet: the same
    decision, the same cost, the same random draws, the same state (also
    when the plan cache keeps being emptied)."""
    monkeypatch.setattr(engine, "PLAN_CACHE_MAX", cache)
    compiled, literal = mode(rich_services(), seed=seed), mode(rich_services(), seed=seed)
    rnd = random.Random(seed)
    sources = ["10.0.0.2", "10.180.0.4", "10.180.0.1", EXT, EXTERNAL_CLIENT_BLOCKED, NODE_IP, "192.168.0.9", "1.2.3.4"]
    targets = [
        ("172.30.0.41", 80),
        ("172.30.0.41", 81),
        (NODE_IP, 3001),
        ("172.30.0.42", 80),
        ("1.2.3.4", 80),
        ("1.2.3.4", 53),
        (NODE_IP, 3003),
        ("172.30.0.43", 80),
        ("5.6.7.8", 80),
        ("192.168.99.50", 80),
        (NODE_IP, 3004),
        ("172.30.0.44", 80),
        (NODE_IP, 3005),
        ("172.30.0.45", 80),
        ("172.30.0.45", 9),
        ("172.30.0.99", 80),
        ("10.180.0.1", 80),
    ]
    eng = literal.engine
    for n in range(3000):
        src = rnd.choice(sources)
        dst, port = rnd.choice(targets)
        proto = rnd.choice([TCP, TCP, UDP, 132])
        p = packet(src, 1024 + rnd.randrange(40), dst, port, proto, local=src == NODE_IP)
        entries = eng.conntrack.entries()
        if entries and rnd.random() < 0.2:  # a reply, from the endpoint (or whoever answers)
            reply = rnd.choice(entries).reply
            p = Packet(*reply, flags=SYN | ACK if reply[0] == TCP else SYN)
        now = n * 0.05
        a = compiled.route(p, now)
        hit = eng.conntrack.lookup(p[:5], now)
        if hit is None:
            b = walk_untracked(eng, p, now)
        else:
            entry, direction = hit
            ctstate = engine.tracked_ctstate(entry, direction, eng.conntrack.update(entry, direction, p.flags, now))
            b = eng.walk(p, now, ctstate, entry, direction)[0].decision
        assert a == b, (n, p)
    # Every destination was compiled (none fell back to the literal walk),
    # except for later packets still `ct state new` (no reply yet): their
    # filter checks read the translated address, which a plan shared by every
    # connection to the service cannot know, so they are walked literally.
    plans = compiled.engine.plans
    literal_keys = [key for key, plan in plans.items() if plan is False]
    assert plans and len(plans) <= cache
    assert all(len(key) == 10 and key[0] == CT_NEW for key in literal_keys), literal_keys
    assert compiled.rng.getstate() == literal.rng.getstate()
    assert compiled.conntrack.dump(150.0) == literal.conntrack.dump(150.0)
    assert list_ruleset(compiled.table, 150.0) == list_ruleset(literal.table, 150.0)


def test_trace_changes_state_as_route_does() -> None:
    a, b = mode(rich_services(), seed=5), mode(rich_services(), seed=5)
    for n in range(200):
        p = packet(f"10.0.{n % 7}.9", 2000 + n % 13, "172.30.0.42", 80)
        assert a.trace(p, n * 0.5).decision == b.route(p, n * 0.5)
    assert a.rng.getstate() == b.rng.getstate()


def test_capture_round_trip() -> None:
    m = mode(rich_services(), seed=1)
    captured = NftablesMode(random.Random(1))
    captured.load_capture(list_ruleset(m.table), [parse_ip(NODE_IP), parse_ip(NODE_IP_ALT)], "node.nft")
    also = NftablesMode(random.Random(1))
    also.load_capture(dump_commands(m.table), [parse_ip(NODE_IP), parse_ip(NODE_IP_ALT)], "node.nft")
    for n in range(200):
        p = packet(EXT if n % 2 else "10.0.0.2", 3000 + n, "1.2.3.4" if n % 3 else NODE_IP, 80 if n % 3 else 3001)
        assert captured.route(p, n) == m.route(p, n) == also.route(p, n)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("table ip filter {\n}\n", "no `table ip kube-proxy`"),
        ("add table ip kube-proxy\nadd chain ip kube-proxy c\nadd rule ip kube-proxy c foo bar\n", "line 3"),
        ("add table ip kube-proxy\nadd chain ip kube-proxy c\nadd rule ip kube-proxy c jump nowhere\n", "'nowhere'"),
        ("add table ip kube-proxy\nadd chain ip kube-proxy c\nadd rule ip kube-proxy c ip daddr @nos drop\n", "'nos'"),
        ("table ip kube-proxy {\n\tchain c {\n\t\ttype filter hook sideways priority 0;\n\t}\n}\n", "line 3"),
    ],
)
def test_capture_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(RulesetError) as err:
        NftablesMode(random.Random(0)).load_capture(text, [], "node.nft")
    line = str(err.value)
    assert line.startswith("node.nft: ") and message in line and "\n" not in line


MIXED = """table ip kube-proxy {
\tset pairs {
\t\ttype ipv4_addr . ipv4_addr
\t\telements = { 172.30.0.1 . 10.0.0.2 }
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 172.30.0.1 jump svc
\t}

\tchain svc {
\t\tnumgen random mod 2 vmap { 0 : goto a, 1 : goto b }
\t}

\tchain a {
\t\tip daddr . ip saddr @pairs meta l4proto tcp dnat to 10.1.0.1:80
\t\tmeta l4proto tcp dnat to 10.1.0.2:80
\t}

\tchain b {
\t\tmeta l4proto tcp dnat to 10.1.0.3:80
\t}
}
"""


def test_what_cannot_be_compiled_is_walked_literally() -> None:
    """A rule keyed by the source inside a concatenation (which the plans do
    not model) met half-way, after a random draw: the packet finishes with
    the literal walk, the draws stay the literal walk's, and the destination
    is walked literally from then on."""
    lazy, literal = NftablesMode(random.Random(8)), NftablesMode(random.Random(8))
    for m in (lazy, literal):
        m.load_capture(MIXED, [parse_ip(NODE_IP)], "mixed.nft")
    seen = set()
    for n in range(200):
        p = packet("10.0.0.2" if n % 2 else "10.0.0.3", 1000 + n, "172.30.0.1", 80)
        a = lazy.route(p, n)
        out, _ = literal.engine.walk(p, n, CT_NEW)
        literal.engine.commit_new(p, out, n)
        assert a == out.decision
        seen.add(a.endpoint)
    assert lazy.rng.getstate() == literal.rng.getstate()
    assert seen == {(parse_ip("10.1.0.1"), 80), (parse_ip("10.1.0.2"), 80), (parse_ip("10.1.0.3"), 80)}
    assert lazy.engine.fast[(parse_ip("172.30.0.1"), 80, TCP)] is False


def test_prepared_plans_route_as_lazy_ones() -> None:
    from proxy_modes.nftables.engine import Pending

    prepared, lazy = mode(rich_services(), seed=4), mode(rich_services(), seed=4)
    dsts = [("172.30.0.41", 80), ("1.2.3.4", 80), ("172.30.0.42", 80), ("172.30.0.43", 80)]
    for dst, port in dsts:
        prepared.engine.prepare(packet("10.0.0.2", 1, dst, port), 0.0)

    def pending(node: object) -> int:
        if isinstance(node, Pending):
            return 1
        if isinstance(node, list):
            return sum(pending(child) for child in node[2:])
        return 0

    assert prepared.engine.fast and all(pending(plan) == 0 for plan in prepared.engine.fast.values())
    for n in range(400):
        dst, port = dsts[n % len(dsts)]
        p = packet(["10.0.0.2", EXT, "10.180.0.4", NODE_IP][n % 3], 2000 + n, dst, port)
        assert prepared.route(p, n * 0.1) == lazy.route(p, n * 0.1)
    assert prepared.rng.getstate() == lazy.rng.getstate()


WATCHED = """table ip kube-proxy {
\tset watched {
\t\ttype ipv4_addr
\t\tflags dynamic,timeout
\t\ttimeout 10s
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 172.30.0.2 update @watched { ip saddr }
\t\tip daddr 172.30.0.1 meta l4proto tcp dnat to 10.1.0.1:80
\t\tip daddr 172.30.0.2 meta l4proto tcp dnat to 10.1.0.2:80
\t}

\tchain filter-forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established ip saddr @watched drop
\t\tct state established ip saddr 10.0.0.9 drop
\t}
}
"""


def test_established_decisions_are_remembered_only_while_they_cannot_change() -> None:
    """A connection's later packets reuse its decision while nothing it
    depends on can change: not across a set's contents (here a dynamic set
    with a timeout) and not across a new table."""
    m = NftablesMode(random.Random(1))
    m.load_capture(WATCHED, [parse_ip(NODE_IP)], "watched.nft")

    def connect(src: str, sport: int, dst: str, now: float) -> Packet:
        syn = packet(src, sport, dst, 80)
        d = m.route(syn, now)
        assert d.verdict is Verdict.DNAT and d.endpoint is not None
        m.route(Packet(TCP, d.endpoint[0], d.endpoint[1], syn.src, syn.sport, flags=SYN | ACK), now)
        return syn._replace(flags=ACK)

    ack = connect("10.0.0.2", 1000, "172.30.0.1", 0.0)
    assert m.route(ack, 0.1).verdict is Verdict.DNAT
    connect("10.0.0.2", 1001, "172.30.0.2", 0.2)  # puts 10.0.0.2 in @watched for 10 s
    assert m.route(ack, 0.3).verdict is Verdict.DROP
    assert m.route(ack, 11.0).verdict is Verdict.DNAT  # the element timed out
    # The same ruleset without the set: the decision is remembered on the entry ...
    plain = WATCHED.replace("\t\tct state established ip saddr @watched drop\n", "")
    m.load_capture(plain, [parse_ip(NODE_IP)], "plain.nft")
    other = connect("10.0.0.9", 2000, "172.30.0.1", 12.0)
    assert m.route(other, 12.1).verdict is Verdict.DROP
    entry = m.conntrack.lookup(other[:5], 12.2)
    assert entry is not None and entry[0].memo_orig is not None
    assert m.route(other, 12.2).verdict is Verdict.DROP
    # ... and forgotten with a new table (as a sync installs it: conntrack kept).
    m.engine.reset(engine.load_table(plain.replace("10.0.0.9", "10.0.0.8"), "plain.nft"))
    assert m.route(other, 12.3).verdict is Verdict.DNAT


def test_conntrack_timeouts_are_kube_proxys() -> None:
    """setupConntrack (cmd/kube-proxy/app/server_linux.go) sets the same
    sysctls whatever the mode: 24 h established, 1 h close-wait."""
    m = mode([three_endpoints()])
    d = m.route(packet("10.0.0.2", 1000, "172.30.0.41", 80), 0.0)
    assert d.endpoint is not None
    m.route(Packet(TCP, *d.endpoint, parse_ip("10.0.0.2"), 1000, flags=SYN | ACK), 0.0)
    m.route(packet("10.0.0.2", 1000, "172.30.0.41", 80, flags=ACK), 1.0)
    entry = m.conntrack.lookup(packet("10.0.0.2", 1000, "172.30.0.41", 80)[:5], 1.0)
    assert entry is not None and entry[0].expires == 1.0 + 86400
    assert m.conntrack.timeouts.tcp[CLOSE_WAIT] == 3600


GUARDED = """table ip kube-proxy {
\tset blocked {
\t\ttype ipv4_addr
\t\telements = { 10.1.0.2 }
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 172.30.0.1 meta l4proto tcp dnat to 10.1.0.1:80
\t\tip daddr 172.30.0.2 meta l4proto tcp dnat to 10.1.0.2:80
\t\tip daddr 172.30.0.3 meta l4proto tcp dnat to 10.1.0.3:80
\t}

\tchain filter-forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip daddr @blocked drop
\t}
}
"""


def test_a_remembered_rest_is_replayed_only_where_its_facts_hold() -> None:
    """The rest of a plan's walk from a hook on is remembered with what it
    read about the destination: 10.1.0.3 passes the same checks as 10.1.0.1
    and is replayed; 10.1.0.2 is in @blocked and gets a walk (and a rest) of
    its own."""
    m, literal = NftablesMode(random.Random(3)), NftablesMode(random.Random(3))
    for each in (m, literal):
        each.load_capture(GUARDED, [parse_ip(NODE_IP)], "guarded.nft")
    got = {}
    for n, dst in enumerate(["172.30.0.1", "172.30.0.2", "172.30.0.3", "172.30.0.1"]):
        p = packet("10.0.0.2", 1000 + n, dst, 80)
        got[dst] = m.route(p, 0.0)
        out, _ = literal.engine.walk(p, 0.0, CT_NEW)
        assert got[dst] == out.decision, dst
    assert got["172.30.0.2"].verdict is Verdict.DROP
    assert got["172.30.0.1"].verdict is got["172.30.0.3"].verdict is Verdict.DNAT
    # From the forward hook on: 10.1.0.1's rest (replayed for 10.1.0.3) and
    # 10.1.0.2's; from postrouting on: one, which reads nothing. (From the
    # first hook on: none, as a walk that DNATs is not remembered.)
    variants = sorted(len(known) for known in m.engine.rests.values())
    assert variants == [1, 2], m.engine.rests


def test_tracked_packets_share_one_plan_per_binding_shape() -> None:
    """Later packets of connections to every service and from every client
    (a reply's destination is the client's address and port) use one plan
    per binding shape: none is built per destination."""
    m = mode(rich_services(), seed=6)
    for n in range(40):
        syn = packet(f"10.0.0.{2 + n % 7}", 3000 + n, ["172.30.0.41", "172.30.0.42", "172.30.0.43"][n % 3], 80)
        d = m.route(syn, 0.0)
        assert d.endpoint is not None
        assert m.route(Packet(TCP, *d.endpoint, syn.src, syn.sport, flags=SYN | ACK), 0.1).established
        assert m.route(syn._replace(flags=ACK), 0.2).verdict is Verdict.DNAT
    assert all(key[0] == CT_NEW for key in m.engine.plans), [k for k in m.engine.plans if k[0] != CT_NEW]
    assert len(m.engine.any_destination) <= 4


@pytest.mark.parametrize("seed", [11, 12])
def test_later_segments_route_as_the_literal_walk(seed: int) -> None:
    """Whole connections, both sides, against conntrack's full update and the
    literal walk: handshakes, then data, FIN, RST and retransmitted SYNs. The
    commonest later packet (an ACK-class segment of an established, assured
    connection) takes route()'s inlined conntrack update and remembered
    decision; the conntrack table must end up exactly as the full update
    leaves it."""
    compiled, literal = mode(rich_services(), seed=seed), mode(rich_services(), seed=seed)
    eng = literal.engine
    rnd = random.Random(seed)
    sources = ["10.0.0.2", "10.0.0.3", "10.180.0.4", EXT, NODE_IP]
    targets = [("172.30.0.41", 80), ("172.30.0.42", 80), ("172.30.0.43", 80), (NODE_IP, 3001), ("172.30.0.99", 80)]
    flows: list[Packet] = []
    now = 0.0
    for n in range(3000):
        now += rnd.choice([0.01, 0.5, 3.0])
        if flows and rnd.random() < 0.75:
            old = rnd.choice(flows)
            hit = eng.conntrack.lookup(old[:5], now)
            if rnd.random() < 0.5 or hit is None:
                p = old._replace(flags=rnd.choice([SYN, ACK, ACK, PSH | ACK, PSH | ACK, FIN | ACK, RST]))
            else:
                p = Packet(*hit[0].reply, flags=rnd.choice([SYN | ACK, ACK, PSH | ACK, PSH | ACK, FIN | ACK]))
        else:
            src, (dst, port) = rnd.choice(sources), rnd.choice(targets)
            p = packet(src, 1024 + n, dst, port, local=src == NODE_IP)
            flows.append(p)
        a = compiled.route(p, now)
        tracked = eng.conntrack.track(p[:5], p.flags, now)
        if tracked is None:
            b = walk_untracked(eng, p, now)
        elif not tracked[2]:
            b = eng.walk(p, now, CT_INVALID)[0].decision
        else:
            entry, direction, valid = tracked
            b = eng.walk(p, now, engine.tracked_ctstate(entry, direction, valid), entry, direction)[0].decision
        assert a == b, (n, p)
    assert compiled.rng.getstate() == literal.rng.getstate()
    assert compiled.conntrack.dump(now) == literal.conntrack.dump(now)
