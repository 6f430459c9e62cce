"""The IPVS schedulers, restated from net/netfilter/ipvs/ip_vs_*.c.

A virtual service keeps its real servers ("destinations") in a list the
kernel extends at the head (`list_add_rcu` in __ip_vs_update_dest), so the
newest server comes first; every scheduler walks that list, and so does the
tie-breaking of the least-connection family. `Dest` is one destination with
the counters the kernel keeps (active/inactive/persistent connections, the
OVERLOAD and AVAILABLE flags, weight and last non-zero weight).

Each scheduler is a small class with the kernel's callbacks: `init(dests)`
(init_service), `changed(dests, event, index)` (add_dest/del_dest/upd_dest)
and `schedule(dests, src, sport, dst)` returning the chosen `Dest` or None
("no destination available"). `explain()` returns, for a trace, why: the
loads compared or the hash bucket hit, computed without changing state.

Service flags (include/uapi/linux/ip_vs.h): PERSISTENT 0x1, HASHED 0x2,
ONEPACKET 0x4, SCHED1 0x8, SCHED2 0x10, SCHED3 0x20; for sh and mh SCHED1 is
"fallback" and SCHED2 "port".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import gcd
from typing import Any, ClassVar

from netem.addr import int_to_ip

from .hashing import M32, hash_32, hsiphash_u32

F_PERSISTENT = 0x0001
F_HASHED = 0x0002
F_ONEPACKET = 0x0004
F_SCHED1 = 0x0008
F_SCHED2 = 0x0010
F_SCHED3 = 0x0020
F_SCHED_FALLBACK = F_SCHED1  # sh-fallback / mh-fallback
F_SCHED_PORT = F_SCHED2  # sh-port / mh-port

ADD, DEL, UPD = "add", "del", "upd"


class Dest:
    """struct ip_vs_dest: one real server of one virtual service."""

    # What a new connection reads first (the scheduler's test, the engine's
    # plan for the client's walk key, the counts), sharing the object's first
    # cache line; then the rest.
    __slots__ = (  # noqa: RUF023
        "overloaded",
        "weight",
        "plan_key",
        "plan",
        "inactive",
        "u_threshold",
        "conns",
        "available",
        "active",
        "persist",
        "inpkts",
        "inbytes",
        "decisions",
        "addr",
        "port",
        "outpkts",
        "outbytes",
        "cls",
        "replies",
        "l_threshold",
        "last_weight",
        "_text",
    )

    def __init__(self, addr: int, port: int, weight: int = 1, u_threshold: int = 0, l_threshold: int = 0) -> None:
        self.addr = addr
        self.port = port
        self.weight = weight
        self.last_weight = weight
        self.u_threshold = u_threshold
        self.l_threshold = l_threshold
        self.active = 0
        self.inactive = 0
        self.persist = 0
        self.available = True
        self.overloaded = False
        self._text = ""
        # ip_vs_stats: conns, inpkts, outpkts, inbytes, outbytes (attributes: the hot path's;
        # the engine counts a live connection's own packets on it and adds them here later)
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0
        # Decisions the engine reuses for this destination (see engine.py):
        # per walk key of a connection's first packet, and of a reply.
        self.decisions: dict[Any, Any] = {}
        self.replies: dict[Any, Any] = {}
        # The latest of `decisions` used (key, plan): most new connections to
        # a server come from clients with one walk key (pods alike to the rules).
        self.plan_key: Any = None
        self.plan: Any = None
        self.cls: Any = None  # its class to the rules (engine.py), worked out on first use

    @property
    def text(self) -> str:
        """ "ip:port", rendered on first use (most servers are never printed)."""
        if not self._text:
            self._text = f"{int_to_ip(self.addr)}:{self.port}"
        return self._text

    @property
    def stats(self) -> list[int]:
        """conns, inpkts, outpkts, inbytes, outbytes (ip_vs_stats); the live
        connections' own packets are in after the engine's fold_stats()."""
        return [self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes]

    @property
    def key(self) -> tuple[int, int]:
        return (self.addr, self.port)

    def overhead(self) -> int:
        """ip_vs_dest_conn_overhead(): active x 256 + inactive."""
        return (self.active << 8) + self.inactive

    def total(self) -> int:
        """ip_vs_dest_totalconns()."""
        return self.active + self.inactive

    def bound(self, active: bool, template: bool) -> None:
        """ip_vs_bind_dest(): count the new entry, set OVERLOAD at the upper threshold."""
        if template:
            self.persist += 1
        elif active:
            self.active += 1
        else:
            self.inactive += 1
        if self.u_threshold and self.total() >= self.u_threshold:
            self.overloaded = True

    def unbound(self, active: bool, template: bool) -> None:
        """ip_vs_unbind_dest(): uncount, clear OVERLOAD below the lower threshold
        (or below 3/4 of the upper one when no lower threshold is set)."""
        if template:
            self.persist -= 1
        elif active:
            self.active -= 1
        else:
            self.inactive -= 1
        if self.l_threshold:
            if self.total() < self.l_threshold:
                self.overloaded = False
        elif self.u_threshold:
            if self.total() * 4 < self.u_threshold * 3:
                self.overloaded = False
        else:
            self.overloaded = False

    def __repr__(self) -> str:
        return f"Dest({self.text} w={self.weight} a={self.active} i={self.inactive})"


Explain = dict[str, object]


class Scheduler:
    """The scheduler interface (struct ip_vs_scheduler)."""

    name: ClassVar[str] = ""
    deterministic: ClassVar[bool] = True  # the next choice depends only on state, never on chance

    def __init__(self, flags: int = 0) -> None:
        self.flags = flags

    def init(self, dests: Sequence[Dest]) -> None:
        pass

    def changed(self, dests: Sequence[Dest], event: str, index: int) -> None:
        """A destination was added (now at `index`), deleted (was at `index`) or updated."""

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        raise NotImplementedError

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        return {}


def usable(d: Dest) -> bool:
    """Not overloaded and weight above zero (weight 0 = quiesced)."""
    return not d.overloaded and d.weight > 0


class RoundRobin(Scheduler):
    """ip_vs_rr.c: continue after the last choice, the first usable server
    wins; the last choice itself is checked last. Position -1 is the list head."""

    name = "rr"

    def init(self, dests: Sequence[Dest]) -> None:
        self.pos = -1

    def changed(self, dests: Sequence[Dest], event: str, index: int) -> None:
        if event == ADD and self.pos >= 0:
            self.pos += 1  # a new head entry shifts the current one
        elif event == DEL and self.pos >= index:
            # ip_vs_rr_del_dest: when the current entry goes, step back to
            # the previous one (or the head), so the next one is next.
            self.pos -= 1

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        n = len(dests)
        pos = self.pos
        # The common case first: the entry after the last choice is usable.
        i = pos + 1
        if i < n:
            d = dests[i]
            if not d.overloaded and d.weight > 0:
                self.pos = i
                return d
        for step in range(1, n + 1):
            i = pos + step
            if i >= n:
                if pos < 0:
                    break
                i -= n
            d = dests[i]
            if not d.overloaded and d.weight > 0:
                self.pos = i
                return d
        return None

    def order(self, n: int) -> list[int]:
        """The list positions the next schedule() checks, in order."""
        pos = self.pos
        return [pos + s if pos + s < n else pos + s - n for s in range(1, n + 1) if pos >= 0 or pos + s < n]

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        last = dests[self.pos].text if 0 <= self.pos < len(dests) else "list head"
        return {"after": last, "order": [dests[i].text for i in self.order(len(dests))]}


class WeightedRoundRobin(Scheduler):
    """ip_vs_wrr.c: passes over the list with a current weight `cw` stepping
    down by the gcd `di` from `mw` (max weight - (di - 1)); a server is taken
    when its weight >= cw."""

    name = "wrr"

    def init(self, dests: Sequence[Dest]) -> None:
        self.cl = -1
        self.di = _gcd_weight(dests, lambda d: d.weight) or 1
        self.mw = max((d.weight for d in dests), default=0) - (self.di - 1)
        self.cw = self.mw

    def changed(self, dests: Sequence[Dest], event: str, index: int) -> None:
        # ip_vs_wrr_dest_changed: back to the head, recompute, keep cw in range.
        self.cl = -1
        self.di = _gcd_weight(dests, lambda d: d.weight) or 1
        self.mw = max((d.weight for d in dests), default=0) - (self.di - 1)
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        if self.mw == 0:
            return None
        n = len(dests)
        last = self.cl
        start = self.cl
        stop = -2  # no stop entry yet
        last_pass = restarted = False
        while True:
            for i in range(start + 1, n):
                d = dests[i]
                if not d.overloaded and d.weight >= self.cw:
                    self.cl = i
                    return d
                if i == stop:
                    self.cl = i
                    return None
            start = -1  # the walk reached the list head
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = -1
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        after = dests[self.cl].text if 0 <= self.cl < len(dests) else "list head"
        return {"after": after, "current_weight": self.cw, "max_weight": self.mw, "gcd": self.di}


class LeastConnection(Scheduler):
    """ip_vs_lc.c: the usable server with the least overhead; the first in
    list order wins a tie."""

    name = "lc"

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for d in dests:
            if d.overloaded or d.weight == 0:
                continue
            doh = d.overhead()
            if least is None or doh < loh:
                least, loh = d, doh
        return least

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        return {"loads": {d.text: d.overhead() for d in dests if usable(d)}}


class WeightedLeastConnection(Scheduler):
    """ip_vs_wlc.c: least overhead/weight, compared as h1*w2 > h2*w1 so no
    division; the first usable server in list order starts and wins ties."""

    name = "wlc"

    def overhead(self, d: Dest) -> int:
        return d.overhead()

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        it = iter(dests)
        least: Dest | None = None
        for d in it:
            if usable(d):
                least = d
                break
        if least is None:
            return None
        loh = self.overhead(least)
        for d in it:
            if d.overloaded:
                continue
            doh = self.overhead(d)
            if loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        return {"loads": {d.text: f"{self.overhead(d)}/{d.weight}" for d in dests if not d.overloaded}}


class ShortestExpectedDelay(WeightedLeastConnection):
    """ip_vs_sed.c: as wlc with overhead = active + 1 (the incoming job)."""

    name = "sed"

    def overhead(self, d: Dest) -> int:
        return d.active + 1


class NeverQueue(Scheduler):
    """ip_vs_nq.c: an idle server (no active connections) wins at once,
    else the least (active + 1)/weight."""

    name = "nq"

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for d in dests:
            if d.overloaded or not d.weight:
                continue
            doh = d.active + 1
            if d.active == 0:
                return d
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        return {"loads": {d.text: f"{d.active + 1}/{d.weight}" for d in dests if usable(d)}}


class WeightedFailover(Scheduler):
    """ip_vs_fo.c: the usable server with the highest weight (first on ties)."""

    name = "fo"

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        best: Dest | None = None
        hw = 0
        for d in dests:
            if not d.overloaded and d.weight > hw:
                best, hw = d, d.weight
        return best

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        return {"weights": {d.text: d.weight for d in dests if not d.overloaded}}


class Overflow(Scheduler):
    """ip_vs_ovf.c: the highest weight among servers whose active
    connections do not exceed their weight."""

    name = "ovf"

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        best: Dest | None = None
        hw = 0
        for d in dests:
            w = d.weight
            if d.overloaded or d.active > w or w == 0:
                continue
            if best is None or w > hw:
                best, hw = d, w
        return best

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        return {"active/weight": {d.text: f"{d.active}/{d.weight}" for d in dests if not d.overloaded}}


SH_TAB_BITS = 8  # CONFIG_IP_VS_SH_TAB_BITS default
SH_TAB_SIZE = 1 << SH_TAB_BITS
SH_TAB_MASK = SH_TAB_SIZE - 1


def sh_hashkey(addr: int, port: int, offset: int) -> int:
    """ip_vs_sh_hashkey(): (offset + hash_32(port + addr, 8)) & 255."""
    return (offset + hash_32((port + addr) & M32, SH_TAB_BITS)) & SH_TAB_MASK


class SourceHashing(Scheduler):
    """ip_vs_sh.c: 256 buckets filled by walking the list, each server taking
    `weight` consecutive buckets (one when its weight is 0); the source
    address (plus the source port with sh-port) picks the bucket. With
    sh-fallback an unusable server makes it probe offset buckets in turn."""

    name = "sh"

    def init(self, dests: Sequence[Dest]) -> None:
        self.buckets: list[Dest | None] = [None] * SH_TAB_SIZE
        if not dests:
            return
        i = d_count = 0
        for b in range(SH_TAB_SIZE):
            d = dests[i]
            self.buckets[b] = d
            d_count += 1
            if d_count >= d.weight:
                i = (i + 1) % len(dests)
                d_count = 0

    def changed(self, dests: Sequence[Dest], event: str, index: int) -> None:
        self.init(dests)

    def _port(self, sport: int) -> int:
        return sport if self.flags & F_SCHED_PORT else 0

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        port = self._port(sport)
        ihash = sh_hashkey(src, port, 0)
        d = self.buckets[ihash]
        if d is None:
            return None
        if usable(d):
            return d
        if not self.flags & F_SCHED_FALLBACK:
            return None
        for offset in range(SH_TAB_SIZE):
            d = self.buckets[sh_hashkey(src, port, (offset + ihash) % SH_TAB_SIZE)]
            if d is None:
                return None
            if usable(d):
                return d
        return None

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        bucket = sh_hashkey(src, self._port(sport), 0)
        d = self.buckets[bucket]
        return {"hashed": f"{int_to_ip(src)}:{self._port(sport)}", "bucket": bucket, "server": d.text if d else None}


class DestinationHashing(Scheduler):
    """ip_vs_dh.c: 256 buckets assigned round the list one each; the
    packet's destination address picks the bucket (hash_32)."""

    name = "dh"

    def init(self, dests: Sequence[Dest]) -> None:
        n = len(dests)
        self.buckets: list[Dest | None] = [dests[b % n] if n else None for b in range(SH_TAB_SIZE)]

    def changed(self, dests: Sequence[Dest], event: str, index: int) -> None:
        self.init(dests)

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        d = self.buckets[hash_32(dst, SH_TAB_BITS)]
        if d is None or not d.available or d.weight <= 0 or d.overloaded:
            return None
        return d

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        bucket = hash_32(dst, SH_TAB_BITS)
        d = self.buckets[bucket]
        return {"hashed": int_to_ip(dst), "bucket": bucket, "server": d.text if d else None}


