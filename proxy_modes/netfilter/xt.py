"""The x_tables extensions the engine understands: what each match tests and
what each target does, restated from the kernel, plus how iptables-save
prints them.

One class per extension, each owning three things: parsing its options (as
`iptables` accepts them, so both kube-proxy's restore input and a real node's
`iptables-save` output load), its semantics (`test()` for a match, the
fields the engine acts on for a target), and its canonical `save()` text
(what `iptables-save` would print, so a rendered ruleset can be diffed with a
real node). An option or extension not listed here is an error naming the
line: a rule that is silently ignored would make every answer wrong.

Sources: net/netfilter/xt_tcpudp.c, xt_multiport.c, xt_statistic.c,
xt_recent.c, xt_mark.c, xt_conntrack.c, xt_addrtype.c (net/ipv4/fib_frontend.c
__inet_dev_addr_type for address types), xt_set.c, xt_comment.c, xt_nfacct.c,
and the targets xt_nat.c, xt_MASQUERADE.c, xt_REDIRECT.c, xt_mark.c (MARK
revision 2), ipt_REJECT.c, xt_LOG.c; the save formats from iptables'
extensions/libxt_*.c.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Protocol

from netem.addr import int_to_ip, parse_ip
from netem.packet import PROTO_NAMES, SCTP, TCP, UDP


class OptionError(ValueError):
    """A bad or unsupported option; the parser adds the file and line."""


# --- the packet as the rules see it -------------------------------------------

# Conntrack states as bits (xt_conntrack.h XT_CONNTRACK_STATE_*; SNAT/DNAT are
# the "virtual" states taken from the entry's status).
CT_INVALID = 1
CT_ESTABLISHED = 2
CT_RELATED = 4
CT_NEW = 8
CT_UNTRACKED = 16
CT_SNAT = 32
CT_DNAT = 64
CT_STATE_NAMES = {
    "INVALID": CT_INVALID,
    "ESTABLISHED": CT_ESTABLISHED,
    "RELATED": CT_RELATED,
    "NEW": CT_NEW,
    "UNTRACKED": CT_UNTRACKED,
    "SNAT": CT_SNAT,
    "DNAT": CT_DNAT,
}


class PacketState:
    """One packet on its way through the hooks: the header fields as they are
    now (after any NAT so far), the skb mark, the conntrack state, and what
    the walk has counted. Mutable and short-lived; one per packet. (Rarely
    changed fields are class-level defaults: creating one is on the hot path.)"""

    mark = 0
    rules = 0
    lookups = 0
    pure = True  # no match with randomness or side effects was evaluated
    dnat: tuple[int, int] | None = None
    snat: tuple[int, int] | None = None
    service: object = None
    affinity: str | None = None
    steps: list[Any] | None = None  # a list when tracing
    dry = False  # exploring: no side effects
    explore: list[bool] | None = None  # forced outcomes of random matches (exploring)
    decisions = 0  # random matches met so far (exploring)
    probability = Fraction(1)
    oif = ""

    def __init__(
        self,
        nf: Any,
        proto: int,
        src: int,
        sport: int,
        dst: int,
        dport: int,
        now: float,
        local: bool = False,
        iif: str = "",
        flags: int = 0,
        ctstate: int = CT_NEW,
    ) -> None:
        self.nf = nf  # the engine: local addresses, ipsets, recent lists, rng
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.now = now
        self.local = local
        self.iif = iif
        self.flags = flags
        self.ctstate = ctstate


class NeedDecision(Exception):
    """Exploring: a random match was reached with no forced outcome left."""

    def __init__(self, probability: Fraction) -> None:
        self.probability = probability


# --- small parsers -------------------------------------------------------------


def parse_int(text: str, what: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise OptionError(f"{what}: not a number: {text!r}") from None
    if not lo <= value <= hi:
        raise OptionError(f"{what}: {value} out of range {lo}..{hi}")
    return value


def parse_port_range(text: str, what: str) -> tuple[int, int]:
    """`80`, `80:90`, `:90`, `80:` (xtables_parse_port: numbers only here)."""
    lo_text, sep, hi_text = text.partition(":")
    if not sep:
        port = _port(lo_text, what)
        return port, port
    lo = _port(lo_text, what) if lo_text else 0
    hi = _port(hi_text, what) if hi_text else 65535
    if lo > hi:
        lo, hi = hi, lo  # iptables swaps an inverted range
    return lo, hi


def _port(text: str, what: str) -> int:
    if not text.isdigit():
        raise OptionError(f"{what}: port {text!r} is not a number (service names are not supported)")
    return parse_int(text, what, 0, 65535)


def port_range_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}:{hi}"


def parse_mark(text: str, what: str) -> tuple[int, int]:
    """`VALUE[/MASK]` (mask defaults to all ones)."""
    value_text, sep, mask_text = text.partition("/")
    value = parse_int(value_text, what)
    mask = parse_int(mask_text, what) if sep else 0xFFFFFFFF
    return value, mask


def parse_hostport(text: str, what: str) -> tuple[int, int | None]:
    """`IP[:PORT]` for --to-destination / --to-source (no ranges)."""
    host, sep, port_text = text.partition(":")
    if "-" in host or "-" in port_text:
        raise OptionError(f"{what}: address or port ranges are not supported ({text!r})")
    try:
        ip = parse_ip(host)
    except ValueError:
        raise OptionError(f"{what}: not an IPv4 address: {host!r}") from None
    return ip, (_port(port_text, what) if sep else None)


# --- matches ---------------------------------------------------------------------

Options = list[tuple[bool, str, list[str]]]  # (inverted, --option, values)


class Match:
    """A match extension. `test()` is evaluated only after the rule's IP part
    matched and every earlier match of the rule succeeded (the kernel's
    order), so side effects and random draws happen exactly when they would."""

    name: ClassVar[str]
    arity: ClassVar[dict[str, int]] = {}

    def test(self, st: PacketState) -> bool:
        raise NotImplementedError

    def save(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.save().strip()


def _single(options: Options, allowed: dict[str, bool]) -> dict[str, tuple[bool, list[str]]]:
    """Options by canonical name; `allowed` says which may be inverted."""
    out: dict[str, tuple[bool, list[str]]] = {}
    for inv, opt, values in options:
        if inv and not allowed.get(opt, False):
            raise OptionError(f"{opt} cannot be inverted with '!'")
        if opt in out:
            raise OptionError(f"{opt} given twice")
        out[opt] = (inv, values)
    return out


@dataclass(slots=True)
class Comment(Match):
    name: ClassVar[str] = "comment"
    arity: ClassVar[dict[str, int]] = {"--comment": 1}
    text: str = ""

    @classmethod
    def parse(cls, options: Options, proto: int) -> Comment:
        opts = _single(options, {})
        if "--comment" not in opts:
            raise OptionError("comment: --comment is required")
        return cls(opts["--comment"][1][0])

    def test(self, st: PacketState) -> bool:
        return True

    def save(self) -> str:
        return f" -m comment --comment {quote(self.text)}"


@dataclass(slots=True)
class Ports(Match):
    """tcp / udp / sctp: --sport, --dport (ranges, '!'), tcp --tcp-flags/--syn
    (xt_tcpudp.c tcp_mt/udp_mt; xt_sctp.c for the ports)."""

    name: ClassVar[str] = "tcp"
    arity: ClassVar[dict[str, int]] = {
        "--sport": 1,
        "--source-port": 1,
        "--dport": 1,
        "--destination-port": 1,
        "--tcp-flags": 2,
        "--syn": 0,
    }
    module: str = "tcp"
    sport: tuple[int, int] | None = None
    sinv: bool = False
    dport: tuple[int, int] | None = None
    dinv: bool = False
    flags: tuple[int, int, bool] | None = None  # mask, comp, inverted

    @classmethod
    def parse_module(cls, module: str, options: Options) -> Ports:
        aliases = {"--source-port": "--sport", "--destination-port": "--dport"}
        options = [(inv, aliases.get(opt, opt), values) for inv, opt, values in options]
        if module != "tcp":
            bad = [opt for _, opt, _ in options if opt in ("--tcp-flags", "--syn")]
            if bad:
                raise OptionError(f"{module}: unsupported option {bad[0]}")
        opts = _single(options, {"--sport": True, "--dport": True, "--tcp-flags": True, "--syn": True})
        m = cls(module)
        if "--sport" in opts:
            m.sinv, m.sport = opts["--sport"][0], parse_port_range(opts["--sport"][1][0], "--sport")
        if "--dport" in opts:
            m.dinv, m.dport = opts["--dport"][0], parse_port_range(opts["--dport"][1][0], "--dport")
        if "--syn" in opts:
            # --syn is --tcp-flags SYN,RST,ACK,FIN SYN (libxt_tcp.c)
            m.flags = (0x17, 0x02, opts["--syn"][0])
        if "--tcp-flags" in opts:
            inv, (mask_text, comp_text) = opts["--tcp-flags"]
            m.flags = (_tcp_flags(mask_text), _tcp_flags(comp_text), inv)
        return m

    def is_noop(self) -> bool:
        return self.sport is None and self.dport is None and self.flags is None

    def test(self, st: PacketState) -> bool:
        if self.sport is not None:
            lo, hi = self.sport
            if (lo <= st.sport <= hi) == self.sinv:
                return False
        if self.dport is not None:
            lo, hi = self.dport
            if (lo <= st.dport <= hi) == self.dinv:
                return False
        if self.flags is not None:
            mask, comp, inv = self.flags
            st.pure = False
            if ((st.flags & mask) == comp) == inv:
                return False
        return True

    def save(self) -> str:
        out = f" -m {self.module}"
        if self.sport is not None:
            out += (" !" if self.sinv else "") + f" --sport {port_range_text(*self.sport)}"
        if self.dport is not None:
            out += (" !" if self.dinv else "") + f" --dport {port_range_text(*self.dport)}"
        if self.flags is not None:
            mask, comp, inv = self.flags
            out += (" !" if inv else "") + f" --tcp-flags {_flags_text(mask)} {_flags_text(comp)}"
        return out


_TCP_FLAG_BITS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20}


def _tcp_flags(text: str) -> int:
    if text == "ALL":
        return 0x3F
    if text == "NONE":
        return 0
    bits = 0
    for name in text.split(","):
        if name not in _TCP_FLAG_BITS:
            raise OptionError(f"--tcp-flags: unknown flag {name!r}")
        bits |= _TCP_FLAG_BITS[name]
    return bits


def _flags_text(bits: int) -> str:
    if bits == 0x3F:
        return "FIN,SYN,RST,PSH,ACK,URG"
    if bits == 0:
        return "NONE"
    return ",".join(name for name, bit in _TCP_FLAG_BITS.items() if bits & bit)


@dataclass(slots=True)
class Multiport(Match):
    """xt_multiport.c ports_match_v1: up to 15 ports or ranges, source,
    destination or either."""

    name: ClassVar[str] = "multiport"
    arity: ClassVar[dict[str, int]] = {
        "--sports": 1,
        "--source-ports": 1,
        "--dports": 1,
        "--destination-ports": 1,
        "--ports": 1,
    }
    side: str = "--dports"
    ranges: tuple[tuple[int, int], ...] = ()
    inv: bool = False

    @classmethod
    def parse(cls, options: Options, proto: int) -> Multiport:
        aliases = {"--source-ports": "--sports", "--destination-ports": "--dports"}
        if len(options) != 1:
            raise OptionError("multiport: give exactly one of --sports, --dports, --ports")
        inv, opt, values = options[0]
        opt = aliases.get(opt, opt)
        if proto not in (TCP, UDP, SCTP):
            raise OptionError("multiport needs '-p tcp', '-p udp' or '-p sctp'")
        ranges = tuple(parse_port_range(part, opt) for part in values[0].split(","))
        if sum(1 if lo == hi else 2 for lo, hi in ranges) > 15:
            raise OptionError(f"{opt}: too many ports (at most 15)")
        return cls(opt, ranges, inv)

    def test(self, st: PacketState) -> bool:
        for lo, hi in self.ranges:
            if self.side == "--sports":
                hit = lo <= st.sport <= hi
            elif self.side == "--dports":
                hit = lo <= st.dport <= hi
            else:
                hit = lo <= st.sport <= hi or lo <= st.dport <= hi
            if hit:
                return not self.inv
        return self.inv

    def save(self) -> str:
        ports = ",".join(port_range_text(lo, hi) for lo, hi in self.ranges)
        return " -m multiport" + (" !" if self.inv else "") + f" {self.side} {ports}"


def quantize_probability(p: float) -> int:
    """libxt_statistic.c: the kernel keeps lround(0x80000000 * p)."""
    return int(0x80000000 * p + 0.5)


@dataclass(slots=True)
class Statistic(Match):
    """xt_statistic.c: random mode matches when (random u32 & 0x7FFFFFFF) <
    threshold; nth mode counts every evaluation and matches when the counter
    wraps to 0 (counter starts at every-1-packet, libxt_statistic.c)."""

    name: ClassVar[str] = "statistic"
    arity: ClassVar[dict[str, int]] = {"--mode": 1, "--probability": 1, "--every": 1, "--packet": 1}
    mode: str = "random"
    threshold: int = 0  # random: probability * 2**31
    every: int = 0  # nth: n - 1, as the kernel keeps it
    packet: int = 0
    inv: bool = False
    count: list[int] = field(default_factory=lambda: [0])  # nth: the shared counter

    @classmethod
    def parse(cls, options: Options, proto: int) -> Statistic:
        opts = _single(options, {"--probability": True, "--every": True})
        mode = opts.get("--mode", (False, [""]))[1][0]
        if mode == "random":
            if "--probability" not in opts or "--every" in opts or "--packet" in opts:
                raise OptionError("statistic: random mode takes --probability only")
            inv, (text,) = opts["--probability"]
            try:
                p = float(text)
            except ValueError:
                raise OptionError(f"--probability: not a number: {text!r}") from None
            if not 0.0 <= p <= 1.0:
                raise OptionError(f"--probability must be between 0 and 1 (got {text})")
            return cls("random", threshold=quantize_probability(p), inv=inv)
        if mode == "nth":
            if "--every" not in opts or "--probability" in opts:
                raise OptionError("statistic: nth mode takes --every and optionally --packet")
            inv, (text,) = opts["--every"]
            every = parse_int(text, "--every", 1) - 1
            packet = parse_int(opts["--packet"][1][0], "--packet") if "--packet" in opts else 0
            if packet > every:
                raise OptionError("the --packet p must be 0 <= p <= n-1")
            return cls("nth", every=every, packet=packet, inv=inv, count=[every - packet])
        raise OptionError(f"statistic: --mode must be random or nth (got {mode!r})")

    @property
    def probability(self) -> Fraction:
        """The exact chance a random-mode test succeeds (before '!'). The
        kernel's threshold is a multiple of 2**-31; when that is the nearest
        such multiple to a simple fraction (kube-proxy's 1/n), say 1/n."""
        exact = Fraction(self.threshold, 0x80000000)
        simple = exact.limit_denominator(100000)
        return simple if abs(simple - exact) * 0x80000000 <= Fraction(1, 2) else exact

    def test(self, st: PacketState) -> bool:
        st.pure = False
        if self.mode == "random":
            if st.explore is not None:
                return self._forced(st)
            hit = (st.nf.rng.getrandbits(32) & 0x7FFFFFFF) < self.threshold
            return hit != self.inv
        old = self.count[0]
        new = 0 if old == self.every else old + 1
        if not st.dry:
            self.count[0] = new
        return (new == 0) != self.inv

    def _forced(self, st: PacketState) -> bool:
        p = self.probability
        if p in (0, 1):  # no branch: the outcome is certain
            return (p == 1) != self.inv
        n = st.decisions
        if n >= len(st.explore or ()):
            raise NeedDecision(p)
        st.decisions = n + 1
        hit = (st.explore or [])[n]
        st.probability *= p if hit else 1 - p
        return hit != self.inv

    def save(self) -> str:
        if self.mode == "random":
            return (
                " -m statistic --mode random"
                + (" !" if self.inv else "")
                + f" --probability {self.threshold / 0x80000000:.11f}"
            )
        out = " -m statistic --mode nth" + (" !" if self.inv else "") + f" --every {self.every + 1}"
        return out + (f" --packet {self.packet}" if self.packet else "")


IP_LIST_TOT = 100  # xt_recent module parameter ip_list_tot: entries per list
IP_PKT_LIST_TOT = 20  # ip_pkt_list_tot: timestamps kept per entry


class RecentEntry:
    __slots__ = ("index", "stamps")

    def __init__(self, now: float) -> None:
        self.stamps = [now]
        self.index = 1  # the next slot to write (recent_entry_update)


RecentTable = dict[int, RecentEntry]  # insertion order is the LRU order (oldest first)


@dataclass(slots=True)
class Recent(Match):
    """xt_recent.c recent_mt: per-name lists of addresses with the times they
    were seen; --set adds/refreshes, --rcheck/--update test 'seen within
    --seconds (and --hitcount times)', --reap drops the oldest entry when it
    is stale, --remove deletes. Lists keep IP_LIST_TOT addresses (LRU)."""

    name: ClassVar[str] = "recent"
    arity: ClassVar[dict[str, int]] = {
        "--name": 1,
        "--set": 0,
        "--rcheck": 0,
        "--update": 0,
        "--remove": 0,
        "--seconds": 1,
        "--hitcount": 1,
        "--reap": 0,
        "--rttl": 0,
        "--mask": 1,
        "--rsource": 0,
        "--rdest": 0,
    }
    list_name: str = "DEFAULT"
    command: str = "--set"
    seconds: int = 0
    hitcount: int = 0
    reap: bool = False
    mask: int = 0xFFFFFFFF
    dest: bool = False
    inv: bool = False

    @classmethod
    def parse(cls, options: Options, proto: int) -> Recent:
        inv = False
        m = cls()
        commands = []
        for o_inv, opt, values in options:
            if opt in ("--set", "--rcheck", "--update", "--remove"):
                commands.append(opt)
                inv = inv or o_inv
            elif o_inv:
                raise OptionError(f"{opt} cannot be inverted with '!'")
            elif opt == "--name":
                m.list_name = values[0]
            elif opt == "--seconds":
                m.seconds = parse_int(values[0], "--seconds", 1)
            elif opt == "--hitcount":
                m.hitcount = parse_int(values[0], "--hitcount", 1, IP_PKT_LIST_TOT)
            elif opt == "--reap":
                m.reap = True
            elif opt == "--mask":
                try:
                    m.mask = parse_ip(values[0])
                except ValueError:
                    raise OptionError(f"--mask: not an IPv4 mask: {values[0]!r}") from None
            elif opt == "--rdest":
                m.dest = True
            elif opt == "--rsource":
                m.dest = False
            else:
                raise OptionError(f"recent: unsupported option {opt}")
        # recent_mt_check: exactly one command; --set/--remove take no modifiers.
        if len(commands) != 1:
            raise OptionError("recent: give exactly one of --set, --rcheck, --update, --remove")
        m.command, m.inv = commands[0], inv
        if m.command in ("--set", "--remove") and (m.seconds or m.hitcount or m.reap):
            raise OptionError(f"recent: {m.command} takes no --seconds, --hitcount or --reap")
        if m.reap and not m.seconds:
            raise OptionError("recent: --reap needs --seconds")
        return m

    def test(self, st: PacketState) -> bool:
        st.pure = False
        table = st.nf.recent[self.list_name]  # made when the rule was loaded (recent_mt_check)
        addr = (st.dst if self.dest else st.src) & self.mask
        entry = table.get(addr)
        ret = self.inv
        if entry is None:
            if self.command != "--set":
                return ret
            if not st.dry:
                if len(table) >= IP_LIST_TOT:
                    del table[next(iter(table))]  # the LRU head
                table[addr] = RecentEntry(st.now)
            return not ret
        if self.command == "--set":
            ret = not ret
        elif self.command == "--remove":
            if not st.dry:
                del table[addr]
            return not ret
        else:
            horizon = st.now - self.seconds
            hits = 0
            for stamp in entry.stamps:
                if self.seconds and stamp < horizon:  # time_after(time, stamp)
                    continue
                hits += 1
                if not self.hitcount or hits >= self.hitcount:
                    ret = not ret
                    break
            if self.reap and not st.dry:
                self._reap(table, horizon, entry, self.command == "--update" and ret)
            if ret and not self.inv:
                st.affinity = self.list_name  # a session-affinity hit, for traces
        if not st.dry and (self.command == "--set" or (self.command == "--update" and ret)):
            self._update(table, addr, entry, st.now)
        return ret

    @staticmethod
    def _reap(table: RecentTable, horizon: float, working: RecentEntry, update: bool) -> None:
        """recent_entry_reap: only the oldest entry (LRU head) is looked at."""
        head_addr = next(iter(table), None)
        if head_addr is None:
            return
        head = table[head_addr]
        if head is working and update:
            return
        if head.stamps[(head.index - 1) % len(head.stamps)] < horizon:
            del table[head_addr]

    @staticmethod
    def _update(table: RecentTable, addr: int, entry: RecentEntry, now: float) -> None:
        """recent_entry_update: ring of IP_PKT_LIST_TOT stamps, moved to the LRU tail."""
        entry.index %= IP_PKT_LIST_TOT
        if entry.index < len(entry.stamps):
            entry.stamps[entry.index] = now
        else:
            entry.stamps.append(now)
        entry.index += 1
        if addr in table:
            del table[addr]
            table[addr] = entry

    def save(self) -> str:
        out = " -m recent" + (" !" if self.inv else "") + f" {self.command}"
        if self.seconds:
            out += f" --seconds {self.seconds}"
        if self.hitcount:
            out += f" --hitcount {self.hitcount}"
        if self.reap:
            out += " --reap"
        out += f" --name {self.list_name} --mask {int_to_ip(self.mask)}"
        return out + (" --rdest" if self.dest else " --rsource")


@dataclass(slots=True)
class MarkMatch(Match):
    """xt_mark.c mark_mt: (skb->mark & mask) == mark, '!' inverts."""

    name: ClassVar[str] = "mark"
    arity: ClassVar[dict[str, int]] = {"--mark": 1}
    value: int = 0
    mask: int = 0xFFFFFFFF
    inv: bool = False

    @classmethod
    def parse(cls, options: Options, proto: int) -> MarkMatch:
        opts = _single(options, {"--mark": True})
        if "--mark" not in opts:
            raise OptionError("mark: --mark is required")
        inv, (text,) = opts["--mark"]
        value, mask = parse_mark(text, "--mark")
        return cls(value, mask, inv)

    def test(self, st: PacketState) -> bool:
        return ((st.mark & self.mask) == self.value) != self.inv

    def save(self) -> str:
        mask = "" if self.mask == 0xFFFFFFFF else f"/{self.mask:#x}"
        return " -m mark" + (" !" if self.inv else "") + f" --mark {self.value:#x}{mask}"


def _ct_states(text: str, allowed: tuple[str, ...]) -> int:
    bits = 0
    for name in text.split(","):
        if name not in allowed:
            raise OptionError(f"unknown conntrack state {name!r} (known: {', '.join(allowed)})")
        bits |= CT_STATE_NAMES[name]
    return bits


def _ct_text(bits: int) -> str:
    order = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
    return ",".join(name for name in order if bits & CT_STATE_NAMES[name])


@dataclass(slots=True)
class Conntrack(Match):
    """xt_conntrack.c conntrack_mt_v3 (--ctstate) and xt_state.c (--state):
    the packet's state bit (plus SNAT/DNAT from the entry's status) is in the
    given set, '!' inverts."""

    name: ClassVar[str] = "conntrack"
    arity: ClassVar[dict[str, int]] = {"--ctstate": 1}
    states: int = 0
    inv: bool = False
    module: str = "conntrack"

    @classmethod
    def parse(cls, options: Options, proto: int) -> Conntrack:
        opts = _single(options, {"--ctstate": True})
        if "--ctstate" not in opts:
            raise OptionError("conntrack: only --ctstate is supported")
        inv, (text,) = opts["--ctstate"]
        return cls(_ct_states(text, tuple(CT_STATE_NAMES)), inv)

    @classmethod
    def parse_state(cls, options: Options, proto: int) -> Conntrack:
        opts = _single(options, {"--state": True})
        if "--state" not in opts:
            raise OptionError("state: --state is required")
        inv, (text,) = opts["--state"]
        return cls(_ct_states(text, ("INVALID", "ESTABLISHED", "NEW", "RELATED", "UNTRACKED")), inv, "state")

    def test(self, st: PacketState) -> bool:
        return bool(self.states & st.ctstate) != self.inv

    def save(self) -> str:
        opt = "--ctstate" if self.module == "conntrack" else "--state"
        return f" -m {self.module}" + (" !" if self.inv else "") + f" {opt} {_ct_text(self.states)}"


ADDR_TYPES = (
    "UNSPEC",
    "UNICAST",
    "LOCAL",
    "BROADCAST",
    "ANYCAST",
    "MULTICAST",
    "BLACKHOLE",
    "UNREACHABLE",
    "PROHIBIT",
    "THROW",
    "NAT",
    "XRESOLVE",
)


def address_type(addr: int, local: Callable[[int], bool]) -> int:
    """__inet_dev_addr_type (net/ipv4/fib_frontend.c) for a node whose local
    table holds its addresses and 127.0.0.0/8: 0.0.0.0/8 and 255.255.255.255
    are BROADCAST, 224.0.0.0/4 MULTICAST, local addresses LOCAL, the rest
    UNICAST (the node has a default route)."""
    if addr >> 24 == 0 or addr == 0xFFFFFFFF:
        return 3
    if addr >> 28 == 0xE:
        return 5
    return 2 if local(addr) else 1


@dataclass(slots=True)
class Addrtype(Match):
    """xt_addrtype.c addrtype_mt_v1: the route type of the source and/or
    destination address is in the given set."""

    name: ClassVar[str] = "addrtype"
    arity: ClassVar[dict[str, int]] = {"--src-type": 1, "--dst-type": 1, "--limit-iface-in": 0, "--limit-iface-out": 0}
    src_types: int = 0
    src_inv: bool = False
    dst_types: int = 0
    dst_inv: bool = False

    @classmethod
    def parse(cls, options: Options, proto: int) -> Addrtype:
        opts = _single(options, {"--src-type": True, "--dst-type": True})
        for opt in ("--limit-iface-in", "--limit-iface-out"):
            if opt in opts:
                raise OptionError(f"addrtype: {opt} is not supported")
        m = cls()
        if "--src-type" in opts:
            m.src_inv, m.src_types = opts["--src-type"][0], _addr_types(opts["--src-type"][1][0])
        if "--dst-type" in opts:
            m.dst_inv, m.dst_types = opts["--dst-type"][0], _addr_types(opts["--dst-type"][1][0])
        if not (m.src_types or m.dst_types):
            raise OptionError("addrtype: give --src-type and/or --dst-type")
        return m

    def test(self, st: PacketState) -> bool:
        local = st.nf.is_local
        if self.src_types and bool(self.src_types & (1 << address_type(st.src, local))) == self.src_inv:
            return False
        return not (self.dst_types and bool(self.dst_types & (1 << address_type(st.dst, local))) == self.dst_inv)

    def save(self) -> str:
        out = " -m addrtype"
        if self.src_types:
            out += (" !" if self.src_inv else "") + f" --src-type {_types_text(self.src_types)}"
        if self.dst_types:
            out += (" !" if self.dst_inv else "") + f" --dst-type {_types_text(self.dst_types)}"
        return out


def _addr_types(text: str) -> int:
    bits = 0
    for name in text.split(","):
        if name not in ADDR_TYPES:
            raise OptionError(f"addrtype: unknown address type {name!r}")
        bits |= 1 << ADDR_TYPES.index(name)
    return bits


def _types_text(bits: int) -> str:
    return ",".join(name for i, name in enumerate(ADDR_TYPES) if bits & (1 << i))


class IpSet(Protocol):
    """What the `set` match asks of an ipset (implemented by the modes that
    own the sets, e.g. IPVS): one kind per dimension ("ip", "net", "port",
    "mark", "iface") and a membership test. For an "ip"/"net" dimension the
    value is an address (int); for "port" it is (protocol number, port), as
    hash:ip,port stores proto:port; "mark" the skb mark; "iface" the name."""

    kinds: tuple[str, ...]

    def test(self, values: tuple[Any, ...]) -> bool: ...


@dataclass(slots=True)
class SetMatch(Match):
    """xt_set.c set_match_v4: take, per dimension of the set, the packet's
    source or destination (the flags), and test membership. With fewer
    flags than the set has dimensions the test fails (ip_set_test)."""

    name: ClassVar[str] = "set"
    arity: ClassVar[dict[str, int]] = {"--match-set": 2}
    set_name: str = ""
    flags: tuple[str, ...] = ()
    inv: bool = False

    @classmethod
    def parse(cls, options: Options, proto: int) -> SetMatch:
        opts = _single(options, {"--match-set": True})
        if "--match-set" not in opts:
            raise OptionError("set: --match-set NAME FLAGS is required")
        inv, (set_name, flags_text) = opts["--match-set"]
        flags = tuple(flags_text.split(","))
        if any(f not in ("src", "dst") for f in flags) or not 1 <= len(flags) <= 6:
            raise OptionError(f"--match-set: flags must be src/dst separated by commas (got {flags_text!r})")
        return cls(set_name, flags, inv)

    def test(self, st: PacketState) -> bool:
        ipset = st.nf.ipsets.get(self.set_name)
        if ipset is None:
            raise LookupError(f"ipset {self.set_name!r} is not known to the engine")
        st.lookups += 1
        kinds = ipset.kinds
        if len(self.flags) < len(kinds):
            return self.inv
        values: list[Any] = []
        for kind, flag in zip(kinds, self.flags, strict=False):
            src = flag == "src"
            if kind == "port":
                values.append((st.proto, st.sport if src else st.dport))
            elif kind == "mark":
                values.append(st.mark)
            elif kind == "iface":
                values.append(st.iif if src else st.oif)
            else:
                values.append(st.src if src else st.dst)
        return ipset.test(tuple(values)) != self.inv

    def save(self) -> str:
        return " -m set" + (" !" if self.inv else "") + f" --match-set {self.set_name} {','.join(self.flags)}"


@dataclass(slots=True)
class Nfacct(Match):
    """xt_nfacct.c: counts the packet in a named accounting object; always matches."""

    name: ClassVar[str] = "nfacct"
    arity: ClassVar[dict[str, int]] = {"--nfacct-name": 1}
    counter: str = ""

    @classmethod
    def parse(cls, options: Options, proto: int) -> Nfacct:
        opts = _single(options, {})
        if "--nfacct-name" not in opts:
            raise OptionError("nfacct: --nfacct-name is required")
        return cls(opts["--nfacct-name"][1][0])

    def test(self, st: PacketState) -> bool:
        return True

    def save(self) -> str:
        return f" -m nfacct --nfacct-name {self.counter}"


@dataclass(slots=True)
class Physdev(Match):
    """xt_physdev.c physdev_mt: the bridge ports a bridged packet came in or
    goes out on. The emulated node has no br_netfilter, so no packet carries
    bridge information, and for such a packet physdev_mt matches exactly
    when every option given is inverted (`! --physdev-is-in`, as kube-proxy
    writes it, matches; `--physdev-is-in` does not)."""

    name: ClassVar[str] = "physdev"
    arity: ClassVar[dict[str, int]] = {
        "--physdev-in": 1,
        "--physdev-out": 1,
        "--physdev-is-in": 0,
        "--physdev-is-out": 0,
        "--physdev-is-bridged": 0,
    }
    # (option, inverted, interface name or "") in the order libxt_physdev's save prints them
    options: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, options: Options, proto: int) -> Physdev:
        opts = _single(options, dict.fromkeys(cls.arity, True))
        if not opts:
            raise OptionError("physdev: give at least one --physdev-* option")
        order = ("--physdev-is-in", "--physdev-in", "--physdev-is-out", "--physdev-out", "--physdev-is-bridged")
        return cls(tuple((opt, opts[opt][0], (opts[opt][1] or [""])[0]) for opt in order if opt in opts))

    def test(self, st: PacketState) -> bool:
        return all(inv for _, inv, _ in self.options)

    def save(self) -> str:
        out = " -m physdev"
        for opt, inv, iface in self.options:
            out += (" !" if inv else "") + f" {opt}" + (f" {iface}" if iface else "")
        return out


