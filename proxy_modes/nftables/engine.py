"""Packets through an nftables ruleset: the literal walk, and the same walk compiled.

The walk (`Walk`) follows a packet through the netfilter hooks as the kernel
does (nf_hook_slow over the base chains of a hook in priority order): on the
input and forward paths prerouting, then input or forward (decided by whether
the destination after DNAT is a local address), then postrouting; on the
output path output then postrouting (and, for a local destination, prerouting
and input again as the packet loops back). Chains of `type nat` run only for
the first packet of a connection and only until the connection has its NAT
binding for that direction (nf_nat_inet_fn); later packets get the binding
from conntrack. Inside a chain: rules in order, an expression that does not
match ends the rule, `jump` pushes, `goto` replaces, `return` or the end of a
chain pops, `accept`/`dnat`/`masquerade` end the base chain, `drop`/`reject`
end the packet (nft_do_chain).

Cost reported (`Decision.rules`, `Decision.lookups`): every rule the walk
starts counts one rule; a lookup is a named set or map lookup, an anonymous
set or verdict map of more than one element, a `numgen` map, a FIB lookup
(`fib ... type`) and the conntrack lookup every packet does first.

Speed: a new connection's walk depends on the packet only through its source
address, the random number `numgen` draws, the affinity sets and the time.
The plan for one destination (`start_plan`) is the same walk run
symbolically: an oracle answers each question about the source
(`ip saddr != 10.0.0.0/8`, `ip saddr @affinity-...`, `fib saddr type local`)
and each `numgen` draw, and every answer is a branch of a small decision tree
whose leaves hold the finished `Decision`. Branches are explored the first
time a packet takes one (the walk is an explicit machine that forks at the
question), so the first packet to a destination costs about a literal walk
and later ones a dict lookup and two or three comparisons. The verdict, the
endpoint, the random draws and the reported cost are the literal walk's by
construction (a differential test holds them together, packet by packet);
what the compiler cannot reason about is finished and then walked literally.
The rest of a plan's walk from a hook boundary is remembered with the facts it
read about the destination, and replayed for destinations of which they hold
(`Walk.at_boundary`): every endpoint of every service passes the same forward
and postrouting checks. Packets of tracked connections share one plan per
binding shape, the addresses the binding rewrites (and, unless the walk reads
it, the destination) left unknown to it (`Engine.tracked_plan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from netem.addr import int_to_ip
from netem.conntrack import (
    ACK_CLASS_BITS,
    INVALID,
    NONE,
    ORIGINAL,
    REPLIED_ASSURED,
    REPLY,
    SEEN_REPLY,
    Conntrack,
    CtEntry,
    kube_proxy_timeouts,
    tcp_next_state,
)
from netem.conntrack import ESTABLISHED as TCP_ESTABLISHED
from netem.errors import RulesetError, UsageError, Where
from netem.packet import ACK, TCP, UDP, Packet, proto_name

from ..base import Decision, Reach, Ruleset, Step, Trace, Verdict
from ..view import NodeView, ServicePortName
from .rules import Syncer, parse_chain_service
from .ruleset import Chain, NftSet, Rule, Table, dump_commands, list_ruleset, parse_nft
from .syntax import (
    CT_STATES,
    CTSTATE,
    DADDR,
    DPORT,
    FIB_DADDR,
    FIB_SADDR,
    IIF,
    IIFNAME,
    L4PROTO,
    MARK,
    OIF,
    OIFNAME,
    SADDR,
    SPORT,
    Cmp,
    Dnat,
    Lookup,
    MarkSet,
    Masquerade,
    NoOp,
    Numgen,
    Reject,
    Selector,
    SetUpdate,
    SyntaxProblem,
    Value,
    VerdictT,
    VMap,
    format_key,
    format_verdict,
)
from .syntax import (
    Verdict as VerdictExpr,
)

if TYPE_CHECKING:
    import random

CT_NEW, CT_ESTABLISHED, CT_INVALID = CT_STATES["new"], CT_STATES["established"], CT_STATES["invalid"]
FIB_UNICAST, FIB_LOCAL = 1, 2
_MISSING = object()


class NeedAnswer(Exception):
    """The symbolic walk reached a question its oracle has no answer for yet."""

    def __init__(self, question: tuple[Any, ...]) -> None:
        super().__init__(question)
        self.question = question


class Unsupported(Exception):
    """Something the compiler cannot reason about symbolically (the literal walk still can)."""


class FinishedLiterally(Exception):
    """A plan met what it cannot compile half-way down: this packet's
    outcome, finished by the literal walk."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__("finished literally")
        self.outcome = outcome


class WalkError(Exception):
    """The ruleset refers to something that does not exist (a chain, a set)."""


class LocalAddresses:
    """`fib ... type local`: the node's addresses and 127.0.0.0/8 (the local
    routing table of a namespace holds both)."""

    __slots__ = ("ips",)

    def __init__(self, ips: frozenset[int]) -> None:
        self.ips = ips

    def test(self, ip: int) -> bool:
        return ip in self.ips or (ip >> 24) == 127


@dataclass(slots=True, eq=False)
class Outcome:
    """Where one walk ended: the decision, and what committing it does."""

    decision: Decision
    dnat: tuple[int, int] | None
    masquerade: bool
    actions: tuple[tuple[NftSet, float, str], ...]  # (set, timeout, op) keyed by the source address
    final: str  # "accept", "drop", "reject"
    new: bool  # the first packet of a connection (ct state new): committing creates the entry

    def same(self, other: Outcome) -> bool:
        d, e = self.decision, other.decision
        return (
            self.final == other.final
            and self.dnat == other.dnat
            and self.masquerade == other.masquerade
            and [(id(s), t, o) for s, t, o in self.actions] == [(id(s), t, o) for s, t, o in other.actions]
            and (d.rules, d.lookups, d.service) == (e.rules, e.lookups, e.service)
        )


# Plan nodes (lists, so the hot loop is a few index operations and a branch
# can be filled in when first taken):
#   [RANGE, lo, hi, if_true, if_false]        lo <= src <= hi
#   [VALUE, tester, if_true, if_false]         tester.test(src)
#   [MEMBER, members_dict, if_true, if_false]  src in a (timeout) set at `now`
#   [NUMGEN, modulus, child_0, ... child_N-1]  child[reciprocal_scale(u32, modulus)]
# leaves are Outcome objects, and a branch nobody has taken yet is a Pending.
RANGE, VALUE, MEMBER, NUMGEN = 1, 2, 3, 4
# A fact a walk read about the destination: (kind, expression, answer).
CMP, LOOKUP, VMAP, LOCAL = "cmp", "lookup", "vmap", "local"
Fact = tuple[str, Any, Any]
REST_VARIANTS = 8  # remembered rests per boundary state (one per distinct set of facts)
_NO_NAMES: frozenset[str] = frozenset()
_NO_FACTS: list[Fact] = []  # never appended to: Walk.facts until a recording opens
HOOKS = frozenset(("prerouting", "input", "forward", "output", "postrouting"))  # the walk's phases that are hooks
Plan = Any
PLAN_CACHE_MAX = 200_000

# TCP flags that can open a connection from nothing (tcp_conntracks, ORIGINAL
# direction, state NONE, not sIV): SYN, and ACK (loose pickup, the default).
_TCP_OPENS = tuple(tcp_next_state(ORIGINAL, flags, NONE) < INVALID for flags in range(256))


