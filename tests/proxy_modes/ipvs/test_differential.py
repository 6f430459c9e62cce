"""The IPVS mode's cached walks against a literal walk of every packet.

The mode walks kube-proxy's iptables rules around IPVS with the netfilter
engine and caches each walk per (service or real server, walk key). A
second mode built with `literal=True` walks every packet rule by rule
(Netfilter(literal=True), no cache) and a third traces every packet; on
random packet sequences over a cluster with every kind of Service (the
iptables kernel lab's), with re-syncs that quiesce and remove servers, all
three must give equal decisions: verdict, endpoint, masquerade, rules
evaluated, lookups, service, established.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from kn_iptables_lab import SERVICES, load_view, manifest

from netem.addr import parse_ip
from netem.packet import ACK, FIN, RST, SYN, TCP, UDP, Packet
from proxy_modes.base import Decision, Verdict
from proxy_modes.ipvs.engine import IpvsMode
from proxy_modes.view import NodeView

NODE = parse_ip("192.168.0.2")
SOURCES = [
    ("10.0.0.5", False),  # a pod elsewhere in the cluster CIDR
    ("10.180.0.1", False),  # a pod that is an endpoint on this node (hairpin)
    ("10.180.0.18", False),
    ("203.0.113.10", False),  # outside, inside the LB source range
    ("203.0.113.200", False),  # outside, outside it
    ("5.6.7.8", False),  # an LB address as a source
    ("192.168.0.2", True),  # the node itself
    ("127.0.0.1", True),
]


def _targets(view: NodeView) -> list[tuple[int, int, int]]:
    out = []
    for info in view.service_ports():
        addrs = [info.cluster_ip, *info.external_ips, *info.lb_vips]
        out += [(info.protocol, a, info.port) for a in addrs]
        out.append((info.protocol, info.cluster_ip, info.port + 1))  # a port the VIP does not serve
        if info.node_port:
            out.append((info.protocol, NODE, info.node_port))
    out.append((TCP, parse_ip("8.8.8.8"), 443))  # not a service: forwarded
    return out


def _fewer_endpoints() -> dict[str, Any]:
    """svc-a loses an endpoint (quiesced while it has connections), svc-dist two."""
    services = dict(SERVICES)
    spec, eps = services["svc-a"]
    services["svc-a"] = (spec, eps[:-1])
    spec, eps = services["svc-dist"]
    services["svc-dist"] = (spec, eps[2:])
    return services


@pytest.mark.parametrize(
    "proxy",
    [{}, {"masqueradeAll": True}, {"ipvs": {"scheduler": "sh"}}],
    ids=["default", "masqueradeAll", "sh"],
)
def test_cached_walks_equal_a_literal_walk_of_every_packet(tmp_path: Path, proxy: dict[str, Any]) -> None:
    view = load_view(tmp_path, manifest(**proxy))
    (tmp_path / "fewer").mkdir()
    fewer = load_view(tmp_path / "fewer", manifest(_fewer_endpoints(), **proxy))
    modes = [IpvsMode(random.Random(3)), IpvsMode(random.Random(3), literal=True), IpvsMode(random.Random(3))]
    for m in modes:
        m.track_replies = True
        m.sync(view)
    fast, literal, traced = modes
    assert fast.hooks is not None and fast.hooks.cacheable and literal.hooks is not None
    assert not literal.hooks.cacheable
    rng = random.Random(11)
    targets = _targets(view)
    live: list[tuple[Packet, tuple[int, int]]] = []
    seen: list[Decision] = []
    now = 0.0

    def send(p: Packet) -> Decision:
        a, b = fast.route(p, now), literal.route(p, now)
        c = traced.trace(p, now).decision
        where = f"{p} at {now}"
        assert a == b, f"cached {a} != literal {b} for {where}"
        assert a == c, f"route {a} != trace {c} for {where}"
        seen.append(a)
        return a

    for step in range(2500):
        if step == 1200:
            for m in modes:
                m.sync(fewer)
        if step % 100 == 99:
            now += rng.choice([0.5, 3.0, 61.0])
            for m in modes:
                m.tick(now)
        roll = rng.random()
        if roll < 0.4 or not live:
            src, local = rng.choice(SOURCES)
            proto, dst, dport = rng.choice(targets)
            flags = rng.choice([SYN, SYN, SYN, ACK, SYN | ACK, RST]) if proto == TCP else 0
            p = Packet(proto, parse_ip(src), 20000 + rng.randrange(400), dst, dport, local, "", flags)
            d = send(p)
            if d.verdict is Verdict.DNAT and d.endpoint is not None and not d.established:
                live.append((p, d.endpoint))
            continue
        p, ep = rng.choice(live)
        if roll < 0.65:
            send(p._replace(flags=ACK if p.proto == TCP else 0))
        elif roll < 0.85:  # the server answers (IPVS sees it with the client as destination)
            send(Packet(p.proto, ep[0], ep[1], p.src, p.sport, False, "", SYN | ACK if p.proto == TCP else 0))
        elif p.proto == TCP:
            send(p._replace(flags=rng.choice([FIN | ACK, RST, SYN])))  # close, reset, or reuse the tuple

    kinds = {(d.verdict, d.masquerade, d.established) for d in seen}
    assert (Verdict.DNAT, True, False) in kinds and (Verdict.DNAT, False, False) in kinds
    assert (Verdict.DNAT, False, True) in kinds or (Verdict.DNAT, True, True) in kinds
    assert {Verdict.REJECT, Verdict.ACCEPT} <= {d.verdict for d in seen}
    assert min(d.rules for d in seen if d.verdict is Verdict.DNAT) > 0
    assert UDP in {p.proto for p, _ in live}


def test_masquerade_comes_from_the_rules(tmp_path: Path) -> None:
    """What kube-proxy's IPVS rules decide, through the engine: a pod in the
    cluster CIDR keeps its address to a ClusterIP, an outside client and a
    hairpin pod are masqueraded, externalTrafficPolicy Local keeps the
    client's address on a NodePort, the node's own loopback is never marked."""
    mode = IpvsMode(random.Random(1))
    mode.sync(load_view(tmp_path, manifest()))

    def route(src: str, dst: str, port: int, local: bool = False, sport: int = 30000) -> Decision:
        return mode.route(Packet(TCP, parse_ip(src), sport, parse_ip(dst), port, local, "", SYN), 0.0)

    assert not route("10.0.0.5", "172.30.0.10", 80).masquerade
    assert route("203.0.113.200", "172.30.0.10", 80).masquerade
    hairpin = route("10.180.0.18", "172.30.0.21", 80)
    assert hairpin.endpoint == (parse_ip("10.180.0.18"), 8080) and hairpin.masquerade  # KUBE-LOOP-BACK
    assert route("203.0.113.200", "192.168.0.2", 30080).masquerade  # NodePort, policy Cluster
    local_np = route("203.0.113.200", "192.168.0.2", 30082, sport=30001)
    assert local_np.verdict is Verdict.DNAT and not local_np.masquerade  # NodePort, policy Local
    assert not route("127.0.0.1", "172.30.0.10", 80, local=True).masquerade  # -s 127.0.0.0/8 -j RETURN
    assert route("192.168.0.2", "172.30.0.10", 80, local=True).masquerade  # the node is outside the cluster CIDR
    assert route("10.0.0.5", "172.30.0.10", 80, sport=30004).rules > 10
    # The LB source range: a client outside it is dropped by KUBE-SOURCE-RANGES-FIREWALL before IPVS.
    assert route("203.0.113.200", "5.6.7.8", 80, sport=30002).verdict is Verdict.DROP
    assert route("203.0.113.10", "5.6.7.8", 80, sport=30003).verdict is Verdict.DNAT
    # A ClusterIP's port it does not serve: KUBE-IPVS-FILTER rejects the new connection.
    assert route("10.0.0.5", "172.30.0.10", 81).verdict is Verdict.REJECT


def test_prepare_builds_ahead_without_changing_anything(tmp_path: Path) -> None:
    """prepare() (the benchmarks' warm-up) fills every real server's plan for
    the client's key; a mode that prepares before each packet decides, and
    schedules, exactly as one that does not."""
    view = load_view(tmp_path, manifest())
    plain, prepared = IpvsMode(random.Random(5)), IpvsMode(random.Random(5))
    for m in (plain, prepared):
        m.sync(view)
    rng = random.Random(9)
    targets = _targets(view)
    for n in range(400):
        src, local = rng.choice(SOURCES)
        proto, dst, dport = rng.choice(targets)
        p = Packet(proto, parse_ip(src), 30000 + n, dst, dport, local, "", SYN if proto == TCP else 0)
        prepared.prepare(p, 1.0)
        assert prepared.route(p, 1.0) == plain.route(p, 1.0), p
    svc = prepared.services[(TCP, parse_ip("172.30.0.22"), 80)]  # svc-dist, four servers
    key = prepared._key(Packet(TCP, parse_ip("10.0.0.5"), 1, svc.addr, 80, False, "", SYN))
    prepared.prepare(Packet(TCP, parse_ip("10.0.0.5"), 1, svc.addr, 80, False, "", SYN), 1.0)
    assert len(svc.dests) == 4 and all(key in d.decisions for d in svc.dests)