MATCHES: dict[str, Any] = {
    "comment": Comment,
    "multiport": Multiport,
    "statistic": Statistic,
    "recent": Recent,
    "mark": MarkMatch,
    "conntrack": Conntrack,
    "addrtype": Addrtype,
    "set": SetMatch,
    "nfacct": Nfacct,
    "physdev": Physdev,
}
PORT_MODULES = {"tcp": TCP, "udp": UDP, "sctp": SCTP}
PROTOCOL_MODULE = {TCP: "tcp", UDP: "udp", SCTP: "sctp"}


# Matches without randomness, side effects or cost: a rule whose later match
# cannot succeed may be skipped without evaluating these first.
PURE_MATCHES = (Comment, Ports, Multiport, MarkMatch, Conntrack, Addrtype, Nfacct, Physdev)


_ARITY: dict[str, dict[str, int]] = {
    "tcp": dict(Ports.arity),
    "udp": {k: v for k, v in Ports.arity.items() if not k.startswith(("--tcp", "--syn"))},
    "state": {"--state": 1},
    **{name: dict(cls.arity) for name, cls in MATCHES.items()},
}
_ARITY["sctp"] = _ARITY["udp"]


def match_arity(module: str) -> dict[str, int]:
    """The options a match takes and how many values each (read-only)."""
    arity = _ARITY.get(module)
    if arity is None:
        raise OptionError(f"unsupported match -m {module}")
    return arity


