"""Connection tracking as netfilter does it: tuples, NAT, states, timeouts.

An entry holds the original tuple and the reply tuple; NAT is visible as the
difference between them (after DNAT the reply comes *from* the endpoint, after
masquerade it goes *to* the node). Both tuples index the same entry, so a
packet of either direction finds it with one dict lookup.

TCP follows nf_conntrack_tcp_packet (net/netfilter/nf_conntrack_proto_tcp.c):
the state table `tcp_conntracks[2][6][10]` (direction, the packet's flag
class, the current state), ignored packets that change nothing, a SYN that
reopens a closed connection (the entry is killed and the packet is new), a
RST before any reply that ends the entry at once, and the timers it does not
renew or caps. Sequence numbers and windows are not modelled: every segment
is in window. UDP follows nf_conntrack_udp_packet (30 s; 120 s and ASSURED
once answered and still sending 2 s after it began). Timeouts are the
kernel's sysctl defaults (net.netfilter.nf_conntrack_*), overridden as
kube-proxy does from its `conntrack` configuration. Expiry is driven by the
caller's `now`; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .addr import int_to_ip
from .packet import ACK, FIN, RST, SCTP, SYN, TCP, UDP, Flow, proto_name

if TYPE_CHECKING:
    from .objects import ProxyConfig

# TCP conntrack states, in the kernel's order (enum tcp_conntrack).
NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2 = range(10)
INVALID = 10  # sIV
IGNORE = 11  # sIG
TCP_STATE_NAMES = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)

ORIGINAL, REPLY = 0, 1

# Packet classes (enum tcp_bit_set): which row of the table a segment uses.
_SYN, _SYNACK, _FIN, _ACK, _RST, _NONE = range(6)

_NO, _SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL, _S2, _IV, _IG = range(12)
# tcp_conntracks[direction][packet class][state] -> new state, restated from
# nf_conntrack_proto_tcp.c (columns: NONE SYN_SENT SYN_RECV ESTABLISHED
# FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE SYN_SENT2).
_TCP_TABLE: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # ORIGINAL
        (_SS, _SS, _IG, _IG, _IG, _IG, _IG, _SS, _SS, _S2),  # syn
        (_IV, _IV, _SR, _IV, _IV, _IV, _IV, _IV, _IV, _SR),  # synack
        (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),  # fin
        (_ES, _IV, _ES, _ES, _CW, _CW, _TW, _TW, _CL, _IV),  # ack
        (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),  # rst
        (_IV,) * 10,  # none
    ),
    (  # REPLY
        (_IV, _S2, _IV, _IV, _IV, _IV, _IV, _SS, _IV, _S2),  # syn
        (_IV, _SR, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),  # synack
        (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),  # fin
        (_IV, _IG, _SR, _ES, _CW, _CW, _TW, _TW, _CL, _IG),  # ack
        (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),  # rst
        (_IV,) * 10,  # none
    ),
)


def tcp_packet_class(flags: int) -> int:
    """get_conntrack_index(): RST wins, then SYN (with or without ACK), FIN, ACK."""
    if flags & RST:
        return _RST
    if flags & SYN:
        return _SYNACK if flags & ACK else _SYN
    if flags & FIN:
        return _FIN
    if flags & ACK:
        return _ACK
    return _NONE


# The packet class of every flag byte, and the state a first packet opens:
# lookups instead of branches on the hot path.
_CLASS_OF_FLAGS = tuple(tcp_packet_class(f) for f in range(256))
_NEW_TCP_STATE = tuple(_TCP_TABLE[0][c][NONE] for c in _CLASS_OF_FLAGS)


def tcp_next_state(direction: int, flags: int, state: int) -> int:
    return _TCP_TABLE[direction][_CLASS_OF_FLAGS[flags & 0xFF]][state]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds per state; the defaults are the kernel's sysctl defaults."""

    tcp: tuple[float, ...] = (
        0,
        120,
        60,
        432000,
        120,
        60,
        30,
        120,
        10,
        120,  # indexed by TCP state
    )
    tcp_unacknowledged: float = 300  # nf_conntrack_tcp_timeout_unacknowledged
    udp_unreplied: float = 30  # nf_conntrack_udp_timeout
    udp_replied: float = 120  # nf_conntrack_udp_timeout_stream
    sctp_established: float = 210  # nf_conntrack_sctp_timeout_established
    sctp_other: float = 3  # cookie_wait / cookie_echoed
    generic: float = 600  # nf_conntrack_generic_timeout

    def with_kube_proxy(
        self,
        tcp_established: float | None = 86400,
        tcp_close_wait: float | None = 3600,
        udp: float | None = None,
        udp_stream: float | None = None,
    ) -> Timeouts:
        """The sysctls kube-proxy sets at start-up (KubeProxyConntrackConfiguration;
        defaults tcpEstablishedTimeout 24h and tcpCloseWaitTimeout 1h)."""
        tcp = list(self.tcp)
        if tcp_established:
            tcp[ESTABLISHED] = tcp_established
        if tcp_close_wait:
            tcp[CLOSE_WAIT] = tcp_close_wait
        return replace(
            self,
            tcp=tuple(tcp),
            udp_unreplied=udp or self.udp_unreplied,
            udp_replied=udp_stream or self.udp_replied,
        )


