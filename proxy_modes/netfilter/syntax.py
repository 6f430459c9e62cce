"""iptables-save / iptables-restore text: tokenizing, parsing into tables of
chains of rules, applying a restore (with or without --noflush), and printing
rules back the way `iptables-save` does.

Any ruleset loads: kube-proxy's restore input (options in its order, short
addresses, `--or-mark`) and a real node's `iptables-save` output (the IP part
first, `/32`s, `--set-xmark`), because both are parsed into the same
structure. Errors are `RulesetError`s naming the file and line, as
iptables-restore's "Error occurred at line: N" would.

Restore follows iptables-restore (iptables-restore.c / xshared.c): a table
block is `*name`, chain declarations `:NAME POLICY [p:b]`, commands (`-A`,
`-I`, `-N`, `-X`, `-F`, `-P`), then `COMMIT`; without --noflush a table block
replaces the whole table, with it only the declared chains are flushed; a
failing block changes nothing. Parsed rules may be shared through a
`RuleCache` (keyed by their text) so a partial sync reparses only what changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from netem.addr import MAX, int_to_ip, parse_ip, prefix_mask
from netem.errors import RulesetError, Where
from netem.packet import ICMP, SCTP, TCP, UDP

from . import xt
from .xt import Comment, Match, OptionError, Ports, Statistic, Target

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
PROTOCOLS = {"all": 0, "icmp": ICMP, "tcp": TCP, "udp": UDP, "sctp": SCTP, "gre": 47, "esp": 50, "ah": 51}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items() if v}
# iptables refuses -o in chains that only see input, -i in output-only ones.
NO_OUT_IFACE = {"PREROUTING", "INPUT"}
NO_IN_IFACE = {"OUTPUT", "POSTROUTING"}

Addr = tuple[int, int, bool]  # network, mask, inverted
Iface = tuple[str, bool, bool]  # name (without '+'), is a prefix, inverted


class Rule:
    """One rule: its IP part, its matches in order, its target.

    `test()` is the kernel's ipt_do_table per rule: the IP header part
    (ip_packet_match) first, then each match in order, stopping at the first
    that fails."""

    __slots__ = (
        "comment",
        "dst",
        "iif",
        "line",
        "matches",
        "oif",
        "proto",
        "proto_inv",
        "saved",
        "spec",
        "src",
        "target",
    )

    def __init__(self, spec: str, line: int) -> None:
        self.spec = spec  # the text after "-A CHAIN", as given
        self.line = line
        self.src: Addr | None = None
        self.dst: Addr | None = None
        self.proto = 0
        self.proto_inv = False
        self.iif: Iface | None = None
        self.oif: Iface | None = None
        self.matches: tuple[Match, ...] = ()  # the ones that test something
        self.saved: tuple[Match, ...] = ()  # every match, for printing
        self.target = Target()
        self.comment: str | None = None

    def test(self, st: xt.PacketState) -> bool:
        if self.proto and (st.proto == self.proto) == self.proto_inv:
            return False
        dst = self.dst
        if dst is not None and ((st.dst & dst[1]) == dst[0]) == dst[2]:
            return False
        src = self.src
        if src is not None and ((st.src & src[1]) == src[0]) == src[2]:
            return False
        if self.iif is not None and not _iface_ok(self.iif, st.iif):
            return False
        if self.oif is not None and not _iface_ok(self.oif, st.oif):
            return False
        return all(m.test(st) for m in self.matches)

    @property
    def stateful(self) -> bool:
        """Rules whose matches keep per-rule state must not be shared."""
        return any(isinstance(m, Statistic) and m.mode == "nth" for m in self.matches)

    def save(self, chain: str) -> str:
        """The rule as `iptables-save` prints it (addresses with /len, the IP
        part first: -s -d -i -o -p, then matches in order, then the target)."""
        out = [f"-A {chain}"]
        for flag, addr in (("-s", self.src), ("-d", self.dst)):
            if addr is not None:
                out.append(("! " if addr[2] else "") + f"{flag} {int_to_ip(addr[0])}/{_mask_len(addr[1])}")
        for flag, iface in (("-i", self.iif), ("-o", self.oif)):
            if iface is not None:
                out.append(("! " if iface[2] else "") + f"{flag} {iface[0]}{'+' if iface[1] else ''}")
        if self.proto:
            out.append(("! " if self.proto_inv else "") + f"-p {PROTOCOL_NAMES.get(self.proto, self.proto)}")
        text = " ".join(out) + "".join(m.save() for m in self.saved) + self.target.save()
        return text

    def describe(self) -> str:
        return self.spec


def _iface_ok(iface: Iface, name: str) -> bool:
    want, prefix, inv = iface
    hit = name.startswith(want) if prefix else name == want
    return hit != inv


def _mask_len(mask: int) -> int:
    return bin(mask).count("1")


@dataclass
class Chain:
    """A chain: built-in ones have a policy, user chains have None."""

    name: str
    policy: str | None = None
    rules: list[Rule] = field(default_factory=list)
    # The engine's index of this chain's rules and its compiled function, built on first use.
    index: Any = field(default=None, repr=False, compare=False)
    compiled: Any = field(default=None, repr=False, compare=False)


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)

    def copy(self) -> Table:
        return Table(self.name, dict(self.chains))


Tables = dict[str, Table]


def empty_table(name: str) -> Table:
    return Table(name, {c: Chain(c, "ACCEPT") for c in BUILTIN_CHAINS[name]})


# --- tokenizing -------------------------------------------------------------------


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)("?)|([^\s"]+)')
_UNESCAPE = re.compile(r"\\(.)")


def tokenize(line: str) -> list[str]:
    """add_param_to_argv (iptables xshared.c): whitespace separates; double
    quotes group, and inside them a backslash escapes the next character."""
    if '"' not in line:
        return line.split()
    out: list[str] = []
    glued = False  # a quoted part directly after a word joins it (`a"b c"` is one word)
    end = 0
    for m in _TOKEN.finditer(line):
        quoted, closed, word = m.group(1), m.group(2), m.group(3)
        join = glued and m.start() == end
        if word is not None:
            piece = word
        else:
            if not closed:
                raise OptionError("unterminated quoted string")
            piece = _UNESCAPE.sub(r"\1", quoted)
        if join:
            out[-1] += piece
        else:
            out.append(piece)
        glued, end = True, m.end()
    return out


# --- rules --------------------------------------------------------------------------

_IP_OPTS = {
    "-s": "-s",
    "--source": "-s",
    "--src": "-s",
    "-d": "-d",
    "--destination": "-d",
    "--dst": "-d",
    "-p": "-p",
    "--protocol": "-p",
    "-i": "-i",
    "--in-interface": "-i",
    "-o": "-o",
    "--out-interface": "-o",
}


def parse_rule(args: list[str], spec: str, line: int) -> Rule:
    """A rule from the words after `-A CHAIN`; OptionError on anything not understood."""
    rule = Rule(spec, line)
    modules: list[tuple[str, xt.Options]] = []  # (module, options) in order
    target_name: str | None = None
    goto = False
    target_opts: xt.Options = []
    inv = False
    seen: set[str] = set()
    i, n = 0, len(args)
    while i < n:
        word = args[i]
        i += 1
        if word == "!":
            if inv:
                raise OptionError("'!' given twice")
            inv = True
            continue
        if word in _IP_OPTS:
            if i >= n:
                raise OptionError(f"{word} needs a value")
            opt = _IP_OPTS[word]
            if opt in seen:
                raise OptionError(f"multiple {opt} flags not allowed")
            seen.add(opt)
            _ip_option(rule, opt, args[i], inv)
            i += 1
        elif word in ("-m", "--match"):
            if inv or i >= n:
                raise OptionError("-m needs a match name (and cannot be inverted)")
            xt.match_arity(args[i])  # unsupported modules fail here, naming themselves
            modules.append((args[i], []))
            i += 1
        elif word in ("-j", "--jump", "-g", "--goto"):
            if inv or i >= n or target_name is not None:
                raise OptionError(f"{word} needs one target name")
            target_name, goto = args[i], word in ("-g", "--goto")
            i += 1
        elif word in ("-f", "--fragment"):
            raise OptionError("-f (fragments) is not supported")
        elif word.startswith("--"):
            i = _module_option(rule, modules, target_name, target_opts, args, i, word, inv)
        else:
            raise OptionError(f"unexpected {word!r}")
        inv = False
    if inv:
        raise OptionError("'!' at the end of the rule")
    _build(rule, modules, target_name, goto, target_opts)
    return rule


def _module_option(
    rule: Rule,
    modules: list[tuple[str, xt.Options]],
    target_name: str | None,
    target_opts: xt.Options,
    args: list[str],
    i: int,
    opt: str,
    inv: bool,
) -> int:
    """Give `--opt VALUE...` to the target or the latest match that has it
    (loading the protocol's match implicitly, as iptables does for
    `-p tcp --dport 80`); returns the index after its values."""
    dest: xt.Options | None = None
    arity = 0
    if target_name is not None and target_name not in xt.TARGET_ARITY:
        raise OptionError(f"unsupported target -j {target_name} (or options given to a jump to a chain)")
    if target_name is not None and opt in xt.TARGET_ARITY.get(target_name, {}):
        dest, arity = target_opts, xt.TARGET_ARITY[target_name][opt]
    else:
        for module, options in reversed(modules):
            table = xt.match_arity(module)
            if opt in table:
                dest, arity = options, table[opt]
                break
    if dest is None:
        implicit = xt.PROTOCOL_MODULE.get(rule.proto) if not rule.proto_inv else None
        if implicit is not None and opt in xt.match_arity(implicit) and all(m != implicit for m, _ in modules):
            modules.append((implicit, []))
            dest, arity = modules[-1][1], xt.match_arity(implicit)[opt]
    if dest is None:
        owner = f"-j {target_name}" if target_name else "any loaded match"
        raise OptionError(f"unknown option {opt} (not an option of {owner})")
    values = args[i : i + arity]
    if len(values) < arity:
        raise OptionError(f"{opt} needs {arity} value(s)")
    dest.append((inv, opt, values))
    return i + arity


def _ip_option(rule: Rule, opt: str, value: str, inv: bool) -> None:
    if opt in ("-s", "-d"):
        addr = _parse_addr(value, opt)
        if opt == "-s":
            rule.src = (addr[0], addr[1], inv)
        else:
            rule.dst = (addr[0], addr[1], inv)
    elif opt == "-p":
        proto = PROTOCOLS.get(value.lower())
        if proto is None:
            if not value.isdigit() or int(value) > 255:
                raise OptionError(f"-p: unknown protocol {value!r}")
            proto = int(value)
        rule.proto, rule.proto_inv = proto, inv and proto != 0
        if inv and proto == 0:
            raise OptionError("-p: '! all' matches nothing")
    else:
        if len(value) > 15 or not value:
            raise OptionError(f"{opt}: bad interface name {value!r}")
        iface = (value[:-1], True, inv) if value.endswith("+") else (value, False, inv)
        if opt == "-i":
            rule.iif = iface
        else:
            rule.oif = iface


_ADDRS: dict[str, tuple[int, int]] = {}


def _parse_addr(text: str, opt: str) -> tuple[int, int]:
    hit = _ADDRS.get(text)
    if hit is not None:
        return hit
    if len(_ADDRS) > 1_000_000:
        _ADDRS.clear()
    hit = _ADDRS[text] = _parse_addr_text(text, opt)
    return hit


def _parse_addr_text(text: str, opt: str) -> tuple[int, int]:
    if "," in text:
        raise OptionError(f"{opt}: lists of addresses are not supported ({text!r})")
    host, sep, length = text.partition("/")
    try:
        ip = parse_ip(host)
        if not sep:
            mask = MAX
        elif length.isdigit():
            if int(length) > 32:
                raise ValueError(length)
            mask = prefix_mask(int(length))
        else:
            mask = parse_ip(length)
    except ValueError:
        raise OptionError(f"{opt}: not an IPv4 address or network: {text!r}") from None
    return ip & mask, mask


def _build(
    rule: Rule, modules: list[tuple[str, xt.Options]], target: str | None, goto: bool, target_opts: xt.Options
) -> None:
    if modules:
        saved = [xt.build_match(module, options, rule.proto) for module, options in modules]
        rule.saved = tuple(saved)
        # Comments and option-less port matches test nothing; leave them out of the walk.
        testing = []
        for m in saved:
            kind = type(m)
            if kind is Comment:
                if rule.comment is None:
                    rule.comment = m.text  # type: ignore[attr-defined]
            elif kind is not Ports or not m.is_noop():  # type: ignore[attr-defined]
                testing.append(m)
        rule.matches = tuple(testing)
    if target is not None:
        rule.target = xt.build_target(target, target_opts, goto)


# --- restore ----------------------------------------------------------------------------


class RuleCache:
    """Parsed rules by their text, shared between restores of one owner (a
    mode's successive syncs). Rules with per-rule state are never shared."""

    def __init__(self, limit: int = 2_000_000) -> None:
        self.rules: dict[str, Rule] = {}
        self.limit = limit

    def get(self, spec: str, line: int) -> Rule:
        rule = self.rules.get(spec)
        if rule is None:
            rule = parse_rule(tokenize(spec), spec, line)
            if not rule.stateful:
                if len(self.rules) >= self.limit:
                    self.rules.clear()
                self.rules[spec] = rule
        return rule


def _fresh(spec: str, line: int) -> Rule:
    return parse_rule(tokenize(spec), spec, line)


def restore(
    tables: Tables | None,
    text: str,
    filename: str = "<rules>",
    noflush: bool = False,
    cache: RuleCache | None = None,
    touched: dict[str, set[str]] | None = None,
) -> Tables:
    """The tables after `iptables-restore [--noflush] < text` on `tables`
    (None: an empty kernel). The input is not modified; tables and chains
    the text does not touch are shared with it. `touched`, when given, gets
    the names of the chains each table block declared, wrote or deleted."""
    result: Tables = dict(tables or {})
    parse = cache.get if cache is not None else _fresh
    current: Table | None = None
    flushed: set[str] = set()
    deleted: set[str] = set()
    full = True
    block_start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        try:
            if line.startswith("-A "):  # the common case first
                _append(current, line, number, parse, flushed)
            elif not line or line[0] == "#":
                continue
            elif line[0] == "*":
                if current is not None:
                    raise OptionError(f"table {current.name!r} was not committed before this line")
                name = line[1:].strip()
                full = not noflush or name not in result
                current, flushed, deleted, block_start = _open_table(result, name, noflush), set(), set(), number
            elif current is None:
                raise OptionError("a rule or chain outside a table (missing '*table' line)")
            elif line == "COMMIT":
                _commit(current, flushed, deleted, full)
                result[current.name] = current
                if touched is not None:
                    touched.setdefault(current.name, set()).update(flushed | deleted)
                current = None
            elif line[0] == ":":
                _declare(current, line, flushed)
            else:
                _command(current, line, number, parse, flushed, deleted)
        except OptionError as exc:
            raise RulesetError(str(exc), Where(file=f"{filename}: line {number}")) from None
    if current is not None:
        raise RulesetError(f"table {current.name!r} has no COMMIT", Where(file=f"{filename}: line {block_start}"))
    return result


def _append(table: Table | None, line: str, number: int, parse: Any, flushed: set[str]) -> None:
    """`-A CHAIN rule...`: the line kube-proxy writes most."""
    if table is None:
        raise OptionError("a rule or chain outside a table (missing '*table' line)")
    _, chain_name, spec = [*line.split(" ", 2), ""][:3]
    chain = table.chains.get(chain_name)
    if chain is None or chain_name not in flushed:
        chain = _writable(table, chain_name, flushed)
    rule = parse(spec.strip(), number)
    if rule.iif is not None or rule.oif is not None:
        _check_ifaces(rule, chain_name, table.name)
    chain.rules.append(rule)


def parse_save(text: str, filename: str = "<rules>", cache: RuleCache | None = None) -> Tables:
    """Tables from an `iptables-save` dump (or any complete restore input)."""
    return restore(None, text, filename, noflush=False, cache=cache)


def _open_table(tables: Tables, name: str, noflush: bool) -> Table:
    if name not in BUILTIN_CHAINS:
        raise OptionError(f"unknown table {name!r} (known: {', '.join(BUILTIN_CHAINS)})")
    if noflush and name in tables:
        return tables[name].copy()
    return empty_table(name)


def _declare(table: Table, line: str, flushed: set[str]) -> None:
    """`:NAME POLICY [packets:bytes]`: create, or flush, the chain."""
    parts = line[1:].split()
    if len(parts) < 2:
        raise OptionError(f"bad chain line {line!r} (want ':NAME POLICY [p:b]')")
    name, policy = parts[0], parts[1]
    builtin = name in BUILTIN_CHAINS[table.name]
    if builtin:
        if policy not in ("ACCEPT", "DROP"):
            raise OptionError(f"built-in chain {name} needs policy ACCEPT or DROP (got {policy})")
        table.chains[name] = Chain(name, policy)
    else:
        if policy != "-":
            raise OptionError(f"user chain {name} cannot have a policy (got {policy})")
        _check_chain_name(name)
        table.chains[name] = Chain(name, None)
    flushed.add(name)


def _check_chain_name(name: str) -> None:
    if len(name) > 28 or name.startswith("-") or name in xt.TARGET_ARITY or name in ("!", ""):
        raise OptionError(f"invalid chain name {name!r}")


def _command(table: Table, line: str, number: int, parse: Any, flushed: set[str], deleted: set[str]) -> None:
    head, _, rest = line.partition(" ")
    rest = rest.strip()
    chain_name, _, spec = rest.partition(" ")
    spec = spec.strip()
    if head in ("-A", "--append", "-I", "--insert"):
        chain = _writable(table, chain_name, flushed)
        position = len(chain.rules)
        if head in ("-I", "--insert"):
            first, _, after = spec.partition(" ")
            position = 0
            if first.isdigit():
                position, spec = int(first) - 1, after.strip()
                if not 0 <= position <= len(chain.rules):
                    raise OptionError(f"-I {chain_name} {first}: index of insertion too big")
        rule = parse(spec, number)
        _check_ifaces(rule, chain_name, table.name)
        chain.rules.insert(position, rule)
    elif head in ("-N", "--new-chain"):
        if chain_name in table.chains:
            raise OptionError(f"chain {chain_name} already exists")
        _check_chain_name(chain_name)
        table.chains[chain_name] = Chain(chain_name)
        flushed.add(chain_name)
    elif head in ("-X", "--delete-chain"):
        _delete_chain(table, chain_name, flushed)
        deleted.add(chain_name)
        flushed.discard(chain_name)
    elif head in ("-F", "--flush"):
        names = [chain_name] if chain_name else list(table.chains)
        for name in names:
            chain = _existing(table, name)
            table.chains[name] = Chain(name, chain.policy)
            flushed.add(name)
    elif head in ("-P", "--policy"):
        chain = _existing(table, chain_name)
        if chain.policy is None or spec not in ("ACCEPT", "DROP"):
            raise OptionError(f"-P {chain_name} {spec}: only built-in chains take a policy ACCEPT or DROP")
        table.chains[chain_name] = Chain(chain_name, spec, list(chain.rules))
        flushed.add(chain_name)
    else:
        raise OptionError(f"unsupported command {head!r} (supported: -A -I -N -X -F -P)")


def _existing(table: Table, name: str) -> Chain:
    chain = table.chains.get(name)
    if chain is None:
        raise OptionError(f"chain {name!r} does not exist in table {table.name}")
    return chain


def _writable(table: Table, name: str, flushed: set[str]) -> Chain:
    """The chain to append to: copied first if it is shared with the old tables."""
    chain = _existing(table, name)
    if name not in flushed:
        chain = table.chains[name] = Chain(name, chain.policy, list(chain.rules))
        flushed.add(name)
    return chain


def _delete_chain(table: Table, name: str, flushed: set[str]) -> None:
    chain = _existing(table, name)
    if chain.policy is not None:
        raise OptionError(f"cannot delete built-in chain {name}")
    if chain.rules:
        raise OptionError(f"cannot delete chain {name}: it is not empty")
    # The kernel refuses while any rule jumps to it. Looked for in the chains
    # this restore wrote and the built-in ones (an --noflush restore of a huge
    # table must stay cheap; a full restore checks every jump at COMMIT).
    for other in (table.chains[n] for n in (*flushed, *BUILTIN_CHAINS[table.name]) if n in table.chains):
        if other.name != name and any(
            r.target.name == name and r.target.kind in (xt.T_JUMP, xt.T_GOTO) for r in other.rules
        ):
            raise OptionError(f"cannot delete chain {name}: other rules jump to it")
    del table.chains[name]


def _check_ifaces(rule: Rule, chain: str, table: str) -> None:
    if rule.oif is not None and chain in NO_OUT_IFACE and chain in BUILTIN_CHAINS[table]:
        raise OptionError(f"Can't use -o with {chain}")
    if rule.iif is not None and chain in NO_IN_IFACE and chain in BUILTIN_CHAINS[table]:
        raise OptionError(f"Can't use -i with {chain}")


def _commit(table: Table, flushed: set[str], deleted: set[str], full: bool) -> None:
    """What the kernel checks when the table is replaced: every jump has a
    chain, targets are used in their table and from hooks they allow. A
    --noflush restore into an existing table checks only the chains it
    wrote (and no hook reachability), so a partial sync of a big table costs
    what it changed."""
    names = table.chains.keys() if full else [n for n in flushed if n in table.chains]
    for name in names:
        chain = table.chains[name]
        for rule in chain.rules:
            target = rule.target
            if target.kind in (xt.T_JUMP, xt.T_GOTO):
                if target.name not in table.chains:
                    raise OptionError(f"chain {chain.name}: jump to a chain that does not exist: {target.name}")
                if target.name in BUILTIN_CHAINS[table.name]:
                    raise OptionError(f"chain {chain.name}: cannot jump to built-in chain {target.name}")
            elif target.name in xt.NAT_ONLY and table.name != "nat":
                raise OptionError(f"chain {chain.name}: target {target.name} is only valid in the nat table")
    if full:
        _check_hooks(table)


def _check_hooks(table: Table) -> None:
    """x_tables checks a target against every hook its chain is reachable
    from (mark_source_chains + xt_check_target); loops are errors too."""
    reach: dict[str, set[str]] = {}
    for hook in BUILTIN_CHAINS[table.name]:
        stack = [hook]
        path: set[str] = set()
        _reach(table, hook, hook, reach, path, stack)
    for name, hooks in reach.items():
        for rule in table.chains[name].rules:
            allowed = xt.TARGET_HOOKS.get(rule.target.name)
            if allowed is not None and not hooks <= allowed:
                bad = ", ".join(sorted(hooks - allowed))
                raise OptionError(
                    f"chain {name}: {rule.target.name} target used from hook(s) {bad},"
                    f" but only usable from {', '.join(sorted(allowed))}"
                )


def _reach(table: Table, hook: str, name: str, reach: dict[str, set[str]], path: set[str], stack: list[str]) -> None:
    seen = reach.setdefault(name, set())
    if hook in seen and name not in path:
        return
    if name in path:
        raise OptionError(f"loop: chain {name} jumps back into itself ({' -> '.join([*stack, name])})")
    seen.add(hook)
    path.add(name)
    for rule in table.chains[name].rules:
        if rule.target.kind in (xt.T_JUMP, xt.T_GOTO):
            stack.append(rule.target.name)
            _reach(table, hook, rule.target.name, reach, path, stack)
            stack.pop()
    path.discard(name)


# --- printing ------------------------------------------------------------------------------


def save(tables: Tables, order: tuple[str, ...] = ("filter", "nat", "mangle", "raw")) -> str:
    """The tables as `iptables-save` prints them (without the header comments
    and with zero counters): built-in chains first in hook order, then user
    chains sorted by name; rules grouped by chain in that order."""
    out: list[str] = []
    for name in order:
        table = tables.get(name)
        if table is None:
            continue
        chains = [table.chains[c] for c in BUILTIN_CHAINS[name] if c in table.chains]
        chains += sorted((c for c in table.chains.values() if c.policy is None), key=lambda c: c.name)
        out.append(f"*{name}")
        out += [f":{c.name} {c.policy or '-'} [0:0]" for c in chains]
        out += [rule.save(c.name) for c in chains for rule in c.rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def rule_count(tables: Tables) -> int:
    return sum(len(c.rules) for t in tables.values() for c in t.chains.values())