_START = object()


class Pending:
    """A branch of a plan not explored yet: the symbolic walk, rewound to the
    rule that asked, and the answer this branch gives it."""

    __slots__ = ("answer", "walk")

    def __init__(self, walk: Walk, answer: Any) -> None:
        self.walk = walk
        self.answer = answer


class Walk:
    """One packet through the hooks. Concrete when `oracle` is None (random
    draws from the engine's rng, set updates applied); symbolic otherwise
    (answers from the oracle, nothing changed, updates recorded)."""

    def __init__(
        self,
        eng: Engine,
        packet: Packet,
        now: float,
        ctstate: int,
        entry: CtEntry | None = None,
        direction: int = ORIGINAL,
        oracle: list[Any] | None = None,
        src_known: bool = True,
        steps: list[Step] | None = None,
    ) -> None:
        self.eng = eng
        self.table = eng.table
        self.now = now
        self.proto = packet.proto
        self.src: int | None = packet.src if src_known else None
        self.sport = packet.sport
        self.dst = packet.dst
        self.dport = packet.dport
        self.local = packet.local
        self.iif = packet.iif
        self.ctstate = ctstate
        self.entry = entry
        self.direction = direction
        self.mark = 0
        self.rules = 0
        self.lookups = 0
        self.dnat: tuple[int, int] | None = None
        self.masquerade = False
        self.final = "accept"
        # Symbolic: answers come from the oracle and nothing is changed. A
        # concrete walk may still hold answers (a branch finished concretely).
        self.symbolic = oracle is not None
        self.oracle: Sequence[Any] = () if oracle is None else oracle
        self.pos = 0
        self.asked: dict[tuple[Any, ...], Any] = {}
        # Immutable (replaced, never changed in place), so that a fork shares them:
        # the walks that wait in a plan's unexplored branches are many.
        self.actions: tuple[tuple[NftSet, float, str], ...] = ()
        self.updated: frozenset[str] = _NO_NAMES
        self.steps = steps
        self.service: ServicePortName | None = None
        self.affinity: str | None = None
        # The nat chains see only a connection's first packet (nf_nat_inet_fn:
        # a tracked connection's binding is already initialised), even when a
        # later packet is still `ct state new` (no reply seen yet).
        tracked = entry is not None or ctstate != CT_NEW
        self.nat_done = {"dst": tracked, "src": tracked}
        self.abstract = False  # an established connection's binding left unknown (see apply_binding)
        self.dst_local = False  # whether the destination is this host, while `dst` is unknown
        self.to_local = False  # ... and whether the binding's translated destination is this host
        self.src_gone = False  # the source was rewritten to an address the plan does not know
        # control: the hooks still to run, the base chains left in this one,
        # and where in which chain the walk is (nft_do_chain's jump stack). Tuples
        # and a dict replaced on change, never changed in place, as above.
        self.todo: tuple[str, ...] = ("output", "postrouting", "loopback") if self.local else ("prerouting", "route")
        self.hook_name = ""
        self.manip = "dst"
        self.base_left: tuple[Chain, ...] = ()
        self.nat_ran = False
        self.stopped = False
        self.cur: Chain | None = None
        self.i = 0
        self.stack: tuple[tuple[Chain, int], ...] = ()
        # The rest of a symbolic new connection's walk, from a hook boundary,
        # can be replayed from Engine.rests (see at_boundary): open recordings,
        # and the facts about the destination read since they opened.
        self.memo = self.symbolic and self.src is None and entry is None and steps is None
        self.recs: list[tuple[tuple[Any, ...], int, int, int]] | None = None
        self.facts: list[Fact] = _NO_FACTS  # a list of its own once a recording opens

    # -- the oracle ---------------------------------------------------------

    def ask(self, question: tuple[Any, ...]) -> Any:
        self.recs = None  # the rest of the walk depends on the source
        if question in self.asked:
            return self.asked[question]
        if self.pos >= len(self.oracle):
            raise NeedAnswer(question)
        answer = self.oracle[self.pos]
        self.pos += 1
        self.asked[question] = answer
        return answer

    def numgen(self, mod: int) -> int:
        # Never memoised: every evaluation is a fresh draw.
        self.recs = None
        if self.pos < len(self.oracle):
            answer: int = self.oracle[self.pos]
            self.pos += 1
            return answer
        if self.symbolic:
            raise NeedAnswer(("numgen", mod))
        return (self.eng.rng.getrandbits(32) * mod) >> 32

    def src_test(self, value: Value) -> bool:
        if self.src_gone:
            raise Unsupported("the source after an established connection's NAT")
        if self.src is not None:
            return value.test(self.src)
        if value.single and value.ranges:
            lo, hi = value.ranges[0]
            return bool(self.ask(("range", lo, hi)))
        if value.single and value.exact:
            x = next(iter(value.exact))
            if isinstance(x, int):
                return bool(self.ask(("range", x, x)))
        return bool(self.ask(("value", value)))

    def src_local(self) -> bool:
        if self.src_gone:
            raise Unsupported("the source after an established connection's NAT")
        if self.src is not None:
            return self.eng.local.test(self.src)
        return bool(self.ask(("value", self.eng.local)))

    def src_member(self, nset: NftSet) -> bool:
        if self.src_gone:
            raise Unsupported("the source after an established connection's NAT")
        if nset.name in self.updated:
            self.recs = None
            return True  # this very walk put the source there
        if self.src is not None:
            return member(nset, self.src, self.now)
        if nset.intervals:
            raise Unsupported(f"interval set @{nset.name} keyed by the source")
        return bool(self.ask(("member", nset.name)))

    # -- hooks and chains: an explicit machine, so a symbolic walk can fork --

    def run(self) -> None:
        """Walk until the packet's fate is known. In a symbolic walk a question
        without an answer raises NeedAnswer with the walk rewound to the start
        of the rule that asked: `fork()` then continues it with each answer."""
        symbolic = self.symbolic
        while True:
            cur = self.cur
            if cur is None:
                if not self.next_base_chain():
                    return
                continue
            rules = cur.rules
            if self.i >= len(rules):
                if not self.stack:
                    self.end_base_chain(None)
                    continue
                (back, self.i), self.stack = self.stack[-1], self.stack[:-1]
                if self.steps is not None:
                    self.steps.append(Step("return", f"end of {cur.name}: back to {back.name}"))
                self.cur = back
                continue
            rule = rules[self.i]
            self.i += 1
            if symbolic:
                saved = (self.rules, self.lookups, self.mark, len(self.actions))
                try:
                    verdict = self.eval_rule(cur, rule)
                except NeedAnswer:
                    if len(self.actions) != saved[3]:
                        raise Unsupported("a question after a set update in the same rule") from None
                    self.rules, self.lookups, self.mark = saved[:3]
                    self.i -= 1
                    raise
            else:
                verdict = self.eval_rule(cur, rule)
            if verdict is None:
                continue
            kind = verdict[0]
            if kind in ("jump", "goto"):
                if kind == "jump":
                    self.stack += ((cur, self.i),)
                self.cur, self.i = self.chain(verdict[1]), 0
                if "/" in verdict[1]:
                    self.note_service(verdict[1])
            elif kind == "return":
                if not self.stack:
                    self.end_base_chain(None)
                    continue
                (back, self.i), self.stack = self.stack[-1], self.stack[:-1]
                if self.steps is not None:
                    self.steps.append(Step("return", f"return from {cur.name} to {back.name}"))
                self.cur = back
            elif kind != "continue":
                self.end_base_chain(kind)

    def next_base_chain(self) -> bool:
        """Enter the next base chain, moving on to the next hook when one is
        done; False when the walk is over."""
        while True:
            if self.stopped:
                self.close_recordings()
                return False
            if self.base_left:
                chain, self.base_left = self.base_left[0], self.base_left[1:]
                assert chain.base is not None
                if chain.base.type == "nat":
                    if self.nat_done[self.manip]:
                        continue
                    self.nat_ran = True
                if self.steps is not None:
                    b = chain.base
                    self.steps.append(
                        Step(
                            "chain", f"{self.hook_name} hook: chain {chain.name} (type {b.type}, priority {b.priority})"
                        )
                    )
                self.cur, self.i, self.stack = chain, 0, ()
                if "/" in chain.name:
                    self.note_service(chain.name)
                return True
            if self.hook_name:
                if self.nat_ran:
                    self.nat_done = {**self.nat_done, self.manip: True}
                self.apply_binding(self.manip)
                self.hook_name = ""
            if self.memo and self.todo and self.todo[0] in HOOKS and self.at_boundary():
                return False
            if not self.todo:
                self.close_recordings()
                return False
            phase, self.todo = self.todo[0], self.todo[1:]
            if phase == "route":  # after prerouting: to this host, or through it
                self.todo = (("input",) if self.dst_is_local() else ("forward", "postrouting")) + self.todo
            elif phase == "loopback":  # sent by the host to itself: back in through lo
                if self.dst_is_local():
                    self.todo = ("prerouting", "input", *self.todo)
            else:
                self.hook_name = phase
                self.manip = "dst" if phase in ("prerouting", "output") else "src"
                self.base_left = self.eng.hooks[phase]
                self.nat_ran = False

    def dst_is_local(self) -> bool:
        if self.dst is None:
            return self.dst_local
        found = self.eng.local.test(self.dst)
        if self.recs:
            self.facts.append((LOCAL, None, found))
        return found

    # -- the rest of a walk, remembered (see Engine.rests) ---------------------------

    def rest_key(self) -> tuple[Any, ...]:
        """Everything the rest of a walk from a hook boundary reads, but the
        destination address and port (read through recorded facts) and the
        source address and port (a walk that reads them is never remembered)."""
        nat = self.nat_done
        return (
            *self.todo,
            self.proto,
            self.mark,
            self.ctstate,
            self.iif,
            self.local,
            nat["dst"],
            nat["src"],
            self.masquerade,
            self.dnat is None,
        )

    def at_boundary(self) -> bool:
        """Between two hooks of a symbolic new connection's walk. Should a walk
        from the same state have read the same facts about the destination as
        this one's would, it took the same path: its outcome is replayed here
        and True returned. Otherwise a recording of this walk's rest opens."""
        key = self.rest_key()
        for facts, rest in self.eng.rests.get(key, ()):
            if all(self.holds(fact) for fact in facts):
                if self.recs:
                    self.facts += facts  # an enclosing recording read them too
                self.rules += rest[0]
                self.lookups += rest[1]
                self.mark, self.final, self.masquerade = rest[2:5]
                self.nat_done = {"dst": rest[5], "src": rest[6]}
                self.stopped, self.todo = True, ()  # the walk is over
                self.close_recordings()
                return True
        if not self.recs:
            self.recs, self.facts = [], []
        self.recs.append((key, len(self.facts), self.rules, self.lookups))
        return False

    def close_recordings(self) -> None:
        """The walk is over: every recording still open is a rest to remember."""
        if not self.recs:
            return
        nat = self.nat_done
        for key, start, rules, lookups in self.recs:
            rest = (self.rules - rules, self.lookups - lookups, self.mark, self.final, self.masquerade)
            known = self.eng.rests.setdefault(key, [])
            if len(known) < REST_VARIANTS:
                known.append((tuple(self.facts[start:]), (*rest, nat["dst"], nat["src"])))
        self.recs = None

    def holds(self, fact: Fact) -> bool:
        """A recorded fact about the destination, true of this walk too."""
        kind, e, answer = fact
        if kind == LOCAL:
            return self.eng.local.test(self.dst) == answer
        lookups = self.lookups  # the replayed rest counts them
        try:
            if kind == CMP:
                return self.cmp_answer(e) == answer
            if kind == LOOKUP:
                return self.lookup_answer(e) == answer
            return self.vmap_answer(e)[1:] == answer
        finally:
            self.lookups = lookups

    def end_base_chain(self, verdict: str | None) -> None:
        chain = self.cur
        self.cur, self.stack = None, ()
        if verdict is None and chain is not None and chain.base is not None and chain.base.policy == "drop":
            verdict = "drop"
        if verdict in ("drop", "reject"):
            assert verdict is not None
            self.final = verdict
            self.stopped = True

    @property
    def opens(self) -> bool:
        """This packet would open a connection (no conntrack entry, ct state new)."""
        return self.entry is None and self.ctstate == CT_NEW

    def fork(self, answer: Any) -> Walk:
        """A copy of this (rewound) walk that will take `answer` to its pending question."""
        twin = object.__new__(Walk)
        twin.__dict__.update(self.__dict__)
        twin.oracle, twin.pos = (answer,), 0
        twin.asked = dict(self.asked)
        twin.recs, twin.facts = None, _NO_FACTS
        return twin

    def apply_binding(self, manip: str) -> None:
        """An established connection's NAT, applied where the nat hooks sit.
        A plan for every connection to one service address (`abstract`)
        cannot know the translated addresses: they become unknown, and a rule
        that reads one makes the plan give way to the literal walk."""
        entry = self.entry
        if entry is None:
            return
        if self.abstract:
            if manip == "dst" and (entry.dnat if self.direction == ORIGINAL else entry.snat) is not None:
                self.dst = self.dport = None  # type: ignore[assignment]
                self.dst_local = self.to_local
            elif manip == "src" and (entry.snat if self.direction == ORIGINAL else entry.dnat) is not None:
                self.src_gone = True
                self.sport = None  # type: ignore[assignment]
            return
        if self.direction == ORIGINAL:
            if manip == "dst" and entry.dnat is not None:
                self.dst, self.dport = entry.dnat
            elif manip == "src" and entry.snat is not None:
                self.src, self.sport = entry.snat
        elif manip == "dst" and entry.snat is not None:
            self.dst, self.dport = entry.orig[1], entry.orig[2]
        elif manip == "src" and entry.dnat is not None:
            self.src, self.sport = entry.orig[3], entry.orig[4]

    def chain(self, name: str) -> Chain:
        chain = self.table.chains.get(name)
        if chain is None:
            raise WalkError(f"no chain named {name!r}")
        return chain

    def note_service(self, chain: str) -> None:
        spn = parse_chain_service(chain)
        if spn is not None:
            self.service = spn
            self.recs = None  # a remembered rest does not name services

    def eval_rule(self, chain: Chain, rule: Rule) -> VerdictT | None:
        """One rule: None when it did not match or matched without a verdict."""
        self.rules += 1
        for e in rule.exprs:
            cls = e.__class__
            if cls is Cmp:
                if not self.cmp(e):  # type: ignore[arg-type]
                    return None
            elif cls is VerdictExpr:
                self.matched(rule)
                return e.verdict  # type: ignore[union-attr]
            elif cls is VMap:
                # The lookup step tells the story; no separate rule step.
                return self.vmap(e)  # type: ignore[arg-type]
            elif cls is Lookup:
                if not self.lookup(e):  # type: ignore[arg-type]
                    return None
            elif cls is Numgen:
                return self.eval_numgen(e)  # type: ignore[arg-type]
            elif cls is MarkSet:
                self.set_mark(e)  # type: ignore[arg-type]
            elif cls is Dnat:
                self.do_dnat(e, rule)  # type: ignore[arg-type]
                return ("accept",)
            elif cls is Masquerade:
                self.masquerade = True
                if self.steps is not None:
                    addr = int_to_ip(self.eng.masq_ip)
                    self.steps.append(Step("nat", f"{rule.text()}: the source becomes {addr} (a random port)"))
                return ("accept",)
            elif cls is SetUpdate:
                self.set_update(e)  # type: ignore[arg-type]
            elif cls is Reject:
                self.matched(rule)
                return ("reject",)
            elif cls is NoOp:
                continue
            else:  # pragma: no cover - the parser makes nothing else
                raise Unsupported(type(e).__name__)
        self.matched(rule)
        return None

    def matched(self, rule: Rule) -> None:
        if self.steps is not None:
            self.steps.append(Step("rule", rule.text()))

    # -- expressions ----------------------------------------------------------

    def field(self, sel: Selector) -> int | str | None:
        """A packet field (not the source address); None: absent (no ports in ICMP)."""
        f = sel.field
        if f == DADDR:
            if self.dst is None:
                raise Unsupported("the destination after an established connection's NAT")
            return self.dst
        if f in (DPORT, SPORT):
            if sel.proto and sel.proto != self.proto:
                return None
            if self.proto not in (6, 17, 132):
                return None
            port = self.dport if f == DPORT else self.sport
            if f == SPORT:
                self.recs = None
            if port is None:
                raise Unsupported("a port after an established connection's NAT")
            return port
        if f == L4PROTO:
            return self.proto
        if f == MARK:
            return self.mark if sel.mask is None else self.mark & sel.mask
        if f == CTSTATE:
            return self.ctstate
        if f == FIB_DADDR:
            self.lookups += 1
            return FIB_LOCAL if self.dst_is_local() else FIB_UNICAST
        if f in (IIF, IIFNAME):
            return self.iif
        if f in (OIF, OIFNAME):
            return ""
        if f == SADDR:
            if self.src is None or self.src_gone:
                raise Unsupported("the source address inside a concatenation")
            return self.src
        raise Unsupported(f"selector {f}")

    def cmp(self, e: Cmp) -> bool:
        sel, value = e.sel, e.value
        if not value.single:
            self.lookups += 1
        if sel.field == SADDR:
            return self.src_test(value) != e.negate
        if sel.field == FIB_SADDR:
            self.lookups += 1
            kind = FIB_LOCAL if self.src_local() else FIB_UNICAST
            return value.test(kind) != e.negate
        hit = self.cmp_answer(e)
        if self.recs and sel.field in (DADDR, DPORT):
            self.facts.append((CMP, e, hit))
        return hit

    def cmp_answer(self, e: Cmp) -> bool:
        """`cmp` on a field other than the source address."""
        sel, value = e.sel, e.value
        v = self.field(sel)
        if v is None:
            return False
        if sel.field == CTSTATE:
            assert isinstance(v, int)
            hit = any(v & bits for bits in value.exact if isinstance(bits, int))
        else:
            hit = value.test(v)
        return hit != e.negate

    def key(self, sels: tuple[Selector, ...]) -> Any:
        parts = []
        for sel in sels:
            v = self.field(sel)
            if v is None:
                return None
            parts.append(v)
        return parts[0] if len(parts) == 1 else tuple(parts)

    def named_set(self, name: str) -> NftSet:
        nset = self.table.sets.get(name)
        if nset is None:
            raise WalkError(f"no set or map named {name!r}")
        return nset

    def lookup(self, e: Lookup) -> bool:
        self.lookups += 1
        nset = self.named_set(e.set_name)
        if len(e.sels) == 1 and e.sels[0].field == SADDR:
            found = self.src_member(nset)
            if found and self.steps is not None and nset.dynamic and self.src is not None:
                expires = nset.members.get(self.src)
                left = "" if expires is None else f", expires in {expires - self.now:.0f}s"
                self.affinity = f"hit: {int_to_ip(self.src)} is in @{nset.name}{left}"
            return found != e.negate
        found = self.lookup_answer(e)
        if self.recs and _reads_destination(e.sels):
            self.facts.append((LOOKUP, e, found))
        return found

    def lookup_answer(self, e: Lookup) -> bool:
        """A lookup keyed by anything but the source address alone."""
        key = self.key(e.sels)
        found = key is not None and member(self.named_set(e.set_name), key, self.now)
        return found != e.negate

    def vmap(self, e: VMap) -> VerdictT | None:
        self.lookups += 1
        key, verdict, comment = self.vmap_answer(e)
        if self.recs and _reads_destination(e.sels):
            self.facts.append((VMAP, e, (verdict, comment)))
        if self.steps is not None and e.map_name:
            shown = "-" if key is None else format_key(tuple(s.field for s in e.sels), key)
            got = "no element" if verdict is None else format_verdict(verdict)
            self.steps.append(Step("lookup", f"{shown} in @{e.map_name}: {got}"))
        if comment:
            self.service = _spn_from_comment(comment, self.proto)
            self.recs = None  # a remembered rest does not name services
        return verdict

    def vmap_answer(self, e: VMap) -> tuple[Any, VerdictT | None, str | None]:
        """A verdict map's key for this packet, its verdict, and the comment of
        the element that gave it (kube-proxy's no-endpoint elements name their service)."""
        key = self.key(e.sels)
        if e.map_name:
            nset = self.named_set(e.map_name)
            verdict = None if key is None else nset.verdicts.get(key)
            return key, verdict, None if verdict is None else nset.comments.get(key)
        for k, verdict in e.anon:
            if k == key:
                return key, verdict, None
        return key, None, None

    def eval_numgen(self, e: Numgen) -> VerdictT | None:
        self.lookups += 1
        n = self.numgen(e.mod) + e.offset
        for k, verdict in e.anon:
            if k == n:
                if self.steps is not None:
                    self.steps.append(
                        Step("schedule", f"numgen random mod {e.mod} drew {n}: {format_verdict(verdict)}", {"drawn": n})
                    )
                return verdict
        return None

    def set_mark(self, e: MarkSet) -> None:
        if e.op == "|":
            self.mark |= e.value
        elif e.op == "^":
            self.mark ^= e.value
        elif e.op == "&":
            self.mark &= e.value
        else:
            self.mark = e.value

    def do_dnat(self, e: Dnat, rule: Rule) -> None:
        self.recs = None  # a remembered rest keeps the destination as it found it
        port = self.dport if e.port is None else e.port
        self.dnat = (e.addr, port)
        self.dst, self.dport = e.addr, port
        if self.steps is not None:
            self.steps.append(Step("nat", rule.text(), {"to": f"{int_to_ip(e.addr)}:{port}"}))

    def set_update(self, e: SetUpdate) -> None:
        self.recs = None  # a remembered rest changes no set
        nset = self.named_set(e.set_name)
        timeout = e.timeout if e.timeout is not None else nset.timeout
        if len(e.sels) != 1 or e.sels[0].field != SADDR or timeout is None:
            if self.symbolic:
                raise Unsupported("set update not keyed by the source address")
            key = self.key(e.sels)
            if key is not None and (e.op == "update" or not member(nset, key, self.now)):
                nset.members[key] = None if timeout is None else self.now + timeout
            return
        if self.symbolic:
            self.actions += ((nset, timeout, e.op),)
            self.updated |= {nset.name}
            return
        assert self.src is not None
        was = member(nset, self.src, self.now)
        apply_update(nset, self.src, self.now, timeout, e.op)
        self.updated |= {nset.name}
        if self.steps is not None and not was:
            self.affinity = f"new: {int_to_ip(self.src)} recorded in @{nset.name} for {timeout:.0f}s"

    # -- the result -------------------------------------------------------------

    def outcome(self, established: bool) -> Outcome:
        final = self.final
        if established and self.entry is not None:
            decision = established_decision(final, self.rules, self.lookups + 1, self.entry, self.direction)
            return Outcome(decision, None, False, self.actions, final, False)
        stopped = final in ("drop", "reject")
        if final == "drop":
            verdict = Verdict.DROP
        elif final == "reject":
            verdict = Verdict.REJECT
        else:
            verdict = Verdict.DNAT if self.dnat is not None else Verdict.ACCEPT
        decision = Decision(
            verdict,
            None if stopped else self.dnat,
            self.masquerade and not stopped,
            self.rules,
            self.lookups + 1,  # + the conntrack lookup
            self.service,
            False,
        )
        return Outcome(decision, self.dnat, self.masquerade, self.actions, final, self.opens)


