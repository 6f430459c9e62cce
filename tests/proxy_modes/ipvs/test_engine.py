"""The IPVS data path: connections, TCP states, persistence, graceful termination."""

from __future__ import annotations

import random

import pytest

from netem.addr import parse_ip
from netem.errors import RulesetError
from netem.packet import ACK, FIN, RST, SYN, TCP, UDP, Packet
from proxy_modes.base import Verdict
from proxy_modes.ipvs.engine import ES, SR, TW, IpvsMode

VIP = parse_ip("172.30.0.1")
CLIENT = parse_ip("10.0.0.7")
EP = [parse_ip(f"10.180.0.{i}") for i in (1, 2, 3)]

SAVE = """\
-A -t 172.30.0.1:80 -s rr
-a -t 172.30.0.1:80 -r 10.180.0.1:8080 -m -w 1
-a -t 172.30.0.1:80 -r 10.180.0.2:8080 -m -w 1
-a -t 172.30.0.1:80 -r 10.180.0.3:8080 -m -w 1
-A -t 172.30.0.1:443 -s rr -p 10
-a -t 172.30.0.1:443 -r 10.180.0.1:8443 -m -w 1
-a -t 172.30.0.1:443 -r 10.180.0.2:8443 -m -w 1
-A -u 172.30.0.10:53 -s wrr
-a -u 172.30.0.10:53 -r 10.180.0.1:53 -m -w 3
-a -u 172.30.0.10:53 -r 10.180.0.2:53 -m -w 1
-A -t 172.30.0.2:80 -s rr
"""


@pytest.fixture
def mode() -> IpvsMode:
    m = IpvsMode(random.Random(0))
    m.load_capture(SAVE, [], "capture.txt")
    return m


def syn(sport: int, dport: int = 80, dst: int = VIP, flags: int = SYN) -> Packet:
    return Packet(TCP, CLIENT, sport, dst, dport, flags=flags)


def test_restored_servers_are_listed_newest_first_and_rr_follows_that_order(mode: IpvsMode) -> None:
    svc = mode.services[(TCP, VIP, 80)]
    assert [d.text for d in svc.dests] == ["10.180.0.3:8080", "10.180.0.2:8080", "10.180.0.1:8080"]
    got = [mode.route(syn(1000 + i), 0.0).endpoint_text() for i in range(4)]
    assert got == ["10.180.0.3:8080", "10.180.0.2:8080", "10.180.0.1:8080", "10.180.0.3:8080"]


def test_new_connection_is_inactive_until_established(mode: IpvsMode) -> None:
    d = mode.route(syn(1000), 0.0)
    assert d.verdict is Verdict.DNAT and not d.established
    dest = mode.services[(TCP, VIP, 80)].dest_index[(EP[2], 8080)]
    cp = mode.conns[syn(1000)[:5]]
    assert (dest.active, dest.inactive, cp.state) == (0, 1, SR)
    again = mode.route(syn(1000, flags=ACK), 0.5)
    assert again.established and again.endpoint == d.endpoint
    assert (dest.active, dest.inactive, cp.state) == (1, 0, ES)
    mode.route(syn(1000, flags=FIN | ACK), 1.0)  # ES -> CLOSE_WAIT: inactive again
    assert (dest.active, dest.inactive) == (0, 1)


def test_state_timeouts_expire_the_connection_exactly(mode: IpvsMode) -> None:
    mode.route(syn(1000), 0.0)  # SYN_RECV: 60 s
    dest = mode.services[(TCP, VIP, 80)].dest_index[(EP[2], 8080)]
    mode.tick(59.9)
    assert dest.inactive == 1
    mode.tick(60.0)
    assert dest.inactive == 0 and syn(1000)[:5] not in mode.conns
    # an established connection lives 900 s after its last packet
    mode.route(syn(2000), 100.0)
    mode.route(syn(2000, flags=ACK), 101.0)
    mode.route(syn(2000, flags=ACK), 500.0)
    mode.tick(1399.0)
    assert syn(2000)[:5] in mode.conns
    mode.tick(1400.0)
    assert syn(2000)[:5] not in mode.conns


def test_rst_in_syn_recv_keeps_the_state(mode: IpvsMode) -> None:
    # tcp_states INPUT rst row, SYN_RECV column: stays SYN_RECV (60 s)
    mode.route(syn(1000), 0.0)
    mode.route(syn(1000, flags=RST), 1.0)
    assert mode.conns[syn(1000)[:5]].state == SR
    mode.tick(60.9)
    assert syn(1000)[:5] in mode.conns


