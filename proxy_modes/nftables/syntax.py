"""The nft language, as far as kube-proxy writes it and `nft list ruleset` prints it.

Two spellings of the same ruleset reach this module: the transaction kube-proxy
feeds to `nft -f` (knftables: `mark set mark or 0x4000`, `ip daddr { 172.30.0.0/16 }`)
and what `nft list ruleset` prints back (`meta mark set meta mark | 0x00004000`,
`ip daddr 172.30.0.0/16`). Both parse to the same small IR, so a rule written by
us and the rule the kernel hands back compare equal (`Rule.key()`), and the
engine evaluates one representation whatever the source.

The IR is deliberately narrow: the selectors, statements and verdicts of
kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go) plus the few common
extras a captured node shows (counter, log, accept, `reject with ...`). Anything
else is a `SyntaxProblem` naming the word that was not understood, never a
silent mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import lru_cache
from typing import TypeAlias

from netem.addr import int_to_ip, parse_ip

# --- tokens ------------------------------------------------------------------

NEWLINE = "\n"
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{};,\n]|#[^\n]*|[^\s{};,"#]+|[ \t\r]+')


class SyntaxProblem(ValueError):
    """Text the parser cannot read; `line` is 1-based within the whole input (0 if unknown)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


@dataclass(slots=True)
class Tok:
    text: str
    line: int

    @property
    def quoted(self) -> bool:
        return self.text.startswith('"')


def tokenize(text: str, first_line: int = 1) -> list[Tok]:
    """Words, quoted strings, `{ } ; ,` and newlines; `#` comments dropped.

    Dots and colons stay inside words: in nft's own output the concatenation
    dot and the map colon are always surrounded by spaces, while addresses
    (`10.180.0.1:80`) and kube-proxy's chain names (`endpoint-X-ns/svc/tcp/p80__10.0.0.1/80`)
    contain them."""
    out: list[Tok] = []
    line = first_line
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            raise SyntaxProblem(f"unexpected character {text[pos]!r}", line)
        pos = m.end()
        word = m.group()
        if word[0] in " \t\r" or word[0] == "#":
            continue
        out.append(Tok(word, line))
        if word == NEWLINE:
            line += 1
    if pos != len(text):
        raise SyntaxProblem(f"unexpected character {text[pos]!r}", line)
    return out


def unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == '"' and word[-1] == '"':
        return word[1:-1].replace('\\"', '"')
    return word


def quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


# --- values ------------------------------------------------------------------

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
CT_STATES = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
FIB_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit")

# Selector names (the packet field an expression reads).
SADDR, DADDR, L4PROTO, SPORT, DPORT, MARK, CTSTATE, IIF, IIFNAME, OIF, OIFNAME = (
    "saddr",
    "daddr",
    "l4proto",
    "sport",
    "dport",
    "mark",
    "ctstate",
    "iif",
    "iifname",
    "oif",
    "oifname",
)
FIB_SADDR, FIB_DADDR = "fib_saddr", "fib_daddr"


@dataclass(frozen=True, slots=True)
class Selector:
    """A packet field; `proto` is the implicit protocol of `tcp dport` (the
    dependency nft adds as `meta l4proto tcp`), `mask` the `& MASK` of a mark."""

    field: str
    proto: int = 0
    mask: int | None = None

    def text(self) -> str:
        if self.field in (SADDR, DADDR):
            return f"ip {self.field}"
        if self.field in (SPORT, DPORT):
            return f"{PROTOCOL_NAMES.get(self.proto, 'th')} {self.field}"
        if self.field == MARK:
            return "meta mark" if self.mask is None else f"meta mark & 0x{self.mask:08x}"
        if self.field in (FIB_SADDR, FIB_DADDR):
            return f"fib {self.field[4:]} type"
        return {L4PROTO: "meta l4proto", CTSTATE: "ct state"}.get(self.field, self.field)


# A key as the engine compares it: an int (address, protocol, port, mark), a
# str (interface name), or a tuple of those for a concatenation.
Key: TypeAlias = "int | str | tuple[int | str, ...]"