KERNEL_TIMEOUTS = Timeouts()


def kube_proxy_timeouts(cfg: ProxyConfig) -> Timeouts:
    """The node's timeouts once kube-proxy started, whatever its mode
    (cmd/kube-proxy/app/server_linux.go setupConntrack: the same sysctls for
    every proxier)."""
    return KERNEL_TIMEOUTS.with_kube_proxy(
        cfg.conntrack_tcp_established, cfg.conntrack_tcp_close_wait, cfg.conntrack_udp, cfg.conntrack_udp_stream
    )


# Entry status bits (a subset of enum ip_conntrack_status).
SEEN_REPLY = 0x2
ASSURED = 0x4
SRC_NAT = 0x10
DST_NAT = 0x20

# The commonest packet, for engines that inline it: a TCP segment of the ACK
# class (`flags & ACK_CLASS_BITS == ACK`: no SYN, FIN or RST) on an
# ESTABLISHED entry whose status has all of REPLIED_ASSURED leaves the entry
# as it is except its timer, now + timeouts.tcp[ESTABLISHED]
# (tcp_conntracks[dir][TCP_ACK_SET][ESTABLISHED] in both directions; see
# _tcp_packet). Everything else goes through `update`.
ACK_CLASS_BITS = SYN | FIN | RST | ACK
REPLIED_ASSURED = SEEN_REPLY | ASSURED


@dataclass(slots=True, eq=False)
class CtEntry:
    orig: Flow
    reply: Flow
    state: int  # TCP state; for UDP/SCTP/other: NONE until a reply, then ESTABLISHED
    expires: float
    status: int = 0
    mark: int = 0
    # What the mode that created the entry wants to remember about the flow
    # (e.g. the endpoint an IPVS connection went to). Never interpreted here.
    data: object = None
    born: float = 0.0  # when it was created (UDP's stream timer starts 2 s later)
    # TCP only (struct ip_ct_tcp): a FIN started closing it (CLOSE_INIT in
    # either direction), and the direction + 1 of the last packet if that
    # was a RST (last_dir/last_index), else 0: what lets a SYN reopen it.
    closing: bool = False
    last_rst: int = 0
    # A mode's memo of its last decision for a later packet, per direction
    # (what it depended on and the decision; the mode decides what that is).
    # Kept on the entry itself so a packet of a known connection touches one
    # object besides the table.
    memo_orig: tuple[Any, ...] | None = None
    memo_reply: tuple[Any, ...] | None = None

    @property
    def dnat(self) -> tuple[int, int] | None:
        """The (address, port) the original destination was translated to."""
        _, rsrc, rsport, _, _ = self.reply
        _, _, _, odst, odport = self.orig
        return None if (rsrc, rsport) == (odst, odport) else (rsrc, rsport)

    @property
    def snat(self) -> tuple[int, int] | None:
        """The (address, port) the original source was translated to."""
        _, _, _, rdst, rdport = self.reply
        _, osrc, osport, _, _ = self.orig
        return None if (rdst, rdport) == (osrc, osport) else (rdst, rdport)

    def state_name(self) -> str:
        return TCP_STATE_NAMES[self.state] if self.orig[0] in (TCP, SCTP) else ""


