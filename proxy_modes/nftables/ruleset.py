"""nftables objects (tables, chains, sets, maps) and the two text forms they travel in.

`parse_nft` reads what `nft -f` reads: the command form kube-proxy's knftables
writes (`add rule ip kube-proxy services ...`, `flush chain ...`, `delete element ...`)
and the block form `nft list ruleset` prints (`table ip kube-proxy { chain services { ... } }`),
applying commands in order, so a full ruleset followed by a partial-sync
transaction gives the state the kernel would hold.

`dump_commands` writes a table the way knftables' fake `Dump()` does (the form
kube-proxy's own golden tests compare): the table, every chain, set and map
(sorted by name), then every rule and every element. `list_ruleset` writes the
`nft list ruleset` layout, including dynamic set elements with their expiry.

Rules keep their text and are parsed on first use (`Rule.exprs`), so building
or loading 100,000 endpoint chains costs no parsing until a packet needs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import syntax
from .syntax import (
    DPORT,
    IIFNAME,
    L4PROTO,
    MARK,
    NEWLINE,
    SADDR,
    Expr,
    Key,
    SyntaxProblem,
    Tok,
    TokenStream,
    VerdictT,
    format_duration,
    format_key,
    format_verdict,
    parse_duration,
    parse_key,
    parse_verdict,
    quote,
    tokenize,
    unquote,
)

# nft set element types -> the selector field whose value syntax they share.
TYPE_FIELDS = {
    "ipv4_addr": SADDR,
    "inet_proto": L4PROTO,
    "inet_service": DPORT,
    "mark": MARK,
    "ifname": IIFNAME,
    "integer": "number",
}

# Standard base chain priorities (nft's std_prio table, src/rule.c).
STD_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")


@dataclass(slots=True)
class BaseHook:
    """What makes a chain a base chain: `type T hook H priority P; policy accept;`."""

    type: str
    hook: str
    priority: int
    policy: str = "accept"


# Rules parsed by the fast path, by body text. Every node of a cluster renders
# the same per-service rules, and a simulation routes through all of them: each
# body is parsed once. Bounded (it is a cache); the IR is immutable, so sharing it is safe.
_FAST_PARSED: dict[str, tuple[Expr, ...] | None] = {}
FAST_PARSED_MAX = 400_000
_UNPARSED: Any = object()


def _parsed_fast(body: str) -> tuple[Expr, ...] | None:
    found = _FAST_PARSED.get(body, _UNPARSED)
    if found is _UNPARSED:
        if len(_FAST_PARSED) >= FAST_PARSED_MAX:
            _FAST_PARSED.clear()
        found = _FAST_PARSED[body] = syntax.parse_rule_fast(body)
    return found


class Rule:
    """One rule: its body text (without the comment) and, parsed on demand, its expressions."""

    __slots__ = ("_exprs", "body", "comment", "line")

    def __init__(self, body: str, comment: str | None = None, line: int = 0) -> None:
        self.body = body
        self.comment = comment
        self.line = line
        self._exprs: tuple[Expr, ...] | None = None

    @property
    def exprs(self) -> tuple[Expr, ...]:
        if self._exprs is None:
            fast = _parsed_fast(self.body)
            if fast is not None:
                self._exprs = fast
                return fast
            exprs, comment = syntax.parse_rule(tokenize(self.body, self.line or 1))
            if comment is not None:
                self.comment = comment
            self._exprs = exprs
        return self._exprs

    def text(self) -> str:
        """The rule as kube-proxy writes it (the comment last)."""
        return self.body + (f" comment {quote(self.comment)}" if self.comment is not None else "")

    def canonical(self) -> str:
        """The rule as nft prints it; equal for every spelling of the same rule."""
        self.exprs  # noqa: B018 - parses, which may also pick the comment out of the body
        text = syntax.rule_text(self.exprs)
        return text + (f" comment {quote(self.comment)}" if self.comment is not None else "")

    def __repr__(self) -> str:
        return f"Rule({self.text()!r})"


@dataclass(slots=True)
class Chain:
    name: str
    base: BaseHook | None = None
    comment: str | None = None
    rules: list[Rule] = field(default_factory=list)


@dataclass(slots=True)
class NftSet:
    """A named set or map. Set members map to their expiry time (None: never);
    map elements map to their verdict. Interval sets keep ranges apart."""

    name: str
    types: tuple[str, ...]
    is_map: bool = False
    value_type: str = ""
    flags: tuple[str, ...] = ()
    timeout: float | None = None
    size: int | None = None
    comment: str | None = None
    members: dict[Key, float | None] = field(default_factory=dict)
    verdicts: dict[Key, VerdictT] = field(default_factory=dict)
    comments: dict[Key, str] = field(default_factory=dict)
    intervals: list[tuple[int, int]] = field(default_factory=list)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(TYPE_FIELDS.get(t, "number") for t in self.types)

    @property
    def dynamic(self) -> bool:
        return "dynamic" in self.flags or "timeout" in self.flags

    def type_text(self) -> str:
        text = " . ".join(self.types)
        return f"{text} : {self.value_type}" if self.is_map else text

    def keys(self) -> list[Key]:
        return list(self.verdicts if self.is_map else self.members)

    def clear(self) -> None:
        self.members.clear()
        self.verdicts.clear()
        self.comments.clear()
        self.intervals.clear()


@dataclass(slots=True)
class Table:
    family: str = "ip"
    name: str = "kube-proxy"
    comment: str | None = None
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)

    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())

    def base_chains(self, hook: str) -> list[Chain]:
        """Base chains on a hook, in the order the kernel runs them (priority;
        equal priorities in creation order)."""
        found = [c for c in self.chains.values() if c.base is not None and c.base.hook == hook]
        return sorted(found, key=lambda c: c.base.priority if c.base else 0)


Tables = dict[tuple[str, str], Table]


# --- reading -------------------------------------------------------------------


def parse_nft(text: str, tables: Tables | None = None) -> Tables:
    """Apply an `nft -f` file (command or block form) to `tables` (new if None).
    Raises SyntaxProblem with the line of the first problem."""
    tables = {} if tables is None else tables
    _Reader(tokenize(text), tables).run()
    return tables


class _Reader:
    def __init__(self, toks: list[Tok], tables: Tables) -> None:
        self.toks = toks
        self.i = 0
        self.tables = tables

    # cursor helpers
    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.toks[j].text if j < len(self.toks) else ""

    def line(self) -> int:
        j = min(self.i, len(self.toks) - 1)
        return self.toks[j].line if self.toks else 0

    def next(self) -> str:
        if self.i >= len(self.toks):
            raise SyntaxProblem("unexpected end of input", self.line())
        word = self.toks[self.i].text
        self.i += 1
        return word

    def expect(self, word: str) -> None:
        line = self.line()
        got = self.next()
        if got != word:
            raise SyntaxProblem(f"expected {word!r}, got {got!r}", line)

    def skip_separators(self) -> None:
        while self.peek() in (NEWLINE, ";"):
            self.i += 1

    def until_end(self) -> list[Tok]:
        """Tokens up to the end of the statement (newline or `;` outside braces)."""
        out: list[Tok] = []
        depth = 0
        while self.i < len(self.toks):
            tok = self.toks[self.i]
            if depth == 0 and tok.text in (NEWLINE, ";"):
                break
            if depth == 0 and tok.text == "}":
                break
            if tok.text == "{":
                depth += 1
            elif tok.text == "}":
                depth -= 1
            out.append(tok)
            self.i += 1
        return out

    # statements
    def run(self) -> None:
        while True:
            self.skip_separators()
            if self.i >= len(self.toks):
                return
            line = self.line()
            verb = self.next()
            if verb in ("add", "create", "insert"):
                self.add(verb)
            elif verb == "flush":
                self.flush()
            elif verb in ("delete", "destroy"):
                self.delete()
            elif verb == "table":
                self.table_block()
            else:
                raise SyntaxProblem(f"unsupported command {verb!r}", line)

    def table_ref(self) -> Table:
        line = self.line()
        family = self.next()
        if family not in ("ip", "ip6", "inet", "arp", "bridge", "netdev"):
            raise SyntaxProblem(f"unknown table family {family!r}", line)
        name = self.next()
        table = self.tables.get((family, name))
        if table is None:
            table = self.tables[(family, name)] = Table(family, name)
        return table

    def existing_table(self) -> Table:
        line = self.line()
        family, name = self.next(), self.next()
        table = self.tables.get((family, name))
        if table is None:
            raise SyntaxProblem(f"no such table: {family} {name}", line)
        return table

    def add(self, verb: str) -> None:
        line = self.line()
        what = self.next()
        if what == "table":
            table = self.table_ref()
            if self.peek() == "{":
                self.table_body(table)
        elif what == "chain":
            table = self.existing_table()
            name = self.next()
            chain = table.chains.get(name)
            if chain is None:
                chain = table.chains[name] = Chain(name)
            if self.peek() == "{":
                self.next()
                self.chain_props(chain, inline=True)
        elif what in ("set", "map"):
            table = self.existing_table()
            name = self.next()
            current = table.sets.get(name)
            declared = NftSet(name, (), is_map=what == "map")
            self.expect("{")
            self.set_body(declared, table)
            if current is None:
                table.sets[name] = declared
        elif what == "rule":
            table = self.existing_table()
            chain = self.chain(table)
            body = self.until_end()
            rule = make_rule(body)
            if verb == "insert":
                chain.rules.insert(0, rule)
            else:
                chain.rules.append(rule)
        elif what == "element":
            table = self.existing_table()
            nset = self.set_of(table)
            self.elements(nset)
        else:
            raise SyntaxProblem(f"unsupported object {what!r}", line)

    def chain(self, table: Table) -> Chain:
        line = self.line()
        name = self.next()
        chain = table.chains.get(name)
        if chain is None:
            raise SyntaxProblem(f"no such chain: {name}", line)
        return chain

    def set_of(self, table: Table) -> NftSet:
        line = self.line()
        name = self.next()
        nset = table.sets.get(name)
        if nset is None:
            raise SyntaxProblem(f"no such set or map: {name}", line)
        return nset

    def flush(self) -> None:
        line = self.line()
        what = self.next()
        if what == "ruleset":
            self.tables.clear()
        elif what == "table":
            table = self.existing_table()
            for chain in table.chains.values():
                chain.rules.clear()
            for nset in table.sets.values():
                nset.clear()
        elif what == "chain":
            self.chain(self.existing_table()).rules.clear()
        elif what in ("set", "map"):
            self.set_of(self.existing_table()).clear()
        else:
            raise SyntaxProblem(f"cannot flush {what!r}", line)

    def delete(self) -> None:
        line = self.line()
        what = self.next()
        if what == "table":
            family, name = self.next(), self.next()
            if self.tables.pop((family, name), None) is None:
                raise SyntaxProblem(f"no such table: {family} {name}", line)
        elif what == "chain":
            table = self.existing_table()
            name = self.next()
            if table.chains.pop(name, None) is None:
                raise SyntaxProblem(f"no such chain: {name}", line)
        elif what in ("set", "map"):
            table = self.existing_table()
            name = self.next()
            if table.sets.pop(name, None) is None:
                raise SyntaxProblem(f"no such set or map: {name}", line)
        elif what == "element":
            nset = self.set_of(self.existing_table())
            self.elements(nset, delete=True)
        else:
            raise SyntaxProblem(f"cannot delete {what!r}", line)
        if self.peek() == "{" and what in ("table", "chain", "set", "map"):
            self.until_end()

    # block form
    def table_block(self) -> None:
        table = self.table_ref()
        self.table_body(table)

    def table_body(self, table: Table) -> None:
        self.expect("{")
        while True:
            self.skip_separators()
            line = self.line()
            word = self.next()
            if word == "}":
                return
            if word == "comment":
                table.comment = unquote(self.next())
            elif word == "flags":
                self.until_end()
            elif word == "chain":
                name = self.next()
                chain = table.chains.get(name)
                if chain is None:
                    chain = table.chains[name] = Chain(name)
                self.expect("{")
                self.chain_block(chain)
            elif word in ("set", "map"):
                name = self.next()
                nset = NftSet(name, (), is_map=word == "map")
                table.sets[name] = nset
                self.expect("{")
                self.set_body(nset, table)
            else:
                raise SyntaxProblem(f"unsupported table statement {word!r}", line)

    def chain_block(self, chain: Chain) -> None:
        while True:
            self.skip_separators()
            word = self.peek()
            if word == "}":
                self.next()
                return
            if word in ("type", "policy") or (word == "comment" and not chain.rules):
                self.chain_prop(chain)
                continue
            chain.rules.append(make_rule(self.until_end()))

    def chain_props(self, chain: Chain, inline: bool) -> None:
        while True:
            self.skip_separators()
            if self.peek() == "}":
                self.next()
                return
            self.chain_prop(chain)

    def chain_prop(self, chain: Chain) -> None:
        line = self.line()
        word = self.next()
        if word == "type":
            ctype = self.next()
            self.expect("hook")
            hook = self.next()
            if hook not in HOOKS:
                raise SyntaxProblem(f"unsupported hook {hook!r}", line)
            if self.peek() == "device":
                self.next()
                self.next()
            self.expect("priority")
            chain.base = BaseHook(ctype, hook, self.priority())
        elif word == "policy":
            policy = self.next()
            if chain.base is not None:
                chain.base.policy = policy
        elif word == "comment":
            chain.comment = unquote(self.next())
        else:
            raise SyntaxProblem(f"unsupported chain property {word!r}", line)

    def priority(self) -> int:
        line = self.line()
        word = self.next()
        m = re.fullmatch(r"([a-z]+)?([+-]?\d+)?", word)
        if not m or not (m.group(1) or m.group(2)):
            raise SyntaxProblem(f"bad priority {word!r}", line)
        value = 0
        if m.group(1):
            if m.group(1) not in STD_PRIORITIES:
                raise SyntaxProblem(f"unknown priority name {m.group(1)!r}", line)
            value = STD_PRIORITIES[m.group(1)]
        if m.group(2):
            value += int(m.group(2))
        if m.group(1) and self.peek() in ("+", "-"):
            sign = self.next()
            offset = int(self.next())
            value += offset if sign == "+" else -offset
        return value

    def set_body(self, nset: NftSet, table: Table) -> None:
        while True:
            self.skip_separators()
            line = self.line()
            word = self.next()
            if word == "}":
                return
            if word in ("type", "typeof"):
                types: list[str] = [self.next()]
                while self.peek() == ".":
                    self.next()
                    types.append(self.next())
                if self.peek() == ":":
                    self.next()
                    nset.value_type = self.next()
                nset.types = tuple(types)
            elif word == "flags":
                flags = [w for w in (t.text for t in self.until_end()) if w != ","]
                nset.flags = tuple(flags)
            elif word == "timeout":
                nset.timeout = parse_duration(self.next(), line)
            elif word == "size":
                nset.size = int(self.next())
            elif word == "comment":
                nset.comment = unquote(self.next())
            elif word in ("policy", "gc-interval"):
                self.next()
            elif word == "elements":
                self.expect("=")
                self.elements(nset)
            else:
                raise SyntaxProblem(f"unsupported set property {word!r}", line)

    def elements(self, nset: NftSet, delete: bool = False) -> None:
        """`{ KEY [timeout T] [expires T] [comment "C"] [: VERDICT], ... }`."""
        start = self.i
        self.expect("{")
        depth = 1
        while depth:
            word = self.next()
            depth += word == "{"
            depth -= word == "}"
        ts = TokenStream(self.toks[start + 1 : self.i - 1])
        fields = nset.fields
        interval = "interval" in nset.flags and len(fields) == 1
        while not ts.done():
            if ts.peek() == ",":
                ts.next()
                continue
            line = ts.line()
            if interval:
                item = syntax.parse_scalar(fields[0], ts.next(), line)
                key: Key = item if not isinstance(item, tuple) else -1
                if isinstance(item, tuple):
                    if delete:
                        nset.intervals.remove(item)
                    else:
                        nset.intervals.append(item)
            else:
                key = parse_key(ts, fields)
            expires: float | None = None
            comment: str | None = None
            while ts.peek() in ("timeout", "expires", "comment"):
                what = ts.next()
                if what == "comment":
                    comment = unquote(ts.next())
                else:
                    value = parse_duration(ts.next(), line)
                    if what == "expires" or expires is None:
                        expires = value
            verdict: VerdictT | None = None
            if ts.peek() == ":":
                ts.next()
                verdict = parse_verdict(ts)
            if key == -1:
                continue
            if delete:
                found = (nset.verdicts if nset.is_map else nset.members).pop(key, "absent")
                if found == "absent":
                    raise SyntaxProblem(f"no such element in {nset.name}: {format_key(fields, key)}", line)
                nset.comments.pop(key, None)
                continue
            if nset.is_map:
                if verdict is None:
                    raise SyntaxProblem(f"map {nset.name} needs `: verdict` after {format_key(fields, key)}", line)
                nset.verdicts[key] = verdict
            else:
                if expires is None and nset.timeout is not None and "timeout" in nset.flags:
                    expires = nset.timeout
                nset.members[key] = expires
            if comment is not None:
                nset.comments[key] = comment


_TRAILING_COMMENT = re.compile(r'\s+comment\s+"((?:[^"\\]|\\.)*)"\s*$')


def make_rule(toks: list[Tok]) -> Rule:
    if not toks:
        raise SyntaxProblem("empty rule")
    line = toks[0].line
    body = " ".join(t.text for t in toks)
    comment = None
    m = _TRAILING_COMMENT.search(body)
    if m:
        comment = m.group(1).replace('\\"', '"')
        body = body[: m.start()]
    return Rule(body, comment, line)


# --- writing -------------------------------------------------------------------


def _prefix(table: Table) -> str:
    return f"{table.family} {table.name}"


def chain_decl(table: Table, chain: Chain) -> str:
    head = f"add chain {_prefix(table)} {chain.name}"
    props = []
    if chain.base is not None:
        b = chain.base
        props.append(f"type {b.type} hook {b.hook} priority {b.priority} ;")
    if chain.comment is not None:
        props.append(f"comment {quote(chain.comment)} ;")
    return head + (" { " + " ".join(props) + " }" if props else "")


def set_decl(table: Table, nset: NftSet) -> str:
    props = [f"type {nset.type_text()} ;"]
    if nset.flags:
        props.append(f"flags {','.join(nset.flags)} ;")
    if nset.timeout is not None:
        props.append(f"timeout {format_duration(nset.timeout)} ;")
    if nset.comment is not None:
        props.append(f"comment {quote(nset.comment)} ;")
    kind = "map" if nset.is_map else "set"
    return f"add {kind} {_prefix(table)} {nset.name} {{ {' '.join(props)} }}"


def element_text(nset: NftSet, key: Key) -> str:
    text = format_key(nset.fields, key)
    comment = nset.comments.get(key)
    if comment is not None:
        text += f" comment {quote(comment)}"
    if nset.is_map:
        text += " : " + format_verdict(nset.verdicts[key])
    return text


def dump_commands(table: Table, with_dynamic: bool = False) -> str:
    """The table as knftables' fake Dump() writes it; loadable with `nft -f`.
    Members of dynamic sets are the kernel's, not kube-proxy's: left out
    unless `with_dynamic`."""
    prefix = _prefix(table)
    comment = f" {{ comment {quote(table.comment)} ; }}" if table.comment is not None else ""
    out = [f"add table {prefix}{comment}"]
    chains = sorted(table.chains)
    sets = sorted(n for n, s in table.sets.items() if not s.is_map)
    maps = sorted(n for n, s in table.sets.items() if s.is_map)
    plain, add_rule = f"add chain {prefix} ", f"add rule {prefix} "
    rules: list[str] = []
    for name in chains:
        chain = table.chains[name]
        out.append(plain + name if chain.base is None and chain.comment is None else chain_decl(table, chain))
        if chain.rules:
            head = add_rule + name + " "
            rules += [head + r.body if r.comment is None else head + r.text() for r in chain.rules]
    out += [set_decl(table, table.sets[name]) for name in sets + maps]
    out += rules
    for name in sets + maps:
        nset = table.sets[name]
        if nset.dynamic and not with_dynamic:
            continue
        head = f"add element {prefix} {name} {{ "
        out += [head + element_text(nset, key) + " }" for key in sorted_keys(nset)]
        out += [head + syntax.format_range(nset.fields[0], lo, hi) + " }" for lo, hi in nset.intervals]
    out.append("")
    return "\n".join(out)


def sorted_keys(nset: NftSet) -> list[Key]:
    """Elements in a stable order: numerically (keys of one set share a type)."""
    keys = nset.keys()
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=str)


def format_time(seconds: float) -> str:
    """nft's time format: `3h`, `2h59m59s996ms`."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            out += f"{ms // size}{unit}"
            ms %= size
    return out


