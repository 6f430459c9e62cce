"""How virtual servers, real servers and templates live across syncs and
timers, as kube-proxy's IPVS proxier drives the kernel (ip_vs_ctl.c,
ip_vs_conn.c, ip_vs_core.c)."""

from __future__ import annotations

import random

from kubenetem.scenarios import synthetic_cluster
from netem.addr import parse_ip
from netem.packet import ACK, SYN, TCP, Packet
from proxy_modes.base import Verdict
from proxy_modes.ipvs.engine import IpvsMode
from proxy_modes.view import ServiceEntry, build_state, node_view

CLIENT = parse_ip("10.9.0.1")


def synced(affinity: bool, endpoints: int = 3) -> tuple[IpvsMode, object]:
    cluster = synthetic_cluster(1, endpoints, nodes=1, affinity=affinity, mode="ipvs")
    view = node_view(cluster, build_state(cluster), "node-1")
    mode = IpvsMode(random.Random(0))
    mode.sync(view)
    return mode, view


def test_a_service_edit_keeps_its_connections() -> None:
    """kube-proxy's UpdateVirtualServer (ip_vs_edit_service): switching
    ClientIP affinity on changes the virtual server in place; an open
    connection carries on to its server."""
    mode, _ = synced(affinity=False)
    svc = next(iter(mode.services.values()))
    syn = Packet(TCP, CLIENT, 40000, svc.addr, svc.port, flags=SYN)
    first = mode.route(syn, 0.0)
    _, sticky = synced(affinity=True)
    mode.sync(sticky)  # type: ignore[arg-type]
    assert mode.services[(TCP, svc.addr, svc.port)] is svc and svc.persistent
    later = mode.route(syn._replace(flags=ACK), 1.0)
    assert later.verdict is Verdict.DNAT and later.endpoint == first.endpoint and later.established


def test_a_rearmed_template_keeps_its_60_seconds() -> None:
    """A template that expired while controlling a connection is re-armed
    for 60 s (ip_vs_conn_expire) and keeps that timeout: a later hit
    restarts it with 60 s, not the service's timeout (ip_vs_conn_put)."""
    mode, _ = synced(affinity=True)
    svc = next(iter(mode.services.values()))
    conn = Packet(TCP, CLIENT, 40000, svc.addr, svc.port, flags=SYN)
    mode.route(conn, 0.0)
    for t in range(1, svc.timeout + 100, 300):  # the connection outlives the template's timeout
        mode.route(conn._replace(flags=ACK), float(t))
    mode.tick(float(svc.timeout))
    (template,) = mode.templates.values()
    assert template.timeout == 60
    hit = float(svc.timeout) + 10
    mode.route(Packet(TCP, CLIENT, 40001, svc.addr, svc.port, flags=SYN), hit)
    assert template.timeout == 60 and template.expires == hit + 60


def test_a_server_back_from_graceful_termination_is_added_again_at_the_head() -> None:
    """MoveRSOutofGracefulDeleteList deletes the quiesced server and
    AddRealServer adds it again: the kernel puts it at the head of the list
    (ip_vs_add_dest), which is where the schedulers meet it."""
    mode, view = synced(affinity=False)
    svc = next(iter(mode.services.values()))
    for sport in range(40000, 40000 + len(svc.dests)):  # a connection on every server (rr)
        mode.route(Packet(TCP, CLIENT, sport, svc.addr, svc.port, flags=SYN), 0.0)
    returning = svc.dests[-1]
    state = view.state  # type: ignore[attr-defined]
    ((name, entry),) = state.entries.items()
    ((spn, eps),) = entry.endpoints.items()
    kept = tuple(ep for ep in eps if (ep.ip, ep.port) != returning.key)
    mode.sync(view.with_state(state.with_entry(name, ServiceEntry(entry.ports, {spn: kept}))))  # type: ignore[attr-defined]
    assert returning.weight == 0 and svc.dests[0] is not returning  # quiesced in place
    mode.sync(view)  # type: ignore[arg-type]
    assert svc.dests[0] is returning and returning.weight == 1 and returning.available


def test_the_connection_listing_shows_time_left() -> None:
    """`ipvsadm -Lnc` prints (timer expiry - now): an established connection
    last seen at t=1000 s has its 15:00 left, whatever the absolute time."""
    mode = IpvsMode(random.Random(0))
    mode.load_capture("-A -t 172.30.0.1:80 -s rr\n-a -t 172.30.0.1:80 -r 10.180.0.1:8080 -m -w 1\n", [], "save")
    vip = parse_ip("172.30.0.1")
    mode.route(Packet(TCP, CLIENT, 1000, vip, 80, flags=SYN), 1000.0)
    mode.route(Packet(TCP, CLIENT, 1000, vip, 80, flags=ACK), 1000.0)
    (line,) = [line for line in mode.dump_with(fmt="connections").splitlines() if line.startswith("TCP")]
    assert line.split()[1:3] == ["15:00", "ESTABLISHED"]