@dataclass(slots=True)
class Conntrack:
    """The connection table of one network namespace (one node)."""

    timeouts: Timeouts = KERNEL_TIMEOUTS
    # Both tuples of every entry map to it; the direction of a hit is whether
    # the packet's tuple is the entry's original one.
    _by_tuple: dict[Flow, CtEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._by_tuple) // 2

    @property
    def by_tuple(self) -> Mapping[Flow, CtEntry]:
        """Both tuples of every entry, expired ones too until looked up or
        expired (read-only: a hot path binds its `get` and checks `expires`
        itself; `lookup` is the ordinary way)."""
        return self._by_tuple

    def lookup(self, flow: Flow, now: float) -> tuple[CtEntry, int] | None:
        """The entry a packet with this tuple belongs to and its direction."""
        entry = self._by_tuple.get(flow)
        if entry is None:
            return None
        if entry.expires <= now:
            self._remove(entry)
            return None
        return entry, (ORIGINAL if entry.orig == flow else REPLY)

    def reply_tuple_taken(self, flow: Flow, now: float) -> bool:
        return self.lookup(flow, now) is not None

    def create(
        self,
        orig: Flow,
        now: float,
        dnat: tuple[int, int] | None = None,
        snat: tuple[int, int] | None = None,
        flags: int = SYN,
        mark: int = 0,
        data: object = None,
    ) -> CtEntry | None:
        """Confirm a new connection (the packet has passed every hook).

        Returns None for a TCP segment that cannot open a connection (the
        kernel marks it INVALID and tracks nothing), e.g. a bare FIN.
        """
        proto = orig[0]
        if proto == TCP:
            state = _NEW_TCP_STATE[flags & 0xFF]
            if state >= _IV:
                return None
            timeout = self.timeouts.tcp[state]
        else:
            state = NONE
            timeout = self._timeout(proto, NONE, False)
        if dnat is None:
            reply = (proto, orig[3], orig[4], orig[1], orig[2])
            status = 0
        else:
            reply = (proto, dnat[0], dnat[1], orig[1], orig[2])
            status = DST_NAT
        if snat is not None:
            reply = self._unique_snat_reply(reply, snat, now)
            status |= SRC_NAT
        entry = CtEntry(orig, reply, state, now + timeout, status, mark, data, now)
        by_tuple = self._by_tuple
        by_tuple[orig] = entry
        by_tuple[reply] = entry
        return entry

    def _unique_snat_reply(self, reply: Flow, snat: tuple[int, int], now: float) -> Flow:
        """Keep the source port when free, else take the next free one, as
        nf_nat_l4proto_unique_tuple() searches the port range on a clash."""
        proto, rsrc, rsport, _, _ = reply
        addr, port = snat
        candidate = (proto, rsrc, rsport, addr, port)
        tries = 0
        while candidate in self._by_tuple and self.lookup(candidate, now) is not None:
            port = 1024 + (port - 1024 + 1) % (65536 - 1024) if port >= 1024 else port + 1
            candidate = (proto, rsrc, rsport, addr, port)
            tries += 1
            if tries > 65535:
                break
        return candidate

    def update(self, entry: CtEntry, direction: int, flags: int, now: float) -> bool | None:
        """Account one more packet of a tracked connection (nf_conntrack_in
        after the lookup). True: conntrack accepted it (SEEN_REPLY is set by a
        reply only then). False: INVALID, the packet leaves conntrack without
        its entry (no NAT, `ct state invalid`). None: a SYN reopening a closed
        connection: the entry is gone and the packet opens a new one."""
        proto = entry.orig[0]
        if proto == TCP:
            verdict = self._tcp_packet(entry, direction, flags, now)
        elif proto == UDP:
            self._udp_packet(entry, direction, now)
            verdict = True
        else:
            if entry.status & SEEN_REPLY or direction == REPLY:
                entry.state = ESTABLISHED
                if direction == ORIGINAL:
                    entry.status |= ASSURED
            replied = bool(entry.status & SEEN_REPLY) or direction == REPLY
            entry.expires = now + self._timeout(proto, entry.state, replied)
            verdict = True
        if verdict and direction == REPLY:
            entry.status |= SEEN_REPLY
        return verdict

    def track(self, flow: Flow, flags: int, now: float) -> tuple[CtEntry, int, bool] | None:
        """`lookup` and `update` in one: the entry, the packet's direction and
        whether conntrack accepted it; None when the packet has no entry (or
        reopened a closed one, which is gone now)."""
        hit = self.lookup(flow, now)
        if hit is None:
            return None
        valid = self.update(hit[0], hit[1], flags, now)
        return None if valid is None else (hit[0], hit[1], valid)

    def _tcp_packet(self, entry: CtEntry, direction: int, flags: int, now: float) -> bool | None:
        """nf_conntrack_tcp_packet (nf_conntrack_proto_tcp.c), without the
        sequence and window checks (packets here carry no sequence numbers,
        so every segment is in window)."""
        index = _CLASS_OF_FLAGS[flags & 0xFF]
        old = entry.state
        new = _TCP_TABLE[direction][index][old]
        if new == SYN_SENT and old >= TIME_WAIT:
            # A SYN on a closed or aborted connection reopens it: kill the entry
            # and look the packet up again (-NF_REPEAT), if a FIN closed it or
            # this side's last packet was a RST; otherwise it is ignored.
            if entry.closing or entry.last_rst == direction + 1:
                self._remove(entry)
                return None
            new = _IG
        if new == _IG:  # accepted as it is: no state change, the timer not renewed
            entry.last_rst = 0
            return True
        if new == _IV:
            return False
        entry.last_rst = direction + 1 if index == _RST else 0
        entry.state = new
        if new == FIN_WAIT and old != FIN_WAIT:
            entry.closing = True
        t = self.timeouts
        timeout = t.tcp[CLOSE] if index == _RST else t.tcp[new]
        if not entry.status & SEEN_REPLY:
            if index == _RST:  # the only answer was a RST: not a connection at all
                self._remove(entry)
                return True
            if index == _SYN and old == SYN_SENT:  # a retransmitted SYN does not renew the timer
                return True
            if new == ESTABLISHED:  # picked up mid-stream: not the long ESTABLISHED timeout yet
                timeout = min(timeout, t.tcp_unacknowledged)
        elif not entry.status & ASSURED and old in (SYN_RECV, ESTABLISHED) and new == ESTABLISHED:
            entry.status |= ASSURED
        entry.expires = now + timeout
        return True

    def _udp_packet(self, entry: CtEntry, direction: int, now: float) -> None:
        """nf_conntrack_udp_packet: 30 s while unanswered or young; a flow
        answered and still sending 2 s after it began is a stream: 120 s and
        ASSURED."""
        t = self.timeouts
        if entry.status & SEEN_REPLY:
            entry.state = ESTABLISHED
            if now > entry.born + 2.0:
                entry.expires = now + t.udp_replied
                entry.status |= ASSURED
                return
        elif direction == REPLY:
            entry.state = ESTABLISHED
        entry.expires = now + t.udp_unreplied

    def _timeout(self, proto: int, state: int, replied: bool) -> float:
        t = self.timeouts
        if proto == TCP:
            return t.tcp[state]
        if proto == UDP:
            return t.udp_replied if replied else t.udp_unreplied
        if proto == SCTP:
            return t.sctp_established if replied else t.sctp_other
        return t.generic

    def delete(self, entry: CtEntry) -> None:
        self._remove(entry)

    def _remove(self, entry: CtEntry) -> None:
        by_tuple = self._by_tuple
        if by_tuple.get(entry.orig) is entry:
            del by_tuple[entry.orig]
        if by_tuple.get(entry.reply) is entry:
            del by_tuple[entry.reply]

    def expire(self, now: float) -> int:
        """Drop every entry whose timer has run out; returns how many."""
        dead = {id(e): e for e in self._by_tuple.values() if e.expires <= now}
        for entry in dead.values():
            self._remove(entry)
        return len(dead)

    def entries(self) -> list[CtEntry]:
        return list({id(e): e for e in self._by_tuple.values()}.values())

    def flush(self) -> None:
        self._by_tuple.clear()

    def dump(self, now: float) -> str:
        """The table as `conntrack -L` prints it."""
        return "".join(format_entry(e, now) + "\n" for e in self.entries() if e.expires > now)


def format_entry(entry: CtEntry, now: float) -> str:
    proto = entry.orig[0]
    parts = [f"{proto_name(proto):<8} {proto} {max(0, int(entry.expires - now))}"]
    if proto == TCP:
        parts.append(TCP_STATE_NAMES[entry.state])
    parts.append(_tuple_text(entry.orig))
    if not entry.status & SEEN_REPLY:
        parts.append("[UNREPLIED]")
    parts.append(_tuple_text(entry.reply))
    if entry.status & ASSURED:
        parts.append("[ASSURED]")
    parts.append(f"mark={entry.mark} use=1")
    return " ".join(parts)


def _tuple_text(flow: Flow) -> str:
    _, src, sport, dst, dport = flow
    return f"src={int_to_ip(src)} dst={int_to_ip(dst)} sport={sport} dport={dport}"
