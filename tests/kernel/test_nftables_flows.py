"""The nftables mode in the real kernel, packet by packet, against the engine.

The namespace harness (netem/netns.py) builds a node with pods and clients
on veths; the node gets the table our renderer writes (`nft -f`), the pods
answer with who they are and the source address they saw. For every flow
the kernel's outcome (answered by which pod, masqueraded or not, refused,
timed out) must be one the engine predicts; the balancing distribution,
ClientIP affinity and established connections across a rules change must
agree too.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import pytest
from nft_helpers import Port, Svc, config, view

from kubenetem.stats import chi_square
from netem.addr import parse_ip
from netem.netns import Host, Topology
from netem.packet import ACK, RST, SYN, Packet, proto_number
from proxy_modes.base import Ruleset, Verdict
from proxy_modes.nftables.engine import NftablesMode, load_table

pytestmark = pytest.mark.kernel

NODE = "192.168.0.2"
PODS = {"pod-a": "10.180.0.1", "pod-b": "10.180.0.2", "pod-c": "10.180.0.3"}
CLIENT = "10.180.1.9"  # a pod on this node, not an endpoint
OUTSIDE = "203.0.113.10"  # inside the LoadBalancer's source range
BLOCKED = "203.0.113.200"  # outside it
LOCAL_NODE, REMOTE_NODE = "test-node", "remote"


def services() -> list[Svc]:
    def eps(
        *names: str, node: str = LOCAL_NODE, ports: dict[str, int] | None = None
    ) -> list[tuple[str, str, dict[str, int]]]:
        return [(PODS[n], node if n != "pod-c" else REMOTE_NODE, dict(ports or {"http": 8080})) for n in names]

    return [
        Svc("ns", "web", "172.30.0.41", [Port("http", 80, node_port=30080)], endpoints=eps("pod-a", "pod-b", "pod-c")),
        Svc(
            "ns",
            "sticky",
            "172.30.0.42",
            [Port("http", 80)],
            affinity_seconds=600,
            endpoints=eps("pod-a", "pod-b", "pod-c"),
        ),
        Svc(
            "ns",
            "lb",
            "172.30.0.43",
            [Port("http", 80, node_port=30081)],
            type="LoadBalancer",
            lb_ips=["1.2.3.4"],
            source_ranges=["203.0.113.0/25"],
            endpoints=eps("pod-a", "pod-b"),
        ),
        Svc(
            "ns",
            "local",
            "172.30.0.44",
            [Port("http", 80, node_port=30082)],
            etp_local=True,
            endpoints=eps("pod-a", "pod-c"),
        ),
        Svc("ns", "empty", "172.30.0.45", [Port("http", 80, node_port=30083)]),
        Svc("ns", "hairpin", "172.30.0.46", [Port("http", 80)], endpoints=eps("pod-a")),
        Svc("ns", "dns", "172.30.0.47", [Port("dns", 53, "UDP")], endpoints=eps("pod-a", "pod-b", ports={"dns": 5353})),
    ]


class Lab:
    """The topology, the node's rules, and the engine synced from the same view."""

    def __init__(self, topo: Topology, seed: int = 0) -> None:
        self.topo = topo
        self.node = topo.node([NODE])
        self.pods = {name: topo.leaf(name, [ip]) for name, ip in PODS.items()}
        self.client = topo.leaf("client", [CLIENT])
        self.outside = topo.leaf("outside", [OUTSIDE, BLOCKED], default_route=True)
        for pod in self.pods.values():
            pod.serve(8080)
            pod.serve(5353, "udp")
        self.services = services()
        self.mode = NftablesMode(random.Random(seed))
        self.cfg = config(node_port_addresses=[])  # nftables mode's default: the node's primary IP
        self.node.run(["nft", "-f", "-"], input=self.sync().text)

    def sync(self) -> Ruleset:
        v = view(self.services, self.cfg)
        v.node_ips = (parse_ip(NODE),)
        return self.mode.sync(v)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Topology("knft") as topo:
        yield Lab(topo)


