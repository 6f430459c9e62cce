"""The iptables proxy mode: kube-proxy's rules (`rules.py`) loaded into the
netfilter engine (`engine.py`), behind the protocol every mode shares.

`sync()` renders what kube-proxy would write and applies it the way
kube-proxy does (`iptables-restore --noflush`, partial after the first
sync), so the engine holds exactly what the node's kernel would; then
`route()`/`trace()` send packets through it. `load_capture()` swaps the
rendered rules for a real node's `iptables-save` (`kubenetem trace
--iptables-save FILE`). After a sync, UDP conntrack entries that point at
an endpoint that is gone are deleted, as kube-proxy's conntrack cleanup does
(pkg/proxy/conntrack/cleanup.go), so UDP flows move; TCP ones keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain as chain_lists
from typing import TYPE_CHECKING, Any

from netem.addr import int_to_ip
from netem.conntrack import Conntrack, kube_proxy_timeouts
from netem.errors import RulesetError, UsageError, Where
from netem.gcpause import paused_gc
from netem.packet import SCTP, UDP, Packet
from proxy_modes.base import Decision, Ruleset, Trace
from proxy_modes.netfilter import cost, syntax, xt
from proxy_modes.netfilter.engine import Netfilter
from proxy_modes.netfilter.syntax import Chain, Rule, RuleCache, Tables
from proxy_modes.view import NodeView, ProxyState, ServicePortName

from . import rules

if TYPE_CHECKING:
    import random


class IptablesMode:
    name = "iptables"

    def __init__(self, rng: random.Random, random_fully: bool = True, nfacct: bool = False) -> None:
        self.rng = rng
        self.renderer = rules.Renderer(random_fully, nfacct)
        self.cache = RuleCache()
        self.nf: Netfilter | None = None
        self.state: ProxyState | None = None
        self.node: tuple[str, tuple[int, ...]] | None = None
        self.last: rules.Rendered | None = None
        self.captured: str | None = None
        self.labels: dict[str, object] = {}
        # route() is the engine's own (bound when there are rules): one call less per packet.
        self.route: Callable[[Packet, float], Decision] = self._no_rules
        # The fragments' top-level rules, aligned with the renderer's fragments (partial syncs).
        self._services: list[list[Rule]] = []
        self._nodeports: list[list[Rule]] = []
        self._filter: dict[str, dict[int, list[Rule]]] = {}

    # --- rules ------------------------------------------------------------

    def sync(self, view: NodeView) -> Ruleset:
        with paused_gc():  # millions of small objects and no cycles (netem/gcpause.py)
            return self._sync(view)

    def _sync(self, view: NodeView) -> Ruleset:
        node = (view.node_name, view.node_ips)
        fresh = self.nf is None or self.captured is not None or node != self.node
        changed = None if fresh or self.state is None else changed_services(self.state, view.state)
        rendered = self.renderer.sync(view, None if changed is None else changed.keys())
        self._label(rendered)
        if fresh:
            text = rules.node_text(rendered.full, self._localhost())
            tables = syntax.restore(None, text, "kube-proxy", cache=self.cache)
            timeouts = kube_proxy_timeouts(view.config)
            self.nf = Netfilter(tables, view.node_ips, rng=self.rng, conntrack=Conntrack(timeouts), labels=self.labels)
        elif rendered.partial:
            self._apply_partial(rendered)
            if changed:
                self._clean_udp(view, set(changed))
        else:
            assert self.nf is not None
            self.nf.restore(rendered.text, noflush=True, filename="kube-proxy", cache=self.cache)
            # The fragments' top-level rules kept for partial syncs describe the
            # old table: the next partial sync rebuilds them from the new one.
            self._services, self._nodeports, self._filter = [], [], {}
        self.state, self.node, self.last, self.captured = view.state, node, rendered, None
        assert self.nf is not None
        self.route = self.nf.route
        return Ruleset(rendered.text, rendered.rules, rendered.partial, rendered.changed)

    def _apply_partial(self, rendered: rules.Rendered) -> None:
        """What `iptables-restore --noflush` of `rendered.text` does to the
        tables, built from the fragments' parsed rules instead of reparsing
        the text: the top-level chains are rebuilt whole (cheap lists of
        shared rules), the written services' chains replaced, the stale ones
        removed. (The partial-sync property test holds this to a full render
        and the kernel test to the kernel's own restore.)"""
        nf = self.nf
        assert nf is not None
        s = rendered.settings
        parse = self.cache.get
        filt: dict[str, list[Rule]] = {c: [] for c in rules.filter_chains(s)}
        nat: dict[str, list[Rule]] = {c: [] for c in rules.NAT_TOP}
        for table, lines in ((filt, rules.filter_head(s)), (nat, rules.nat_head(s))):
            for chain, rule in _parse_lines(lines, parse):
                table[chain].append(rule)
        frags = rendered.fragments
        if rendered.reordered or len(self._services) != len(frags):
            self._services, self._nodeports, self._filter = [], [], {}
            for pos, frag in enumerate(frags):
                self._place(pos, _parsed(frag, parse))
        else:
            for pos in rendered.positions:
                self._place(pos, _parsed(frags[pos], parse))
        nat[rules.KUBE_SERVICES] += chain_lists.from_iterable(self._services)
        nat[rules.KUBE_NODEPORTS] += chain_lists.from_iterable(self._nodeports)
        for chain, by_pos in self._filter.items():
            filt[chain] += chain_lists.from_iterable(by_pos[p] for p in sorted(by_pos))
        owned: dict[str, list[Rule]] = {}
        for pos in rendered.positions:
            owned.update(frags[pos].parsed[3])
        for table, lines in ((filt, rules.filter_tail(s)), (nat, rules.nat_tail(s))):
            for chain, rule in _parse_lines(lines, parse):
                table[chain].append(rule)
        # The engine's tables are this mode's alone: change them in place.
        tables = nf.tables
        touched: dict[str, set[str]] = {"filter": set(filt), "nat": set(nat) | set(owned) | set(rendered.deleted)}
        for name, new_chains in (("filter", filt), ("nat", {**nat, **owned})):
            chains = tables[name].chains
            for chain, rule_list in new_chains.items():
                chains[chain] = Chain(chain, None, rule_list)
        for chain in rendered.deleted:
            tables["nat"].chains.pop(chain, None)
        nf.load(tables, touched)

    def _place(self, pos: int, parsed: tuple[Any, ...]) -> None:
        """Keep a fragment's top-level rules at its position (lists aligned with the fragments)."""
        if pos == len(self._services):
            self._services.append(parsed[1])
            self._nodeports.append(parsed[2])
        else:
            self._services[pos] = parsed[1]
            self._nodeports[pos] = parsed[2]
        for by_pos in self._filter.values():
            by_pos.pop(pos, None)
        for chain, rule_list in parsed[0].items():
            self._filter.setdefault(chain, {})[pos] = rule_list

    def share_with(self, peer: object) -> None:
        """Parse rules into `peer`'s cache (another node's iptables mode of
        the same cluster, before the first sync): the nodes render mostly
        the same rule texts, so they then hold the same rule objects, and
        each service's compiled functions are written once and only bound
        per node (compile._source_for)."""
        if isinstance(peer, IptablesMode):
            self.cache = peer.cache

    def _localhost(self) -> bool:
        settings = self.renderer.settings
        return settings is not None and settings.localhost_nodeports

    def _label(self, rendered: rules.Rendered) -> None:
        """Chain -> service port, so a decision can name its service."""
        if not rendered.partial:
            self.labels.clear()
        for name in rendered.deleted:
            self.labels.pop(name, None)
        for spn, frag in rendered.written:
            for chain in frag.chains:
                self.labels[chain] = spn

    def _clean_udp(self, view: NodeView, changed: set[tuple[str, str]]) -> None:
        """pkg/proxy/conntrack/cleanup.go: for the services that changed,
        delete UDP/SCTP entries whose service address is still served but
        whose endpoint no longer serves it."""
        assert self.nf is not None
        serving: dict[tuple[int, int, int], set[tuple[int, int]]] = {}
        entries = view.state.entries
        for info in (i for key in changed if key in entries for i in entries[key].ports):
            if info.protocol not in (UDP, SCTP):
                continue
            eps = {(ep.ip, ep.port) for ep in view.categorize(info).all_reachable}
            for ip in (info.cluster_ip, *info.external_ips, *info.lb_vips):
                serving[(info.protocol, ip, info.port)] = eps
        if not serving:
            return
        ct = self.nf.conntrack
        for entry in ct.entries():
            proto, _, _, dst, dport = entry.orig
            want = serving.get((proto, dst, dport))
            if want is not None and entry.dnat is not None and entry.dnat not in want:
                ct.delete(entry)

    def modeled_latency_us(self, decision: Decision) -> float:
        """What the kernel spends walking the rules this decision walked
        (the calibrated per-rule cost of iptables-nft on this machine)."""
        return cost.DEFAULT.walk_us(decision.rules)

    def load_capture(self, text: str, local_ips: list[int], filename: str) -> None:
        """Trace through a real node's `iptables-save` instead of rendered rules."""
        with paused_gc():
            tables = syntax.parse_save(text, filename)
        for table in tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    for match in rule.matches:
                        if isinstance(match, xt.SetMatch):
                            raise RulesetError(
                                f"rule uses ipset {match.set_name!r}, whose members a captured iptables-save"
                                " does not contain (for IPVS nodes use --ipvsadm-save)",
                                Where(file=f"{filename}: line {rule.line}"),
                            )
        if not local_ips:
            raise UsageError("--iptables-save needs --local-ip IP (the node's address; repeatable)")
        self.labels = capture_labels(tables)
        self.nf = Netfilter(tables, local_ips, rng=self.rng, labels=self.labels)
        self.route = self.nf.route
        self.captured = text
        self.state = None

    # --- packets ------------------------------------------------------------

    def _engine(self) -> Netfilter:
        if self.nf is None:
            raise UsageError("the iptables mode has no rules yet: sync a view or load a capture first")
        return self.nf

    def _no_rules(self, packet: Packet, now: float) -> Decision:
        raise UsageError("the iptables mode has no rules yet: sync a view or load a capture first")

    def trace(self, packet: Packet, now: float) -> Trace:
        seen = self._engine().trace(packet, now)
        reach = sorted(seen.reach, key=lambda r: (r.ip, r.port))
        affinity = None
        if seen.affinity is not None and seen.decision.endpoint is not None:
            affinity = f"hit: {seen.decision.endpoint_text()} (recent list {seen.affinity})"
        return Trace(self.name, packet, seen.decision, reach, seen.steps, affinity)

    # --- output ---------------------------------------------------------------

    def dump(self) -> str:
        if self.captured is not None:
            return self.captured
        if self.last is None:
            raise UsageError("the iptables mode has no rules yet")
        return rules.node_text(self.last.full, self._localhost())

    def dump_with(
        self, show: str | None = None, fmt: str | None = None, stats: bool = False, rate: bool = False
    ) -> str:
        if show is not None or stats or rate:
            raise UsageError("the iptables mode has no --show, --stats or --rate (try --format restore or save)")
        if fmt in (None, "node"):
            return self.dump()
        if fmt == "restore":
            if self.last is None:
                raise UsageError("the iptables mode has no rendered rules (a capture was loaded)")
            return self.last.full
        if fmt == "save":
            return syntax.save(self._engine().tables)
        raise UsageError(f"unknown --format {fmt!r} for the iptables mode (node, restore, save)")

    @property
    def tables(self) -> Tables:
        return self._engine().tables


def changed_services(old: ProxyState, new: ProxyState) -> dict[tuple[str, str], None]:
    """proxy_modes.changes.diff_states' answer (which services changed),
    found with the identity test done in bulk: a sync of 10k services
    compares 10k entries every time."""
    old_entries, new_entries = old.entries, new.entries
    get = old_entries.get
    suspects = [name for name, entry in new_entries.items() if get(name) is not entry]
    changed = {name: None for name in suspects if old_entries.get(name) != new_entries[name]}
    if len(old_entries) != len(new_entries) or suspects:
        changed.update((name, None) for name in old_entries.keys() - new_entries.keys())
    return changed


def _parse_lines(lines: list[str], parse: Callable[[str, int], Rule]) -> list[tuple[str, Rule]]:
    out = []
    for line in lines:
        _, chain, spec = line.split(" ", 2)
        out.append((chain, parse(spec, 0)))
    return out


def _parsed(frag: rules.ServiceRules, parse: Callable[[str, int], Rule]) -> tuple[Any, ...]:
    """A fragment's lines as rules, once: its filter rules by chain, its
    KUBE-SERVICES and KUBE-NODEPORTS rules, and its own chains' rules."""
    own: dict[str, list[Rule]] = {c: [] for c in frag.chains}
    for chain, rule in _parse_lines(frag.nat, parse):
        own[chain].append(rule)
    filt: dict[str, list[Rule]] = {}
    for chain, rule in _parse_lines(frag.filter, parse):
        filt.setdefault(chain, []).append(rule)
    top = _parse_lines(frag.top, parse)
    services = [r for c, r in top if c == rules.KUBE_SERVICES]
    nodeports = [r for c, r in top if c == rules.KUBE_NODEPORTS]
    frag.parsed = (filt, services, nodeports, own)
    return frag.parsed


def capture_labels(tables: Tables) -> dict[str, object]:
    """Service names for a captured ruleset, from kube-proxy's comments: a
    rule `--comment "ns/name:port cluster IP" ... -j KUBE-SVC-...` names the
    chain it jumps to, and so do its KUBE-NODEPORTS and endpoint rules."""
    labels: dict[str, object] = {}
    nat = tables.get("nat")
    if nat is None:
        return labels
    suffixes = (" cluster IP", " external IP", " loadbalancer IP")
    for chain in nat.chains.values():
        for rule in chain.rules:
            target = rule.target.name
            if (
                rule.comment is None
                or rule.target.kind not in (xt.T_JUMP, xt.T_GOTO)
                or not rules.is_service_chain(target)
            ):
                continue
            name = rule.comment
            for suffix in suffixes:
                name = name.removesuffix(suffix)
            if chain.name in (rules.KUBE_SERVICES, rules.KUBE_NODEPORTS):
                labels.setdefault(target, name)
            elif " -> " in name:
                labels.setdefault(target, name.split(" -> ")[0])
    return labels


def describe_endpoint(ep: tuple[int, int]) -> str:
    return f"{int_to_ip(ep[0])}:{ep[1]}"


__all__ = ["IptablesMode", "ServicePortName"]