# Parsed matches by their text: all but nth counters are immutable, so equal
# options give one shared object (kube-proxy repeats `-m tcp`, probabilities, marks).
_MATCH_CACHE: dict[tuple[str, int, str], Match] = {}


def build_match(module: str, options: Options, proto: int) -> Match:
    key = (module, proto, repr(options))
    hit = _MATCH_CACHE.get(key)
    if hit is not None:
        return hit
    match = _build_match(module, options, proto)
    if not (isinstance(match, Statistic) and match.mode == "nth"):
        if len(_MATCH_CACHE) > 500_000:
            _MATCH_CACHE.clear()
        _MATCH_CACHE[key] = match
    return match


def _build_match(module: str, options: Options, proto: int) -> Match:
    if module in PORT_MODULES:
        if proto != PORT_MODULES[module]:
            raise OptionError(f"-m {module} needs '-p {module}'")
        return Ports.parse_module(module, options)
    if module == "state":
        return Conntrack.parse_state(options, proto)
    match: Match = MATCHES[module].parse(options, proto)
    return match


# --- targets ---------------------------------------------------------------------

# What a target does, as the engine dispatches on it.
T_NONE, T_JUMP, T_GOTO, T_ACCEPT, T_DROP, T_RETURN, T_REJECT = range(7)
T_DNAT, T_SNAT, T_MASQUERADE, T_REDIRECT, T_MARK, T_LOG = range(7, 13)
VERDICT_TARGETS = {"ACCEPT": T_ACCEPT, "DROP": T_DROP, "RETURN": T_RETURN}
# xt_nat.c / xt_MASQUERADE.c / xt_REDIRECT.c register these for the nat table only.
NAT_ONLY = {"DNAT", "SNAT", "MASQUERADE", "REDIRECT"}
# Hooks a target may be used from (x_tables checks this when the rules load).
TARGET_HOOKS = {
    "DNAT": {"PREROUTING", "OUTPUT"},
    "REDIRECT": {"PREROUTING", "OUTPUT"},
    "SNAT": {"POSTROUTING", "INPUT"},
    "MASQUERADE": {"POSTROUTING"},
    "REJECT": {"INPUT", "FORWARD", "OUTPUT"},
}
REJECT_WITH = (
    "icmp-net-unreachable",
    "icmp-host-unreachable",
    "icmp-port-unreachable",
    "icmp-proto-unreachable",
    "icmp-net-prohibited",
    "icmp-host-prohibited",
    "icmp-admin-prohibited",
    "tcp-reset",
)
TARGET_ARITY: dict[str, dict[str, int]] = {
    "ACCEPT": {},
    "DROP": {},
    "RETURN": {},
    "REJECT": {"--reject-with": 1},
    "DNAT": {"--to-destination": 1, "--random": 0, "--persistent": 0},
    "SNAT": {"--to-source": 1, "--random": 0, "--random-fully": 0, "--persistent": 0},
    "MASQUERADE": {"--to-ports": 1, "--random": 0, "--random-fully": 0},
    "REDIRECT": {"--to-ports": 1, "--random": 0},
    "MARK": {"--set-mark": 1, "--set-xmark": 1, "--and-mark": 1, "--or-mark": 1, "--xor-mark": 1},
    "LOG": {
        "--log-prefix": 1,
        "--log-level": 1,
        "--log-tcp-sequence": 0,
        "--log-tcp-options": 0,
        "--log-ip-options": 0,
        "--log-uid": 0,
    },
}


