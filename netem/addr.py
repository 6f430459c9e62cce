"""IPv4 addresses and prefixes as ints: the representation every engine uses.

Inside the engines an address is an `int` and a prefix is `(network, length)`,
so a match is one AND and one compare. `ipaddress` objects and dotted strings
exist only at the edges (parsing input, printing output); these helpers are
those edges. The parsers are strict: a leading zero, a missing octet or a
host prefix with bits set below the mask is an error the caller reports.
"""

from __future__ import annotations

from typing import NamedTuple

MAX = 0xFFFFFFFF


class Cidr(NamedTuple):
    network: int
    length: int

    @property
    def mask(self) -> int:
        return prefix_mask(self.length)

    @property
    def size(self) -> int:
        return 1 << (32 - self.length)

    @property
    def last(self) -> int:
        return self.network | (~self.mask & MAX)

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and (addr & self.mask) == self.network

    def overlaps(self, other: Cidr) -> bool:
        return self.network <= other.last and other.network <= self.last

    def __str__(self) -> str:
        return f"{int_to_ip(self.network)}/{self.length}"


def prefix_mask(length: int) -> int:
    return (MAX << (32 - length)) & MAX if length else 0


def parse_ip(text: str) -> int:
    """Dotted quad to int; raises ValueError on anything else."""
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {text!r}")
    value = 0
    for part in parts:
        if not part.isdigit() or not part.isascii() or (len(part) > 1 and part[0] == "0"):
            raise ValueError(f"not an IPv4 address: {text!r}")
        octet = int(part)
        if octet > 255:
            raise ValueError(f"not an IPv4 address: {text!r}")
        value = (value << 8) | octet
    return value


def is_ipv4(text: str) -> bool:
    try:
        parse_ip(text)
    except ValueError:
        return False
    return True


def is_ipv6(text: str) -> bool:
    """True for an IPv6 literal (validated by the standard library)."""
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def int_to_ip(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def parse_cidr(text: str, strict: bool = True) -> Cidr:
    """`a.b.c.d/n` (or a bare address, as /32) to a Cidr.

    With `strict`, host bits set below the mask are an error, as the API
    server's CIDR validation rejects them; iptables accepts and masks them.
    """
    addr, sep, length_text = text.partition("/")
    ip = parse_ip(addr.strip())
    if not sep:
        return Cidr(ip, 32)
    length_text = length_text.strip()
    if not length_text.isdigit() or int(length_text) > 32:
        raise ValueError(f"not a CIDR: {text!r}")
    length = int(length_text)
    mask = prefix_mask(length)
    if strict and ip & ~mask & MAX:
        raise ValueError(f"host bits set in CIDR {text!r} (network is {int_to_ip(ip & mask)}/{length})")
    return Cidr(ip & mask, length)


def ip_in(addr: int, cidr: Cidr) -> bool:
    return (addr & prefix_mask(cidr.length)) == cidr.network
