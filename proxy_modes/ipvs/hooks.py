"""kube-proxy's iptables rules around IPVS, walked by the shared netfilter engine.

IPVS is not a table of its own: it hooks into netfilter between the tables
(ip_vs_core.c ip_vs_ops4), so a packet meets kube-proxy's rules on both
sides of it:

- from elsewhere: PREROUTING (raw, mangle, nat: KUBE-SERVICES marks for
  SNAT), routing (the VIP is on kube-ipvs0, so local), INPUT mangle and
  filter (KUBE-IPVS-FILTER, KUBE-PROXY-FIREWALL), then IPVS (ip_vs_in_hook
  at LOCAL_IN, NF_IP_PRI_NAT_SRC - 1). It DNATs and ip_vs_nat_xmit sends the
  packet through LOCAL_OUT (raw, mangle, filter; the nat table's destination
  step is already done) and POSTROUTING (nat: KUBE-POSTROUTING masquerades
  what was marked, and the hairpin set). A real server on the node itself is
  delivered at once: only the rest of LOCAL_IN (nat) follows.
- sent by the node: OUTPUT raw, mangle, nat, then IPVS (LOCAL_OUT,
  NF_IP_PRI_NAT_DST + 2), then OUTPUT filter with the real server as
  destination, POSTROUTING.
- a later packet of a connection: the nat table is not consulted (conntrack
  remembers), every other table is.
- a reply from the real server: PREROUTING (conntrack undoes the
  masquerade), FORWARD filter (INPUT for a client on the node), then IPVS's
  out hook (priority 100 / 98: after filter) restores the VIP, POSTROUTING.
- a packet IPVS does not take goes on: the rest of LOCAL_IN (nat) to the
  node's own stack, or FORWARD and POSTROUTING when it was not local.

`NodeRules` runs those walks with the engine (each returns what it cost:
rules evaluated and ipset lookups, and whether a MASQUERADE fired). The
engine's set provider is the mode's ipsets (rules.IPSet).

The walks depend on few properties of a packet: the client's address as
the rules see it (in which source CIDRs, of which address type, whether it
is one of the addresses a set holds), ports only where a rule or set tests
them, where the packet came from; and the same kind of properties of the
service's address (which sets hold it with its port: a ClusterIP, a
NodePort, a LoadBalancer with source ranges...) and of the real server's
(a hairpin endpoint on the node or not). `new_key` / `reply_key` reduce a
packet's client side to exactly those, `vip_class` / `server_class` a
service's and a real server's, each over the chains the packet can reach at
that point of its way (before IPVS the VIP is the destination, after it the
real server), so the mode can cache a walk per (service class, server
class, key) and share it across the thousands of services and servers
alike. A ruleset with anything else in it (random or stateful matches, TCP
flag tests, a DNAT of its own) is not cacheable and every packet is walked.
A differential test holds the cached mode to a literal walk of every packet.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple, cast

from netem.addr import Cidr, int_to_ip
from netem.conntrack import ORIGINAL, tcp_next_state
from netem.packet import TCP, Packet
from proxy_modes.base import Step
from proxy_modes.netfilter import xt
from proxy_modes.netfilter.engine import V_ACCEPT, Netfilter
from proxy_modes.netfilter.xt import CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_SNAT, PacketState

from .rules import IPSet

# The tables of a hook on each side of IPVS's own hook function.
INPUT_BEFORE = ("mangle", "filter")  # LOCAL_IN: IPVS at NF_IP_PRI_NAT_SRC - 1, before nat
INPUT_AFTER = ("nat",)
OUTPUT_BEFORE = ("raw", "mangle", "nat")  # LOCAL_OUT: IPVS at NF_IP_PRI_NAT_DST + 2, after nat
OUTPUT_AFTER = ("filter",)
SAFE_MATCHES = (xt.Comment, xt.MarkMatch, xt.Conntrack, xt.Nfacct, xt.Physdev)
# Whether a TCP segment with these flags opens a conntrack entry (else INVALID: no nat table).
OPENS = tuple(tcp_next_state(ORIGINAL, flags, 0) < 10 for flags in range(256))


class Walked(NamedTuple):
    """What one packet's walk through the rules cost and did."""

    verdict: int  # V_ACCEPT, V_DROP or V_REJECT (engine)
    rules: int  # rules evaluated
    lookups: int  # ipset tests
    masquerade: bool  # a MASQUERADE (or SNAT) fired