def predict(lab: Lab, src: str, dst: str, port: int, proto: str = "tcp") -> tuple[str, set[str], bool]:
    """What the engine says a new connection does: (outcome, pods it may reach, masqueraded)."""
    p = Packet(proto_number(proto), parse_ip(src), 50000, parse_ip(dst), port, local=src == NODE)
    trace = lab.mode.trace(p, 0.0)
    d = trace.decision
    by_ip = {parse_ip(ip): name for name, ip in PODS.items()}
    if d.verdict is Verdict.REJECT:
        return "refused", set(), False
    if d.verdict is Verdict.DROP:
        return "timeout", set(), False
    if d.verdict is Verdict.ACCEPT:
        return "unrouted", set(), False
    return "ok", {by_ip[r.ip] for r in trace.endpoints}, d.masquerade


# Each flow: (client, destination, port, protocol). Outcomes come from the kernel and are
# checked against the engine's prediction for the same packet.
FLOWS = [
    ("client", "172.30.0.41", 80, "tcp"),  # ClusterIP: any of three pods, the pod's address kept
    ("outside", NODE, 30080, "tcp"),  # NodePort: masqueraded to the node
    ("client", NODE, 30080, "tcp"),  # a pod to a NodePort: masqueraded too
    ("client", "172.30.0.41", 81, "tcp"),  # ClusterIP, a port it does not serve: rejected
    ("client", "172.30.0.41", 80, "udp"),  # ClusterIP, TCP-only port, UDP: rejected
    ("client", "172.30.0.99", 80, "tcp"),  # unallocated ClusterIP: dropped
    ("client", "172.30.0.45", 80, "tcp"),  # no endpoints: rejected
    ("outside", NODE, 30083, "tcp"),  # NodePort without endpoints: rejected
    ("outside", "1.2.3.4", 80, "tcp"),  # LoadBalancer IP from an allowed source
    ("client", "1.2.3.4", 80, "tcp"),  # from a pod: not in loadBalancerSourceRanges, dropped
    ("outside", NODE, 30082, "tcp"),  # externalTrafficPolicy Local: the local pod only, source kept
    ("client", NODE, 30082, "tcp"),  # from a pod: short-circuited to every endpoint
    ("pod-a", "172.30.0.46", 80, "tcp"),  # hairpin: pod-a reaches itself, masqueraded
    ("client", "172.30.0.47", 53, "udp"),  # UDP ClusterIP
    ("outside", "172.30.0.41", 80, "tcp"),  # ClusterIP from outside the cluster: masqueraded
    ("node", "172.30.0.41", 80, "tcp"),  # the node itself (nat-output): masqueraded
    ("node", NODE, 30080, "tcp"),  # the node to its own NodePort
    ("node", "172.30.0.99", 80, "tcp"),  # the node to an unallocated ClusterIP: dropped in filter-output
]


def host(lab: Lab, name: str) -> Host:
    return {"client": lab.client, "outside": lab.outside, "node": lab.node, **lab.pods}[name]


def source(lab: Lab, name: str) -> str:
    return {"client": CLIENT, "outside": OUTSIDE, "node": NODE, **PODS}[name]


@pytest.mark.parametrize("flow", FLOWS, ids=[f"{c}->{d}:{p}/{t}" for c, d, p, t in FLOWS])
def test_flow_table_agrees_with_the_engine(lab: Lab, flow: tuple[str, str, int, str]) -> None:
    client, dst, port, proto = flow
    expected, pods, masq = predict(lab, source(lab, client), dst, port, proto)
    replies = host(lab, client).connect_many(dst, port, proto, timeout=0.5, count=6 if expected == "ok" else 1)
    for reply in replies:
        if expected == "ok":
            assert reply.status == "ok", reply
            assert reply.ident in pods, (reply.ident, pods)
            seen = NODE if masq else source(lab, client)
            assert reply.seen_ip == seen, reply
        else:
            assert reply.status == expected, reply


def test_blocked_source_and_outside_by_name(lab: Lab) -> None:
    """The source outside loadBalancerSourceRanges times out (drop), as predicted."""
    expected, _, _ = predict(lab, BLOCKED, "1.2.3.4", 80)
    assert expected == "timeout"
    assert lab.outside.connect("1.2.3.4", 80, src=BLOCKED, timeout=0.5).status == "timeout"
    assert lab.outside.connect("1.2.3.4", 80, src=OUTSIDE, timeout=0.5).status == "ok"


def uniform_p(counts: list[int]) -> float:
    """p-value of Pearson's chi-square against an even split (kubenetem.stats)."""
    return chi_square(counts, [sum(counts) / len(counts)] * len(counts))[1]


