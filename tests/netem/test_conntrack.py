"""Connection tracking against the kernel's rules (nf_conntrack_proto_tcp.c
state table, nf_conntrack_proto_udp.c timeouts, sysctl defaults)."""

from __future__ import annotations

from netem.addr import parse_ip
from netem.conntrack import (
    ASSURED,
    CLOSE,
    ESTABLISHED,
    FIN_WAIT,
    LAST_ACK,
    ORIGINAL,
    REPLY,
    SEEN_REPLY,
    SYN_RECV,
    SYN_SENT,
    TIME_WAIT,
    Conntrack,
    CtEntry,
    Timeouts,
    format_entry,
    tcp_next_state,
)
from netem.packet import ACK, FIN, RST, SYN, TCP, UDP, reply_flow

CLIENT, VIP, POD, NODE = (parse_ip(a) for a in ("10.0.0.2", "172.30.0.41", "10.180.0.1", "192.168.0.2"))
FLOW = (TCP, CLIENT, 40000, VIP, 80)


def test_tcp_handshake_and_close_follow_the_kernel_table() -> None:
    ct = Conntrack()
    entry = ct.create(FLOW, now=0.0, dnat=(POD, 8080))
    assert entry is not None and entry.state == SYN_SENT and entry.expires == 120
    reply = (TCP, POD, 8080, CLIENT, 40000)
    assert ct.lookup(reply, 1.0) == (entry, REPLY)
    assert ct.update(entry, REPLY, SYN | ACK, 1.0) and entry.state == SYN_RECV and entry.expires == 61
    assert ct.update(entry, ORIGINAL, ACK, 2.0) and entry.state == ESTABLISHED
    assert entry.status & ASSURED and entry.expires == 2.0 + 432000
    ct.update(entry, ORIGINAL, FIN | ACK, 3.0)
    assert entry.state == FIN_WAIT
    ct.update(entry, REPLY, FIN | ACK, 3.1)
    assert entry.state == LAST_ACK
    ct.update(entry, ORIGINAL, ACK, 3.2)
    assert entry.state == TIME_WAIT and entry.expires == 3.2 + 120


def test_invalid_segments() -> None:
    ct = Conntrack()
    assert ct.create(FLOW, 0.0, flags=FIN) is None  # a bare FIN opens nothing
    assert tcp_next_state(ORIGINAL, ACK, 0) == ESTABLISHED  # loose pick-up of a mid-stream ACK
    entry = ct.create(FLOW, 0.0)
    assert entry is not None
    assert ct.update(entry, ORIGINAL, ACK, 0.1) is False  # ACK before SYN/ACK is invalid
    assert entry.state == SYN_SENT
    # A SYN/ACK from the client and a reply FIN before the handshake are invalid
    # too (the current kernel's table), and an invalid reply is not a reply.
    assert ct.update(entry, ORIGINAL, SYN | ACK, 0.15) is False
    assert ct.update(entry, REPLY, FIN | ACK, 0.16) is False
    assert entry.state == SYN_SENT and not entry.status & SEEN_REPLY


def test_a_reset_answering_the_syn_ends_the_entry() -> None:
    """nf_conntrack_tcp_packet: no reply seen and a RST: killed at once
    ("connection refused" leaves nothing behind), the RST itself accepted."""
    ct = Conntrack()
    entry = ct.create(FLOW, 0.0, dnat=(POD, 8080))
    assert entry is not None
    assert ct.update(entry, REPLY, RST | ACK, 0.2) is True
    assert ct.lookup(FLOW, 0.3) is None and len(ct) == 0
    # After a reply, a RST closes the entry instead: CLOSE for 10 s.
    entry = ct.create(FLOW, 1.0, dnat=(POD, 8080))
    assert entry is not None
    ct.update(entry, REPLY, SYN | ACK, 1.1)
    ct.update(entry, ORIGINAL, ACK, 1.2)
    assert ct.update(entry, REPLY, RST, 1.3) is True
    assert entry.state == CLOSE and entry.expires == 1.3 + 10 and ct.lookup(FLOW, 1.4) is not None


def _closed(ct: Conntrack, how: str) -> CtEntry:
    """An answered connection closed by FINs, or reset by the client or the server."""
    entry = ct.create(FLOW, 0.0, dnat=(POD, 8080))
    assert entry is not None
    ct.update(entry, REPLY, SYN | ACK, 0.1)
    ct.update(entry, ORIGINAL, ACK, 0.2)
    if how == "fin":
        ct.update(entry, ORIGINAL, FIN | ACK, 0.3)
        ct.update(entry, REPLY, FIN | ACK, 0.4)
        ct.update(entry, ORIGINAL, ACK, 0.5)
        assert entry.state == TIME_WAIT and entry.closing
    else:
        ct.update(entry, ORIGINAL if how == "client rst" else REPLY, RST, 0.5)
        assert entry.state == CLOSE
    return entry


