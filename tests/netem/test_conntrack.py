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
    SYN_RECV,
    SYN_SENT,
    TIME_WAIT,
    Conntrack,
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
    assert not ct.update(entry, ORIGINAL, ACK, 0.1)  # ACK before SYN/ACK is invalid
    assert entry.state == SYN_SENT
    ct.update(entry, REPLY, RST, 0.2)
    assert entry.state == CLOSE and entry.expires == 0.2 + 10


def test_entries_expire_with_now() -> None:
    ct = Conntrack()
    ct.create(FLOW, 0.0)
    assert ct.lookup(FLOW, 119.9) is not None
    assert ct.lookup(FLOW, 120.0) is None
    assert len(ct) == 0


def test_udp_timeouts_30_then_120() -> None:
    ct = Conntrack()
    flow = (UDP, CLIENT, 5353, VIP, 53)
    entry = ct.create(flow, 0.0, dnat=(POD, 53))
    assert entry is not None and entry.expires == 30
    ct.update(entry, REPLY, 0, 1.0)
    assert entry.expires == 121
    assert "[UNREPLIED]" not in format_entry(entry, 1.0)


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