def tracked_ctstate(entry: CtEntry, direction: int, valid: bool) -> int:
    """`ct state` of a packet with a conntrack entry (nf_conntrack_core.c
    resolve_normal_ct): invalid if conntrack refused it, established in the
    reply direction or once a reply was seen, else still new (a retransmitted
    SYN, a second UDP datagram before any answer)."""
    if not valid:
        return CT_INVALID
    if direction != ORIGINAL or entry.status & SEEN_REPLY:
        return CT_ESTABLISHED
    return CT_NEW


_CTSTATE_TEXT = {
    CT_ESTABLISHED: "established; nat chains are not consulted again",
    CT_NEW: "new (no reply seen yet); nat chains are not consulted again",
    CT_INVALID: "invalid: the packet goes on without it (no NAT)",
}


def settled(node: Plan) -> bool:
    """No branch of this (fully explored) plan reads a set's contents, the
    clock or a random draw: its answer depends on the packet alone."""
    if node.__class__ is not list:
        return True
    op = node[0]
    if op in (MEMBER, NUMGEN):
        return False
    return all(settled(child) for child in node[3 if op == RANGE else 2 :])


def established_decision(final: str, rules: int, lookups: int, entry: CtEntry, direction: int) -> Decision:
    """A packet of a tracked connection: its fate from the walk, its NAT from
    the conntrack entry (DNAT for the original direction)."""
    dnat = entry.dnat
    if final == "drop":
        verdict = Verdict.DROP
    elif final == "reject":
        verdict = Verdict.REJECT
    elif direction == ORIGINAL and dnat is not None:
        verdict = Verdict.DNAT
    else:
        verdict = Verdict.ACCEPT
    stopped = final != "accept"
    service = entry.data if isinstance(entry.data, ServicePortName) else None
    masquerade = not stopped and entry.snat is not None
    return Decision(verdict, None if stopped else dnat, masquerade, rules, lookups, service, True)