def format_priority(hook: str, priority: int) -> str:
    """How nft prints a base chain priority: a standard name when one fits the
    hook within +-10 (src/rule.c prio2str), else the number."""
    names = ["raw", "mangle", "filter", "security"]
    if hook == "prerouting":
        names.append("dstnat")
    if hook == "postrouting":
        names.append("srcnat")
    for name in names:
        offset = priority - STD_PRIORITIES[name]
        if offset == 0:
            return name
        if -10 <= offset <= 10:
            return f"{name} {'+' if offset > 0 else '-'} {abs(offset)}"
    return str(priority)


def list_ruleset(tables: Tables | Table, now: float = 0.0) -> str:
    """The tables in `nft list ruleset`'s layout (sets and maps first, then
    chains, in creation order; dynamic elements with `expires`)."""
    if isinstance(tables, Table):
        tables = {(tables.family, tables.name): tables}
    out: list[str] = []
    for table in tables.values():
        out.append(f"table {table.family} {table.name} {{")
        if table.comment is not None:
            out.append(f"\tcomment {quote(table.comment)}")
        blocks: list[list[str]] = []
        for nset in table.sets.values():
            blocks.append(_list_set(nset, now))
        for chain in table.chains.values():
            blocks.append(_list_chain(chain))
        for n, block in enumerate(blocks):
            if n:
                out.append("")
            out.extend(block)
        out.append("}")
    return "\n".join(out) + "\n"


