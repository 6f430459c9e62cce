"""Chains compiled to Python functions: the engine's fast path.

A chain becomes one function `chain(st) -> int` whose body is the chain's
rules as straight-line `if` statements: the IP part and simple matches
(ports, mark, conntrack state, random statistic) inlined, other matches
called in order, the target as a few statements (a jump calls the target
chain's function; 0 means "returned", 1/2/3 are ACCEPT/DROP/REJECT). It
evaluates exactly the rules a literal walk evaluates, in the same order,
draws the same random numbers, and counts the rules the same way (the
differential test holds it to `Netfilter(literal=True)`).

To keep compiling cheap, the source is written with every value as a
parameter (`k0`, `k1`, ...), so chains of the same shape (every KUBE-SEP
chain, every KUBE-SVC chain with n endpoints) share one compiled factory and
differ only in the constants passed to it. A jump to a chain that is empty
when compiled is not called (it would return at once); the compiled function
remembers which chains it looked at and is rebuilt if any of them changed.
Long chains (KUBE-SERVICES, KUBE-NODEPORTS) are not inlined: they run
through their index, which skips the rules that cannot match (still
counting them), with each candidate's test compiled the same way; those
per-destination functions read their values from one tuple (`K[i]`), and
equal small numbers are one shared object, because at 30,000 services what
a new flow waits for is memory, not bytecode.

The rules evaluated are counted where the walk leaves the function: the
positions there are known when the code is written, so an exit adds one
sum to `st.rules` (plus what copied-in chains it came back from added to
a local).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from netem.addr import MAX

from . import xt
from .syntax import Chain, Rule, Table

if TYPE_CHECKING:
    from .engine import ChainIndex, Netfilter

ChainFn = Callable[[xt.PacketState], int]
_FACTORIES: dict[str, Callable[..., Any]] = {}
INLINE_MAX_RULES = 16  # longer chains use their index instead


class Registry(dict[str, ChainFn]):
    """The compiled chains of one table of one engine, compiled on first use."""

    def __init__(self, nf: Netfilter, table: Table) -> None:
        super().__init__()
        self.nf = nf
        self.table = table
        self.dependents: dict[str, set[str]] = {}  # chain -> compiled chains that relied on it
        self.shapes: dict[str, Callable[[xt.PacketState, tuple[Any, ...]], int]] = {}  # packed source -> function

    def __missing__(self, name: str) -> ChainFn:
        chains = self.table.chains
        chain = chains[name]
        cached = chain.compiled
        if cached is not None and cached[0] is self.nf and all(chains.get(n) is c for n, c in cached[2]):
            fn: ChainFn = cached[1]
            deps = cached[2]
        else:
            fn, deps = compile_chain(self.nf, self, chain)
            # An indexed chain's functions depend on what each destination's
            # rules call; it is rebuilt (cheaply, from shared parts) each time.
            chain.compiled = (self.nf, fn, deps) if deps is not None else None
            deps = deps or ()
        for dep, _ in deps:
            self.dependents.setdefault(dep, set()).add(name)
        self[name] = fn
        return fn

    def invalidate(self, names: set[str]) -> None:
        """Forget the compiled form of these chains and of those compiled
        with knowledge of them (the next use looks again)."""
        for name in names:
            self.pop(name, None)
            for dependent in self.dependents.pop(name, ()):
                self.pop(dependent, None)


def _no_rng(bits: int) -> int:
    raise RuntimeError("this ruleset draws random numbers (statistic --mode random): give the engine an rng")


def _factory(source: str) -> Callable[..., Any]:
    factory = _FACTORIES.get(source)
    if factory is None:
        namespace: dict[str, Any] = {}
        exec(compile(source, "<iptables chain>", "exec"), namespace)
        factory = _FACTORIES[source] = namespace["factory"]
    return factory


def compile_chain(
    nf: Netfilter, registry: Registry, chain: Chain
) -> tuple[ChainFn, tuple[tuple[str, Chain], ...] | None]:
    """The chain's function and the other chains it depends on (by identity;
    None: not to be kept on the chain)."""
    from .engine import build_index

    rand = nf.rng.getrandbits if nf.rng is not None else _no_rng
    if len(chain.rules) >= INLINE_MAX_RULES and not nf.literal:
        index = chain.index
        if index is None:
            index = chain.index = build_index(chain) or False
        return _indexed(nf, registry, chain, index or None, rand), None
    chains = registry.table.chains
    source, consts, deps = chain_source(chain, nf.labels, chains)
    fn: ChainFn = _factory(source)(registry, nf._nat, rand, *consts)
    return fn, tuple((name, chains[name]) for name in deps)


INLINE_DEPTH = 4  # how deep small called chains are copied into their caller
INLINE_CALLEE_RULES = 24  # the largest chain copied into a caller (a KUBE-SVC chain of 10 endpoints with affinity: 21)


_SHARED: dict[int, int] = {}  # one object per small number used as a constant


def _shared(value: Any) -> Any:
    """The same int object for equal small numbers (ports, positions,
    statistic thresholds): tens of thousands of compiled functions then
    read a few hot objects instead of a cold one each."""
    if type(value) is int and 0 <= value <= 0x80000000:
        if len(_SHARED) >= 200_000:
            _SHARED.clear()
        return _SHARED.setdefault(value, value)
    return value


class _Gen:
    """Writes a chain's function: constants as parameters, small called
    chains copied in (a `while True:` block whose `break` is their RETURN).
    With `packed`, the constants are read from one tuple `K` instead: the
    many per-destination functions of a long chain then keep their values
    in one compact object rather than one closure cell each (what a new
    flow to a cold service touches in memory is what it waits for)."""

    def __init__(self, labels: Mapping[str, object], chains: Mapping[str, Chain] | None, packed: bool = False) -> None:
        self.labels = labels
        self.chains = chains
        self.packed = packed
        self.consts: list[Any] = []
        self.deps: list[str] = []
        # What the source was written from besides the rules themselves: the
        # chains looked at (their rules, or None when missing) and the labels.
        self.looked: dict[str, tuple[Rule, ...] | None] = {}
        self.labelled: dict[str, object] = {}

    def k(self, value: Any) -> str:
        self.consts.append(_shared(value))
        i = len(self.consts) - 1
        return f"K[{i + 1}]" if self.packed else f"k{i}"  # packed: K[0] is the function itself

    def body(
        self, chain: Chain, depth: int, indent: str, path: tuple[str, ...], above: tuple[str, ...] = ()
    ) -> list[str]:
        """The statements of `chain`: each exit counts the rules evaluated."""
        return self.some(list(enumerate(chain.rules)), len(chain.rules), depth, indent, path, above)

    def some(
        self,
        rules: list[tuple[int, Rule]],
        total: int,
        depth: int,
        indent: str,
        path: tuple[str, ...],
        above: tuple[str, ...] = (),
    ) -> list[str]:
        """Statements for some of a chain's rules (by position; the others
        cannot match this packet), counting as if every rule were tried.

        How the count is kept: a walk that leaves the function at a rule has
        evaluated, in each chain it is inside, the rules up to the one it is
        at, and every rule of the inlined chains it already came back from.
        The first part is known where the code is written (`above`: the
        positions of the enclosing chains' jumps, plus this rule's); the
        second is the local `r`, which a copied-in chain adds its count to
        when it returns. So an exit writes `st.rules` once."""
        out = [f"{indent}r = 0"] if depth == 0 else []
        if any(not isinstance(m, xt.PURE_MATCHES) for _, rule in rules for m in rule.matches):
            out.append(f"{indent}st.pure = False")  # random or stateful matches ahead: never cache this walk
        # A subset's positions (and the chain's length) vary from one
        # destination to the next: as parameters they keep the shape shared.
        subset = len(rules) != total
        for pos, rule in rules:
            cond = _condition(rule, self.k)
            out.append(f"{indent}if {cond}:" if cond else f"{indent}if True:")
            n = self.k(pos + 1) if subset else str(pos + 1)
            out += self.action(rule, n, depth, indent + "    ", path, above)
        out += [f"{indent}{line}" for line in self.leave(self.k(total) if subset else str(total), depth, above)]
        return out

    @staticmethod
    def count(n: str, above: tuple[str, ...]) -> str:
        """The statement that credits the rules evaluated when the function returns at rule `n`."""
        return f"st.rules += {_sum(('r', *above, n))}"

    def leave(self, n: str, depth: int, above: tuple[str, ...]) -> list[str]:
        """Leave the chain (its end, or RETURN) after `n` of its rules: the
        function returns 0, or a copied-in chain adds its count and goes back
        to its caller's next rule."""
        if depth == 0:
            return [self.count(n, above), "return 0"]
        return [f"r += {n}", "break"] if n != "0" else ["break"]

    def inlinable(self, name: str, depth: int, path: tuple[str, ...]) -> Chain | None:
        callee = self.chains.get(name) if self.chains is not None else None
        self.looked[name] = tuple(callee.rules) if callee is not None else None
        if callee is None or depth + 1 >= INLINE_DEPTH or name in path:
            return None
        if len(callee.rules) > INLINE_CALLEE_RULES or any(r.target.kind == xt.T_GOTO for r in callee.rules):
            return None
        return callee

    def action(
        self, rule: Rule, n: str, depth: int, indent: str, path: tuple[str, ...], above: tuple[str, ...]
    ) -> list[str]:
        """The target as statements; `n` rules of this chain have been evaluated."""
        k = self.k
        target = rule.target
        kind = target.kind
        lines: list[str]
        if kind in (xt.T_NONE, xt.T_LOG):
            lines = ["pass"]
        elif kind == xt.T_MARK:
            lines = [f"st.mark = (st.mark & {k(~target.mask & MAX)}) ^ {k(target.value)}"]
        elif kind in (xt.T_JUMP, xt.T_GOTO):
            service = self.labelled[target.name] = self.labels.get(target.name)
            label = [f"if st.service is None: st.service = {k(service)}"] if service is not None else []
            callee = self.inlinable(target.name, depth, path) if kind == xt.T_JUMP else None
            if callee is not None:
                # The called chain, copied in: its RETURN (and its end) leave the block.
                self.deps.append(target.name)
                if not callee.rules:  # nothing to do there: only the jump itself counts
                    return [f"{indent}{line}" for line in label or ["pass"]]
                lines = [*label, "while True:"]
                inner = self.body(callee, depth + 1, indent + "    ", (*path, target.name), (*above, n))
                return [f"{indent}{line}" for line in lines] + inner
            name = k(target.name)
            if kind == xt.T_GOTO:
                lines = [self.count(n, above), *label, f"return FN[{name}](st)"]
            else:
                lines = [*label, f"v = FN[{name}](st)", f"if v: {self.count(n, above)}; return v"]
        elif kind == xt.T_RETURN:
            lines = self.leave(n, depth, above)
        elif kind == xt.T_ACCEPT:
            lines = [self.count(n, above), "return 1"]
        elif kind == xt.T_DROP:
            lines = [self.count(n, above), "return 2"]
        elif kind == xt.T_REJECT:
            lines = [self.count(n, above), "return 3"]
        elif kind == xt.T_DNAT:
            # Netfilter._nat for DNAT, inlined (no trace here: tracing walks with the interpreter).
            ip, port = k(target.ip), (k(target.port) if target.port is not None else "st.dport")
            lines = [
                self.count(n, above),
                f"st.dnat = ({ip}, {port})",
                f"st.dst, st.dport = {ip}, {port}",
                "st.ctstate |= 64",
                "return 1",
            ]
        else:
            lines = [self.count(n, above), f"NAT({k(target)}, st, '')", "return 1"]
        return [f"{indent}{line}" for line in lines]