class NodeRules:
    """The node's iptables rules and ipsets, with the walks IPVS sits in."""

    def __init__(
        self,
        text: str,
        local_ips: Iterable[int],
        ipsets: Mapping[str, IPSet],
        literal: bool = False,
        filename: str = "kube-proxy (ipvs)",
    ) -> None:
        sets = cast("Mapping[str, xt.IpSet]", ipsets)
        self.nf = Netfilter.from_save(text, local_ips, ipsets=sets, literal=literal, filename=filename)
        self.ipsets = ipsets
        self.new_key: Callable[[Packet], Hashable] | None = None
        self.reply_key: Callable[[int, int, bool, bool], Hashable] | None = None
        self.vip_class: Callable[[int, int, int], tuple[Hashable, Hashable]] | None = None
        self.server_class: Callable[[int, int, int], tuple[Hashable, Hashable]] | None = None
        self.server_coarse: Callable[[int, int, int], Hashable] | None = None  # server_class()[0], cheaper
        self.special: Callable[[Hashable], bool] = lambda key: True  # is the client's address one a set holds?
        if not literal:
            self._keys()

    @property
    def cacheable(self) -> bool:
        return self.new_key is not None

    # --- the walks ---------------------------------------------------------

    def first(self, packet: Packet, now: float, steps: list[Step] | None) -> tuple[int, PacketState]:
        """A packet without an IPVS connection, up to IPVS's hook."""
        nf = self.nf
        st = nf.new_state(packet, now)
        st.steps = steps
        if packet.proto == TCP and not OPENS[packet.flags & 0xFF]:
            st.ctstate = CT_INVALID  # conntrack opens no entry for it: the nat table is skipped
        if packet.local:
            return nf.run_hook("OUTPUT", st, tables=OUTPUT_BEFORE), st
        verdict = nf.run_hook("PREROUTING", st)
        if verdict == V_ACCEPT and nf.is_local(st.dst):
            verdict = nf.run_hook("INPUT", st, tables=INPUT_BEFORE)
        return verdict, st

    def reaches_ipvs(self, st: PacketState) -> bool:
        """Whether IPVS's hook sees the packet: one the node sends (LOCAL_OUT),
        or one routed to a local address (LOCAL_IN); a forwarded one never."""
        return bool(st.local) or self.nf.is_local(st.dst)

    def passed(self, st: PacketState) -> int:
        """The rest of the path of a packet IPVS let go on (NF_ACCEPT)."""
        nf = self.nf
        if st.local:
            verdict = nf.run_hook("OUTPUT", st, tables=OUTPUT_AFTER)
            if verdict == V_ACCEPT:
                verdict = nf.run_hook("POSTROUTING", st)
            if verdict == V_ACCEPT and nf.is_local(st.dst):
                verdict = self._loopback(st)
            return verdict
        if nf.is_local(st.dst):
            return nf.run_hook("INPUT", st, tables=INPUT_AFTER)
        verdict = nf.run_hook("FORWARD", st)
        if verdict == V_ACCEPT:
            verdict = nf.run_hook("POSTROUTING", st)
        return verdict

    def after(self, st: PacketState, endpoint: tuple[int, int]) -> int:
        """IPVS DNATed the packet to `endpoint` (ip_vs_nat_xmit): the hooks it
        passes on the way out."""
        nf = self.nf
        st.dst, st.dport = endpoint
        if st.steps is not None:
            st.steps.append(Step("nat", f"IPVS: destination becomes {int_to_ip(endpoint[0])}:{endpoint[1]}"))
        to_node = nf.is_local(endpoint[0])
        if not st.local:
            if to_node:  # a real server on this node: delivered at once, the rest of LOCAL_IN
                return nf.run_hook("INPUT", st, tables=INPUT_AFTER)
            verdict = nf.run_hook("OUTPUT", st, nat=False)  # ip_vs_send_or_cont: NF_HOOK(LOCAL_OUT)
        else:
            verdict = nf.run_hook("OUTPUT", st, tables=OUTPUT_AFTER)
        if verdict == V_ACCEPT:
            verdict = nf.run_hook("POSTROUTING", st)
        if verdict == V_ACCEPT and st.local and to_node:
            verdict = self._loopback(st)
        return verdict

    def _loopback(self, st: PacketState) -> int:
        """A packet the node sent to itself comes back in over lo (NAT done)."""
        verdict = self.nf.run_hook("PREROUTING", st, nat=False)
        if verdict == V_ACCEPT:
            verdict = self.nf.run_hook("INPUT", st, nat=False)
        return verdict

    def new_connection(
        self, packet: Packet, endpoint: tuple[int, int], now: float, steps: list[Step] | None = None
    ) -> Walked:
        """The whole walk of a connection's first packet IPVS schedules."""
        verdict, st = self.first(packet, now, steps)
        if verdict == V_ACCEPT:
            verdict = self.after(st, endpoint)
        return Walked(verdict, st.rules, st.lookups, st.snat is not None)

    def later(
        self,
        packet: Packet,
        endpoint: tuple[int, int],
        replied: bool,
        masquerade: bool,
        now: float,
        steps: list[Step] | None = None,
        until_ipvs: bool = False,
    ) -> Walked:
        """A later packet from the client: conntrack knows it (NEW until the
        server answered, then ESTABLISHED), so no nat table; the filter
        chains on both sides of IPVS. `until_ipvs`: stop at IPVS's hook."""
        nf = self.nf
        st = nf.new_state(packet, now)
        st.steps = steps
        st.ctstate = (CT_ESTABLISHED if replied else CT_NEW) | (CT_SNAT if masquerade else 0)
        if packet.local:
            verdict = nf.run_hook("OUTPUT", st, nat=False, tables=OUTPUT_BEFORE)
        else:
            verdict = nf.run_hook("PREROUTING", st, nat=False)
            if verdict == V_ACCEPT:
                verdict = nf.run_hook("INPUT", st, nat=False, tables=INPUT_BEFORE)
        if verdict != V_ACCEPT or until_ipvs:
            return Walked(verdict, st.rules, st.lookups, masquerade)
        st.dst, st.dport = endpoint
        to_node = nf.is_local(endpoint[0])
        if not packet.local and to_node:
            return Walked(verdict, st.rules, st.lookups, masquerade)  # delivered: only nat INPUT, not consulted
        tables = None if not packet.local else OUTPUT_AFTER
        verdict = nf.run_hook("OUTPUT", st, nat=False, tables=tables)
        if verdict == V_ACCEPT:
            verdict = nf.run_hook("POSTROUTING", st, nat=False)
        if verdict == V_ACCEPT and packet.local and to_node:
            verdict = self._loopback(st)
        return Walked(verdict, st.rules, st.lookups, masquerade)

    def reply(
        self,
        proto: int,
        endpoint: tuple[int, int],
        client: tuple[int, int],
        client_local: bool,
        masquerade: bool,
        now: float,
        steps: list[Step] | None = None,
    ) -> Walked:
        """A reply from the real server to the client: conntrack undoes the
        masquerade at PREROUTING (so the filter sees the client), IPVS's out
        hook restores the VIP after the filter table."""
        nf = self.nf
        ep_ip, ep_port = endpoint
        from_node = nf.is_local(ep_ip)
        # A reply the node itself sends (a real server on the node) leaves through OUTPUT.
        packet = Packet(proto, ep_ip, ep_port, client[0], client[1], from_node, "", 0)
        st = nf.new_state(packet, now)
        st.steps = steps
        st.ctstate = CT_ESTABLISHED | (CT_SNAT if masquerade else 0)
        if from_node:
            verdict = nf.run_hook("OUTPUT", st, nat=False)
            if verdict == V_ACCEPT:
                verdict = nf.run_hook("POSTROUTING", st, nat=False)
            if verdict == V_ACCEPT and client_local:
                verdict = self._loopback(st)
            return Walked(verdict, st.rules, st.lookups, masquerade)
        verdict = nf.run_hook("PREROUTING", st, nat=False)
        if verdict == V_ACCEPT:
            if client_local:
                verdict = nf.run_hook("INPUT", st, nat=False)
            else:
                verdict = nf.run_hook("FORWARD", st)
                if verdict == V_ACCEPT:
                    verdict = nf.run_hook("POSTROUTING", st, nat=False)
        return Walked(verdict, st.rules, st.lookups, masquerade)

    # --- what a walk depends on ---------------------------------------------

    def _keys(self) -> None:
        """Read every rule: which properties of an address or port any match
        could look at. Leaves the key functions None when a rule could make
        two packets with equal keys walk differently."""
        sides = {"src": _Side(), "dst": _Side()}
        iif = False
        for table in self.nf.tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    if rule.target.kind in (xt.T_DNAT, xt.T_REDIRECT):
                        return  # the rules move the destination themselves
                    for side, addr in (("src", rule.src), ("dst", rule.dst)):
                        if addr is not None:
                            sides[side].nets.add((addr[0], addr[1]))
                    iif = iif or rule.iif is not None
                    for match in rule.matches:
                        if not self._note(match, sides):
                            return
        self.new_key, tuple_keys = _new_key_fn(sides["src"], self.nf.is_local, iif)
        self.reply_key = _reply_key_fn(sides["dst"], self.nf.is_local)
        tables = self.nf.tables
        vip = _Classifier(self, _reachable(tables, VIP_ENTRIES))
        server = _Classifier(self, _reachable(tables, SERVER_ENTRIES))
        anywhere = _Classifier(self, _reachable(tables, [(t, c) for t in tables for c in tables[t].chains]))
        is_local = self.nf.is_local
        self.vip_class = vip.classify
        # A real server on the node itself gets its packets back in over lo
        # (PREROUTING, INPUT): every chain can see it then.
        near, far = anywhere.classify, server.classify
        self.server_class = lambda proto, ip, port: near(proto, ip, port) if is_local(ip) else far(proto, ip, port)
        near_c, far_c = anywhere.coarse, server.coarse
        self.server_coarse = lambda proto, ip, port: near_c(proto, ip, port) if is_local(ip) else far_c(proto, ip, port)
        # new_key puts the address first (or alone, times 2, plus locality): >= 0 exactly when a set holds it.
        if tuple_keys:
            self.special = lambda key: key[0] >= 0  # type: ignore[index]
        else:
            self.special = lambda key: key >= 0  # type: ignore[operator]

    def _note(self, match: xt.Match, sides: dict[str, _Side]) -> bool:
        if isinstance(match, SAFE_MATCHES):
            return True
        if isinstance(match, xt.Addrtype):
            sides["src"].addrtype |= bool(match.src_types)
            sides["dst"].addrtype |= bool(match.dst_types)
            return True
        if isinstance(match, xt.Ports):
            if match.flags is not None:
                return False  # TCP flag tests: later packets differ
            for side, rng in (("src", match.sport), ("dst", match.dport)):
                if rng is not None:
                    sides[side].ranges.add(rng)
            return True
        if isinstance(match, xt.Multiport):
            for side in ("src", "dst"):
                if match.side in (f"--{side[0]}ports", "--ports"):
                    sides[side].ranges.update(match.ranges)
            return True
        if isinstance(match, xt.SetMatch):
            ipset = self.ipsets.get(match.set_name)
            if ipset is None:
                return False  # the walk will say so
            for kind, flag in zip(ipset.kinds, match.flags, strict=False):
                seen = sides[flag]
                if kind == "ip":
                    seen.specials.update(v for v in ipset.values("ip") if isinstance(v, int))
                elif kind == "net":
                    seen.nets.update((n.network, n.mask) for n in ipset.values("net") if isinstance(n, Cidr))
                elif kind == "port":
                    seen.ports.update(v for v in ipset.values("port") if isinstance(v, int))
                else:
                    return False
            return True
        return False  # random, stateful or unknown: walk every packet