@dataclass(slots=True)
class Target:
    """`-j NAME [options]` or `-g CHAIN`; `kind` is what the engine dispatches on."""

    kind: int = T_NONE
    name: str = ""  # the target or chain name
    ip: int = 0  # DNAT/SNAT address
    port: int | None = None  # DNAT/SNAT/MASQUERADE/REDIRECT port
    value: int = 0  # MARK: xor value
    mask: int = 0  # MARK: bits cleared first
    flags: tuple[str, ...] = ()  # options without values (--random-fully, ...)
    text: str = ""  # REJECT --reject-with, LOG prefix

    def save(self) -> str:
        kind = self.kind
        if kind == T_NONE:
            return ""
        if kind == T_GOTO:
            return f" -g {self.name}"
        out = f" -j {self.name}"
        if kind == T_REJECT:
            return out + f" --reject-with {self.text}"
        if kind in (T_DNAT, T_SNAT):
            opt = "--to-destination" if kind == T_DNAT else "--to-source"
            port = f":{self.port}" if self.port is not None else ""
            out += f" {opt} {int_to_ip(self.ip)}{port}"
        elif kind in (T_MASQUERADE, T_REDIRECT) and self.port is not None:
            out += f" --to-ports {self.port}"
        elif kind == T_MARK:
            # libxt_MARK.c mark_tg_save (revision 2) prints every form as --set-xmark.
            return out + f" --set-xmark {self.value:#x}/{self.mask:#x}"
        elif kind == T_LOG and self.text:
            out += f" --log-prefix {quote(self.text)}"
        return out + "".join(f" {flag}" for flag in self.flags)

    def describe(self) -> str:
        return self.save().strip()