def _sum(terms: tuple[str, ...]) -> str:
    """`a + b + 3` for the terms, with the literal numbers added up."""
    literal = sum(int(t) for t in terms if t.isdigit())
    names = [t for t in terms if not t.isdigit()]
    return " + ".join([*names, str(literal)] if literal or not names else names)


def chain_source(
    chain: Chain, labels: Mapping[str, object] | None = None, chains: Mapping[str, Chain] | None = None
) -> tuple[str, list[Any], list[str]]:
    """The factory's source (values as parameters), the values, and the
    chains copied into it (the function is valid while they are the same)."""
    gen = _Gen(labels or {}, chains)
    body = gen.body(chain, 0, "        ", (chain.name,))
    params = ", ".join(f"k{i}" for i in range(len(gen.consts)))
    head = f"def factory(FN, NAT, RAND{', ' + params if params else ''}):"
    return "\n".join([head, "    def chain(st):", *body, "    return chain", ""]), gen.consts, gen.deps


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
    if isinstance(match, xt.Ports) and match.flags is None:
        parts = []
        for field, rng, inv in (("sport", match.sport, match.sinv), ("dport", match.dport, match.dinv)):
            if rng is not None:
                lo, hi = rng
                expr = f"st.{field} == {k(lo)}" if lo == hi else f"{k(lo)} <= st.{field} <= {k(hi)}"
                parts.append(f"not ({expr})" if inv else expr)
        return " and ".join(parts) or "True"
    if isinstance(match, xt.MarkMatch):
        return f"(st.mark & {k(match.mask)}) {'!=' if match.inv else '=='} {k(match.value)}"
    if isinstance(match, xt.Conntrack):
        expr = f"(st.ctstate & {k(match.states)})"
        return f"not {expr}" if match.inv else expr
    if isinstance(match, xt.Statistic) and match.mode == "random":
        # xt_statistic: (get_random_u32() & 0x7FFFFFFF) < threshold ('!' inverts).
        return f"(RAND(32) & 2147483647) {'>=' if match.inv else '<'} {k(match.threshold)}"
    return f"{k(match.test)}(st)"