# Where a packet can be when the VIP is its destination (before IPVS: the
# first packet's PREROUTING, INPUT up to IPVS, OUTPUT up to IPVS; a later
# packet's PREROUTING and INPUT), and when the real server is (after IPVS:
# LOCAL_OUT, POSTROUTING, the rest of LOCAL_IN).
VIP_ENTRIES = [(t, "PREROUTING") for t in ("raw", "mangle", "nat")] + [
    *((t, "INPUT") for t in INPUT_BEFORE),
    *((t, "OUTPUT") for t in OUTPUT_BEFORE),
]
SERVER_ENTRIES = [(t, "OUTPUT") for t in ("raw", "mangle", "nat", "filter")] + [
    *((t, "POSTROUTING") for t in ("mangle", "nat")),
    *((t, "INPUT") for t in INPUT_AFTER),
]


def _reachable(tables: Mapping[str, Any], entries: Iterable[tuple[str, str]]) -> list[Any]:
    """Every rule of the chains reachable (by jump or goto) from these
    (table, chain) entry points."""
    seen: set[tuple[str, str]] = set()
    todo = [e for e in entries if e[0] in tables and e[1] in tables[e[0]].chains]
    rules = []
    while todo:
        table, name = todo.pop()
        if (table, name) in seen:
            continue
        seen.add((table, name))
        for rule in tables[table].chains[name].rules:
            rules.append(rule)
            if rule.target.kind in (xt.T_JUMP, xt.T_GOTO) and rule.target.name in tables[table].chains:
                todo.append((table, rule.target.name))
    return rules