@dataclass(frozen=True, slots=True)
class Value:
    """What a comparison or an anonymous set accepts: exact values and closed
    ranges (a CIDR is the range of its addresses). `names` keeps the words for
    symbolic types (ct state, fib type, interface patterns)."""

    exact: frozenset[int | str]
    ranges: tuple[tuple[int, int], ...] = ()
    prefixes: tuple[str, ...] = ()  # interface name wildcards `veth*`
    # One element: a plain comparison for nft, not a set lookup (kept, not
    # recomputed: the engine asks on every evaluation).
    single: bool = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "single", len(self.exact) + len(self.ranges) + len(self.prefixes) == 1)

    def test(self, v: int | str) -> bool:
        if v in self.exact:
            return True
        if isinstance(v, int):
            return any(lo <= v <= hi for lo, hi in self.ranges)
        return any(v.startswith(p) for p in self.prefixes)


def format_value(field: str, v: Value) -> str:
    parts = sorted(format_scalar(field, x) for x in v.exact)
    parts += [format_range(field, lo, hi) for lo, hi in v.ranges]
    parts += [quote(p + "*") for p in v.prefixes]
    if len(parts) == 1:
        return parts[0]
    return "{ " + ", ".join(parts) + " }"


def format_scalar(field: str, x: int | str) -> str:
    if isinstance(x, str):
        return quote(x)
    if field in (SADDR, DADDR):
        return int_to_ip(x)
    if field == L4PROTO:
        return PROTOCOL_NAMES.get(x, str(x))
    if field == MARK:
        return f"0x{x:08x}"
    if field == CTSTATE:
        return ",".join(n for n, b in CT_STATES.items() if x & b)
    if field in (FIB_SADDR, FIB_DADDR):
        return FIB_TYPES[x]
    return str(x)


def format_range(field: str, lo: int, hi: int) -> str:
    if field in (SADDR, DADDR):
        size = hi - lo + 1
        if size & (size - 1) == 0 and lo % size == 0:
            return f"{int_to_ip(lo)}/{32 - size.bit_length() + 1}"
        return f"{int_to_ip(lo)}-{int_to_ip(hi)}"
    return f"{lo}-{hi}"


def parse_scalar(field: str, word: str, line: int) -> tuple[int, int] | int | str:
    """One element for `field`: an int, an inclusive range (lo, hi), or a name."""
    try:
        if field in (SADDR, DADDR):
            if "/" in word:
                addr, _, length = word.partition("/")
                n = int(length)
                if not 0 <= n <= 32:
                    raise ValueError(word)
                net = parse_ip(addr)
                size = 1 << (32 - n)
                lo = net & ~(size - 1) & 0xFFFFFFFF
                return (lo, lo + size - 1)
            if "-" in word:
                a, _, b = word.partition("-")
                return (parse_ip(a), parse_ip(b))
            return parse_ip(word)
        if field == L4PROTO:
            return PROTOCOLS[word] if word in PROTOCOLS else int(word)
        if field == CTSTATE:
            bits = 0
            for name in word.split(","):
                bits |= CT_STATES[name]
            return bits
        if field in (FIB_SADDR, FIB_DADDR):
            return FIB_TYPES.index(word)
        if field in (IIFNAME, OIFNAME, IIF, OIF):
            return unquote(word)
        if "-" in word and not word.startswith("-"):
            a, _, b = word.partition("-")
            return (int(a, 0), int(b, 0))
        return int(word, 0)
    except (KeyError, ValueError):
        raise SyntaxProblem(f"not a valid {field} value: {word!r}", line) from None


def make_value(field: str, items: list[tuple[int, int] | int | str]) -> Value:
    if field == CTSTATE:  # a bitmask: `{ established, related }` is `established,related`
        bits = 0
        for item in items:
            assert isinstance(item, int)
            bits |= item
        return Value(frozenset({bits}))
    exact: set[int | str] = set()
    ranges: list[tuple[int, int]] = []
    prefixes: list[str] = []
    for item in items:
        if isinstance(item, tuple):
            if item[0] == item[1]:
                exact.add(item[0])
            else:
                ranges.append(item)
        elif isinstance(item, str) and item.endswith("*"):
            prefixes.append(item[:-1])
        else:
            exact.add(item)
    return Value(frozenset(exact), tuple(sorted(ranges)), tuple(sorted(prefixes)))