# ip_vs_mh.c: CONFIG_IP_VS_MH_TAB_INDEX defaults to 12, so the table size is
# primes[12 - 8] = 4093 and IP_VS_MH_TAB_BITS = 12 / 2 = 6.
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_TAB_SIZE = MH_PRIMES[12 - 8]
MH_TAB_BITS = 12 // 2
MH_HASH1 = (2654435761, 2654435761)  # generate_hash_secret()
MH_HASH2 = (2654446892, 2654446892)


def mh_hashkey(addr: int, port: int, key: tuple[int, int], offset: int) -> int:
    """ip_vs_mh_hashkey(): hsiphash of the u32 offset + port + address."""
    return hsiphash_u32(offset + port + addr, key)


class MaglevHashing(Scheduler):
    """ip_vs_mh.c: each server gets a permutation of the 4093 slots (offset
    and skip from two keyed hashes of its address+port); the table is filled
    round the list, each server taking `turns` (last_weight / gcd >> rshift)
    preferred free slots per round. The source address (plus port with
    mh-port) picks a slot; mh-fallback probes further slots."""

    name = "mh"

    def init(self, dests: Sequence[Dest]) -> None:
        self.lookup: list[Dest | None] = [None] * MH_TAB_SIZE
        self._populate(dests)

    def changed(self, dests: Sequence[Dest], event: str, index: int) -> None:
        self._populate(dests)

    def _populate(self, dests: Sequence[Dest]) -> None:
        g = _gcd_weight(dests, lambda d: d.last_weight)
        if g < 1:
            self.lookup = [None] * MH_TAB_SIZE
            return
        mw = max(d.last_weight for d in dests) // g
        rshift = max(mw.bit_length() - MH_TAB_BITS, 0)
        perm: list[int] = []
        skip: list[int] = []
        turns: list[int] = []
        for d in dests:
            offset = mh_hashkey(d.addr, d.port, MH_HASH1, 0) % MH_TAB_SIZE
            skip.append(mh_hashkey(d.addr, d.port, MH_HASH2, 0) % (MH_TAB_SIZE - 1) + 1)
            perm.append(offset)
            lw = d.last_weight
            turns.append(((lw // g) >> rshift) or (1 if lw != 0 else 0))
        taken = [False] * MH_TAB_SIZE
        lookup = self.lookup
        n = dt_count = 0
        while n < MH_TAB_SIZE:
            i = 0
            while i < len(dests):
                if turns[i] < 1:
                    i += 1
                    continue
                c = perm[i]
                while taken[c]:
                    c += skip[i]
                    if c >= MH_TAB_SIZE:
                        c -= MH_TAB_SIZE
                perm[i] = c
                taken[c] = True
                lookup[c] = dests[i]
                n += 1
                if n == MH_TAB_SIZE:
                    return
                dt_count += 1
                if dt_count >= turns[i]:
                    dt_count = 0
                    i += 1

    def _port(self, sport: int) -> int:
        return sport if self.flags & F_SCHED_PORT else 0

    def schedule(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Dest | None:
        port = self._port(sport)
        ihash = mh_hashkey(src, port, MH_HASH1, 0) % MH_TAB_SIZE
        d = self.lookup[ihash]
        if d is None:
            return None
        if usable(d):
            return d
        if not self.flags & F_SCHED_FALLBACK:
            return None
        for offset in range(MH_TAB_SIZE):
            roffset = (offset + ihash) % MH_TAB_SIZE
            d = self.lookup[mh_hashkey(src, port, MH_HASH1, roffset) % MH_TAB_SIZE]
            if d is None:
                return None
            if usable(d):
                return d
        return None

    def explain(self, dests: Sequence[Dest], src: int, sport: int, dst: int) -> Explain:
        port = self._port(sport)
        slot = mh_hashkey(src, port, MH_HASH1, 0) % MH_TAB_SIZE
        d = self.lookup[slot]
        return {
            "hashed": f"{int_to_ip(src)}:{port}",
            "slot": slot,
            "table_size": MH_TAB_SIZE,
            "server": d.text if d else None,
        }


def _gcd_weight(dests: Sequence[Dest], weight: Callable[[Dest], int]) -> int:
    g = 0
    for d in dests:
        w = weight(d)
        if w > 0:
            g = gcd(w, g) if g > 0 else w
    return g


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnection,
        WeightedLeastConnection,
        ShortestExpectedDelay,
        NeverQueue,
        SourceHashing,
        DestinationHashing,
        MaglevHashing,
        WeightedFailover,
        Overflow,
    )
}


def make_scheduler(name: str, flags: int = 0) -> Scheduler:
    """A scheduler by its ipvsadm name; KeyError for names the kernel lacks here."""
    return SCHEDULERS[name](flags)