class _Classifier:
    """The class of (protocol, address, port) as a packet's destination,
    for some rules: what each of their destination tests says of it (the
    CIDRs it is in, its address type and locality, the port's ranges, its
    membership in each set tested on the destination). Two destinations of
    one class walk those rules alike. A set tested on source and destination
    at once gives the exact destination when some member has it (the source
    then decides), else nothing can match.

    Returned as (coarse, full): when the set's source dimensions are all
    addresses, a client whose address no set holds (`special` false for its
    key) cannot match it whatever the destination, so for such clients the
    coarse class, without those exact destinations, is enough: the hairpin
    set makes each endpoint on the node a class of its own only for the
    endpoints themselves as clients."""

    def __init__(self, rules_of: NodeRules, rules: list[Any]) -> None:
        self.is_local = rules_of.nf.is_local
        nets: set[tuple[int, int]] = set()
        ranges: set[tuple[int, int]] = set()
        self.addrtype = False
        self.tests: list[tuple[IPSet, tuple[str, ...], set[tuple[Any, ...]] | None, int]] = []
        seen_sets: set[tuple[str, tuple[str, ...]]] = set()
        for rule in rules:
            if rule.dst is not None:
                nets.add((rule.dst[0], rule.dst[1]))
            for match in rule.matches:
                if isinstance(match, xt.Addrtype) and match.dst_types:
                    self.addrtype = True
                elif isinstance(match, xt.Ports) and match.dport is not None:
                    ranges.add(match.dport)
                elif isinstance(match, xt.Multiport) and match.side in ("--dports", "--ports"):
                    ranges.update(match.ranges)
                elif isinstance(match, xt.SetMatch) and (match.set_name, match.flags) not in seen_sets:
                    seen_sets.add((match.set_name, match.flags))
                    self._note_set(rules_of.ipsets[match.set_name], match.flags)
        self.nets = sorted(nets)
        self.ranges = sorted(ranges)
        self.classify = self._compile()

    def _note_set(self, ipset: IPSet, flags: tuple[str, ...]) -> None:
        kinds = ipset.kinds
        if len(flags) < len(kinds) or "dst" not in flags[: len(kinds)]:
            return  # never matches, or does not look at the destination
        dims = tuple(k for k, f in zip(kinds, flags, strict=False) if f == "dst")
        src_kinds = {k for k, f in zip(kinds, flags, strict=False) if f == "src"}
        positions = tuple(i for i, f in enumerate(flags[: len(kinds)]) if f == "dst")
        # 0: a plain membership; 1: exact destination, needed for any client;
        # 2: exact destination, needed only for clients a set holds.
        mixed = 0 if not src_kinds else 2 if src_kinds == {"ip"} else 1
        projection = ipset.project(positions) if mixed else None
        self.tests.append((ipset, dims, projection, mixed))

    def _compile(self) -> Callable[[int, int, int], tuple[Hashable, Hashable]]:
        """The class function, generated from the tests: a few comparisons
        and set lookups per real server or service, worked out once each."""
        env: dict[str, Any] = {"L": self.is_local, "T": xt.address_type}
        coarse = ["proto", "L(a)"]
        coarse += [f"(a & {mask}) == {net}" for net, mask in self.nets]
        if self.addrtype:
            coarse.append("T(a, L)")
        coarse += [f"{lo} <= port <= {hi}" for lo, hi in self.ranges]
        fine: list[str] = []
        for n, (ipset, dims, projection, mixed) in enumerate(self.tests):
            values = "(" + "".join(("(proto, port)" if kind == "port" else "a") + ", " for kind in dims) + ")"
            if not mixed:
                members = ipset.project(tuple(range(len(dims)))) if "net" not in dims else None
                env[f"S{n}"] = members if members is not None else ipset
                coarse.append(f"{values} in S{n}" if members is not None else f"S{n}.test({values})")
                continue
            # exact destination when some member has it (the source decides), else nothing can match
            env[f"P{n}"] = projection
            expr = values if projection is None else f"({values} if {values} in P{n} else None)"
            (fine if mixed == 2 else coarse).append(expr)
        src = (
            "def classify(proto, a, port):\n"
            f"    coarse = ({', '.join(coarse)},)\n"
            f"    return coarse, (coarse, ({''.join(f + ', ' for f in fine)}))\n"
            "def coarse(proto, a, port):\n"
            f"    return ({', '.join(coarse)},)\n"
        )
        exec(compile(src, "<ipvs class>", "exec"), env)  # generated from the parsed rules, not from text
        self.coarse: Callable[[int, int, int], Hashable] = env["coarse"]
        fn: Callable[[int, int, int], tuple[Hashable, Hashable]] = env["classify"]
        return fn

    def __call__(self, proto: int, addr: int, port: int) -> tuple[Hashable, Hashable]:
        return self.classify(proto, addr, port)