_KEYED: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
_KEYED_MAX = 1_000_000


def _indexed(
    nf: Netfilter, registry: Registry, chain: Chain, index: ChainIndex | None, rand: Callable[[int], int]
) -> ChainFn:
    """A long chain: for each destination (address, or protocol and port)
    the rules that can match it are compiled into one function, made on its
    first packet, that still counts every rule in between. Functions are
    shared across syncs while their rules and copied-in chains are the same
    objects (a RuleCache keeps unchanged rules)."""
    if index is None:
        return _scan(nf, registry, chain, rand)
    rules = chain.rules
    total = len(rules)
    labels = nf.labels
    by_key = index.by_key
    keyed: dict[Any, Packed] = {}
    name = chain.name
    generic = _packed(nf, registry, name, [(p, rules[p]) for p in index.generic], total, labels, rand)
    dst_keyed = index.kind == "dst"

    def run(st: xt.PacketState) -> int:
        key = st.dst if dst_keyed else (st.proto, st.dport)
        packed = keyed.get(key)
        if packed is None:
            if key not in by_key:
                return generic[0](st, generic)
            positions = index.candidates(st)
            packed = keyed[key] = _packed(nf, registry, name, [(p, rules[p]) for p in positions], total, labels, rand)
        return packed[0](st, packed)

    def prepare() -> int:
        """Make every destination's function now (Netfilter.compile_all)."""
        for key in by_key:
            if key not in keyed:
                positions = index.merged_for(key)
                keyed[key] = _packed(nf, registry, name, [(p, rules[p]) for p in positions], total, labels, rand)
        return len(keyed)

    run.prepare = prepare  # type: ignore[attr-defined]
    return run