def test_rst_moves_to_close_with_ten_seconds(mode: IpvsMode) -> None:
    mode.route(syn(1000), 0.0)
    mode.route(syn(1000, flags=ACK), 0.1)
    mode.route(syn(1000, flags=RST), 0.2)
    mode.tick(10.1)
    assert syn(1000)[:5] in mode.conns
    mode.tick(10.2)
    assert syn(1000)[:5] not in mode.conns


def test_non_syn_without_connection_is_answered_by_the_node_stack(mode: IpvsMode) -> None:
    # tcp_conn_schedule: not scheduled; the VIP is local, no socket: the stack
    # answers with a RST, which the protocol reports as REJECT (no endpoint)...
    d = mode.route(syn(1000, flags=ACK), 0.0)
    assert d.verdict is Verdict.REJECT and d.endpoint is None and not mode.conns
    # ... and a RST that finds nothing is not answered at all.
    assert mode.route(syn(1001, flags=RST), 0.0).verdict is Verdict.DROP
    assert mode.route(syn(1002, flags=SYN | RST), 0.0).verdict is Verdict.DROP and not mode.conns


def test_syn_ack_is_scheduled_like_a_syn(mode: IpvsMode) -> None:
    # "No !th->ack check to allow scheduling on SYN+ACK for Active FTP"
    d = mode.route(syn(1000, flags=SYN | ACK), 0.0)
    assert d.verdict is Verdict.DNAT and syn(1000)[:5] in mode.conns


def test_no_destination_is_icmp_port_unreachable(mode: IpvsMode) -> None:
    d = mode.route(syn(1000, dst=parse_ip("172.30.0.2")), 0.0)
    assert d.verdict is Verdict.REJECT


def test_syn_on_time_wait_connection_is_scheduled_afresh(mode: IpvsMode) -> None:
    first = mode.route(syn(1000), 0.0).endpoint
    cp = mode.conns[syn(1000)[:5]]
    cp.state = TW
    second = mode.route(syn(1000), 1.0).endpoint
    assert second != first


def _quiesce(mode: IpvsMode, endpoint: tuple[int, int] | None, port: int = 80) -> None:
    svc = mode.services[(TCP, VIP, port)]
    svc.edit_dest(svc.dest_index[endpoint], 0)  # type: ignore[index]  # kube-proxy's graceful termination


def test_syn_on_a_live_connection_to_a_quiesced_server_is_dropped_then_rescheduled(mode: IpvsMode) -> None:
    # The client reuses the tuple of a connection that never closed: conntrack
    # ignores the SYN and keeps its confirmed entry (ip_vs_conn_uses_old_conntrack),
    # so ip_vs_in_hook expires the IPVS connection and drops this SYN.
    first = mode.route(syn(1000), 0.0).endpoint
    mode.route(syn(1000, flags=ACK), 0.1)  # ESTABLISHED
    _quiesce(mode, first)
    dropped = mode.route(syn(1000), 5.0)
    assert dropped.verdict is Verdict.DROP and dropped.endpoint is None
    assert syn(1000)[:5] not in mode.conns
    # The retransmitted SYN (a second later) finds nothing and is scheduled afresh.
    again = mode.route(syn(1000), 6.0)
    assert again.verdict is Verdict.DNAT and not again.established and again.endpoint != first


def test_retransmitted_syn_of_an_opening_connection_to_a_quiesced_server_is_dropped(mode: IpvsMode) -> None:
    first = mode.route(syn(1000), 0.0).endpoint  # SYN_RECV: conntrack's entry is confirmed
    _quiesce(mode, first)
    assert mode.route(syn(1000), 1.0).verdict is Verdict.DROP
    assert mode.route(syn(1000), 3.0).endpoint not in (None, first)