class _Side:
    """What the rules test of one side (source or destination) of a packet."""

    def __init__(self) -> None:
        self.nets: set[tuple[int, int]] = set()  # (network, mask) of -s/-d and of set nets
        self.specials: set[int] = set()  # addresses some set holds
        self.addrtype = False
        self.ranges: set[tuple[int, int]] = set()  # port ranges of --sport/--dport/multiport
        self.ports: set[int] = set()  # ports some set holds


def _addr_key_source(side: _Side, name: str) -> tuple[str, dict[str, Any]]:
    """Source of `def NAME(a)`: the address itself when a set holds it, else
    -1 minus the bits of the CIDRs it is in (and its address type)."""
    env: dict[str, Any] = {"S": frozenset(side.specials), "T": xt.address_type}
    # Bit i for the i-th CIDR; the CIDRs of one mask are disjoint, so one
    # dictionary lookup of the masked address finds the bit of the one that
    # holds it (a client's key is worked out for every new connection).
    by_mask: dict[int, dict[int, int]] = {}
    for i, (net, mask) in enumerate(sorted(side.nets)):
        by_mask.setdefault(mask, {})[net] = 1 << i
    bits = []
    for n, (mask, nets) in enumerate(sorted(by_mask.items())):
        env[f"M{n}"] = nets
        bits.append(f"M{n}.get(a & {mask}, 0)")
    if side.addrtype:
        bits.append(f"(T(a, L) << {len(side.nets)})")
    body = f"    return -1 - ({' | '.join(bits) or '0'})\n"
    if side.specials:
        body = "    if a in S:\n        return a\n" + body
    return f"def {name}(a):\n{body}", env