class _Source(NamedTuple):
    """A per-destination function's source and values, and what they were
    written from (kept alive with them, so the ids in the keys stay theirs)."""

    source: str
    consts: tuple[Any, ...]
    deps: tuple[str, ...]
    looked: tuple[tuple[str, tuple[Rule, ...] | None], ...]
    labelled: tuple[tuple[str, object], ...]
    rules: tuple[Rule, ...]


# Sources by the rules (identity) and positions they were written for. The
# nodes of one cluster share parsed rules (syntax.RuleCache), so a service's
# function is written once and only bound per node; a hit is used only if
# the chains it copied in and the labels it named are still the same.
_SOURCES: dict[tuple[Any, ...], list[_Source]] = {}
_SOURCES_MAX = 200_000


def _source_for(
    subset: list[tuple[int, Rule]], total: int, chains: Mapping[str, Chain], labels: Mapping[str, object]
) -> _Source:
    key = (tuple(map(id, (r for _, r in subset))), tuple(p for p, _ in subset), total)
    known = _SOURCES.get(key)
    for made in known or ():
        if all(_same_rules(chains.get(name), rules) for name, rules in made.looked) and all(
            labels.get(name) == label for name, label in made.labelled
        ):
            return made
    gen = _Gen(labels, chains, packed=True)
    body = gen.some(subset, total, 0, "        ", ())
    source = "\n".join(["def factory(FN, NAT, RAND):", "    def chain(st, K):", *body, "    return chain", ""])
    made = _Source(
        source,
        tuple(gen.consts),
        tuple(gen.deps),
        tuple(gen.looked.items()),
        tuple(gen.labelled.items()),
        tuple(r for _, r in subset),
    )
    if len(_SOURCES) >= _SOURCES_MAX:
        _SOURCES.clear()
    _SOURCES.setdefault(key, []).append(made)
    return made