def _reads_destination(sels: tuple[Selector, ...]) -> bool:
    return any(sel.field in (DADDR, DPORT) for sel in sels)


def member(nset: NftSet, key: Any, now: float) -> bool:
    """nft_lookup: present and not expired (nft_set_elem_expired: now >= expiration)."""
    expires = nset.members.get(key, _MISSING)
    if expires is _MISSING:
        if nset.intervals and isinstance(key, int):
            return any(lo <= key <= hi for lo, hi in nset.intervals)
        return False
    return expires is None or now < expires  # type: ignore[operator]


def apply_update(nset: NftSet, key: int, now: float, timeout: float, op: str) -> None:
    """nft_dynset: `update` adds or refreshes the timeout, `add` only adds."""
    if op == "update" or not member(nset, key, now):
        nset.members[key] = now + timeout


def _spn_from_comment(comment: str, proto: int) -> ServicePortName | None:
    """The `ns/name:port` comment kube-proxy puts on no-endpoint elements."""
    nsname, _, port = comment.partition(":")
    ns, sep, name = nsname.partition("/")
    if not sep:
        return None
    return ServicePortName(ns, name, port, proto_name(proto).upper())


# --- compiling -----------------------------------------------------------------


class Engine:
    """A table, the node's addresses, conntrack, and the compiled plans."""

    def __init__(self, rng: random.Random, table: Table, local_ips: frozenset[int], masq_ip: int) -> None:
        self.rng = rng
        self.table = table
        self.local = LocalAddresses(local_ips)
        self.masq_ip = masq_ip
        self.conntrack = Conntrack()
        self.plans: dict[tuple[Any, ...], Plan] = {}
        self.fast: dict[tuple[int, int, int], Plan] = {}  # new, forwarded: (dst, dport, proto) -> plan
        # tracked packets whose walk reads no destination: binding shape -> plan (see tracked_plan)
        self.any_destination: dict[tuple[Any, ...], Plan] = {}
        # rests of symbolic walks from a hook boundary: state -> [(facts, outcome)] (see Walk.at_boundary)
        self.rests: dict[tuple[Any, ...], list[tuple[tuple[Fact, ...], tuple[Any, ...]]]] = {}
        self.hooks: dict[str, tuple[Chain, ...]] = {}
        self.generation = 0  # bumped by every reset: a connection's remembered decision is for one table
        self.reset(table)

    def reset(self, table: Table, same_base_chains: bool = False) -> None:
        """A new or changed table: plans forgotten, base chains re-read
        (a partial sync never touches them)."""
        if not same_base_chains or table is not self.table:
            self.hooks = {
                h: tuple(table.base_chains(h)) for h in ("prerouting", "input", "forward", "output", "postrouting")
            }
        self.table = table
        self.generation += 1
        self.plans.clear()
        self.fast.clear()
        self.any_destination.clear()
        self.rests.clear()

    # -- literal -----------------------------------------------------------------

    def walk(
        self,
        packet: Packet,
        now: float,
        ctstate: int,
        entry: CtEntry | None = None,
        direction: int = ORIGINAL,
        steps: list[Step] | None = None,
    ) -> tuple[Outcome, Walk]:
        w = Walk(self, packet, now, ctstate, entry, direction, steps=steps)
        w.run()
        return w.outcome(not w.opens), w

    # -- symbolic ----------------------------------------------------------------

    def start_plan(
        self,
        packet: Packet,
        now: float,
        ctstate: int,
        entry: CtEntry | None = None,
        direction: int = ORIGINAL,
        src_known: bool = False,
    ) -> Plan:
        """The decision tree for every packet that differs from `packet` only
        in its source address (and source port), random draws and set contents,
        explored up to its first question; `expand` explores a branch when a
        packet first takes it."""
        walk = Walk(self, packet, now, ctstate, entry, direction, oracle=[], src_known=src_known)
        return self.expand(Pending(walk, _START))

    def expand(self, pending: Pending) -> Plan:
        """Run a suspended walk on with its answer, to the next question (a node
        whose branches are Pending) or to its end (an Outcome)."""
        w = pending.walk if pending.answer is _START else pending.walk.fork(pending.answer)
        try:
            w.run()
        except NeedAnswer as need:
            q = need.question
            if q[0] == "numgen":
                return [NUMGEN, q[1], *(Pending(w, k) for k in range(q[1]))]
            yes, no = Pending(w, True), Pending(w, False)
            if q[0] == "range":
                return [RANGE, q[1], q[2], yes, no]
            if q[0] == "member":
                return [MEMBER, self.table.sets[q[1]].members, yes, no]
            return [VALUE, q[1], yes, no]
        return w.outcome(not w.opens)

    def compile_plan(
        self,
        packet: Packet,
        now: float,
        ctstate: int,
        entry: CtEntry | None = None,
        direction: int = ORIGINAL,
        src_known: bool = False,
    ) -> Plan:
        """The whole tree at once (every branch explored)."""
        return self.fill(self.start_plan(packet, now, ctstate, entry, direction, src_known))

    def fill(self, node: Plan) -> Plan:
        """Explore every branch still Pending below `node`."""
        if isinstance(node, Pending):
            node = self.expand(node)
        if isinstance(node, list):
            for i in range(3 if node[0] == RANGE else 2, len(node)):  # the branches (see the node layouts)
                node[i] = self.fill(node[i])
        return node

    def prepare(self, packet: Packet, now: float) -> None:
        """Explore every branch of the plan for this packet's destination now
        (what routing would otherwise do a packet at a time): benchmarks warm
        up with it, callers who know their hot destinations may too."""
        ctstate = CT_INVALID if packet[0] == TCP and not _TCP_OPENS[packet[7] & 0xFF] else CT_NEW
        key = (ctstate, packet[3], packet[0], packet[4], packet[5], packet[6])
        plan = self.plans.get(key)
        if plan is None:
            plan = self.new_plan(packet, now, ctstate)
        if plan is not False:
            try:
                self.fill(plan)
            except Unsupported:
                self.walk_literally(key)

    def reach(self, packet: Packet, now: float) -> list[Reach]:
        """Every endpoint a new connection from this source could reach, with its
        exact probability (the numgen draws enumerated; nothing changed)."""
        try:
            plan = self.compile_plan(packet, now, CT_NEW, src_known=True)
        except Unsupported:
            return []
        found: dict[tuple[int, int], Fraction] = {}

        def visit(node: Plan, p: Fraction) -> None:
            if isinstance(node, Outcome):
                if node.final == "accept" and node.dnat is not None:
                    found[node.dnat] = found.get(node.dnat, Fraction(0)) + p
                return
            assert node[0] == NUMGEN
            for child in node[2:]:
                visit(child, p / node[1])

        visit(plan, Fraction(1))
        return [Reach(ip, port, p) for (ip, port), p in sorted(found.items())]

    # -- routing -------------------------------------------------------------------

    def new_plan(self, packet: Packet, now: float, ctstate: int) -> Plan:
        """The plan for a new connection's destination; False: walk literally."""
        key = (ctstate, packet.dst, packet.proto, packet.dport, packet.local, packet.iif)
        plan = self.plans.get(key)
        if plan is None:
            try:
                plan = self.start_plan(packet, now, ctstate)
            except Unsupported:
                plan = False
            self.remember(key, plan)
            if ctstate == CT_NEW and not packet.local and not packet.iif:
                self.fast[(packet.dst, packet.dport, packet.proto)] = plan
        return plan

    def remember(self, key: tuple[Any, ...], plan: Plan) -> None:
        """Plans are a cache: bounded, so that replies to millions of clients
        (each its own key) cannot grow it without end."""
        if len(self.plans) >= PLAN_CACHE_MAX:
            self.plans.clear()
            self.fast.clear()
        self.plans[key] = plan

    def run_plan(self, plan: Plan, packet: Packet, now: float) -> Outcome:
        """The plan on one packet's source address; branches taken for the first
        time are explored on the way (see `decide`, which inlines this)."""
        node = plan
        src = packet[1]
        while node.__class__ is list:
            op = node[0]
            if op == RANGE:
                i = 3 if node[1] <= src <= node[2] else 4
            elif op == NUMGEN:
                i = 2 + ((self.rng.getrandbits(32) * node[1]) >> 32)
            elif op == MEMBER:
                expires = node[1].get(src, _MISSING)
                i = 2 if expires is not _MISSING and (expires is None or now < expires) else 3
            else:
                i = 2 if node[1].test(src) else 3
            child = node[i]
            if child.__class__ is Pending:
                child = self.explore_branch(node, i, packet)
            node = child
        return node

    def explore_branch(self, node: list[Any], i: int, packet: Packet) -> Plan:
        """Fill in a branch this packet is the first to take. Should the walk
        meet something the compiler cannot reason about, this packet's walk
        finishes concretely from where it stands (the random draws made so far
        are the ones the literal walk would have made) and the destination is
        walked literally from then on."""
        pending = node[i]
        try:
            child = node[i] = self.expand(pending)
        except Unsupported:
            w = pending.walk.fork(pending.answer)
            w.symbolic, w.src, w.memo = False, packet[1], False
            w.run()
            raise FinishedLiterally(w.outcome(not w.opens)) from None
        return child

    def commit_new(self, packet: Packet, out: Outcome, now: float) -> None:
        """What a new connection leaves behind: affinity entries, and a
        conntrack entry unless it was dropped (nf_conntrack_confirm never ran)."""
        for nset, timeout, op in out.actions:
            apply_update(nset, packet.src, now, timeout, op)
        if out.final != "accept":
            return
        snat = None
        if out.masquerade:
            # masquerade fully-random: a random port in 1024-65535
            # (nf_nat_l4proto_unique_tuple, NF_NAT_RANGE_PROTO_RANDOM_FULLY).
            snat = (self.masq_ip, 1024 + self.rng.getrandbits(16) % 64512)
        self.conntrack.create(packet[:5], now, dnat=out.dnat, snat=snat, flags=packet.flags, data=out.decision.service)

    def decide(self, packet: Packet, now: float) -> Outcome:
        """The ruleset's answer for the first packet of a connection: the plan
        for its destination run on its source address, branches explored the
        first time a packet takes them. The common case (a forwarded packet
        that can open a connection) is one lookup keyed by destination, and
        run_plan is inlined."""
        proto = packet[0]
        if (proto == TCP and not _TCP_OPENS[packet[7] & 0xFF]) or packet[5] or packet[6]:
            return self._decide_other(packet, now)
        plan = self.fast.get((packet[3], packet[4], proto))
        if plan is None:
            plan = self.new_plan(packet, now, CT_NEW)
        if plan is False:
            return self.walk(packet, now, CT_NEW)[0]
        node = plan
        src = packet[1]
        try:
            while node.__class__ is list:
                op = node[0]
                if op == RANGE:
                    i = 3 if node[1] <= src <= node[2] else 4
                elif op == NUMGEN:
                    i = 2 + ((self.rng.getrandbits(32) * node[1]) >> 32)
                elif op == MEMBER:
                    expires = node[1].get(src, _MISSING)
                    i = 2 if expires is not _MISSING and (expires is None or now < expires) else 3
                else:
                    i = 2 if node[1].test(src) else 3
                child = node[i]
                if child.__class__ is Pending:
                    child = self.explore_branch(node, i, packet)
                node = child
        except FinishedLiterally as done:
            self.walk_literally((CT_NEW, packet[3], proto, packet[4], packet[5], packet[6]))
            return done.outcome
        return node

    def _decide_other(self, packet: Packet, now: float) -> Outcome:
        ctstate = CT_INVALID if packet[0] == TCP and not _TCP_OPENS[packet[7] & 0xFF] else CT_NEW
        key = (ctstate, packet[3], packet[0], packet[4], packet[5], packet[6])
        plan = self.plans.get(key)
        if plan is None:
            plan = self.new_plan(packet, now, ctstate)
        if plan is False:
            return self.walk(packet, now, ctstate)[0]
        try:
            return self.run_plan(plan, packet, now)
        except FinishedLiterally as done:
            self.walk_literally(key)
            return done.outcome

    def walk_literally(self, key: tuple[Any, ...]) -> None:
        """From now on this destination is walked rule by rule."""
        self.remember(key, False)
        if key[0] == CT_NEW and not key[4] and not key[5]:
            self.fast[(key[1], key[3], key[2])] = False

    def route(self, packet: Packet, now: float) -> Decision:
        flow = packet[:5]
        conntrack = self.conntrack
        entry = conntrack.by_tuple.get(flow)
        if (
            entry is not None
            and packet[7] & ACK_CLASS_BITS == ACK
            and entry.expires > now
            and entry.state == TCP_ESTABLISHED
            and entry.status & REPLIED_ASSURED == REPLIED_ASSURED
            and packet[0] == TCP
        ):
            # Conntrack.update for the commonest packet, inlined: a segment of
            # the ACK class (no SYN, FIN or RST) keeps an established,
            # answered, assured TCP connection as it is and refreshes its
            # timer (tcp_conntracks[dir][TCP_ACK_SET][ESTABLISHED]); its ct
            # state is established, and its decision usually remembered.
            entry.expires = now + conntrack.timeouts.tcp[TCP_ESTABLISHED]
            direction = ORIGINAL if entry.orig == flow else REPLY
            seen = entry.memo_orig if direction == ORIGINAL else entry.memo_reply
            if (
                seen is not None
                and seen[0] == self.generation
                and seen[1] == CT_ESTABLISHED
                and seen[2] == packet[6]
                and seen[3] == packet[5]
            ):
                return seen[4]
            return self.route_established(packet, (entry, direction, True), now)
        tracked = conntrack.track(flow, packet.flags, now)
        if tracked is not None:
            return self.route_established(packet, tracked, now)
        out = self.decide(packet, now)
        if out.new:
            self.commit_new(packet, out, now)
        return out.decision

    def route_established(self, packet: Packet, tracked: tuple[CtEntry, int, bool], now: float) -> Decision:
        """A packet of a tracked connection. Its plan is shared by every
        connection to the same service address whose binding has the same
        shape (DNAT or not, masquerade or not, to this host or not); the
        addresses the binding gives stay unknown to it (Walk.apply_binding)."""
        entry, direction, valid = tracked
        if not valid:
            # INVALID for its connection: nf_conntrack_in drops the packet's
            # conntrack, so no NAT is done for it; `ct state invalid`.
            return self.walk(packet, now, CT_INVALID)[0].decision
        ctstate = tracked_ctstate(entry, direction, valid)
        seen = entry.memo_orig if direction == ORIGINAL else entry.memo_reply
        if (
            seen is not None
            and seen[0] == self.generation
            and seen[1] == ctstate
            and seen[2] == packet.iif
            and seen[3] == packet.local
        ):
            return seen[4]
        plan = self.tracked_plan(packet, now, ctstate, entry, direction)
        if plan is False:
            out, _ = self.walk(packet, now, ctstate, entry, direction)
            return out.decision
        leaf = self.run_plan(plan, packet, now)
        d = leaf.decision
        decision = established_decision(leaf.final, d.rules, d.lookups, entry, direction)
        if settled(plan):
            # Every question in the plan is about the source address, fixed for
            # this direction of the connection: the same packet gets the same
            # decision until the table, its ct state or its interface change.
            seen = (self.generation, ctstate, packet.iif, packet.local, decision)
            if direction == ORIGINAL:
                entry.memo_orig = seen
            else:
                entry.memo_reply = seen
        return decision

    def tracked_plan(self, packet: Packet, now: float, ctstate: int, entry: CtEntry, direction: int) -> Plan:
        """The plan for a packet of a tracked connection; False: walk literally.

        Most such walks never read the destination (every check of kube-proxy's
        table that does is behind `ct state new`), so one plan per binding shape
        serves every connection, whichever service or client it belongs to: a
        reply's destination is a client's address and port, so a plan keyed by
        it would be built anew for every connection. Only when that plan reads
        the destination is one built per destination address and port."""
        dnat, snat = entry.dnat, entry.snat
        if direction == ORIGINAL:
            to = dnat[0] if dnat is not None else packet.dst
        else:
            to = entry.orig[1] if snat is not None else packet.dst
        local = self.local.test
        shape = (
            ctstate,
            direction,
            packet.proto,
            packet.local,
            packet.iif,
            dnat is not None,
            snat is not None,
            local(to),
            local(packet.dst),
        )
        plan = self.any_destination.get(shape)
        if plan is None:
            plan = self.established_plan(packet, now, ctstate, entry, direction, shape[7], dst_known=False)
            self.any_destination[shape] = plan
        if plan is not False:
            return plan
        key = (ctstate, direction, packet.dst, packet.proto, packet.dport, packet.local, packet.iif, *shape[5:8])
        plan = self.plans.get(key)
        if plan is None:
            plan = self.established_plan(packet, now, ctstate, entry, direction, shape[7], dst_known=True)
            self.remember(key, plan)
        return plan

    def established_plan(
        self, packet: Packet, now: float, ctstate: int, entry: CtEntry, direction: int, to_local: bool, dst_known: bool
    ) -> Plan:
        """Explored whole at once (an established packet's tree is small);
        False when it reads an address the binding rewrote or, unless
        `dst_known`, the destination or a port. `to_local`: the binding's
        translated destination is this host."""
        walk = Walk(self, packet, now, ctstate, entry, direction, oracle=[], src_known=False)
        walk.abstract, walk.to_local = True, to_local
        if not dst_known:
            walk.dst_local = self.local.test(packet.dst)
            walk.dst = walk.dport = walk.sport = None  # type: ignore[assignment]
        try:
            return self.fill(self.expand(Pending(walk, _START)))
        except Unsupported:
            return False