# --- verdicts ------------------------------------------------------------------

# ("accept",), ("drop",), ("reject",), ("return",), ("continue",), ("jump", chain), ("goto", chain)
VerdictT: TypeAlias = tuple[str, ...]
VERDICT_WORDS = ("accept", "drop", "return", "continue", "jump", "goto", "reject")


def format_verdict(v: VerdictT) -> str:
    return " ".join(v)


# --- expressions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cmp:
    """`SELECTOR [!=] VALUE` (also `ct state new`, `fib daddr type local`)."""

    sel: Selector
    value: Value
    negate: bool = False

    def text(self) -> str:
        return f"{self.sel.text()} {'!= ' if self.negate else ''}{format_value(self.sel.field, self.value)}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """`SEL [. SEL...] [!=] @set`: membership in a named set."""

    sels: tuple[Selector, ...]
    set_name: str
    negate: bool = False

    def text(self) -> str:
        sels = " . ".join(s.text() for s in self.sels)
        return f"{sels} {'!= ' if self.negate else ''}@{self.set_name}"


@dataclass(frozen=True, slots=True)
class VMap:
    """`SEL [. SEL...] vmap @map` or `vmap { key : verdict, ... }`."""

    sels: tuple[Selector, ...]
    map_name: str = ""
    anon: tuple[tuple[Key, VerdictT], ...] = ()

    def text(self) -> str:
        sels = " . ".join(s.text() for s in self.sels)
        if self.map_name:
            return f"{sels} vmap @{self.map_name}"
        return f"{sels} vmap {{ " + ", ".join(f"{k} : {format_verdict(v)}" for k, v in self.anon) + " }"


@dataclass(frozen=True, slots=True)
class Numgen:
    """`numgen random mod N [offset K] vmap { 0 : goto A, ... }` (the random
    generator: nft_ng_random_gen, reciprocal_scale(get_random_u32(), N) + K)."""

    mod: int
    offset: int
    anon: tuple[tuple[int, VerdictT], ...]

    def text(self) -> str:
        off = f" offset {self.offset}" if self.offset else ""
        elems = ", ".join(f"{k} : {format_verdict(v)}" for k, v in self.anon)
        return f"numgen random mod {self.mod}{off} vmap {{ {elems} }}"


@dataclass(frozen=True, slots=True)
class MarkSet:
    """`meta mark set meta mark OP VALUE` (`or`, `xor`, `and`) or `meta mark set VALUE`."""

    op: str  # "|", "^", "&", "="
    value: int

    def text(self) -> str:
        if self.op == "=":
            return f"meta mark set 0x{self.value:08x}"
        return f"meta mark set meta mark {self.op} 0x{self.value:08x}"


@dataclass(frozen=True, slots=True)
class Masquerade:
    flags: tuple[str, ...] = ()  # fully-random, random, persistent

    def text(self) -> str:
        return "masquerade" + ("" if not self.flags else " " + ",".join(self.flags))


@dataclass(frozen=True, slots=True)
class Dnat:
    addr: int
    port: int | None

    def text(self) -> str:
        return f"dnat to {int_to_ip(self.addr)}" + (f":{self.port}" if self.port is not None else "")


@dataclass(frozen=True, slots=True)
class SetUpdate:
    """`update @set { ip saddr }` (refresh or add, nft_dynset NFT_DYNSET_OP_UPDATE)
    and `add @set { ... }` (add only when absent)."""

    op: str
    set_name: str
    sels: tuple[Selector, ...]
    timeout: float | None = None

    def text(self) -> str:
        sels = " . ".join(s.text() for s in self.sels)
        to = f" timeout {format_duration(self.timeout)}" if self.timeout is not None else ""
        return f"{self.op} @{self.set_name} {{ {sels}{to} }}"


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: VerdictT

    def text(self) -> str:
        return format_verdict(self.verdict)


@dataclass(frozen=True, slots=True)
class Reject:
    how: str = ""  # "" = icmp port-unreachable (the default for the ip family)

    def text(self) -> str:
        return "reject" + (f" with {self.how}" if self.how else "")


@dataclass(frozen=True, slots=True)
class NoOp:
    """Statements that change nothing the emulator models (counter, log)."""

    what: str

    def text(self) -> str:
        return self.what


Expr: TypeAlias = Cmp | Lookup | VMap | Numgen | MarkSet | Masquerade | Dnat | SetUpdate | Verdict | Reject | NoOp


# --- durations -----------------------------------------------------------------

_DURATION = re.compile(r"(\d+)(d|h|ms|m|s)")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(word: str, line: int = 0) -> float:
    """`10800s`, `3h`, `2h59m59s996ms` (nft's time format)."""
    total = 0.0
    pos = 0
    for m in _DURATION.finditer(word):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(word) or not word:
        raise SyntaxProblem(f"not a duration: {word!r}", line)
    return total


def format_duration(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{int(seconds * 1000)}ms"


# --- the rule parser -------------------------------------------------------------


class TokenStream:
    """Tokens of one rule (or one element list), with the small look-ahead the grammar needs."""

    def __init__(self, toks: list[Tok]) -> None:
        self.toks = [t for t in toks if t.text != NEWLINE]
        self.i = 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.toks[j].text if j < len(self.toks) else ""

    def line(self) -> int:
        if self.i < len(self.toks):
            return self.toks[self.i].line
        return self.toks[-1].line if self.toks else 0

    def next(self) -> str:
        if self.i >= len(self.toks):
            raise SyntaxProblem("unexpected end of rule", self.line())
        word = self.toks[self.i].text
        self.i += 1
        return word

    def expect(self, word: str) -> None:
        got = self.next()
        if got != word:
            raise SyntaxProblem(f"expected {word!r}, got {got!r}", self.line())

    def done(self) -> bool:
        return self.i >= len(self.toks)


_FIELDS_AFTER = {
    ("ip", "saddr"): Selector(SADDR),
    ("ip", "daddr"): Selector(DADDR),
    ("meta", "l4proto"): Selector(L4PROTO),
    ("ip", "protocol"): Selector(L4PROTO),
    ("th", "dport"): Selector(DPORT),
    ("th", "sport"): Selector(SPORT),
    ("tcp", "dport"): Selector(DPORT, 6),
    ("tcp", "sport"): Selector(SPORT, 6),
    ("udp", "dport"): Selector(DPORT, 17),
    ("udp", "sport"): Selector(SPORT, 17),
    ("sctp", "dport"): Selector(DPORT, 132),
    ("sctp", "sport"): Selector(SPORT, 132),
    ("ct", "state"): Selector(CTSTATE),
    ("meta", "mark"): Selector(MARK),
    ("meta", "iif"): Selector(IIF),
    ("meta", "iifname"): Selector(IIFNAME),
    ("meta", "oif"): Selector(OIF),
    ("meta", "oifname"): Selector(OIFNAME),
}
_SINGLE_FIELDS = {
    "mark": Selector(MARK),
    "iif": Selector(IIF),
    "iifname": Selector(IIFNAME),
    "oif": Selector(OIF),
    "oifname": Selector(OIFNAME),
}


def parse_selector(ts: TokenStream) -> Selector | None:
    """A selector at the cursor, or None (the cursor is left alone)."""
    a, b = ts.peek(), ts.peek(1)
    if a == "fib" and b in ("saddr", "daddr") and ts.peek(2) == "type":
        ts.i += 3
        return Selector(FIB_SADDR if b == "saddr" else FIB_DADDR)
    sel = _FIELDS_AFTER.get((a, b))
    if sel is not None:
        ts.i += 2
    else:
        sel = _SINGLE_FIELDS.get(a)
        if sel is None:
            return None
        ts.i += 1
    if sel.field == MARK and ts.peek() in ("&", "and"):
        ts.i += 1
        sel = Selector(MARK, 0, int(ts.next(), 0))
    return sel


def parse_value_list(ts: TokenStream, field: str) -> Value:
    """`VALUE` or `{ VALUE, VALUE }` for one selector."""
    line = ts.line()
    if ts.peek() == "{":
        ts.next()
        items: list[tuple[int, int] | int | str] = []
        while ts.peek() != "}":
            word = ts.next()
            if word == ",":
                continue
            items.append(parse_scalar(field, word, line))
        ts.next()
        return make_value(field, items)
    items = [parse_scalar(field, ts.next(), line)]
    while field == CTSTATE and ts.peek() == ",":  # `ct state established,related`
        ts.next()
        items.append(parse_scalar(field, ts.next(), line))
    return make_value(field, items)


def parse_verdict(ts: TokenStream) -> VerdictT:
    word = ts.next()
    if word in ("jump", "goto"):
        return (word, ts.next())
    if word in ("accept", "drop", "return", "continue", "reject"):
        return (word,)
    raise SyntaxProblem(f"expected a verdict, got {word!r}", ts.line())


def parse_key(ts: TokenStream, fields: tuple[str, ...]) -> Key:
    """`10.0.0.1 . tcp . 80` for the given selector fields."""
    parts: list[int | str] = []
    for n, field in enumerate(fields):
        if n:
            ts.expect(".")
        line = ts.line()
        v = parse_scalar(field, ts.next(), line)
        if isinstance(v, tuple):
            raise SyntaxProblem("ranges are not supported in map keys", line)
        parts.append(v)
    return parts[0] if len(parts) == 1 else tuple(parts)


def format_key(fields: tuple[str, ...], key: Key) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return " . ".join(format_scalar(f, p) for f, p in zip(fields, parts, strict=True))


def parse_anon_vmap(ts: TokenStream, fields: tuple[str, ...]) -> tuple[tuple[Key, VerdictT], ...]:
    ts.expect("{")
    out: list[tuple[Key, VerdictT]] = []
    while ts.peek() != "}":
        if ts.peek() == ",":
            ts.next()
            continue
        key = parse_key(ts, fields)
        ts.expect(":")
        out.append((key, parse_verdict(ts)))
    ts.next()
    return tuple(out)


def parse_rule(toks: list[Tok]) -> tuple[tuple[Expr, ...], str | None]:
    """A rule body -> (expressions, comment)."""
    ts = TokenStream(toks)
    exprs: list[Expr] = []
    comment: str | None = None
    while not ts.done():
        word = ts.peek()
        if word == "comment":
            ts.next()
            comment = unquote(ts.next())
        elif word in VERDICT_WORDS and word != "reject":
            exprs.append(Verdict(parse_verdict(ts)))
        elif word == "reject":
            ts.next()
            how = ""
            if ts.peek() == "with":
                ts.next()
                parts = [ts.next()]
                while ts.peek() and ts.peek() not in ("comment",):
                    parts.append(ts.next())
                how = " ".join(parts)
            exprs.append(Reject(how))
        elif word == "counter":
            ts.next()
            while ts.peek() in ("packets", "bytes"):
                ts.next()
                ts.next()
            exprs.append(NoOp("counter"))
        elif word == "log":
            ts.next()
            while ts.peek() in ("prefix", "level", "flags", "group", "snaplen"):
                ts.next()
                ts.next()
            exprs.append(NoOp("log"))
        elif word == "numgen":
            exprs.append(_parse_numgen(ts))
        elif word in ("update", "add") and ts.peek(1).startswith("@"):
            exprs.append(_parse_set_update(ts))
        elif word == "masquerade":
            ts.next()
            flags: list[str] = []
            while ts.peek() in ("fully-random", "random", "persistent", ","):
                w = ts.next()
                if w != ",":
                    flags.append(w)
            exprs.append(Masquerade(tuple(flags)))
        elif word == "dnat":
            exprs.append(_parse_dnat(ts))
        elif (word == "mark" and ts.peek(1) == "set") or (word, ts.peek(1), ts.peek(2)) == ("meta", "mark", "set"):
            exprs.append(_parse_mark_set(ts))
        else:
            exprs.append(_parse_match(ts))
    return tuple(exprs), comment


def _parse_numgen(ts: TokenStream) -> Numgen:
    ts.expect("numgen")
    kind = ts.next()
    if kind != "random":
        raise SyntaxProblem(f"numgen {kind} is not supported (kube-proxy uses numgen random)", ts.line())
    ts.expect("mod")
    mod = int(ts.next())
    offset = 0
    if ts.peek() == "offset":
        ts.next()
        offset = int(ts.next())
    if ts.next() != "vmap":
        raise SyntaxProblem("expected `vmap` after numgen", ts.line())
    anon = parse_anon_vmap(ts, ("number",))
    return Numgen(mod, offset, tuple((int(k), v) for k, v in anon))  # type: ignore[arg-type]


def _parse_set_update(ts: TokenStream) -> SetUpdate:
    op = ts.next()
    name = ts.next()[1:]
    ts.expect("{")
    sels: list[Selector] = []
    timeout: float | None = None
    while ts.peek() != "}":
        if ts.peek() == ".":
            ts.next()
            continue
        if ts.peek() == "timeout":
            ts.next()
            timeout = parse_duration(ts.next(), ts.line())
            continue
        sel = parse_selector(ts)
        if sel is None:
            raise SyntaxProblem(f"unsupported set key {ts.peek()!r}", ts.line())
        sels.append(sel)
    ts.next()
    return SetUpdate(op, name, tuple(sels), timeout)


def _parse_dnat(ts: TokenStream) -> Dnat:
    ts.expect("dnat")
    if ts.peek() == "ip":
        ts.next()
    ts.expect("to")
    target = ts.next()
    line = ts.line()
    host, sep, port = target.rpartition(":")
    try:
        if sep:
            return Dnat(parse_ip(host), int(port))
        return Dnat(parse_ip(target), None)
    except ValueError:
        raise SyntaxProblem(f"bad dnat target {target!r}", line) from None


def _parse_mark_set(ts: TokenStream) -> MarkSet:
    if ts.peek() == "meta":
        ts.next()
    ts.expect("mark")
    ts.expect("set")
    if ts.peek() == "mark" or (ts.peek() == "meta" and ts.peek(1) == "mark"):
        ts.i += 1 if ts.peek() == "mark" else 2
        op = ts.next()
        op = {"or": "|", "xor": "^", "and": "&"}.get(op, op)
        if op not in ("|", "^", "&"):
            raise SyntaxProblem(f"unsupported mark operation {op!r}", ts.line())
        return MarkSet(op, int(ts.next(), 0))
    return MarkSet("=", int(ts.next(), 0))


def _parse_match(ts: TokenStream) -> Expr:
    start = ts.peek()
    sels: list[Selector] = []
    while True:
        sel = parse_selector(ts)
        if sel is None:
            raise SyntaxProblem(f"unsupported expression starting at {start!r}", ts.line())
        sels.append(sel)
        if ts.peek() != ".":
            break
        ts.next()
    fields = tuple(s.field for s in sels)
    word = ts.peek()
    if word == "vmap":
        ts.next()
        if ts.peek().startswith("@"):
            return VMap(tuple(sels), map_name=ts.next()[1:])
        return VMap(tuple(sels), anon=parse_anon_vmap(ts, fields))
    negate = False
    if word in ("!=", "=="):
        ts.next()
        negate = word == "!="
    if ts.peek().startswith("@"):
        return Lookup(tuple(sels), ts.next()[1:], negate)
    if len(sels) != 1:
        raise SyntaxProblem("a concatenation must be followed by vmap or @set", ts.line())
    sel = sels[0]
    return Cmp(sel, parse_value_list(ts, sel.field), negate)


def rule_text(exprs: tuple[Expr, ...]) -> str:
    """The canonical text of a rule body (nft's own spelling)."""
    return " ".join(e.text() for e in exprs)


# --- the rules kube-proxy writes per service, read without the general parser ---
#
# A cold destination makes the engine read a service's and its endpoints'
# rules for the first time; the general parser (tokenizer + descent) costs
# tens of microseconds a rule. These are the shapes syncProxyRules writes for
# every service (proxier.go), read by one regular expression each into the
# very IR the general parser gives (a test holds the two together on every
# shape); anything else goes the general way.

_IP = r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})"
_CIDR = r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d{1,2})?)"
_NAME = r"([A-Za-z0-9_./-]+)"
_FAST = (
    ("saddr-verdict", re.compile(rf"ip saddr (!= )?{_CIDR} (jump|goto) {_NAME}")),
    ("daddr-saddr-verdict", re.compile(rf"ip daddr {_IP} ip saddr (!= )?{_CIDR} (jump|goto) {_NAME}")),
    ("daddr-dport-verdict", re.compile(rf"ip daddr {_IP} (tcp|udp|sctp) dport (\d+) (jump|goto) {_NAME}")),
    ("dnat", re.compile(rf"meta l4proto (tcp|udp|sctp) dnat to {_IP}:(\d+)")),
    ("numgen", re.compile(r"numgen random mod (\d+) vmap \{ (.*) \}")),
    ("affinity", re.compile(rf"ip saddr @{_NAME} (jump|goto) {_NAME}")),
    ("update", re.compile(rf"update @{_NAME} \{{ ip saddr \}}")),
    ("verdict", re.compile(rf"(jump|goto) {_NAME}")),
)
_NUMGEN_ELEMENT = re.compile(rf"(\d+) : (goto|jump) {_NAME}(?: ,|,|$)")
_L4PROTO, _SADDR, _DADDR = Selector(L4PROTO), Selector(SADDR), Selector(DADDR)
_PROTO_VALUES = {name: Value(frozenset((number,))) for name, number in PROTOCOLS.items()}


