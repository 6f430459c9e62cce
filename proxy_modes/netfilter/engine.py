"""A netfilter engine: any iptables ruleset, walked the way the kernel walks it.

This is the public, mode-independent part of the iptables mode. Give it the
text of `iptables-save` (a real node's, or what a mode renders), the node's
local addresses and, optionally, ipsets; then send packets through it:

    nf = Netfilter.from_save(text, local_ips=[node_ip], rng=random.Random(1))
    decision = nf.route(packet, now)          # verdict, endpoint, masquerade, cost
    decision, steps, reach = nf.trace(packet, now)
    nf.restore(partial_text, noflush=True)    # a sync; conntrack and recent lists stay

What the kernel does, and so what this does (net/ipv4/netfilter/ip_tables.c
ipt_do_table; hook priorities from include/uapi/linux/netfilter_ipv4.h):

- A packet from outside passes PREROUTING (raw, mangle, nat), is routed
  (to INPUT if its destination is now local, else FORWARD), passes filter,
  then POSTROUTING (mangle, nat). One the node sends passes OUTPUT (raw,
  mangle, nat, filter), then POSTROUTING, and INPUT too if it stays local.
- The nat table is consulted only for the first packet of a connection
  (each of its DST and SRC manipulations once); every later packet follows
  its conntrack entry, also after the rules change. Filter sees every packet.
- Rules are tried in order; a rule's IP part first, then its matches in
  order, stopping at the first that fails, so random draws and `recent`
  side effects happen exactly when they would. Jumps push a return point,
  `-g` does not, RETURN and the end of a user chain pop, the end of a
  built-in chain applies its policy.

Cost is reported, not paid: `Decision.rules` is the number of rules whose
match the kernel would evaluate (a linear walk), `lookups` the conntrack and
ipset lookups. To be fast, long chains get an index (by destination address
or by protocol and destination port) that lets the walk skip rules that
cannot match while still counting them; `Netfilter(..., literal=True)` walks
every rule, and a differential test holds the two to the same answers.

Randomness comes from the caller's `random.Random` (`statistic --mode
random` draws 32 bits as the kernel's get_random_u32 does); time is `now`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from netem.addr import MAX, int_to_ip
from netem.conntrack import (
    ACK_CLASS_BITS,
    DST_NAT,
    ORIGINAL,
    REPLIED_ASSURED,
    REPLY,
    SEEN_REPLY,
    SRC_NAT,
    Conntrack,
    CtEntry,
    tcp_next_state,
)
from netem.conntrack import ESTABLISHED as TCP_ESTABLISHED
from netem.gcpause import paused_gc
from netem.packet import ACK, TCP, Packet, format_flow, proto_name
from proxy_modes.base import Decision, Reach, Step, Verdict, probability_text

from . import syntax, xt
from .compile import Registry
from .syntax import Chain, Rule, RuleCache, Table, Tables
from .xt import (
    CT_DNAT,
    CT_ESTABLISHED,
    CT_INVALID,
    CT_NEW,
    CT_SNAT,
    T_ACCEPT,
    T_DNAT,
    T_DROP,
    T_GOTO,
    T_JUMP,
    T_LOG,
    T_MARK,
    T_NONE,
    T_REDIRECT,
    T_REJECT,
    T_RETURN,
    T_SNAT,
    IpSet,
    NeedDecision,
    PacketState,
    RecentTable,
)

if TYPE_CHECKING:
    import random

__all__ = ["EngineTrace", "Hook", "IpSet", "Netfilter", "Outcome", "PacketState", "SimpleSet", "Verdict"]

# Verdicts of a table walk.
V_ACCEPT, V_DROP, V_REJECT = 1, 2, 3
_VERDICTS = {V_DROP: Verdict.DROP, V_REJECT: Verdict.REJECT}
LOOPBACK = 127

# Which tables a hook runs, in priority order, and which NAT manipulation
# the nat table does there (nf_nat_ipv4_ops: DST at PREROUTING/OUTPUT,
# SRC at POSTROUTING/INPUT).
Hook = str
HOOK_TABLES: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "nat"),
    "FORWARD": ("mangle", "filter"),
    "OUTPUT": ("raw", "mangle", "nat", "filter"),
    "POSTROUTING": ("mangle", "nat"),
}
DST_HOOKS = {"PREROUTING", "OUTPUT"}
INDEX_MIN_RULES = 16  # shorter chains are walked rule by rule


@dataclass(frozen=True, slots=True)
class Outcome:
    """One way a new connection can go (see `Netfilter.explore`)."""

    probability: Fraction
    verdict: Verdict
    endpoint: tuple[int, int] | None
    masquerade: bool


@dataclass(slots=True)
class EngineTrace:
    """What `Netfilter.trace` saw."""

    decision: Decision
    steps: list[Step]
    reach: list[Reach]  # endpoints a new connection could reach, with probabilities
    affinity: str | None  # the `recent` list whose check matched, if any


class SimpleSet:
    """A ready-made `IpSet`: members as tuples of per-dimension values, with
    "net" dimensions given as (network, prefix length)."""

    def __init__(self, kinds: tuple[str, ...], members: Iterable[tuple[Any, ...]] = ()) -> None:
        self.kinds = kinds
        self.exact: set[tuple[Any, ...]] = set()
        self.nets: list[tuple[Any, ...]] = []
        for member in members:
            self.add(member)

    def add(self, member: tuple[Any, ...]) -> None:
        if "net" in self.kinds:
            self.nets.append(member)
        else:
            self.exact.add(member)

    def test(self, values: tuple[Any, ...]) -> bool:
        if values in self.exact:
            return True
        for member in self.nets:
            if all(_member_ok(kind, want, got) for kind, want, got in zip(self.kinds, member, values, strict=True)):
                return True
        return False


def _member_ok(kind: str, want: Any, got: Any) -> bool:
    if kind == "net":
        net, length = want
        mask = (MAX << (32 - length)) & MAX if length else 0
        return (got & mask) == net
    return bool(want == got)


class ChainIndex:
    """Candidate rules of a long chain for a packet: the rules keyed by the
    packet's destination (address, or protocol and port) merged with the
    rules that could match anything. A rule left out is one whose IP part
    (or a side-effect-free match before its port) cannot match."""

    __slots__ = ("by_key", "generic", "kind", "merged")

    def __init__(self, kind: str, by_key: dict[Any, list[int]], generic: list[int]) -> None:
        self.kind = kind
        self.by_key = by_key
        self.generic = generic
        self.merged: dict[Any, list[int]] = {}

    def candidates(self, st: PacketState) -> list[int]:
        return self.merged_for(st.dst if self.kind == "dst" else (st.proto, st.dport))

    def merged_for(self, key: Any) -> list[int]:
        hit = self.merged.get(key)
        if hit is None:
            keyed = self.by_key.get(key)
            if keyed is None:
                return self.generic
            hit = self.merged[key] = sorted(keyed + self.generic)
        return hit


def build_index(chain: Chain) -> ChainIndex | None:
    rules = chain.rules
    if len(rules) < INDEX_MIN_RULES:
        return None
    by_dst: dict[Any, list[int]] = {}
    by_port: dict[Any, list[int]] = {}
    dst_generic: list[int] = []
    port_generic: list[int] = []
    for pos, rule in enumerate(rules):
        dst = rule.dst
        if dst is not None and dst[1] == MAX and not dst[2]:
            by_dst.setdefault(dst[0], []).append(pos)
        else:
            dst_generic.append(pos)
        port = _port_key(rule)
        if port is not None:
            by_port.setdefault(port, []).append(pos)
        else:
            port_generic.append(pos)
    if len(dst_generic) <= len(port_generic):
        return ChainIndex("dst", by_dst, dst_generic) if len(dst_generic) * 2 <= len(rules) else None
    return ChainIndex("port", by_port, port_generic) if len(port_generic) * 2 <= len(rules) else None


def _port_key(rule: Rule) -> tuple[int, int] | None:
    if not rule.proto or rule.proto_inv:
        return None
    for match in rule.matches:
        if isinstance(match, xt.Ports) and match.dport is not None and not match.dinv:
            lo, hi = match.dport
            return (rule.proto, lo) if lo == hi else None
        if not isinstance(match, xt.PURE_MATCHES):
            return None
    return None


class Netfilter:
    """One node's netfilter: its tables, conntrack, `recent` lists and ipsets.

    Public API:
    - `Netfilter(tables, local_ips, ipsets=None, rng=None, conntrack=None,
      labels=None, literal=False, oif=None)`; `Netfilter.from_save(text, ...)`.
    - `load(tables)`, `restore(text, noflush=True, filename=, cache=)`: new
      rules, as iptables-restore; conntrack entries and recent lists stay.
    - `route(packet, now) -> Decision`: the hot path.
    - `trace(packet, now) -> (Decision, steps, reach)`: the same, changing
      state the same way, with every step and every reachable endpoint.
    - `explore(packet, now) -> list[Outcome]`: every way a new connection
      can go with its probability, changing nothing.
    - `walk(packet, now, steps=None) -> Decision`: a new connection's first
      packet through the hooks without touching conntrack.
    - `new_state(packet, now)` + `run_hook(hook, st, tables=) -> V_*`: one
      hook (or some of its tables) at a time, for modes that put their own
      machinery between hooks (IPVS).
    - `ipsets`: name -> IpSet (membership objects the `set` match tests).
    - `labels`: chain name -> label (e.g. a ServicePortName); the first
      labelled chain a packet enters becomes `Decision.service`.
    """

    def __init__(
        self,
        tables: Tables,
        local_ips: Iterable[int] = (),
        ipsets: Mapping[str, IpSet] | None = None,
        rng: random.Random | None = None,
        conntrack: Conntrack | None = None,
        labels: Mapping[str, object] | None = None,
        literal: bool = False,
        oif: Callable[[int], str] | None = None,
    ) -> None:
        self.tables: Tables = {}
        self.local_ips = tuple(local_ips)
        self._local = frozenset(self.local_ips)
        self.node_ip = next((ip for ip in self.local_ips if ip >> 24 != LOOPBACK), 0x7F000001)
        self.ipsets: Mapping[str, IpSet] = ipsets if ipsets is not None else {}
        self.rng = rng
        self.conntrack = conntrack if conntrack is not None else Conntrack()
        self.labels: Mapping[str, object] = labels if labels is not None else {}
        self.literal = literal
        self.oif = oif
        self.recent: dict[str, RecentTable] = {}
        self.generation = 0
        self._fns: dict[str, Registry] = {}
        self._recent_refs: dict[tuple[str, str], set[str]] = {}
        self._ct_get = self.conntrack.by_tuple.get
        self._tcp_established_timeout = self.conntrack.timeouts.tcp[TCP_ESTABLISHED]
        self.load(tables)

    @classmethod
    def from_save(
        cls,
        text: str,
        local_ips: Iterable[int] = (),
        ipsets: Mapping[str, IpSet] | None = None,
        rng: random.Random | None = None,
        filename: str = "<iptables-save>",
        **options: Any,
    ) -> Netfilter:
        return cls(syntax.parse_save(text, filename), local_ips, ipsets, rng, **options)

    # --- rules ------------------------------------------------------------------

    def load(self, tables: Tables, touched: Mapping[str, set[str]] | None = None) -> None:
        """Replace the rules (conntrack and `recent` lists are kept, as the
        kernel keeps them across iptables-restore while a list's name is still
        in use). `touched`: the chains that changed, per table, if known."""
        self.tables = tables
        self.generation += 1
        for name, table in tables.items():
            registry = self._fns.get(name)
            if registry is None:
                registry = self._fns[name] = Registry(self, table)
            registry.table = table
            if touched is None:
                registry.clear()
                registry.dependents.clear()
            else:
                registry.invalidate(touched.get(name, set()))
        for name in list(self._fns):
            if name not in tables:
                del self._fns[name]
        # Per hook: the tables that have its chain, in priority order, with the policy.
        self._plan = {
            hook: tuple(
                (name, self._fns[name], V_DROP if tables[name].chains[hook].policy == "DROP" else V_ACCEPT)
                for name in names
                if name in tables and hook in tables[name].chains
            )
            for hook, names in HOOK_TABLES.items()
        }
        # The same, flattened for _new_forwarded: (functions, hook, policy) in order.
        plan = self._plan
        self._prerouting = None if any(t == "raw" for t, _, _ in plan["PREROUTING"]) else _steps(plan, "PREROUTING")
        self._input = _steps(plan, "INPUT")
        self._forward = _steps(plan, "FORWARD", "POSTROUTING")
        self._track_recent(tables, touched)

    def _track_recent(self, tables: Tables, touched: Mapping[str, set[str]] | None) -> None:
        """Keep a `recent` list while some rule names it (recent_mt_check /
        recent_mt_destroy); only the chains a restore touched are looked at."""
        refs = self._recent_refs
        if touched is None:
            refs.clear()
            changed = [(t, c) for t, table in tables.items() for c in table.chains]
        else:
            changed = [(t, c) for t, names in touched.items() for c in names]
        for table_name, chain_name in changed:
            chain = tables.get(table_name, Table(table_name)).chains.get(chain_name)
            names: set[str] = set()
            if chain is not None:
                for rule in chain.rules:
                    if rule.matches:
                        names.update(m.list_name for m in rule.matches if type(m) is xt.Recent)
            if names:
                refs[(table_name, chain_name)] = names
            else:
                refs.pop((table_name, chain_name), None)
        used = set().union(*refs.values()) if refs else set()
        for name in list(self.recent):
            if name not in used:
                del self.recent[name]
        for name in used:
            self.recent.setdefault(name, {})

    def restore(
        self, text: str, noflush: bool = True, filename: str = "<iptables-restore>", cache: RuleCache | None = None
    ) -> None:
        touched: dict[str, set[str]] = {}
        tables = syntax.restore(self.tables, text, filename, noflush, cache, touched)
        self.load(tables, touched if noflush else None)

    def is_local(self, addr: int) -> bool:
        return addr in self._local or addr >> 24 == LOOPBACK

    def rule_count(self) -> int:
        return syntax.rule_count(self.tables)

    def save(self) -> str:
        return syntax.save(self.tables)

    # --- packets ----------------------------------------------------------------

    def new_state(self, packet: Packet, now: float) -> PacketState:
        return PacketState(
            self,
            packet.proto,
            packet.src,
            packet.sport,
            packet.dst,
            packet.dport,
            now,
            packet.local,
            packet.iif,
            packet.flags,
        )

    def route(self, packet: Packet, now: float) -> Decision:
        flow = packet[:5]
        entry = self._ct_get(flow)
        if entry is None:
            if packet.local or self.literal or (packet.proto == TCP and _OPENS[packet.flags & 0xFF] is False):
                return self._first(packet, now, flow)
            return self._new_forwarded(packet, now, flow)
        if entry.expires <= now:
            tracked = self.conntrack.track(flow, packet.flags, now)
            if tracked is not None:  # (expired: lookup removed it)
                return self._established(packet, now, *tracked, None)
            return self._first(packet, now, flow)
        direction = ORIGINAL if entry.orig == flow else REPLY
        proto, _, _, _, _, local, iif, flags, _ = packet
        if (
            flags & ACK_CLASS_BITS == ACK
            and entry.state == TCP_ESTABLISHED
            and entry.status & REPLIED_ASSURED == REPLIED_ASSURED
            and proto == TCP
        ):
            # Conntrack.update for the commonest packet, inlined: a segment of
            # the ACK class (no SYN, FIN or RST) keeps an established,
            # answered, assured TCP connection as it is and refreshes its
            # timer (tcp_conntracks[dir][TCP_ACK_SET][ESTABLISHED]).
            entry.expires = now + self._tcp_established_timeout
            valid = True
        else:
            checked = self.conntrack.update(entry, direction, flags, now)
            if checked is None:  # a SYN reopening a closed connection: the first packet of a new one
                return self._first(packet, now, flow)
            valid = checked
        if valid:
            # A later packet whose filter walk was seen before: its decision, as it was.
            memo = entry.memo_orig if direction == ORIGINAL else entry.memo_reply
            if (
                memo is not None
                and memo[0] == self.generation
                and memo[1] == entry.status & _NAT_AND_REPLY
                and memo[2] == iif
                and memo[3] == local
            ):
                return memo[4]
        return self._established(packet, now, entry, direction, valid, None)

    def _first(self, packet: Packet, now: float, flow: tuple[int, ...]) -> Decision:
        """A packet without a conntrack entry: it may open a connection."""
        if packet.local or self.literal or (packet.proto == TCP and _OPENS[packet.flags & 0xFF] is False):
            st = self.new_state(packet, now)
            return self._decide(st, self._first_packet(st), packet)
        return self._new_forwarded(packet, now, flow)

    def _new_forwarded(self, packet: Packet, now: float, flow: tuple[int, ...]) -> Decision:
        """`_first_packet` + `_decide` for the commonest case, inlined: a
        packet from outside the node that can open a connection, walked by
        the compiled chains (PREROUTING, then INPUT or FORWARD + POSTROUTING)."""
        proto, src, sport, dst, dport, _, iif, flags, _ = packet
        st = PacketState(self, proto, src, sport, dst, dport, now, False, iif, flags)
        pre = self._prerouting
        if pre is None:  # a raw table: PREROUTING as _first_packet walks it
            return self._decide(st, self._first_packet(st), packet)
        for registry, hook, policy in pre:
            verdict = registry[hook](st) or policy
            if verdict != V_ACCEPT:
                return Decision(_VERDICTS[verdict], None, False, st.rules, st.lookups + 1, st.service)  # type: ignore[arg-type]
        dst = st.dst
        if dst in self._local or dst >> 24 == LOOPBACK:
            after = self._input
        else:
            after = self._forward
            if self.oif is not None:
                st.oif = self.oif(dst)
        for registry, hook, policy in after:
            verdict = registry[hook](st) or policy
            if verdict != V_ACCEPT:
                return Decision(_VERDICTS[verdict], None, False, st.rules, st.lookups + 1, st.service)  # type: ignore[arg-type]
        dnat, snat = st.dnat, st.snat
        self.conntrack.create(flow, now, dnat, snat, flags, 0, st.service)  # type: ignore[arg-type]
        return Decision(
            Verdict.DNAT if dnat is not None else Verdict.ACCEPT,
            dnat,
            snat is not None,
            st.rules,
            st.lookups + 1,
            st.service,  # type: ignore[arg-type]
        )

    def trace(self, packet: Packet, now: float) -> EngineTrace:
        """`route()` with every step recorded, and the endpoints a new
        connection could reach (computed before the packet changes any state)."""
        steps: list[Step] = []
        flow = packet[:5]
        tracked = self.conntrack.track(flow, packet.flags, now)
        if tracked is not None:
            decision = self._established(packet, now, *tracked, steps)
            return EngineTrace(decision, steps, [], None)
        reach = self.reach(packet, now)
        steps.append(Step("conntrack", f"conntrack: no entry for {format_flow(flow)}: a new connection"))
        st = self.new_state(packet, now)
        st.steps = steps
        verdict = self._first_packet(st)
        decision = self._decide(st, verdict, packet)
        return EngineTrace(decision, steps, reach, st.affinity)

    def walk(self, packet: Packet, now: float, steps: list[Step] | None = None) -> Decision:
        """The first packet of a new connection through every hook, as
        `route()` walks it, but leaving conntrack alone: for a mode that
        keeps its connections itself (userspace) and only asks what the
        rules do to a new one. `steps`, when given, receives the trace."""
        st = self.new_state(packet, now)
        st.steps = steps
        return self._decision(st, self._first_packet(st))

    def reach(self, packet: Packet, now: float) -> list[Reach]:
        """Every endpoint a new connection could be DNATed to, with its probability."""
        totals: dict[tuple[int, int], Fraction] = {}
        for outcome in self.explore(packet, now):
            if outcome.endpoint is not None and outcome.verdict == Verdict.DNAT:
                totals[outcome.endpoint] = totals.get(outcome.endpoint, Fraction(0)) + outcome.probability
        return [Reach(ip, port, p) for (ip, port), p in totals.items()]

    def explore(self, packet: Packet, now: float, limit: int = 200_000) -> list[Outcome]:
        """Every outcome of a new connection, forking at each random match
        (depth first), without touching conntrack, recent lists or counters."""
        outcomes: list[Outcome] = []
        pending: list[list[bool]] = [[]]
        runs = 0
        while pending and runs < limit:
            runs += 1
            prefix = pending.pop()
            st = self.new_state(packet, now)
            st.dry, st.explore = True, prefix
            try:
                verdict = self._first_packet(st)
            except NeedDecision:
                pending += [[*prefix, False], [*prefix, True]]
                continue
            d = self._decide(st, verdict, packet)
            outcomes.append(Outcome(st.probability, d.verdict, d.endpoint, d.masquerade))
        return outcomes

    def _decide(self, st: PacketState, verdict: int, packet: Packet) -> Decision:
        """The first packet's decision; an accepted packet (not a dry run, not
        INVALID) leaves its conntrack entry."""
        if verdict == V_ACCEPT and not st.dry and st.ctstate != CT_INVALID:
            self.conntrack.create(packet[:5], st.now, st.dnat, st.snat, packet.flags, 0, st.service)
        return self._decision(st, verdict)

    def _decision(self, st: PacketState, verdict: int) -> Decision:
        if verdict != V_ACCEPT:
            return Decision(_VERDICTS[verdict], None, False, st.rules, st.lookups + 1, st.service)  # type: ignore[arg-type]
        if st.steps is not None:
            self._note_outcome(st)
        return Decision(
            Verdict.DNAT if st.dnat is not None else Verdict.ACCEPT,
            st.dnat,
            st.snat is not None,
            st.rules,
            st.lookups + 1,
            st.service,  # type: ignore[arg-type]
        )

    @staticmethod
    def _note_outcome(st: PacketState) -> None:
        assert st.steps is not None
        if st.dnat is not None or st.snat is not None:
            st.steps.append(Step("conntrack", "conntrack: the connection is confirmed with its NAT"))

    # --- the first packet of a connection -----------------------------------------

    def _first_packet(self, st: PacketState) -> int:
        if st.proto == TCP and tcp_next_state(ORIGINAL, st.flags, 0) >= 10:
            st.ctstate = CT_INVALID  # no entry and cannot open one: nat is skipped
        if st.local:
            verdict = self.run_hook("OUTPUT", st)
            if verdict == V_ACCEPT:
                verdict = self._after_routing_local(st)
            return verdict
        verdict = self.run_hook("PREROUTING", st)
        if verdict != V_ACCEPT:
            return verdict
        if self.is_local(st.dst):
            return self.run_hook("INPUT", st)
        self._route_out(st)
        verdict = self.run_hook("FORWARD", st)
        if verdict == V_ACCEPT:
            verdict = self.run_hook("POSTROUTING", st)
        return verdict

    def _after_routing_local(self, st: PacketState) -> int:
        self._route_out(st)
        verdict = self.run_hook("POSTROUTING", st)
        if verdict == V_ACCEPT and self.is_local(st.dst):
            # Delivered over lo: PREROUTING and INPUT again, NAT already done.
            verdict = self.run_hook("PREROUTING", st, nat=False)
            if verdict == V_ACCEPT:
                verdict = self.run_hook("INPUT", st, nat=False)
        return verdict

    def _route_out(self, st: PacketState) -> None:
        st.oif = self.oif(st.dst) if self.oif is not None else ""
        if st.steps is not None:
            where = "to this node (INPUT)" if self.is_local(st.dst) else "forwarded"
            st.steps.append(Step("note", f"routing: {int_to_ip(st.dst)} is {where}"))

    def run_hook(self, hook: Hook, st: PacketState, nat: bool = True, tables: tuple[str, ...] | None = None) -> int:
        """Walk every table of one hook in priority order; returns V_ACCEPT,
        V_DROP or V_REJECT. The nat table runs only when `nat` and the
        packet is a new, trackable connection. `tables` limits the walk to
        those tables (for a mode whose own hook sits between two of them,
        as IPVS sits between filter and nat at LOCAL_IN)."""
        if st.steps is None and st.explore is None and not self.literal:
            for name, registry, policy in self._plan[hook]:
                if tables is not None and name not in tables:
                    continue
                if name == "nat":
                    if not nat or st.ctstate == CT_INVALID:
                        continue
                    verdict = registry[hook](st) or policy
                elif name == "raw":
                    saved, st.ctstate = st.ctstate, CT_INVALID  # raw runs before conntrack
                    verdict = registry[hook](st) or policy
                    st.ctstate = saved
                else:
                    verdict = registry[hook](st) or policy
                if verdict != V_ACCEPT:
                    return verdict
            return V_ACCEPT
        for name in HOOK_TABLES[hook]:
            if name == "nat" and (not nat or st.ctstate == CT_INVALID):
                continue
            if tables is not None and name not in tables:
                continue
            verdict = self._walk_table(name, hook, st)
            if verdict != V_ACCEPT:
                return verdict
        return V_ACCEPT

    def compile_all(self) -> int:
        """Compile every chain now instead of on first use (for steady-state timing)."""
        count = 0
        with paused_gc():
            for name, registry in self._fns.items():
                for chain in self.tables[name].chains:
                    prepare = getattr(registry[chain], "prepare", None)  # an indexed chain's per-destination parts
                    count += 1 + (prepare() if prepare is not None else 0)
        return count

    def _walk(self, table: Table, hook: str, st: PacketState) -> int:
        chains = table.chains
        chain = chains[hook]
        policy = V_DROP if chain.policy == "DROP" else V_ACCEPT
        steps = st.steps
        if steps is not None:
            steps.append(Step("chain", f"{table.name} {hook}: enter", {"table": table.name, "chain": hook}))
        stack: list[tuple[Chain, int]] = []
        pos = 0
        while True:
            hit = self._next(chain, pos, st)
            if hit < 0:
                tried = len(chain.rules) - pos
                passed = f" ({tried} more did not match)" if tried else ""
                detail = {"table": table.name, "chain": chain.name, "unmatched": tried}
                if stack:
                    if steps is not None:
                        steps.append(Step("return", f"{table.name} {chain.name}: end of chain{passed}, return", detail))
                    chain, pos = stack.pop()
                    continue
                if steps is not None:
                    text = f"{table.name} {hook}: end of chain{passed}, policy {chain_policy(policy)}"
                    steps.append(Step("verdict", text, detail))
                return policy
            rule = chain.rules[hit]
            target = rule.target
            kind = target.kind
            if steps is not None:
                self._note_rule(st, table, chain, hit, pos, rule)
            if kind in (T_JUMP, T_GOTO):
                if kind == T_JUMP:
                    stack.append((chain, hit + 1))
                if steps is not None:
                    how = "jump" if kind == T_JUMP else "goto: no return here"
                    text = f"{table.name} {target.name}: enter ({how} from {chain.name})"
                    steps.append(Step("chain", text, {"table": table.name, "chain": target.name}))
                chain = chains[target.name]
                pos = 0
                if st.service is None:
                    st.service = self.labels.get(chain.name)
                continue
            if kind == T_MARK:
                st.mark = (st.mark & ~target.mask & MAX) ^ target.value
                pos = hit + 1
                continue
            if kind in (T_NONE, T_LOG):
                pos = hit + 1
                continue
            if kind == T_RETURN:
                if stack:
                    back, pos = stack.pop()
                    if steps is not None:
                        steps.append(Step("return", f"{table.name} {chain.name}: RETURN to {back.name}"))
                    chain = back
                    continue
                if steps is not None:
                    steps.append(Step("verdict", f"{table.name} {hook}: RETURN from a built-in chain: policy"))
                return policy
            if kind == T_ACCEPT:
                return V_ACCEPT
            if kind == T_DROP:
                return V_DROP
            if kind == T_REJECT:
                return V_REJECT
            self._nat(target, st, hook)
            return V_ACCEPT

    def _next(self, chain: Chain, pos: int, st: PacketState) -> int:
        """The position of the next rule from `pos` that matches, or -1;
        counts every rule a linear walk would have evaluated."""
        rules = chain.rules
        index = chain.index
        if index is None and not self.literal:
            index = chain.index = build_index(chain) or False
        if index:
            cands = index.candidates(st)
            start = bisect_left(cands, pos) if pos else 0
            for i in range(start, len(cands)):
                c = cands[i]
                if rules[c].test(st):
                    st.rules += c - pos + 1
                    return c
        else:
            for c in range(pos, len(rules)):
                if rules[c].test(st):
                    st.rules += c - pos + 1
                    return c
        st.rules += len(rules) - pos
        return -1

    def _nat(self, target: xt.Target, st: PacketState, hook: str) -> None:
        kind = target.kind
        if kind in (T_DNAT, T_REDIRECT):
            if kind == T_DNAT:
                ip = target.ip
            else:  # nf_nat_redirect_ipv4: loopback for local packets, else the node's address
                ip = 0x7F000001 if st.local else self.node_ip
            port = target.port if target.port is not None else st.dport
            st.dnat = (ip, port)
            st.dst, st.dport = ip, port
            st.ctstate |= CT_DNAT
            if st.steps is not None:
                st.steps.append(Step("nat", f"{target.name} to {int_to_ip(ip)}:{port}", {"hook": hook}))
        else:
            # MASQUERADE takes the address the route out would use: the node's.
            ip = target.ip if kind == T_SNAT else self.node_ip
            port = target.port if target.port is not None else st.sport
            st.snat = (ip, port)
            st.ctstate |= CT_SNAT
            if st.steps is not None:
                text = f"{target.name}: source becomes {int_to_ip(ip)}"
                st.steps.append(Step("nat", text + (f":{port}" if target.port is not None else ""), {"hook": hook}))

    def _note_rule(self, st: PacketState, table: Table, chain: Chain, hit: int, pos: int, rule: Rule) -> None:
        assert st.steps is not None
        skipped = hit - pos
        before = f" (after {skipped} that did not)" if skipped else ""
        chance = ""
        for match in rule.matches:
            if isinstance(match, xt.Statistic) and match.mode == "random":
                p = match.probability if not match.inv else 1 - match.probability
                chance = f" [random draw won, p={probability_text(p)}]"
            elif isinstance(match, xt.Recent) and match.command in ("--rcheck", "--update"):
                chance = f" [address seen in recent list {match.list_name}]"
        st.steps.append(
            Step(
                "rule",
                f"{table.name} {chain.name} rule {hit + 1} matched{before}{chance}: {rule.spec}",
                {
                    "table": table.name,
                    "chain": chain.name,
                    "rule": hit + 1,
                    "target": rule.target.name,
                    "unmatched": skipped,
                },
            )
        )

    # --- later packets ----------------------------------------------------------------

    def _established(
        self, packet: Packet, now: float, entry: CtEntry, direction: int, valid: bool, steps: list[Step] | None
    ) -> Decision:
        """A packet of a known connection (already accounted in conntrack:
        `valid` says how): NAT from the entry, filter from the rules. The
        decision is kept on the entry while the rules, the entry's NAT/reply
        status and the packet's interface are the same and the walk touched
        nothing random or stateful (then the walk would give it again)."""
        if not valid:
            return self._invalid(packet, now, entry, steps)
        if direction == REPLY or entry.status & SEEN_REPLY:
            ctstate = CT_ESTABLISHED
        else:
            ctstate = CT_NEW
        if entry.status & DST_NAT:
            ctstate |= CT_DNAT
        if entry.status & SRC_NAT:
            ctstate |= CT_SNAT
        if steps is not None:
            steps.append(Step("conntrack", _entry_text(entry, direction)))
        st = self.new_state(packet, now)
        st.ctstate, st.steps = ctstate, steps
        verdict = self._later_packet(st, entry, direction)
        rules = st.rules
        service = entry.data  # the service the first packet was routed to
        if verdict != V_ACCEPT:
            decision = Decision(_VERDICTS[verdict], None, False, rules, 1, service, established=True)  # type: ignore[arg-type]
        else:
            dnat = entry.dnat if direction == ORIGINAL else None
            decision = Decision(
                Verdict.DNAT if dnat is not None else Verdict.ACCEPT,
                dnat,
                entry.snat is not None,
                rules,
                1,
                service,  # type: ignore[arg-type]
                established=True,
            )
        if st.pure and valid and steps is None:
            memo = (self.generation, entry.status & _NAT_AND_REPLY, packet.iif, packet.local, decision)
            if direction == ORIGINAL:
                entry.memo_orig = memo
            else:
                entry.memo_reply = memo
        return decision

    def _invalid(self, packet: Packet, now: float, entry: CtEntry, steps: list[Step] | None) -> Decision:
        """A packet conntrack found INVALID for its connection: nf_conntrack_in
        drops the packet's reference to the entry, so it goes on as an
        untracked packet would, `ctstate INVALID`, and no NAT is done for it
        (the nat hooks find no conntrack)."""
        if steps is not None:
            steps.append(
                Step(
                    "conntrack",
                    f"conntrack: INVALID for the connection {format_flow(entry.orig)}: no NAT, ctstate INVALID",
                )
            )
        st = self.new_state(packet, now)
        st.ctstate, st.steps = CT_INVALID, steps
        return self._decision(st, self._first_packet(st))

    def _later_packet(self, st: PacketState, entry: CtEntry, direction: int) -> int:
        """The hooks of a tracked packet; conntrack does the NAT where the nat table would."""
        other = entry.reply if direction == ORIGINAL else entry.orig
        # The packet is rewritten to the inverse of the other direction's tuple.
        _, to_dst, to_dport, to_src, to_sport = other
        if st.local:
            verdict = self._hook_ct("OUTPUT", st, (to_src, to_sport, to_dst, to_dport))
            if verdict != V_ACCEPT:
                return verdict
            verdict = self._hook_ct("POSTROUTING", st, (to_src, to_sport, to_dst, to_dport))
            if verdict == V_ACCEPT and self.is_local(st.dst):
                verdict = self.run_hook("PREROUTING", st, nat=False)
                if verdict == V_ACCEPT:
                    verdict = self.run_hook("INPUT", st, nat=False)
            return verdict
        verdict = self._hook_ct("PREROUTING", st, (to_src, to_sport, to_dst, to_dport))
        if verdict != V_ACCEPT:
            return verdict
        if self.is_local(st.dst):
            return self._hook_ct("INPUT", st, (to_src, to_sport, to_dst, to_dport))
        st.oif = self.oif(st.dst) if self.oif is not None else ""
        verdict = self.run_hook("FORWARD", st)
        if verdict == V_ACCEPT:
            verdict = self._hook_ct("POSTROUTING", st, (to_src, to_sport, to_dst, to_dport))
        return verdict

    def _hook_ct(self, hook: str, st: PacketState, to: tuple[int, int, int, int]) -> int:
        """A hook for a tracked packet: conntrack rewrites it where the nat table sits."""
        for name in HOOK_TABLES[hook]:
            if name == "nat":
                if hook in DST_HOOKS:
                    st.dst, st.dport = to[2], to[3]
                else:
                    st.src, st.sport = to[0], to[1]
                continue
            verdict = self._walk_table(name, hook, st)
            if verdict != V_ACCEPT:
                return verdict
        return V_ACCEPT

    def _walk_table(self, name: str, hook: str, st: PacketState) -> int:
        """One table's chain for a hook: compiled, or walked when tracing (or literal)."""
        table = self.tables.get(name)
        if table is None:
            return V_ACCEPT
        chain = table.chains.get(hook)
        if chain is None:
            return V_ACCEPT
        if name == "raw":  # raw runs before conntrack: no entry yet
            saved, st.ctstate = st.ctstate, CT_INVALID
            verdict = self._walk_one(table, chain, hook, st)
            st.ctstate = saved
            return verdict
        return self._walk_one(table, chain, hook, st)

    def _walk_one(self, table: Table, chain: Chain, hook: str, st: PacketState) -> int:
        if st.steps is None and st.explore is None and not self.literal:
            return self._fns[table.name][hook](st) or (V_DROP if chain.policy == "DROP" else V_ACCEPT)
        return self._walk(table, hook, st)