def clean_stale_udp(conntrack: Conntrack, view: NodeView) -> int:
    """kube-proxy's conntrack reconciler after each sync (pkg/proxy/conntrack/
    cleanup.go CleanStaleEntries): a UDP entry whose original destination is a
    UDP service's IP (or NodePort) and whose reply source is not one of that
    service's serving endpoints is deleted, so the next datagram is balanced
    again. Keyed by address only, the last port listed winning, as there."""
    udp = [entry for entry in conntrack.entries() if entry.orig[0] == UDP]
    if not udp:
        return 0
    by_ip: dict[int, set[int]] = {}
    by_node_port: dict[int, set[int]] = {}
    for info in view.service_ports():
        if info.protocol != UDP:
            continue
        ips = {ep.ip for ep in view.endpoints(info.name) if ep.serving}
        for ip in (info.cluster_ip, *info.lb_vips, *info.external_ips):
            by_ip[ip] = ips
        if info.node_port:
            by_node_port[info.node_port] = ips
    if not by_ip and not by_node_port:
        return 0
    stale = []
    for entry in udp:
        reply_src = entry.reply[1]
        to_ip = by_ip.get(entry.orig[3])
        to_port = by_node_port.get(entry.orig[4])
        if (to_ip is not None and reply_src not in to_ip) or (to_port is not None and reply_src not in to_port):
            stale.append(entry)
    for entry in stale:
        conntrack.delete(entry)
    return len(stale)


