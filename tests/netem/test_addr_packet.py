from __future__ import annotations

import pytest

from netem.addr import Cidr, int_to_ip, parse_cidr, parse_ip
from netem.errors import UsageError
from netem.packet import TCP, UDP, Packet, format_flow, parse_hostport, reply_flow


def test_ip_round_trip() -> None:
    assert parse_ip("10.180.0.1") == (10 << 24) | (180 << 16) | 1
    assert int_to_ip(parse_ip("255.255.255.255")) == "255.255.255.255"


@pytest.mark.parametrize("text", ["10.0.0", "10.0.0.256", "010.0.0.1", "a.b.c.d", "1.2.3.4.5", "", "1.2.3.-1"])
def test_bad_ips_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ip(text)


def test_cidr_membership_and_bounds() -> None:
    c = parse_cidr("10.96.0.0/12")
    assert c == Cidr(parse_ip("10.96.0.0"), 12)
    assert parse_ip("10.111.255.255") in c and parse_ip("10.112.0.0") not in c
    assert c.last == parse_ip("10.111.255.255") and c.size == 1 << 20
    assert str(c) == "10.96.0.0/12"
    assert parse_cidr("1.2.3.4") == Cidr(parse_ip("1.2.3.4"), 32)


def test_host_bits_are_an_error_only_when_strict() -> None:
    with pytest.raises(ValueError, match="host bits"):
        parse_cidr("10.0.0.1/8")
    assert parse_cidr("10.0.0.1/8", strict=False) == parse_cidr("10.0.0.0/8")


def test_packet_is_a_flow_tuple() -> None:
    p = Packet(TCP, parse_ip("10.0.0.1"), 40000, parse_ip("172.30.0.41"), 80)
    assert p[:5] == p.flow == (6, p.src, 40000, p.dst, 80)
    assert reply_flow(p.flow) == (6, p.dst, 80, p.src, 40000)
    assert format_flow(p.flow) == "tcp 10.0.0.1:40000 -> 172.30.0.41:80"


def test_hostport_parsing() -> None:
    assert parse_hostport("172.30.0.41:80") == (parse_ip("172.30.0.41"), 80)
    assert parse_hostport("1.2.3.4", default_port=53) == (parse_ip("1.2.3.4"), 53)
    for bad in ("1.2.3.4", "1.2.3.4:0", "1.2.3.4:70000", "host:80"):
        with pytest.raises(UsageError):
            parse_hostport(bad)
    assert UDP == 17