def _same_rules(chain: Chain | None, rules: tuple[Rule, ...] | None) -> bool:
    """The chain holds these very rule objects (or is missing, as it was)."""
    if chain is None or rules is None:
        return chain is None and rules is None
    return len(chain.rules) == len(rules) and all(a is b for a, b in zip(chain.rules, rules, strict=True))


Packed = tuple[Any, ...]  # (function, value 1, value 2, ...): called as K[0](st, K)


def _packed(
    nf: Netfilter,
    registry: Registry,
    owner: str,
    subset: list[tuple[int, Rule]],
    total: int,
    labels: Mapping[str, object],
    rand: Callable[[int], int],
) -> Packed:
    """Some rules of chain `owner` (by position) as one tuple: the function
    of their shape (bound once per engine) and then its values. A
    destination costs one object; made once per engine and distinct set of
    rules and copied-in chains."""
    chains = registry.table.chains
    made = _source_for(subset, total, chains, labels)
    deps = tuple(chains[name] for name in made.deps)
    key = (nf, tuple(map(id, made.rules)), tuple(p for p, _ in subset), total, tuple(map(id, deps)))
    hit = _KEYED.get(key)
    if hit is not None:
        return hit[0]
    fn = registry.shapes.get(made.source)
    if fn is None:
        fn = registry.shapes[made.source] = _factory(made.source)(registry, nf._nat, rand)
    packed = (fn, *made.consts)
    if len(_KEYED) >= _KEYED_MAX:
        _KEYED.clear()
    # The rules and chains are kept with the values: their ids stay theirs.
    _KEYED[key] = (packed, (made.rules, deps))
    for name in made.deps:
        registry.dependents.setdefault(name, set()).add(owner)
    return packed


def _scan(nf: Netfilter, registry: Registry, chain: Chain, rand: Callable[[int], int]) -> ChainFn:
    """A long chain without a usable index: every rule, in order."""
    packed = _packed(nf, registry, chain.name, list(enumerate(chain.rules)), len(chain.rules), nf.labels, rand)
    fn = packed[0]
    return lambda st: fn(st, packed)
