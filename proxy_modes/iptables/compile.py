"""Chains compiled to Python functions: the engine's fast path.

A chain becomes one function `chain(st) -> int` whose body is the chain's
rules as straight-line `if` statements: the IP part and simple matches
(ports, mark, conntrack state) inlined, other matches called in order, the
target as a few statements (a jump calls the target chain's function; 0 means
"returned", 1/2/3 are ACCEPT/DROP/REJECT). It evaluates exactly the rules a
literal walk evaluates, in the same order, and counts them the same way (the
differential test checks this against `Netfilter(literal=True)`).

To keep compiling cheap, the source is written with every value as a
parameter (`k0`, `k1`, ...), so chains of the same shape (every KUBE-SEP
chain, every KUBE-SVC chain with n endpoints) share one compiled factory and
differ only in the constants passed to it. Long chains (KUBE-SERVICES,
KUBE-NODEPORTS) are not compiled: they run through their index, which skips
the rules that cannot match while still counting them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from netem.addr import MAX

from . import xt
from .syntax import Chain, Rule, Table

if TYPE_CHECKING:
    from .engine import ChainIndex, Netfilter

ChainFn = Callable[[xt.PacketState], int]
_FACTORIES: dict[str, Callable[..., ChainFn]] = {}
INLINE_MAX_RULES = 16  # longer chains use their index instead


class Registry(dict[str, ChainFn]):
    """The compiled chains of one table of one engine, compiled on first use."""

    def __init__(self, nf: Netfilter, table: Table) -> None:
        super().__init__()
        self.nf = nf
        self.table = table

    def __missing__(self, name: str) -> ChainFn:
        chain = self.table.chains[name]
        cached = chain.compiled
        if cached is not None and cached[0] is self.nf:
            fn: ChainFn = cached[1]
        else:
            fn = compile_chain(self.nf, self, chain)
            chain.compiled = (self.nf, fn)
        self[name] = fn
        return fn


def _no_rng(bits: int) -> int:
    raise RuntimeError("this ruleset draws random numbers (statistic --mode random): give the engine an rng")


def compile_chain(nf: Netfilter, registry: Registry, chain: Chain) -> ChainFn:
    from .engine import build_index

    if len(chain.rules) >= INLINE_MAX_RULES and not nf.literal:
        index = chain.index
        if index is None:
            index = chain.index = build_index(chain) or False
        return _indexed(nf, registry, chain, index or None)
    source, consts = chain_source(chain, nf.labels)
    factory = _FACTORIES.get(source)
    if factory is None:
        namespace: dict[str, Any] = {}
        exec(compile(source, "<iptables chain>", "exec"), namespace)
        factory = _FACTORIES[source] = namespace["factory"]
    rand = nf.rng.getrandbits if nf.rng is not None else _no_rng
    return factory(registry, nf._nat, rand, *consts)


def chain_source(chain: Chain, labels: Mapping[str, object] | None = None) -> tuple[str, list[Any]]:
    """The factory's source (values as parameters) and the values."""
    consts: list[Any] = []

    def k(value: Any) -> str:
        consts.append(value)
        return f"k{len(consts) - 1}"

    body: list[str] = ["    def chain(st):", "        base = 0"]
    if any(not isinstance(m, xt.PURE_MATCHES) for rule in chain.rules for m in rule.matches):
        body.append("        st.pure = False")  # random or stateful matches ahead: never cache this walk
    for i, rule in enumerate(chain.rules):
        cond = _condition(rule, k)
        action = _action(rule, i + 1, k, labels or {})
        body.append(f"        if {cond}:" if cond else "        if True:")
        body += [f"            {line}" for line in action]
    body.append(f"        st.rules += {len(chain.rules)} - base")
    body.append("        return 0")
    params = ", ".join(f"k{i}" for i in range(len(consts)))
    head = f"def factory(FN, NAT, RAND{', ' + params if params else ''}):"
    return "\n".join([head, *body, "    return chain", ""]), consts


def _condition(rule: Rule, k: Callable[[Any], str]) -> str:
    """The rule's test as one short-circuit expression, in the kernel's order."""
    terms: list[str] = []
    if rule.proto:
        terms.append(f"st.proto {'!=' if rule.proto_inv else '=='} {k(rule.proto)}")
    for field, addr in (("dst", rule.dst), ("src", rule.src)):
        if addr is not None:
            net, mask, inv = addr
            lhs = f"st.{field}" if mask == MAX else f"(st.{field} & {k(mask)})"
            terms.append(f"{lhs} {'!=' if inv else '=='} {k(net)}")
    for field, iface in (("iif", rule.iif), ("oif", rule.oif)):
        if iface is not None:
            name, prefix, inv = iface
            expr = f"st.{field}.startswith({k(name)})" if prefix else f"st.{field} == {k(name)}"
            terms.append(f"not ({expr})" if inv else expr)
    for match in rule.matches:
        terms.append(_match_expr(match, k))
    return " and ".join(terms)