# Whether a TCP segment with these flags can open a connection (conntrack's
# table from NONE); one that cannot is INVALID and skips the nat table.
_OPENS = tuple(tcp_next_state(ORIGINAL, flags, 0) < 10 for flags in range(256))
_NAT_AND_REPLY = SEEN_REPLY | SRC_NAT | DST_NAT  # the status bits a later packet's filter walk depends on


def chain_policy(verdict: int) -> str:
    return "DROP" if verdict == V_DROP else "ACCEPT"


def _steps(
    plan: Mapping[str, tuple[tuple[str, Registry, int], ...]], *hooks: str
) -> tuple[tuple[Registry, str, int], ...]:
    return tuple((registry, hook, policy) for hook in hooks for _, registry, policy in plan[hook])


def _entry_text(entry: CtEntry, direction: int) -> str:
    side = "reply" if direction == REPLY else "original"
    state = f" {entry.state_name()}" if entry.orig[0] == TCP else ""
    nat = []
    if entry.dnat is not None:
        nat.append(f"DNAT to {int_to_ip(entry.dnat[0])}:{entry.dnat[1]}")
    if entry.snat is not None:
        nat.append(f"SNAT to {int_to_ip(entry.snat[0])}")
    nat_text = f" ({', '.join(nat)})" if nat else ""
    return (
        f"conntrack: {side} direction of {proto_name(entry.orig[0])}{state} connection "
        f"{format_flow(entry.orig)}{nat_text}: the nat table is not consulted"
    )