def build_target(name: str, options: Options, goto: bool, chains: Mapping[str, object] | None = None) -> Target:
    """A target from its name and options; unknown names are user chains
    (whether they exist is checked when the table is committed)."""
    if goto:
        if options:
            raise OptionError("-g takes a chain name and no options")
        return Target(T_GOTO, name)
    if name not in TARGET_ARITY:
        if options:
            raise OptionError(f"unsupported target -j {name} (or options given to a chain jump)")
        return Target(T_JUMP, name)
    opts = _single(options, {})
    flags = tuple(opt for opt, (_, values) in opts.items() if not values)
    if name in VERDICT_TARGETS:
        return Target(VERDICT_TARGETS[name], name)
    if name == "REJECT":
        with_ = opts.get("--reject-with", (False, ["icmp-port-unreachable"]))[1][0]
        aliases = {"icmp-admin-prohibited": "icmp-admin-prohibited", "tcp-rst": "tcp-reset"}
        with_ = aliases.get(with_, with_)
        if with_ not in REJECT_WITH:
            raise OptionError(f"REJECT: unknown --reject-with {with_!r}")
        return Target(T_REJECT, name, text=with_)
    if name in ("DNAT", "SNAT"):
        opt = "--to-destination" if name == "DNAT" else "--to-source"
        if opt not in opts:
            raise OptionError(f"{name}: {opt} is required")
        ip, port = parse_hostport(opts[opt][1][0], opt)
        return Target(T_DNAT if name == "DNAT" else T_SNAT, name, ip=ip, port=port, flags=flags)
    if name in ("MASQUERADE", "REDIRECT"):
        port = None
        if "--to-ports" in opts:
            lo, _ = parse_port_range(opts["--to-ports"][1][0].replace("-", ":"), "--to-ports")
            port = lo
        return Target(T_MASQUERADE if name == "MASQUERADE" else T_REDIRECT, name, port=port, flags=flags)
    if name == "MARK":
        return _mark_target(opts)
    prefix = opts.get("--log-prefix", (False, [""]))[1][0]
    return Target(T_LOG, name, text=prefix, flags=flags)


