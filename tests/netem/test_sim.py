"""The event simulator's own semantics, with a router whose decision is fixed.

A `FixedRouter` DNATs every new connection to one endpoint (as a kernel mode
would, with no conntrack of its own), so these tests pin down what the
simulator adds: hop-by-hop latency over netem links, TCP's handshake and
retransmission timers, dead pods, REJECT, UDP, and that no connection is
ever left unfinished. The proxy modes themselves are exercised in
tests/kubenetem/test_simulate.py.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from netem.cluster import load_cluster
from netem.link import Link
from netem.packet import ACK, SYN, TCP, UDP, Packet
from netem.sim import MS, NS, OK, REFUSED, TIMEOUT, Host, Sim, Target
from netem.topology import Topology
from proxy_modes.base import Decision, Verdict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VIP = (172 << 24) | (30 << 16) | 1  # 172.30.0.1, a service address nothing routes to


def ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


class FixedRouter:
    """Every new flow to VIP is DNATed to `endpoint`; everything else is accepted."""

    proxy = False
    desnat_replies = True
    cost = False

    def __init__(self, endpoint: tuple[int, int] | None, verdict: Verdict = Verdict.DNAT) -> None:
        self.endpoint = endpoint
        self.verdict = verdict
        self.seen: list[tuple[float, Packet]] = []

    def route(self, packet: Packet, now: float) -> Decision:
        self.seen.append((now, packet))
        if packet.dst == VIP:
            if self.verdict != Verdict.DNAT:
                return Decision(self.verdict)
            return Decision(Verdict.DNAT, self.endpoint, False, service="test")
        return Decision(Verdict.ACCEPT)

    def dial(self, packet: Packet, now: float) -> tuple[Any, list[tuple[tuple[int, int], str]], float]:
        raise AssertionError("not a proxy")

    def reply_flow(self, flow: Any, now: float) -> None:
        return None

    def cost_ns(self, decision: Any) -> int:
        return 0


@pytest.fixture(scope="module")
def topology_factory() -> Any:
    cluster = load_cluster([str(EXAMPLES)])
    return lambda: Topology.from_cluster(cluster)


def make_sim(
    topology_factory: Any,
    endpoint: str | None = "10.244.1.2",
    link: str | None = "delay 10ms",
    verdict: Verdict = Verdict.DNAT,
    proto: int = TCP,
    capture: bool = False,
) -> tuple[Sim, dict[str, FixedRouter], int]:
    routers: dict[str, FixedRouter] = {}
    ep = (ip(endpoint), 80) if endpoint else None

    def router_for(node: str) -> FixedRouter:
        return routers.setdefault(node, FixedRouter(ep, verdict))

    sim = Sim(topology_factory(), router_for, random.Random(7), link=link, capture=capture)
    target = sim.target_index(Target("test", proto, VIP, 80))
    return sim, routers, target


def one_client(sim: Sim, target: int, node: str = "worker-1", connections: int = 1, interval: int = NS) -> Host:
    host = sim.add_client_pod("client", node)
    sim.add_client(host, [target], connections, 0, interval)
    return host


@pytest.mark.parametrize(
    ("endpoint", "hops"),
    [("10.244.1.2", 2), ("10.244.2.2", 3)],  # on the client's node: pod veths; remote: + the node's eth0
)
def test_latency_is_hops_times_delay(topology_factory: Any, endpoint: str, hops: int) -> None:
    sim, _, target = make_sim(topology_factory, endpoint)
    one_client(sim, target, connections=3)
    sim.run()
    assert [r[2] for r in sim.records] == [OK, OK, OK]
    for start, end, _, _, ep, handshake, syn_retries, _, _ in sim.records:
        assert ep == (ip(endpoint), 80)
        assert handshake == 2 * hops * 10 * MS  # SYN there, SYN-ACK back
        assert end - start == 4 * hops * 10 * MS  # + the request and its response
        assert syn_retries == 0
    assert sim.sent == 3 * 8  # SYN, SYN-ACK, ACK, request, response, FIN, FIN, ACK


def test_the_node_translates_and_untranslates(topology_factory: Any) -> None:
    sim, routers, target = make_sim(topology_factory, "10.244.2.2", capture=True)
    client = one_client(sim, target)
    sim.run()
    assert sim.captured is not None
    # Each packet as its sender sent it and as the node translated it, with the time.
    seen = [(t, p.src, p.sport, p.dst, p.dport, p.flags) for t, p in sorted(sim.captured, key=lambda tp: tp[0])]
    c, sport = client.ip, seen[0][2]
    pod = ip("10.244.2.2")
    assert seen[:4] == [
        (0, c, sport, VIP, 80, SYN),  # sent by the client
        (10 * MS, c, sport, pod, 80, SYN),  # DNATed by worker-1 (no masquerade: a pod client)
        (30 * MS, pod, 80, c, sport, SYN | ACK),  # the pod answers (worker-1's eth0, its veth)
        (50 * MS, VIP, 80, c, sport, SYN | ACK),  # worker-1 undoes the DNAT (worker-2's eth0, its veth)
    ]
    assert len(seen) == 8 * 2  # every packet twice: as sent, as translated
    # worker-1 routes every packet of the connection (8: 5 from the client,
    # 3 replies); worker-2 only forwards, so it sees the first packet only.
    assert len(routers["worker-1"].seen) == 8
    assert [p.flags for _, p in routers["worker-2"].seen] == [SYN]


class DropFirst:
    """A link that loses its first `n` packets, then behaves as `link`."""

    def __init__(self, link: Link, n: int) -> None:
        self.link, self.n = link, n
        self.stats = link.stats
        self.steady = False  # the simulation asks send(), not arrival()

    def send(self, packet: Packet, now: int, ect: bool = False) -> list[tuple[int, Packet, int]]:
        if self.n:
            self.n -= 1
            return []
        return self.link.send(packet, now, ect)


def test_a_lost_syn_is_sent_again_after_one_second(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, capture=True)
    client = one_client(sim, target)
    assert client.up is not None
    client.up = DropFirst(client.up, 1)  # type: ignore[assignment]
    sim.run()
    (record,) = sim.records
    assert record[2] == OK
    assert record[6] == 1  # one SYN retransmission
    assert record[5] == NS + 40 * MS  # TCP_TIMEOUT_INIT, then the handshake over 2 hops
    assert sim.retransmissions == 1


@pytest.mark.parametrize("lost", [1, 2, 3])
def test_syn_retransmissions_back_off(topology_factory: Any, lost: int) -> None:
    sim, _, target = make_sim(topology_factory)
    client = one_client(sim, target)
    assert client.up is not None
    client.up = DropFirst(client.up, lost)  # type: ignore[assignment]
    sim.run()
    (record,) = sim.records
    # SYNs at 0, 1, 3, 7 s: the n-th retransmission waits 2^(n-1) s.
    assert record[5] == (2**lost - 1) * NS + 40 * MS
    assert record[6] == lost


def test_a_deleted_pod_times_out_after_the_syn_retries(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, capture=True)
    sim.kill(ip("10.244.1.2"), TIMEOUT, at=0)
    client = one_client(sim, target)
    sim.run()
    (record,) = sim.records
    assert record[2] == TIMEOUT
    assert record[1] - record[0] == 127 * NS  # 1 + 2 + 4 + ... + 64 s: tcp_syn_retries = 6
    assert record[6] == 6
    assert sim.captured is not None
    syns = sorted(t for t, p in sim.captured if p.src == client.ip and p.dst == VIP)
    assert syns == [s * NS for s in (0, 1, 3, 7, 15, 31, 63)]
    assert sim.drops["dead_pod"] == 7


def test_a_pod_whose_process_died_refuses(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory)
    sim.kill(ip("10.244.1.2"), REFUSED, at=0)
    one_client(sim, target)
    sim.run()
    (record,) = sim.records
    assert record[2] == REFUSED
    assert record[1] - record[0] == 40 * MS  # SYN there, RST back
    assert record[6] == 0


def test_a_pod_dies_between_connections(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory)
    sim.kill(ip("10.244.1.2"), TIMEOUT, at=round(2.5 * NS))
    one_client(sim, target, connections=5)
    sim.run()
    assert [r[2] for r in sim.records] == [OK, OK, OK, TIMEOUT, TIMEOUT]


def test_reject_is_connection_refused(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, verdict=Verdict.REJECT)
    one_client(sim, target)
    sim.run()
    (record,) = sim.records
    assert record[2] == REFUSED
    assert record[1] - record[0] == 20 * MS  # the node answers: ICMP port unreachable


def test_drop_is_a_timeout(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, verdict=Verdict.DROP)
    one_client(sim, target)
    sim.run()
    (record,) = sim.records
    assert record[2] == TIMEOUT
    assert record[1] - record[0] == 127 * NS


def test_udp_request_and_response(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, "10.244.2.2", proto=UDP)
    one_client(sim, target, connections=2)
    sim.run()
    assert [(r[2], r[1] - r[0]) for r in sim.records] == [(OK, 60 * MS), (OK, 60 * MS)]
    assert sim.sent == 4


def test_a_lost_udp_request_is_a_failed_request(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, proto=UDP)
    client = one_client(sim, target, connections=2)
    assert client.up is not None
    client.up = DropFirst(client.up, 1)  # type: ignore[assignment]
    sim.run()
    assert [(r[2], r[1] - r[0]) for r in sorted(sim.records)] == [(TIMEOUT, 5 * NS), (OK, 40 * MS)]


@pytest.mark.parametrize(
    "link",
    [
        "delay 5ms loss 10%",  # handled inline, timers armed on loss
        "delay 5ms 4ms loss 10%",  # jitter: every packet an event, every timer armed
        "delay 5ms loss 5% duplicate 20% corrupt 5%",
        "delay 2ms rate 10mbit loss 3%",
    ],
)
def test_every_connection_finishes_on_lossy_links(topology_factory: Any, link: str) -> None:
    sim, _, target = make_sim(topology_factory, "10.244.2.2", link=link)
    for i, node in enumerate(("worker-1", "worker-2") * 3):
        host = sim.add_client_pod(f"c{i}", node)
        sim.add_client(host, [target], 40, i * MS, 50 * MS)
    sim.run()
    assert len(sim.records) == 6 * 40  # none left hanging
    ok = [r for r in sim.records if r[2] == OK]
    assert len(ok) >= 0.95 * len(sim.records)  # a few may give up only with tiny probability
    assert sim.retransmissions > 0
    lost = sum(link.stats.lost for link in sim.links)
    assert lost > 0
    assert not sim.heap


def test_clients_keep_their_schedule(topology_factory: Any) -> None:
    sim, _, target = make_sim(topology_factory, link=None)
    one_client(sim, target, connections=4, interval=250 * MS)
    sim.run()
    assert [r[0] for r in sim.records] == [0, 250 * MS, 500 * MS, 750 * MS]
    assert all(r[1] == r[0] for r in sim.records)  # no links: no time passes


def test_ephemeral_ports_are_even_and_distinct(topology_factory: Any) -> None:
    sim, routers, target = make_sim(topology_factory, link=None)
    one_client(sim, target, connections=20, interval=MS)
    sim.run()
    ports = [p.sport for _, p in routers["worker-1"].seen if p.flags == SYN]
    assert len(set(ports)) == 20
    assert all(32768 <= p <= 60999 and p % 2 == 0 for p in ports)


def test_acks_follow_the_translation_both_ways(topology_factory: Any) -> None:
    sim, routers, target = make_sim(topology_factory, "10.244.2.2", link=None)
    one_client(sim, target)
    sim.run()
    seen = routers["worker-1"].seen
    # The mode sees replies as IPVS does (desnat_replies): from the endpoint to the client.
    replies = [p for _, p in seen if p.src == ip("10.244.2.2")]
    assert replies and all(p.dport != 80 and p.sport == 80 for p in replies)
    assert replies[0].flags & (SYN | ACK) == SYN | ACK


class CostlyRouter(FixedRouter):
    """Each decision costs the kernel 1 ms (a stand-in for a calibrated model)."""

    cost = True

    def cost_ns(self, decision: Any) -> int:
        return MS


@pytest.mark.parametrize(("endpoint", "extra"), [("10.244.1.2", 2), ("10.244.2.2", 3)])
def test_the_modeled_kernel_cost_delays_each_routed_packet(topology_factory: Any, endpoint: str, extra: int) -> None:
    routers: dict[str, CostlyRouter] = {}
    ep = (ip(endpoint), 80)
    sim = Sim(
        topology_factory(), lambda n: routers.setdefault(n, CostlyRouter(ep)), random.Random(7), link="delay 10ms"
    )
    target = sim.target_index(Target("test", TCP, VIP, 80))
    one_client(sim, target)
    sim.run()
    ((_, _, result, _, _, handshake, _, _, _),) = sim.records
    assert result == OK
    hops = 2 if endpoint.startswith("10.244.1.") else 3
    # The SYN on the client's node, the SYN-ACK there again, and (remote) the
    # SYN once more on the endpoint's node, which only forwards.
    assert handshake == 2 * hops * 10 * MS + extra * MS


def test_a_round_trip_longer_than_the_initial_rto_retransmits_the_syn(topology_factory: Any) -> None:
    # 2 hops of 300 ms each way: the SYN-ACK comes 1.2 s after the SYN, after
    # its 1 s timer fired. Linux sends the SYN again (spuriously) and connects
    # on the first SYN-ACK.
    sim, _, target = make_sim(topology_factory, link="delay 300ms")
    assert not sim.lazy
    one_client(sim, target)
    sim.run()
    ((_, _, result, _, _, handshake, syn_retries, _, _),) = sim.records
    assert (result, handshake, syn_retries) == (OK, 1200 * MS, 1)
