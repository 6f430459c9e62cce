"""Simulated packets to a pcap file (the I/O edge: scapy builds and writes them).

The simulator keeps packets as `netem.packet.Packet` tuples with their
delivery time (integer ns); this turns them into real headers a capture
tool decodes: raw IPv4 frames (LINKTYPE_IPV4, 228), nanosecond timestamps, TCP with
the options Linux sends (MSS, SACK permitted, timestamps and window scale on
a SYN; timestamps on every other segment; none on a RST), sequence and
acknowledgment numbers that follow each side's bytes (a retransmission
repeats its sequence number, so tshark marks it), UDP, and ICMP destination
unreachable quoting the offending header. Payloads are zero bytes of the
length the simulation used. scapy costs ~100 us per packet: this runs only
when a capture was asked for, never on the simulator's hot path.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from typing import TYPE_CHECKING

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw
from scapy.utils import PcapWriter

from .addr import int_to_ip
from .packet import FIN, PSH, RST, SYN
from .packet import ICMP as ICMP_PROTO
from .packet import TCP as TCP_PROTO
from .packet import UDP as UDP_PROTO

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .packet import Packet

LINKTYPE_IPV4 = 228  # raw IPv4 frames, the link type scapy gives an IP packet
TCP_HDR_SYN, TCP_HDR, TCP_HDR_BARE = 40, 32, 20
SYN_OPTIONS_WS = 7


class _Side:
    """One direction of a TCP connection: its initial sequence number and what it sent."""

    __slots__ = ("data", "fin", "isn")

    def __init__(self, isn: int) -> None:
        self.isn = isn
        self.data = 0  # payload bytes sent (first transmission)
        self.fin = False

    def next_seq(self) -> int:
        return (self.isn + 1 + self.data + (1 if self.fin else 0)) & 0xFFFFFFFF


class _Tcp:
    """Sequence numbers of every TCP connection seen, by flow in both directions."""

    def __init__(self) -> None:
        self.sides: dict[tuple[int, int, int, int], tuple[_Side, _Side]] = {}

    def numbers(self, pkt: Packet, payload: int) -> tuple[int, int]:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        pair = self.sides.get(key)
        if pair is None or (pkt.flags & SYN and not pkt.flags & 0x10 and pair[0].data):
            me, peer = _Side(_isn(key)), _Side(_isn(key[2:] + key[:2]))
            self.sides[key] = (me, peer)
            self.sides[key[2:] + key[:2]] = (peer, me)
        else:
            me, peer = pair
        flags = pkt.flags
        ack = peer.next_seq() if flags & 0x10 else 0
        if flags & SYN:
            return me.isn, ack
        seq = (me.isn + 1) & 0xFFFFFFFF
        if payload:
            if not me.data:
                me.data = payload
            return seq, ack
        seq = (seq + me.data) & 0xFFFFFFFF
        if flags & FIN:
            me.fin = True
        elif me.fin:
            seq = (seq + 1) & 0xFFFFFFFF
        return seq, ack


def _isn(key: tuple[int, int, int, int]) -> int:
    return zlib.crc32(repr(key).encode())


def to_scapy(pkt: Packet, tcp: _Tcp, t_ns: int) -> ScapyPacket:
    """One simulated packet as real headers."""
    ip = IP(src=int_to_ip(pkt.src), dst=int_to_ip(pkt.dst), ttl=64)
    proto = pkt.proto
    if proto == TCP_PROTO:
        flags = pkt.flags
        tsval = (t_ns // 1_000_000) & 0xFFFFFFFF
        if flags & SYN:
            options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (tsval, 0)), ("NOP", None), ("WScale", 7)]
            header = TCP_HDR_SYN
        elif flags & RST:
            options, header = [], TCP_HDR_BARE
        else:
            options = [("NOP", None), ("NOP", None), ("Timestamp", (tsval, tsval))]
            header = TCP_HDR
        payload = max(0, pkt.length - 20 - header)
        if not flags & PSH:
            payload = 0
        seq, ack = tcp.numbers(pkt, payload)
        # 64240 on a SYN, then 502 << 7 (window scale 7) as Linux advertises
        window = 64240 if flags & SYN else 502
        layer = TCP(sport=pkt.sport, dport=pkt.dport, flags=flags, seq=seq, ack=ack, window=window, options=options)
        out = ip / layer / Raw(b"\0" * payload) if payload else ip / layer
    elif proto == UDP_PROTO:
        out = ip / UDP(sport=pkt.sport, dport=pkt.dport) / Raw(b"\0" * max(0, pkt.length - 28))
    elif proto == ICMP_PROTO:
        # The simulator's encoding: flags = code | inner protocol << 8; the
        # inner header is the outer one reversed (sport/dport swapped back).
        code, inner_proto = pkt.flags & 0xFF, pkt.flags >> 8
        inner = IP(src=int_to_ip(pkt.dst), dst=int_to_ip(pkt.src), ttl=64)
        if inner_proto == TCP_PROTO:
            quoted = inner / TCP(sport=pkt.dport, dport=pkt.sport, flags="S")
        else:
            quoted = inner / UDP(sport=pkt.dport, dport=pkt.sport)
        out = ip / ICMP(type=3, code=code) / quoted
    else:
        out = ip / Raw(b"\0" * max(0, pkt.length - 20))
    out.time = t_ns / 1e9
    return out


def write(path: str, packets: Iterable[tuple[int, Packet]]) -> int:
    """Write `(time_ns, packet)` pairs in time order, whole or not at all
    (a temporary file renamed into place); returns how many."""
    ordered = sorted(packets, key=lambda tp: tp[0])
    tcp = _Tcp()
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".kubenetem-", suffix=".pcap")
    os.close(handle)
    try:
        writer = PcapWriter(tmp, linktype=LINKTYPE_IPV4, nano=True, sync=False)
        try:
            for t, pkt in ordered:
                writer.write(to_scapy(pkt, tcp, t))
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(ordered)