def _mark_target(opts: dict[str, tuple[bool, list[str]]]) -> Target:
    """MARK revision 2 (xt_mark.c mark_tg): mark = (mark & ~mask) ^ value;
    the other forms are spelled in those terms by libxt_MARK.c."""
    if len(opts) != 1:
        raise OptionError("MARK: give exactly one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark")
    ((opt, (_, (text,))),) = opts.items()
    if opt in ("--set-xmark", "--set-mark"):
        value, mask = parse_mark(text, opt)
        if opt == "--set-mark":
            mask |= value  # (mark & ~mask) | value, said as xor
        return Target(T_MARK, "MARK", value=value, mask=mask)
    value = parse_int(text, opt)
    if opt == "--and-mark":
        return Target(T_MARK, "MARK", value=0, mask=~value & 0xFFFFFFFF)
    if opt == "--or-mark":
        return Target(T_MARK, "MARK", value=value, mask=value)
    return Target(T_MARK, "MARK", value=value, mask=0)


_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def quote(text: str) -> str:
    """xtables_save_string (libxtables): bare when only [A-Za-z0-9_-], else
    double-quoted with '"', '\\' and "'" escaped by a backslash."""
    if text and all(c in _NO_QUOTE for c in text):
        return text
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in text)
    return f'"{escaped}"'


def proto_text(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))