class NftablesMode:
    """kube-proxy --proxy-mode=nftables on one node (the ProxyMode protocol)."""

    name = "nftables"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.syncer = Syncer()
        self.engine = Engine(rng, self.syncer.table, frozenset(), 0)
        self.route = self.engine.route  # type: ignore[method-assign]  # the hot path, one call shorter

    @property
    def table(self) -> Table:
        return self.engine.table

    @property
    def conntrack(self) -> Conntrack:
        return self.engine.conntrack

    def sync(self, view: NodeView) -> Ruleset:
        result = self.syncer.sync(view)
        eng = self.engine
        eng.local = LocalAddresses(frozenset(view.node_ips))
        eng.masq_ip = view.node_ip
        eng.conntrack.timeouts = kube_proxy_timeouts(view.config)
        eng.reset(self.syncer.table, same_base_chains=result.partial)
        clean_stale_udp(eng.conntrack, view)
        return Ruleset(result.text, self.syncer.rules, result.partial, result.changed)

    def load_capture(self, text: str, local_ips: list[int], filename: str) -> None:
        """A ruleset captured on a node (`nft list ruleset`, or an `nft -f` file):
        its `ip kube-proxy` table is routed through; `local_ips` are the node's
        addresses (for `fib daddr type local` and masquerading)."""
        table = load_table(text, filename)
        eng = self.engine
        eng.local = LocalAddresses(frozenset(local_ips))
        eng.masq_ip = local_ips[0] if local_ips else 0
        eng.conntrack.flush()
        eng.reset(table)

    def route(self, packet: Packet, now: float) -> Decision:  # replaced per instance by Engine.route
        return self.engine.route(packet, now)

    def prepare(self, packet: Packet, now: float) -> None:
        """Build the whole decision plan for this packet's destination now
        (routing builds it one branch at a time): the benchmarks' warm-up."""
        self.engine.prepare(packet, now)

    def trace(self, packet: Packet, now: float) -> Trace:
        eng = self.engine
        steps: list[Step] = []
        tracked = eng.conntrack.track(packet[:5], packet.flags, now)
        if tracked is None:
            ctstate = CT_NEW
            if packet.proto == TCP and tcp_next_state(ORIGINAL, packet.flags, NONE) >= INVALID:
                ctstate = CT_INVALID
                steps.append(
                    Step("conntrack", "no conntrack entry and this TCP segment cannot open one: ct state invalid")
                )
            else:
                steps.append(Step("conntrack", "no conntrack entry: a new connection (ct state new)"))
            reach = eng.reach(packet, now) if ctstate == CT_NEW else []
            out, walk = eng.walk(packet, now, ctstate, steps=steps)
            if ctstate == CT_NEW:
                eng.commit_new(packet, out, now)
        else:
            entry, direction, ok = tracked
            ctstate = tracked_ctstate(entry, direction, ok)
            which = "original" if direction == ORIGINAL else "reply"
            binding = f", DNAT to {int_to_ip(entry.dnat[0])}:{entry.dnat[1]}" if entry.dnat else ""
            steps.append(
                Step(
                    "conntrack",
                    f"conntrack entry found ({which} direction{binding}): ct state " + _CTSTATE_TEXT[ctstate],
                )
            )
            # INVALID: the packet leaves conntrack without its entry (no NAT).
            tracked_entry = entry if ok else None
            out, walk = eng.walk(packet, now, ctstate, tracked_entry, direction, steps=steps)
            reach = []
        return Trace(self.name, packet, out.decision, reach, steps, walk.affinity)

    def dump(self) -> str:
        return dump_commands(self.engine.table)

    def dump_with(
        self, show: str | None = None, fmt: str | None = None, stats: bool = False, rate: bool = False
    ) -> str:
        """`--show ruleset`: the table as `nft list ruleset` prints it (with
        affinity entries); `--show conntrack`: `conntrack -L`."""
        if stats or rate:
            raise UsageError("the nftables mode has no counters (kube-proxy adds none)")
        if fmt not in (None, "nft"):
            raise UsageError(f"unknown --format {fmt!r} for the nftables mode (nft)")
        if show in (None, "table"):
            return self.dump()
        if show == "ruleset":
            return list_ruleset(self.engine.table)
        if show == "conntrack":
            return self.engine.conntrack.dump(0.0)
        raise UsageError(f"unknown --show {show!r} for the nftables mode (table, ruleset, conntrack)")