def test_syn_on_a_closed_connection_to_a_quiesced_server_is_rescheduled_at_once(mode: IpvsMode) -> None:
    # After a FIN exchange conntrack is in TIME_WAIT and reopens the tuple for
    # the new SYN (unconfirmed): no old entry, so IPVS reschedules at once.
    mode.track_replies = True  # IPVS sees the server's segments
    first = mode.route(syn(1000), 0.0).endpoint
    for flags in (ACK, FIN | ACK, ACK):
        mode.route(syn(1000, flags=flags), 0.1)
    mode.route(Packet(TCP, first[0], first[1], CLIENT, 1000, flags=FIN | ACK), 0.2)  # type: ignore[index]
    assert mode.conns[syn(1000)[:5]].state == TW
    _quiesce(mode, first)
    again = mode.route(syn(1000), 1.0)
    assert again.verdict is Verdict.DNAT and again.endpoint != first


def test_syn_after_a_client_reset_is_rescheduled_after_a_server_reset_dropped(mode: IpvsMode) -> None:
    # CLOSE after the client's RST: conntrack reopens; after the server's RST it does not.
    mode.track_replies = True
    a = mode.route(syn(1000), 0.0).endpoint
    mode.route(syn(1000, flags=ACK), 0.1)
    mode.route(syn(1000, flags=RST), 0.2)
    b = mode.route(syn(2000), 0.0).endpoint
    mode.route(syn(2000, flags=ACK), 0.1)
    mode.route(Packet(TCP, b[0], b[1], CLIENT, 2000, flags=RST), 0.2)  # type: ignore[index]
    _quiesce(mode, a)
    if b != a:
        _quiesce(mode, b)
    assert mode.route(syn(1000), 1.0).verdict is Verdict.DNAT
    assert mode.route(syn(2000), 1.0).verdict is Verdict.DROP


def test_syn_on_time_wait_under_a_template_follows_the_old_connection(mode: IpvsMode) -> None:
    # is_new_conn_expected(): a connection a persistence template controls is
    # not rescheduled on port reuse (its server is still in service).
    first = mode.route(syn(1000, 443), 0.0).endpoint
    mode.conns[syn(1000, 443)[:5]].state = TW
    again = mode.route(syn(1000, 443), 1.0)
    assert again.established and again.endpoint == first


def test_udp_connections_stay_inactive_for_300_seconds(mode: IpvsMode) -> None:
    pkt = Packet(UDP, CLIENT, 5353, parse_ip("172.30.0.10"), 53, flags=0)
    d = mode.route(pkt, 0.0)
    dest = mode.services[(UDP, parse_ip("172.30.0.10"), 53)].dest_index[d.endpoint]  # type: ignore[index]
    assert (dest.active, dest.inactive) == (0, 1)
    mode.route(pkt, 100.0)
    mode.tick(399.0)
    assert dest.inactive == 1
    mode.tick(400.0)
    assert dest.inactive == 0


def test_persistence_template_is_restarted_by_each_new_connection(mode: IpvsMode) -> None:
    first = mode.route(syn(1000, 443), 0.0).endpoint
    for t, port in ((5.0, 1001), (14.0, 1002), (23.0, 1003)):
        assert mode.route(syn(port, 443), t).endpoint == first
    key = (TCP, CLIENT, 0, VIP, 443)
    assert mode.templates[key].expires == 33.0
    dest = mode.services[(TCP, VIP, 443)].dest_index[first]  # type: ignore[index]
    assert dest.persist == 1


def test_template_controlling_connections_is_rearmed_for_60_seconds(mode: IpvsMode) -> None:
    mode.route(syn(1000, 443), 0.0)
    mode.route(syn(1000, 443, flags=ACK), 0.1)  # established: 900 s
    key = (TCP, CLIENT, 0, VIP, 443)
    ct = mode.templates[key]
    mode.tick(10.0)
    assert key in mode.templates and ct.expires == 70.0
    mode.route(syn(1000, 443, flags=RST), 20.0)  # CLOSE: the connection goes at 30 s
    mode.tick(30.0)
    assert ct.n_control == 0
    mode.tick(69.9)
    assert key in mode.templates
    mode.tick(70.0)
    assert key not in mode.templates


def test_template_expires_and_a_new_server_is_scheduled(mode: IpvsMode) -> None:
    first = mode.route(syn(1000, 443), 0.0).endpoint
    mode.route(syn(1000, 443, flags=ACK), 0.1)
    mode.route(syn(1000, 443, flags=RST), 0.2)  # CLOSE: gone at 10.2; the template re-armed to 70
    mode.tick(69.9)
    assert len(mode.templates) == 1
    mode.tick(100.0)
    assert mode.templates == {}
    assert mode.route(syn(1001, 443), 100.0).endpoint != first