def _port_key_source(side: _Side, name: str) -> tuple[str, dict[str, Any]] | None:
    if not side.ranges and not side.ports:
        return None  # no rule looks at this port
    env: dict[str, Any] = {"SP": frozenset(side.ports)}
    bits = [f"(({lo} <= p <= {hi}) << {i})" for i, (lo, hi) in enumerate(sorted(side.ranges))]
    body = f"    return -1 - ({' | '.join(bits) or '0'})\n"
    if side.ports:
        body = "    if p in SP:\n        return p\n" + body
    return f"def {name}(p):\n{body}", env


def _new_key_fn(side: _Side, is_local: Callable[[int], bool], iif: bool) -> tuple[Callable[[Packet], Hashable], bool]:
    """key(packet) for a connection's first packet: what of its source
    (address, port), locality and incoming interface the rules can see; and
    whether keys are tuples (else ints: address key times 2 plus locality)."""
    src, env = _addr_key_source(side, "A")
    env["L"] = is_local
    port = _port_key_source(side, "P")
    parts = ["A(p[1])"]
    if port is not None:
        src += port[0]
        env.update(port[1])
        parts.append("P(p[2])")
    parts.append("p[5]")
    if iif:
        parts.append("p[6]")
    if len(parts) > 2:
        src += f"def key(p):\n    return ({', '.join(parts)})\n"
    else:  # the address key inlined: one call per packet
        body = src.split("\n", 1)[1].replace("return a\n", "return a * 2 + p[5]\n")
        body = body.replace("    return -1 - (", "    return (-1 - (").replace(")\n", ")) * 2 + p[5]\n", 1)
        src = "def key(p):\n    a = p[1]\n" + body
    exec(compile(src, "<ipvs new key>", "exec"), env)  # generated from the parsed rules, not from text
    fn: Callable[[Packet], Hashable] = env["key"]
    return fn, len(parts) > 2


def _reply_key_fn(side: _Side, is_local: Callable[[int], bool]) -> Callable[[int, int, bool, bool], Hashable]:
    """key(client, client port, client is the node, masqueraded) for a reply:
    the client is now the destination the rules see."""
    src, env = _addr_key_source(side, "A")
    env["L"] = is_local
    port = _port_key_source(side, "P")
    if port is not None:
        src += port[0]
        env.update(port[1])
        expr = "(A(c), P(cp), local, masq)"
    else:
        expr = "A(c) * 4 + local * 2 + masq"
    src += f"def key(c, cp, local, masq):\n    return {expr}\n"
    exec(compile(src, "<ipvs reply key>", "exec"), env)
    fn: Callable[[int, int, bool, bool], Hashable] = env["key"]
    return fn
