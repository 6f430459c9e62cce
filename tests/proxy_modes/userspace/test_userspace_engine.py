"""The userspace engine: LoadBalancerRR, the dial model, UDP associations,
the start-up ttl quirk, trace == route, and the index against the netfilter
engine's walk of the rendered rules."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from userspace_cluster import service, synced, view_of, write_cluster

from netem.addr import parse_ip
from netem.cluster import Cluster
from netem.packet import ACK, RST, SYN, TCP, UDP, Packet
from proxy_modes import registry
from proxy_modes.base import Verdict
from proxy_modes.userspace.engine import (
    DEFAULT_STICKY_SECONDS,
    DIAL_TIMEOUTS,
    REFUSED,
    Dial,
    LoadBalancerRR,
    UserspaceMode,
)
from proxy_modes.view import ServicePortName

SPN = ServicePortName("ns", "svc", "p", "TCP")
EPS = [(parse_ip(f"10.180.0.{i}"), 8080) for i in range(1, 6)]
CLIENT = parse_ip("10.0.0.5")


def pkt(
    dst: str, dport: int, src: str = "10.0.0.5", sport: int = 40000, proto: int = TCP, local: bool = False
) -> Packet:
    return Packet(proto, parse_ip(src), sport, parse_ip(dst), dport, local)


# --- LoadBalancerRR ------------------------------------------------------------


def test_round_robin_over_a_seeded_shuffle() -> None:
    lb = LoadBalancerRR(random.Random(7))
    lb.new_service(SPN, False)
    lb.update_endpoints(SPN, EPS)
    order = lb.services[SPN].endpoints
    assert sorted(order) == sorted(EPS) and order != EPS  # shuffled (seed 7 moves them)
    picks = [lb.next_endpoint(SPN, CLIENT, 0.0) for _ in range(10)]
    assert picks == order * 2
    again = LoadBalancerRR(random.Random(7))
    again.update_endpoints(SPN, EPS)
    assert again.services[SPN].endpoints == order  # the seed replays the shuffle


def test_same_endpoints_keep_order_and_index_a_change_reshuffles() -> None:
    lb = LoadBalancerRR(random.Random(3))
    lb.update_endpoints(SPN, EPS)
    b = lb.services[SPN]
    lb.next_endpoint(SPN, CLIENT, 0.0)
    order = list(b.endpoints)
    assert not lb.update_endpoints(SPN, list(reversed(EPS)))  # same set: slicesEquiv
    assert b.endpoints == order and b.index == 1
    assert lb.update_endpoints(SPN, EPS[:4])
    assert b.index == 0 and sorted(b.endpoints) == sorted(EPS[:4])


def test_removed_endpoint_drops_its_affinity_entries_and_empty_resets() -> None:
    lb = LoadBalancerRR(random.Random(1))
    lb.new_service(SPN, True, 60)
    lb.update_endpoints(SPN, EPS[:2])
    first = lb.next_endpoint(SPN, CLIENT, 0.0)
    other = parse_ip("10.0.0.6")
    second = lb.next_endpoint(SPN, other, 0.0)
    assert first != second
    lb.update_endpoints(SPN, [e for e in EPS[:3] if e != first])
    assert CLIENT not in lb.services[SPN].clients and other in lb.services[SPN].clients
    lb.update_endpoints(SPN, [])
    b = lb.services[SPN]
    assert (b.endpoints, b.index, b.clients) == ([], 0, {})
    assert lb.next_endpoint(SPN, CLIENT, 0.0) is None


def test_affinity_uses_whole_seconds_and_refreshes_on_use() -> None:
    lb = LoadBalancerRR(random.Random(1))
    lb.new_service(SPN, True, 10)
    lb.update_endpoints(SPN, EPS)
    first = lb.next_endpoint(SPN, CLIENT, 100.0)
    assert lb.next_endpoint(SPN, CLIENT, 109.9) == first  # int(9.9) = 9 < 10: hit, refreshed
    assert lb.next_endpoint(SPN, CLIENT, 119.8) == first  # 9.9 s after the refresh
    assert lb.next_endpoint(SPN, CLIENT, 129.8) != first  # int(10.0) = 10: expired, next one
    lb.cleanup_stale(SPN, 1000.0)
    assert lb.services[SPN].clients == {}


def test_affinity_reset_takes_and_remembers_the_next_endpoint() -> None:
    lb = LoadBalancerRR(random.Random(1))
    lb.new_service(SPN, True, 60)
    lb.update_endpoints(SPN, EPS)
    first = lb.next_endpoint(SPN, CLIENT, 0.0)
    second = lb.next_endpoint(SPN, CLIENT, 1.0, reset=True)
    assert second != first
    assert lb.next_endpoint(SPN, CLIENT, 2.0) == second


def test_endpoints_before_service_keep_the_default_ttl() -> None:
    """newServiceInternal: an existing balancer takes the type, not the ttl."""
    lb = LoadBalancerRR(random.Random(1))
    lb.update_endpoints(SPN, EPS)
    b = lb.new_service(SPN, True, 60)
    assert b.affinity and b.ttl == DEFAULT_STICKY_SECONDS
    fresh = LoadBalancerRR(random.Random(1)).new_service(SPN, True, 60)
    assert fresh.ttl == 60


# --- dialling ------------------------------------------------------------------


def test_dial_gives_four_timeouts_then_gives_up() -> None:
    lb = LoadBalancerRR(random.Random(1))
    lb.update_endpoints(SPN, EPS[:2])
    dial = Dial(lb.services[SPN], CLIENT)
    seen = []
    while (attempt := dial.next(0.0)) is not None:
        seen.append(attempt)
        dial.failed()
    assert [t for _, t in seen] == list(DIAL_TIMEOUTS) == [0.25, 0.5, 1.0, 2.0]
    assert [ep for ep, _ in seen] == lb.services[SPN].endpoints * 2  # round robin wraps
    assert dial.error == "failed to connect to an endpoint"
    assert Dial(None, CLIENT).next(0.0) is None
    empty = LoadBalancerRR(random.Random(1))
    empty.new_service(SPN, False)
    d = Dial(empty.services[SPN], CLIENT)
    assert d.next(0.0) is None and d.error == "missing endpoints"


def test_dead_endpoint_costs_its_timeout_and_the_next_one_serves(basic: Cluster) -> None:
    mode = synced(basic)
    web = mode.portals[ServicePortName("ns", "web", "p", "TCP")]
    first = web.balancer.endpoints[web.balancer.index]
    mode.set_dead(*first)
    d = mode.route(pkt("172.30.0.10", 80), 0.0)
    assert d.verdict is Verdict.DNAT and d.endpoint != first and d.endpoint is not None
    assert mode.last_latency == 0.25
    mode.set_dead(*d.endpoint, how=REFUSED)
    d2 = mode.route(pkt("172.30.0.10", 80, sport=40001), 1.0)
    assert d2.verdict is Verdict.DNAT and d2.endpoint not in (first, d.endpoint)
    assert mode.last_latency in (0.0, 0.5)  # refused costs nothing; a timeout would


def test_all_dead_closes_after_every_timeout(basic: Cluster) -> None:
    mode = synced(basic)
    for ep in mode.portals[ServicePortName("ns", "web", "p", "TCP")].balancer.endpoints:
        mode.set_dead(*ep)
    trace = mode.trace(pkt("172.30.0.10", 80), 0.0)
    assert trace.decision.verdict is Verdict.REJECT and trace.decision.endpoint is None
    assert mode.last_latency == sum(DIAL_TIMEOUTS) == 3.75
    texts = [s.text for s in trace.steps]
    assert sum("timed out" in t for t in texts) == 4
    assert any("failed to connect to an endpoint" in t for t in texts)


def test_dial_failure_moves_the_sticky_client(basic: Cluster) -> None:
    mode = synced(basic)
    first = mode.route(pkt("172.30.0.11", 80), 0.0).endpoint
    assert mode.route(pkt("172.30.0.11", 80, sport=40001), 1.0).endpoint == first
    assert first is not None
    mode.set_dead(*first)
    moved = mode.route(pkt("172.30.0.11", 80, sport=40002), 2.0).endpoint
    assert moved not in (None, first)
    mode.set_alive(*first)
    assert mode.route(pkt("172.30.0.11", 80, sport=40003), 3.0).endpoint == moved  # remembered


def test_no_endpoints_tcp_rejects_udp_drops(basic: Cluster, tmp_path: Path) -> None:
    mode = synced(basic)
    d = mode.route(pkt("172.30.0.13", 80), 0.0)
    assert d.verdict is Verdict.REJECT and d.service == ServicePortName("ns", "empty", "p", "TCP")
    cluster = write_cluster(tmp_path, service("u", "172.30.0.60", [], port=53, target=53, proto="UDP"))
    assert synced(cluster).route(pkt("172.30.0.60", 53, proto=UDP), 0.0).verdict is Verdict.DROP


# --- UDP -------------------------------------------------------------------------


def test_udp_association_lives_for_the_idle_timeout(basic: Cluster) -> None:
    mode = synced(basic)
    p = pkt("172.30.0.53", 53, proto=UDP)
    first = mode.route(p, 0.0).endpoint
    assert mode.route(p, 0.2).endpoint == first  # established conntrack, association alive
    assert mode.route(p, 0.4).endpoint == first  # refreshed at 0.2 (idle timeout 250 ms)
    later = mode.route(p, 1.0)
    assert later.established and later.endpoint != first  # association expired: next endpoint


# --- start-up ttl, sync, ports -------------------------------------------------


def test_startup_ignores_timeout_seconds_a_later_service_gets_it(basic: Cluster, tmp_path: Path) -> None:
    mode = synced(basic)
    sticky = mode.portals[ServicePortName("ns", "sticky", "p", "TCP")]
    assert sticky.balancer.affinity and sticky.balancer.ttl == DEFAULT_STICKY_SECONDS
    trace = mode.trace(pkt("172.30.0.11", 80), 0.0)
    assert trace.affinity is not None and "asks for 60 s" in trace.affinity
    extra = service(
        "late",
        "172.30.0.20",
        ["10.180.0.20"],
        extra="  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
    )
    cluster = write_cluster(tmp_path, extra)
    mode.sync(view_of(cluster))
    assert mode.portals[ServicePortName("ns", "late", "p", "TCP")].balancer.ttl == 60
    assert ServicePortName("ns", "web", "p", "TCP") not in mode.portals  # removed


def test_unchanged_service_keeps_its_proxy_port_a_changed_one_moves(basic: Cluster, tmp_path: Path) -> None:
    mode = synced(basic)
    ports = {n: p.proxy_port for n, p in mode.portals.items()}
    assert len(set(ports.values())) == len(ports) and all(32768 <= p <= 60999 for p in ports.values())
    mode.sync(view_of(basic))
    assert {n: p.proxy_port for n, p in mode.portals.items()} == ports
    moved = write_cluster(tmp_path, service("web", "172.30.0.99", ["10.180.0.1"]))
    mode.sync(view_of(moved))
    assert (
        mode.portals[ServicePortName("ns", "web", "p", "TCP")].proxy_port
        != ports[ServicePortName("ns", "web", "p", "TCP")]
    )


def test_port_range_bind_address_and_udp_timeout_from_config(tmp_path: Path) -> None:
    config = (
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: userspace\n"
        "bindAddress: 192.168.0.2\nportRange: 36000-36009\nudpIdleTimeout: 2s\n"
    )
    cluster = write_cluster(tmp_path, service("a", "172.30.0.1", ["10.180.0.1"]), config=config)
    mode = synced(cluster)
    portal = next(iter(mode.portals.values()))
    assert 36000 <= portal.proxy_port <= 36009 and mode.udp_idle_timeout == 2.0
    text = mode.dump()
    assert f"-j DNAT --to-destination 192.168.0.2:{portal.proxy_port}" in text
    assert "REDIRECT" not in text  # a specific listen address means DNAT everywhere
    assert registry.create(cluster.proxy_config.mode, random.Random(0)).name == "userspace"


# --- trace and route agree; the index agrees with the literal walk ---------------


def test_trace_changes_state_as_route_does(basic: Cluster) -> None:
    a, b = synced(basic, seed=5), synced(basic, seed=5)
    packets = [
        pkt(ip, port, sport=40000 + n) for n in range(6) for ip, port in (("172.30.0.10", 80), ("172.30.0.11", 80))
    ]
    assert [a.route(p, 1.0).endpoint for p in packets] == [b.trace(p, 1.0).decision.endpoint for p in packets]
    trace = b.trace(pkt("172.30.0.10", 80, sport=50000), 2.0)
    assert trace.to_json()["chosen"] is not None
    assert any("REDIRECT" in s.text for s in trace.steps)


def _walk_packets() -> list[Packet]:
    out = []
    for dst, dport in [
        ("172.30.0.10", 80),
        ("172.30.0.11", 80),
        ("172.30.0.12", 80),
        ("172.30.0.13", 80),
        ("172.30.0.10", 81),
        ("203.0.113.50", 80),
        ("192.168.0.2", 80),
        ("192.168.0.2", 30080),
        ("127.0.0.1", 30080),
        ("192.168.0.9", 30080),
        ("8.8.8.8", 443),
    ]:
        for local in (False, True):
            out.append(pkt(dst, dport, local=local))
    out.append(pkt("172.30.0.53", 53, proto=UDP))
    out.append(pkt("172.30.0.53", 53, proto=TCP))
    return out


@pytest.mark.parametrize(
    "packet", _walk_packets(), ids=lambda p: f"{p.dst}:{p.dport}/{p.proto}/{'out' if p.local else 'pre'}"
)
def test_index_equals_the_engine_walk(basic: Cluster, packet: Packet) -> None:
    """The mode's index against the shared netfilter engine walking the
    rendered rules rule by rule: same verdict, same proxy port, same rules."""
    mode = synced(basic)
    walked = mode.netfilter(literal=True).walk(packet, 0.0)
    decision = mode.route(packet, 0.0)
    assert decision.rules == walked.rules
    assert (decision.verdict is Verdict.ACCEPT) == (walked.verdict is Verdict.ACCEPT)
    entry = mode.conntrack.lookup(packet[:5], 0.0)
    if walked.verdict is Verdict.DNAT:
        assert entry is not None and entry[0].dnat == walked.endpoint  # the proxy port the kernel chose
        assert decision.service is not None
    else:  # conntrack tracks it all the same, untranslated
        assert walked.endpoint is None and (entry is None or entry[0].dnat is None)


def _node_port(name: str, ip: str, proto: str, node_port: int, extra: str = "") -> str:
    doc = service(name, ip, ["10.180.1.1"], proto=proto, extra="  type: NodePort\n" + extra)
    return doc.replace(f"protocol: {proto}}}]", f"protocol: {proto}, nodePort: {node_port}}}]", 1)


def _node_ports(tmp_path: Path) -> Cluster:
    """Four NodePorts (one with an external IP), so that KUBE-NODEPORT-NON-LOCAL
    has rules at different positions, and a ClusterIP service."""
    return write_cluster(
        tmp_path,
        service("web", "172.30.0.10", ["10.180.0.1", "10.180.0.2"]),
        _node_port("np", "172.30.0.12", "TCP", 30080, "  externalIPs: [203.0.113.50]\n"),
        *[_node_port(f"np{i}", f"172.30.1.{i}", proto, 30090 + i) for i, proto in enumerate(["TCP", "UDP", "TCP"])],
    )


def test_packet_sequences_count_the_rules_the_engine_counts(tmp_path: Path) -> None:
    """New connections, later packets both ways, packets conntrack calls
    INVALID: the mode's decisions count what the engine's route() counts on
    the same sequence (filter INPUT sees each packet, NEW until a reply)."""
    mode = synced(_node_ports(tmp_path))
    assert mode._non_local_rules == 4
    nf = mode.netfilter(literal=True)
    rng = random.Random(5)
    dests = [(p.dst, p.dport, p.proto) for p in _walk_packets()]
    dests += [(parse_ip("192.168.0.2"), 30090 + i, proto) for i, proto in enumerate([TCP, UDP, TCP])]
    flows: list[Packet] = []
    proxied = 0
    for n in range(600):
        if not flows or rng.random() < 0.5:
            dst, dport, proto = rng.choice(dests)
            src, local = rng.choice([("10.0.0.5", False), ("203.0.113.7", False), ("192.168.0.2", True)])
            flags = rng.choice([SYN, SYN, ACK, SYN | ACK, RST]) if proto == TCP else 0
            p = Packet(proto, parse_ip(src), 30000 + n, dst, dport, local, "", flags)
            if flags in (SYN, 0):
                flows.append(p)
        else:
            first = rng.choice(flows)
            entry = mode.conntrack.lookup(first[:5], 0.0)
            if entry is not None and rng.random() < 0.4:  # kube-proxy's socket answers the client
                _, rsrc, rsport, rdst, rdport = entry[0].reply
                p = Packet(first.proto, rsrc, rsport, rdst, rdport, True, "", ACK if first.proto == TCP else 0)
            else:
                p = first._replace(flags=ACK if first.proto == TCP else 0)
        got, want = mode.route(p, 1.0), nf.route(p, 1.0)
        assert got.rules == want.rules, f"{p}: mode {got} engine {want}"
        assert got.established == want.established
        if want.verdict is Verdict.DNAT and not want.established:
            proxied += 1
            assert mode.conntrack.lookup(p[:5], 1.0)[0].dnat == want.endpoint  # type: ignore[index]
    assert proxied > 50


def test_external_ip_local_and_node_port_paths(basic: Cluster) -> None:
    mode = synced(basic)
    np_name = ServicePortName("ns", "np", "p", "TCP")
    # From the node to a non-local external IP: no host rule matches it.
    assert mode.route(pkt("203.0.113.50", 80, local=True), 0.0).verdict is Verdict.ACCEPT
    # From outside to it: the container rule with `! --physdev-is-in`.
    assert mode.route(pkt("203.0.113.50", 80, sport=40001), 0.0).service == np_name
    # To the node's own address as an external IP, from the node: the dst-local host rule.
    assert mode.route(pkt("192.168.0.2", 80, sport=40002, local=True), 0.0).service == np_name
    # NodePort on any local address, not on someone else's.
    assert mode.route(pkt("192.168.0.2", 30080, sport=1), 0.0).service == np_name
    assert mode.route(pkt("127.0.0.1", 30080, sport=2, local=True), 0.0).service == np_name
    assert mode.route(pkt("192.168.0.9", 30080, sport=3), 0.0).verdict is Verdict.ACCEPT


def test_registered_and_shows_proxy_state(basic: Cluster) -> None:
    mode = registry.create("userspace", random.Random(0))
    assert isinstance(mode, UserspaceMode)
    mode.sync(view_of(basic))
    table = mode.dump_with(show="proxy")  # type: ignore[attr-defined]
    assert "ns/web:p" in table and "ClientIP 10800s" in table


def test_more_service_ports_than_proxy_ports_skips_the_rest(tmp_path: Path) -> None:
    config = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nportRange: 36000-36001\n"
    docs = [service(f"s{i}", f"172.30.0.{i + 1}", ["10.180.0.1"]) for i in range(3)]
    mode = synced(write_cluster(tmp_path, *docs, config=config))
    assert len(mode.portals) == 2 and len(mode.unallocated) == 1
    assert {p.proxy_port for p in mode.portals.values()} == {36000, 36001}
    skipped = next(iter(mode.unallocated))
    assert "<no proxy port left>" in mode.proxy_table() and str(skipped) not in mode.dump()


def test_bad_userspace_config_is_one_line_each(tmp_path: Path) -> None:
    from netem.errors import ValidationErrors

    config = (
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "portRange: 9-x\nbindAddress: nope\nudpIdleTimeout: soon\n"
    )
    with pytest.raises(ValidationErrors) as caught:
        write_cluster(tmp_path, config=config)
    lines = [e.line() for e in caught.value.errors]
    assert any("portRange: must be a port range" in line for line in lines)
    assert any("bindAddress: must be a valid IP address (got 'nope')" in line for line in lines)
    assert any("udpIdleTimeout: must be a duration" in line for line in lines)