def test_distribution_is_the_engines(lab: Lab) -> None:
    """numgen random mod 3 in the kernel and in the engine: uniform over the three pods."""
    n = 1500
    replies = lab.client.connect_many("172.30.0.41", 80, count=n, timeout=1.0)
    assert all(r.status == "ok" for r in replies)
    kernel = Counter(r.ident for r in replies)
    assert set(kernel) == set(PODS)
    engine: Counter[str] = Counter()
    by_ip = {parse_ip(ip): name for name, ip in PODS.items()}
    for k in range(n):
        d = lab.mode.route(Packet(6, parse_ip(CLIENT), 20000 + k, parse_ip("172.30.0.41"), 80), 1.0 + k * 1e-3)
        assert d.endpoint is not None
        engine[by_ip[d.endpoint[0]]] += 1
    reach = lab.mode.trace(Packet(6, parse_ip(CLIENT), 60000, parse_ip("172.30.0.41"), 80), 5.0).endpoints
    assert sorted(float(r.probability) for r in reach) == pytest.approx([1 / 3] * 3)
    # The 0.1% level, for both.
    assert uniform_p(list(kernel.values())) > 0.001
    assert uniform_p(list(engine.values())) > 0.001


def test_affinity_agrees(lab: Lab) -> None:
    replies = lab.client.connect_many("172.30.0.42", 80, count=20, timeout=1.0)
    first = replies[0].ident
    assert all(r.status == "ok" and r.ident == first for r in replies)
    # The kernel's affinity set holds the client, in the set of the pod that answered.
    table = load_table(lab.node.run(["nft", "list", "ruleset"]), "kernel")
    holding = [name for name, s in table.sets.items() if name.startswith("affinity-") and parse_ip(CLIENT) in s.members]
    assert len(holding) == 1 and holding[0].endswith(f"__{PODS[first]}/8080")
    # The engine, given the same first choice, sticks to it the same way.
    src = parse_ip(CLIENT)
    first_engine = lab.mode.route(Packet(6, src, 30000, parse_ip("172.30.0.42"), 80), 0.0).endpoint
    for k in range(1, 20):
        assert lab.mode.route(Packet(6, src, 30000 + k, parse_ip("172.30.0.42"), 80), k * 0.01).endpoint == first_engine
    engine_sets = [n for n, s in lab.mode.table.sets.items() if n.startswith("affinity-") and src in s.members]
    assert len(engine_sets) == 1 and first_engine is not None
    assert engine_sets[0].endswith(f"__{'.'.join(str(b) for b in first_engine[0].to_bytes(4, 'big'))}/8080")


def test_established_connections_survive_a_rules_change(lab: Lab) -> None:
    """Open connections to every pod, remove one pod from the Service (a partial
    sync applied with nft -f): its open connection still reaches it, new ones
    never do, and the engine says the same."""
    handles: dict[str, int] = {}
    sport = 41000
    engine_pinned: dict[int, tuple[int, int] | None] = {}
    while set(handles) != set(PODS) and sport < 41100:
        handle, reply = lab.client.open("172.30.0.41", 80, sport=sport)
        assert reply.status == "ok"
        if reply.ident in handles:
            lab.client.close_connection(handle)
        else:
            handles[reply.ident] = handle
        sport += 1
    assert set(handles) == set(PODS)
    # The engine: connections from the same source ports, pinned by its own choices.
    src = parse_ip(CLIENT)
    for port in range(41000, sport):
        pinned = lab.mode.route(Packet(6, src, port, parse_ip("172.30.0.41"), 80), 1.0).endpoint
        assert pinned is not None
        lab.mode.route(Packet(6, *pinned, src, port, flags=SYN | ACK), 1.0)  # the pod answers
        engine_pinned[port] = pinned
    web = lab.services[0]
    web.endpoints = [e for e in web.endpoints if e[0] != PODS["pod-a"]]
    result = lab.sync()
    assert result.partial and "flush chain" in result.text
    lab.node.run(["nft", "-f", "-"], input=result.text)
    for ident, handle in handles.items():
        assert lab.client.send(handle).ident == ident
    news = lab.client.connect_many("172.30.0.41", 80, count=30, sport=42000, timeout=1.0)
    assert {r.ident for r in news} == {"pod-b", "pod-c"}
    gone = (parse_ip(PODS["pod-a"]), 8080)
    for port, endpoint in engine_pinned.items():
        d = lab.mode.route(Packet(6, src, port, parse_ip("172.30.0.41"), 80, flags=ACK), 2.0)
        assert d.established and d.endpoint == endpoint
    fresh = {lab.mode.route(Packet(6, src, 42000 + k, parse_ip("172.30.0.41"), 80), 3.0).endpoint for k in range(30)}
    assert gone not in fresh and len(fresh) == 2