def load_table(text: str, filename: str) -> Table:
    """The `ip kube-proxy` table of a captured ruleset, every rule parsed and
    every chain and set it names present; one clear error otherwise."""
    where = Where(file=filename)
    try:
        tables = parse_nft(text)
    except SyntaxProblem as exc:
        raise RulesetError(str(exc), where, f"line {exc.line}" if exc.line else "") from None
    table = tables.get(("ip", "kube-proxy"))
    if table is None:
        found = ", ".join(f"{f} {n}" for f, n in tables) or "none"
        raise RulesetError(f"no `table ip kube-proxy` in this ruleset (tables: {found})", where)
    for chain in table.chains.values():
        for rule in chain.rules:
            try:
                exprs = rule.exprs
            except SyntaxProblem as exc:
                raise RulesetError(str(exc), where, f"line {exc.line or rule.line}") from None
            for target in _references(exprs):
                kind, name = target
                if (kind == "chain" and name not in table.chains) or (kind == "set" and name not in table.sets):
                    raise RulesetError(
                        f"chain {chain.name} refers to {kind} {name!r}, which is not in the table",
                        where,
                        f"line {rule.line}",
                    )
    for nset in table.sets.values():
        if nset.is_map:
            for verdict in nset.verdicts.values():
                if len(verdict) == 2 and verdict[1] not in table.chains:
                    raise RulesetError(
                        f"map {nset.name} refers to chain {verdict[1]!r}, which is not in the table", where
                    )
    return table


def _references(exprs: tuple[Any, ...]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for e in exprs:
        if isinstance(e, VerdictExpr) and len(e.verdict) == 2:
            out.append(("chain", e.verdict[1]))
        elif isinstance(e, (VMap, Numgen)):
            if isinstance(e, VMap) and e.map_name:
                out.append(("set", e.map_name))
            out += [("chain", v[1]) for _, v in e.anon if len(v) == 2]
        elif isinstance(e, (Lookup, SetUpdate)):
            out.append(("set", e.set_name))
    return out