def test_quiesced_server_invalidates_its_template(mode: IpvsMode) -> None:
    svc = mode.services[(TCP, VIP, 443)]
    first = mode.route(syn(1000, 443), 0.0).endpoint
    svc.edit_dest(svc.dest_index[first], 0)  # type: ignore[index]
    second = mode.route(syn(1001, 443), 1.0).endpoint
    assert second != first
    assert mode.templates[(TCP, CLIENT, 0, VIP, 443)].dest.key == second


def test_connection_to_removed_server_is_expired_and_dropped(mode: IpvsMode) -> None:
    first = mode.route(syn(1000), 0.0).endpoint
    svc = mode.services[(TCP, VIP, 80)]
    svc.del_dest(svc.dest_index[first])  # type: ignore[index]
    assert mode.route(syn(1000, flags=ACK), 1.0).verdict is Verdict.DROP
    assert syn(1000)[:5] not in mode.conns


def test_trace_reports_the_scheduler_and_the_next_endpoint(mode: IpvsMode) -> None:
    tr = mode.trace(syn(1000), 0.0)
    assert tr.decision.endpoint_text() == "10.180.0.3:8080"
    kinds = [s.kind for s in tr.steps]
    assert kinds == ["lookup", "schedule", "verdict"]
    assert tr.steps[1].detail["scheduler"]["order"][0] == "10.180.0.3:8080"
    assert [(r.ip, r.port, float(r.probability)) for r in tr.endpoints] == [(EP[1], 8080, 1.0)]
    # tracing is sending: the next route continues after the traced choice
    assert mode.route(syn(1001), 0.0).endpoint_text() == "10.180.0.2:8080"
    js = tr.to_json()
    assert js["mode"] == "ipvs" and js["chosen"] == {"ip": "10.180.0.3", "port": 8080}


def test_trace_of_persistent_service_names_the_template(mode: IpvsMode) -> None:
    mode.route(syn(1000, 443), 0.0)
    tr = mode.trace(syn(1001, 443), 3.0)
    assert "template" in (tr.affinity or "")
    assert any("persistence template hit" in s.text for s in tr.steps)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-A -t 10.0.0.1:80 -s nosuch\n", "unknown scheduler"),
        ("-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m -w 1\n", "Service not defined"),
        ("-A -t 10.0.0.1 -s rr\n", "not a numeric address:port"),
        ("-A -t 10.0.0.1:80 -s rr -p x\n", "-p wants a number"),
        ("-X\n", "expected -A or -a"),
        ("-A -t 10.0.0.1:80 -s rr -b sh-port\n", "incompatible scheduler flag"),
    ],
)
def test_bad_capture_is_one_clear_error(text: str, message: str) -> None:
    m = IpvsMode(random.Random(0))
    with pytest.raises(RulesetError) as info:
        m.load_capture(text, [], "dump.txt")
    assert message in str(info.value) and "dump.txt:1" in str(info.value)


def test_capture_thresholds_mark_overload(mode: IpvsMode) -> None:
    m = IpvsMode(random.Random(0))
    m.load_capture("-A -t 172.30.0.1:80 -s lc\n-a -t 172.30.0.1:80 -r 10.180.0.1:80 -m -w 1 -x 1\n", [], "t")
    assert m.route(syn(1), 0.0).verdict is Verdict.DNAT
    assert m.route(syn(2), 0.0).verdict is Verdict.REJECT  # the only server is overloaded


def test_every_field_of_a_connection_is_set_whichever_way_it_was_made(mode: IpvsMode) -> None:
    """The data path makes connections inline (no __init__); a field left
    unset would raise AttributeError on some later, rarer packet."""
    from proxy_modes.ipvs.engine import Conn

    mode.route(syn(1000), 0.0)  # the fast path
    mode.route(syn(1001, 443), 0.0)  # the fast path, persistent: a template too
    mode.trace(syn(1002), 0.0)  # the traced path
    mode.route(Packet(UDP, CLIENT, 1003, parse_ip("172.30.0.10"), 53), 0.0)
    entries = [*mode.conns.values(), *mode.templates.values()]
    assert len(entries) == 5
    for cp in entries:
        unset = [name for name in Conn.__slots__ if not hasattr(cp, name)]
        assert not unset, f"{cp.flow}: {unset} not set"