def test_a_later_packet_before_any_reply_is_still_ct_state_new(lab: Lab) -> None:
    """A datagram whose first one was never answered is `ct state new` in the
    kernel (resolve_normal_ct: no reply seen), so the filter chains' `ct
    state new` checks see it again: after loadBalancerSourceRanges shuts the
    client out, its next datagram on the same conntrack entry is dropped by
    firewall-check, as the engine says. (Nothing listens on the target port:
    the pod answers with ICMP port unreachable, which is RELATED and is not
    a reply.)"""
    lb = Svc(
        "ns",
        "lbudp",
        "172.30.0.48",
        [Port("dns", 53, "UDP")],
        type="LoadBalancer",
        lb_ips=["1.2.3.5"],
        source_ranges=["203.0.113.0/25"],
        endpoints=[(PODS["pod-a"], LOCAL_NODE, {"dns": 9999})],
    )
    lab.services.append(lb)
    lab.node.run(["nft", "-f", "-"], input=lab.sync().text)
    datagram = Packet(proto_number("udp"), parse_ip(OUTSIDE), 43000, parse_ip("1.2.3.5"), 53)
    assert lab.outside.connect("1.2.3.5", 53, "udp", src=OUTSIDE, sport=43000, timeout=0.5).status == "refused"
    first = lab.mode.route(datagram, 1.0)
    assert first.verdict is Verdict.DNAT and first.endpoint == (parse_ip(PODS["pod-a"]), 9999)
    lb.source_ranges = ["203.0.113.128/25"]
    lab.node.run(["nft", "-f", "-"], input=lab.sync().text)
    assert lab.outside.connect("1.2.3.5", 53, "udp", src=OUTSIDE, sport=43000, timeout=0.5).status == "timeout"
    again = lab.mode.route(datagram, 2.0)
    assert again.established and again.verdict is Verdict.DROP


def test_a_syn_on_a_reset_connection_is_a_new_connection(lab: Lab) -> None:
    """The client resets its connection (our harness closes with RST) and
    connects again from the same source port within CLOSE's 10 s: the kernel
    kills the old entry and balances the SYN afresh (nf_conntrack_tcp_packet,
    SYN on a CLOSE entry whose last packet in that direction was a RST), so a
    pod removed meanwhile is not reached, and the engine agrees."""
    src, vip, sport = parse_ip(CLIENT), parse_ip("172.30.0.41"), 44000
    first = lab.client.connect("172.30.0.41", 80, sport=sport)
    assert first.status == "ok"
    pod = parse_ip(PODS[first.ident])
    # The engine, the same packets: handshake, then the client's RST.
    d = lab.mode.route(Packet(6, src, sport, vip, 80, flags=SYN), 1.0)
    assert d.endpoint is not None
    lab.mode.route(Packet(6, *d.endpoint, src, sport, flags=SYN | ACK), 1.0)
    lab.mode.route(Packet(6, src, sport, vip, 80, flags=ACK), 1.0)
    lab.mode.route(Packet(6, src, sport, vip, 80, flags=RST), 1.1)
    web = lab.services[0]
    gone = [e for e in web.endpoints if parse_ip(e[0]) in (pod, d.endpoint[0])]
    web.endpoints = [e for e in web.endpoints if e not in gone]
    lab.node.run(["nft", "-f", "-"], input=lab.sync().text)
    left = {name for name, ip in PODS.items() if ip in {e[0] for e in web.endpoints}}
    again = lab.client.connect("172.30.0.41", 80, sport=sport)
    assert again.status == "ok" and again.ident in left
    reopened = lab.mode.route(Packet(6, src, sport, vip, 80, flags=SYN), 2.0)
    assert not reopened.established and reopened.endpoint is not None
    assert reopened.endpoint[0] in {parse_ip(e[0]) for e in web.endpoints}