def _list_set(nset: NftSet, now: float) -> list[str]:
    lines = [f"\t{'map' if nset.is_map else 'set'} {nset.name} {{", f"\t\ttype {nset.type_text()}"]
    if nset.flags:
        lines.append(f"\t\tflags {','.join(nset.flags)}")
    if nset.timeout is not None:
        lines.append(f"\t\ttimeout {format_time(nset.timeout)}")
    if nset.comment is not None:
        lines.append(f"\t\tcomment {quote(nset.comment)}")
    items: list[str] = []
    for key in sorted_keys(nset):
        if not nset.is_map:
            expires = nset.members[key]
            if expires is not None and expires <= now:
                continue
            text = format_key(nset.fields, key)
            if expires is not None:
                text += f" expires {format_time(expires - now)}"
            comment = nset.comments.get(key)
            items.append(text + (f" comment {quote(comment)}" if comment is not None else ""))
        else:
            items.append(element_text(nset, key))
    items += [syntax.format_range(nset.fields[0], lo, hi) for lo, hi in nset.intervals]
    if items:
        per_line = 2 if len(nset.types) == 1 and nset.types[0] in ("ipv4_addr", "ifname") else 16
        if len(nset.types) > 1:
            per_line = 1
        text = ""
        for n, item in enumerate(items):
            if n:
                text += ",\n\t\t\t     " if n % per_line == 0 else ", "
            text += item
        lines.append(f"\t\telements = {{ {text} }}")
    lines.append("\t}")
    return lines


def _list_chain(chain: Chain) -> list[str]:
    lines = [f"\tchain {chain.name} {{"]
    if chain.base is not None:
        b = chain.base
        lines.append(
            f"\t\ttype {b.type} hook {b.hook} priority {format_priority(b.hook, b.priority)}; policy {b.policy};"
        )
    if chain.comment is not None:
        lines.append(f"\t\tcomment {quote(chain.comment)}")
    lines += [f"\t\t{rule.canonical()}" for rule in chain.rules]
    lines.append("\t}")
    return lines