def _match_expr(match: xt.Match, k: Callable[[Any], str]) -> str:
    kind = type(match)
    if kind is xt.Ports and match.flags is None:  # type: ignore[attr-defined]
        parts = []
        for field, rng, inv in (("sport", match.sport, match.sinv), ("dport", match.dport, match.dinv)):  # type: ignore[attr-defined]
            if rng is not None:
                lo, hi = rng
                expr = f"st.{field} == {k(lo)}" if lo == hi else f"{k(lo)} <= st.{field} <= {k(hi)}"
                parts.append(f"not ({expr})" if inv else expr)
        return " and ".join(parts) or "True"
    if kind is xt.MarkMatch:
        op = "!=" if match.inv else "=="  # type: ignore[attr-defined]
        return f"(st.mark & {k(match.mask)}) {op} {k(match.value)}"  # type: ignore[attr-defined]
    if kind is xt.Conntrack:
        expr = f"(st.ctstate & {k(match.states)})"  # type: ignore[attr-defined]
        return f"not {expr}" if match.inv else expr  # type: ignore[attr-defined]
    if kind is xt.Statistic and match.mode == "random":  # type: ignore[attr-defined]
        # xt_statistic: (get_random_u32() & 0x7FFFFFFF) < threshold ('!' inverts).
        op = ">=" if match.inv else "<"  # type: ignore[attr-defined]
        return f"(RAND(32) & 2147483647) {op} {k(match.threshold)}"  # type: ignore[attr-defined]
    return f"{k(match.test)}(st)"


def _action(rule: Rule, n: int, k: Callable[[Any], str], labels: Mapping[str, object]) -> list[str]:
    """The target as statements; `n` rules of this chain have been evaluated."""
    target = rule.target
    kind = target.kind
    credit = f"st.rules += {n} - base"
    if kind in (xt.T_NONE, xt.T_LOG):
        return ["pass"]
    if kind == xt.T_MARK:
        return [credit, f"base = {n}", f"st.mark = (st.mark & {k(~target.mask & MAX)}) ^ {k(target.value)}"]
    if kind in (xt.T_JUMP, xt.T_GOTO):
        name = k(target.name)
        service = labels.get(target.name)
        label = [f"if st.service is None: st.service = {k(service)}"] if service is not None else []
        if kind == xt.T_GOTO:
            return [credit, *label, f"return FN[{name}](st)"]
        return [credit, f"base = {n}", *label, f"v = FN[{name}](st)", "if v: return v"]
    if kind == xt.T_RETURN:
        return [credit, "return 0"]
    if kind == xt.T_ACCEPT:
        return [credit, "return 1"]
    if kind == xt.T_DROP:
        return [credit, "return 2"]
    if kind == xt.T_REJECT:
        return [credit, "return 3"]
    return [credit, f"NAT({k(target)}, st, '')", "return 1"]


def _indexed(nf: Netfilter, registry: Registry, chain: Chain, index: ChainIndex | None) -> ChainFn:
    """A long chain: candidates from the index, each tested with the rule's
    own test, every rule before a hit counted."""
    rules = chain.rules
    total = len(rules)
    labels = nf.labels
    nat = nf._nat

    def run(st: xt.PacketState) -> int:
        pos = 0
        while True:
            hit = -1
            if index is not None:
                cands = index.candidates(st)
                for i in range(bisect_left(cands, pos) if pos else 0, len(cands)):
                    c = cands[i]
                    if rules[c].test(st):
                        hit = c
                        break
            else:
                for c in range(pos, total):
                    if rules[c].test(st):
                        hit = c
                        break
            if hit < 0:
                st.rules += total - pos
                return 0
            st.rules += hit - pos + 1
            target = rules[hit].target
            kind = target.kind
            if kind in (xt.T_JUMP, xt.T_GOTO):
                if st.service is None:
                    st.service = labels.get(target.name)
                verdict = registry[target.name](st)
                if kind == xt.T_GOTO or verdict:
                    return verdict
            elif kind == xt.T_MARK:
                st.mark = (st.mark & ~target.mask & MAX) ^ target.value
            elif kind == xt.T_RETURN:
                return 0
            elif kind == xt.T_ACCEPT:
                return 1
            elif kind == xt.T_DROP:
                return 2
            elif kind == xt.T_REJECT:
                return 3
            elif kind not in (xt.T_NONE, xt.T_LOG):
                nat(target, st, "")
                return 1
            pos = hit + 1

    return run