def test_a_syn_reopens_a_closed_connection() -> None:
    """A new SYN on a TIME_WAIT or CLOSE entry kills it and is looked up again
    as a new connection (-NF_REPEAT), when a FIN closed it or this side's
    last packet was a RST; a SYN after the other side's RST is ignored."""
    for how in ("fin", "client rst"):
        ct = Conntrack()
        entry = _closed(ct, how)
        assert ct.update(entry, ORIGINAL, SYN, 1.0) is None
        assert ct.track(FLOW, SYN, 1.0) is None and len(ct) == 0
    ct = Conntrack()
    entry = _closed(ct, "server rst")
    expires = entry.expires
    assert ct.update(entry, ORIGINAL, SYN, 1.0) is True
    assert entry.state == CLOSE and entry.expires == expires  # ignored: no state change, no new timer


def test_timers_the_kernel_does_not_renew_or_caps() -> None:
    ct = Conntrack()
    entry = ct.create(FLOW, 0.0)
    assert entry is not None
    ct.update(entry, ORIGINAL, SYN, 50.0)  # a retransmitted SYN keeps the first SYN's timer
    assert entry.expires == 120
    picked = ct.create((TCP, CLIENT, 40001, VIP, 80), 0.0, flags=ACK)  # mid-stream pick-up
    assert picked is not None and picked.state == ESTABLISHED
    ct.update(picked, ORIGINAL, ACK, 1.0)
    assert picked.expires == 1.0 + 300  # unacknowledged: no reply yet
    ct.update(picked, REPLY, ACK, 2.0)
    ct.update(picked, ORIGINAL, ACK, 3.0)
    assert picked.expires == 3.0 + 432000 and picked.status & ASSURED


def test_entries_expire_with_now() -> None:
    ct = Conntrack()
    ct.create(FLOW, 0.0)
    assert ct.lookup(FLOW, 119.9) is not None
    assert ct.lookup(FLOW, 120.0) is None
    assert len(ct) == 0


def test_udp_timeouts_30_then_120() -> None:
    """nf_conntrack_udp_packet: 30 s until answered and 2 s old, then 120 s
    and ASSURED (a query and its answer stay a 30 s entry)."""
    ct = Conntrack()
    flow = (UDP, CLIENT, 5353, VIP, 53)
    entry = ct.create(flow, 0.0, dnat=(POD, 53))
    assert entry is not None and entry.expires == 30
    ct.update(entry, REPLY, 0, 1.0)
    assert entry.expires == 31 and not entry.status & ASSURED
    assert "[UNREPLIED]" not in format_entry(entry, 1.0)
    ct.update(entry, ORIGINAL, 0, 1.5)
    assert entry.expires == 31.5 and not entry.status & ASSURED
    ct.update(entry, ORIGINAL, 0, 2.2)
    assert entry.expires == 2.2 + 120 and entry.status & ASSURED


def test_nat_is_visible_in_the_reply_tuple() -> None:
    ct = Conntrack()
    entry = ct.create(FLOW, 0.0, dnat=(POD, 8080), snat=(NODE, 40000))
    assert entry is not None
    assert entry.reply == (TCP, POD, 8080, NODE, 40000)
    assert entry.dnat == (POD, 8080) and entry.snat == (NODE, 40000)
    line = format_entry(entry, 0.0)
    assert line.startswith("tcp      6 120 SYN_SENT src=10.0.0.2 dst=172.30.0.41 sport=40000 dport=80 [UNREPLIED]")
    assert "src=10.180.0.1 dst=192.168.0.2 sport=8080 dport=40000 mark=0 use=1" in line


def test_masquerade_port_clash_takes_another_port() -> None:
    ct = Conntrack()
    a = ct.create((TCP, CLIENT, 40000, VIP, 80), 0.0, dnat=(POD, 8080), snat=(NODE, 40000))
    b = ct.create((TCP, parse_ip("10.0.0.3"), 40000, VIP, 80), 0.0, dnat=(POD, 8080), snat=(NODE, 40000))
    assert a is not None and b is not None
    assert a.reply[4] == 40000 and b.reply[4] != 40000
    assert ct.lookup(b.reply, 0.0) == (b, REPLY)


def test_kube_proxy_timeouts() -> None:
    t = Timeouts().with_kube_proxy()
    assert t.tcp[ESTABLISHED] == 86400 and t.tcp[SYN_SENT] == 120
    assert reply_flow(FLOW) == (TCP, VIP, 80, CLIENT, 40000)
