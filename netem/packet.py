"""Packets and flows as the engines see them: small tuples of ints.

A flow is `(proto, src, sport, dst, dport)` with IPv4 addresses as ints and the
IP protocol number (6 TCP, 17 UDP, 132 SCTP). A `Packet` is a flow plus the few
facts a hook needs: whether the node itself sent it (it then enters at nat
OUTPUT instead of PREROUTING), the interface it came in on, and TCP flags.
It is a NamedTuple so that `packet[:5]` *is* the flow and building one costs
a fraction of a microsecond; scapy packets stay at the edges (pcap, kernel
tests).
"""

from __future__ import annotations

from typing import NamedTuple

from .addr import int_to_ip, parse_ip
from .errors import UsageError

TCP = 6
UDP = 17
SCTP = 132
ICMP = 1

PROTO_NUMBERS = {"tcp": TCP, "udp": UDP, "sctp": SCTP, "icmp": ICMP}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
# Kubernetes spells protocols in capitals (`protocol: TCP`).
K8S_PROTOCOLS = {"TCP": TCP, "UDP": UDP, "SCTP": SCTP}

# TCP flag bits, as in the TCP header.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

Flow = tuple[int, int, int, int, int]


class Packet(NamedTuple):
    proto: int
    src: int
    sport: int
    dst: int
    dport: int
    local: bool = False  # sent by the node itself: nat OUTPUT, not PREROUTING
    iif: str = ""  # input interface ("" = unknown / not matched)
    flags: int = SYN  # TCP flags; the first packet of a connection is a SYN
    length: int = 60  # bytes on the wire, for links and pcap

    @property
    def flow(self) -> Flow:
        return (self.proto, self.src, self.sport, self.dst, self.dport)


def reply_flow(flow: Flow) -> Flow:
    proto, src, sport, dst, dport = flow
    return (proto, dst, dport, src, sport)


def proto_number(name: str | int) -> int:
    if isinstance(name, int):
        return name
    try:
        return PROTO_NUMBERS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown protocol {name!r} (tcp, udp or sctp)") from None


def proto_name(number: int) -> str:
    return PROTO_NAMES.get(number, str(number))


def parse_hostport(text: str, default_port: int | None = None) -> tuple[int, int]:
    """`10.0.0.1:80` (or a bare address when a default port is given)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, ""
    try:
        ip = parse_ip(host)
    except ValueError:
        raise UsageError(f"not an IPv4 address in {text!r}") from None
    if not port_text:
        if default_port is None:
            raise UsageError(f"missing port in {text!r} (want IP:PORT)")
        return ip, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"bad port in {text!r}")
    return ip, int(port_text)


def make_packet(proto: str | int, src: str, sport: int, dst: str, dport: int, local: bool = False) -> Packet:
    """Build a packet from text addresses (an edge helper for CLI and tests)."""
    return Packet(proto_number(proto), parse_ip(src), sport, parse_ip(dst), dport, local)


def format_flow(flow: Flow) -> str:
    proto, src, sport, dst, dport = flow
    return f"{proto_name(proto)} {int_to_ip(src)}:{sport} -> {int_to_ip(dst)}:{dport}"