def _quad(text: str) -> int:
    """A dotted quad the pattern has already shaped (four groups of 1-3 digits)."""
    a, b, c, d = (int(x) for x in text.split("."))
    if a > 255 or b > 255 or c > 255 or d > 255:
        raise SyntaxProblem(f"not a valid {SADDR} value: {text!r}")
    return (a << 24) | (b << 16) | (c << 8) | d


@lru_cache(maxsize=1 << 12)
def _cidr_value(text: str) -> Value:
    if "/" not in text:
        return Value(frozenset((_quad(text),)))
    return make_value(SADDR, [parse_scalar(SADDR, text, 0)])


_FAST_BY_START: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {}
for _kind, _pattern in _FAST:
    for _start in ("ju", "go") if _kind == "verdict" else (_pattern.pattern[:2],):
        _FAST_BY_START[_start] = (*_FAST_BY_START.get(_start, ()), (_kind, _pattern))


def parse_rule_fast(body: str) -> tuple[Expr, ...] | None:
    """The IR of one of kube-proxy's per-service rule shapes, or None."""
    for kind, pattern in _FAST_BY_START.get(body[:2], ()):
        m = pattern.fullmatch(body)
        if m is None:
            continue
        g = m.groups()
        if kind == "saddr-verdict":
            return (Cmp(_SADDR, _cidr_value(g[1]), g[0] is not None), Verdict((g[2], g[3])))
        if kind == "daddr-saddr-verdict":
            return (
                Cmp(_DADDR, Value(frozenset((_quad(g[0]),)))),
                Cmp(_SADDR, _cidr_value(g[2]), g[1] is not None),
                Verdict((g[3], g[4])),
            )
        if kind == "daddr-dport-verdict":
            proto = PROTOCOLS[g[1]]
            return (
                Cmp(Selector(DADDR), _cidr_value(g[0])),
                Cmp(Selector(DPORT, proto), make_value(DPORT, [int(g[2])])),
                Verdict((g[3], g[4])),
            )
        if kind == "dnat":
            return (Cmp(_L4PROTO, _PROTO_VALUES[g[0]]), Dnat(_quad(g[1]), int(g[2])))
        if kind == "numgen":
            found = _NUMGEN_ELEMENT.findall(g[1])
            if len(found) != g[1].count(":"):
                return None  # something else in there: the general parser decides
            return (Numgen(int(g[0]), 0, tuple((int(n), (how, chain)) for n, how, chain in found)),)
        if kind == "affinity":
            return (Lookup((Selector(SADDR),), g[0]), Verdict((g[1], g[2])))
        if kind == "update":
            return (SetUpdate("update", g[0], (Selector(SADDR),)),)
        return (Verdict((g[0], g[1])),)
    return None
