"""The `kube-proxy` table kube-proxy's nftables mode programs for one node.

Restated from kubernetes pkg/proxy/nftables/proxier.go (the layout of its
golden test, proxier_test.go `baseRules` / TestOverallNFTablesRules):

- setupNFTables: the table, the base chains (`filter-prerouting-pre-dnat` and
  `filter-output-pre-dnat` at priority dstnat-10 = -110, `filter-input`,
  `filter-forward`, `filter-output` at filter = 0, `nat-prerouting`/`nat-output`
  at dstnat = -100, `nat-postrouting` at srcnat = 100), the jumps from them
  (nftablesJumpChains, `ct state new` for the filter ones), masquerading by
  mark, the `cluster-ips` set with the reject/drop rules of
  `cluster-ips-check`, `nodeport-ips`, and the verdict maps `service-ips`,
  `service-nodeports`, `no-endpoint-services`, `no-endpoint-nodeports`,
  `firewall-ips`.
- syncProxyRules per service port: chains `service-` (Cluster policy),
  `local-` (Local policy), `external-`, `firewall-` named
  servicePortChainNameBase (8 base32 characters of the SHA-256 of
  `ns/name/proto/port`, then that name), `endpoint-`/`affinity-` per endpoint
  (`...__ip/port`), `numgen random mod N vmap` balancing, ClientIP affinity
  with one dynamic timeout set per endpoint, and the map elements that send
  each service address to its chain or to drop / `goto reject-chain`.

`Syncer` keeps the table and which chains, elements and affinity sets each
Service owns, so a partial sync (kube-proxy's `tryPartialSync`) rewrites only
the services that changed and emits the same kind of transaction: changed
chains added and flushed, elements deleted and added, chains no longer used
flushed now and deleted on the next sync (proxier.go: kernels before 6.2 need
the map element gone before the chain can go).

IPv4 only: the view holds IPv4 services (an `ip6 kube-proxy` table would be
the same with `ip6`/`ipv6_addr`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from netem.addr import Cidr, int_to_ip, parse_cidr
from netem.gcpause import paused_gc
from netem.packet import PROTO_NAMES

from ..changes import diff_states
from ..view import EndpointInfo, NamespacedName, NodeView, ServiceEntry, ServicePortInfo, ServicePortName
from .ruleset import BaseHook, Chain, NftSet, Rule, Table, chain_decl, dump_commands, element_text, set_decl
from .syntax import Key, VerdictT, format_key

TABLE = "kube-proxy"
FAMILY = "ip"

# Base chains: (name, type, hook, priority) as nftablesBaseChains.
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# nftablesJumpChains: (destination, source, extra match), in order.
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting-pre-dnat", "ct state new"),
    ("firewall-check", "filter-output-pre-dnat", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output", "ct state new"),
)
VERDICT_MAPS = (
    (
        "no-endpoint-services",
        ("ipv4_addr", "inet_proto", "inet_service"),
        "vmap to drop or reject packets to services with no endpoints",
    ),
    (
        "no-endpoint-nodeports",
        ("inet_proto", "inet_service"),
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
    (
        "firewall-ips",
        ("ipv4_addr", "inet_proto", "inet_service"),
        "destinations that are subject to LoadBalancerSourceRanges",
    ),
    ("service-ips", ("ipv4_addr", "inet_proto", "inet_service"), "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("service-nodeports", ("inet_proto", "inet_service"), "NodePort traffic"),
)
REJECT_CHAIN = "reject-chain"
MARK_MASQ = "mark-for-masquerade"
GOTO_REJECT: VerdictT = ("goto", REJECT_CHAIN)
DROP: VerdictT = ("drop",)

# knftables.NameLengthMax (256) - chainNamePrefixLengthMax (16).
CHAIN_NAME_BASE_MAX = 240


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648, as Go's base32.StdEncoding
_B32_PAIRS = tuple(a + b for a in _B32 for b in _B32)


def hash_and_truncate(name: str) -> str:
    """hashAndTruncate: 8 base32 characters of SHA-256(name), `-`, the name,
    cut to 240 characters with `...` (never for IPv4 service names)."""
    # The first 8 base32 characters encode exactly the first 5 bytes (40 bits),
    # two characters per 10 bits (base64.b32encode, done by table lookup).
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:5], "big")
    out = _B32_PAIRS[n >> 30] + _B32_PAIRS[(n >> 20) & 1023] + _B32_PAIRS[(n >> 10) & 1023] + _B32_PAIRS[n & 1023]
    out += "-" + name
    return out if len(out) <= CHAIN_NAME_BASE_MAX else out[: CHAIN_NAME_BASE_MAX - 3] + "..."


@lru_cache(maxsize=1 << 18)
def service_chain_base(spn: ServicePortName) -> str:
    """servicePortChainNameBase: e.g. `ULMVA6XW-ns1/svc1/tcp/p80`."""
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}")


def endpoint_chain_base(spn: ServicePortName, endpoint: str) -> str:
    """servicePortEndpointChainNameBase: e.g. `5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`."""
    ip, _, port = endpoint.rpartition(":")
    return _hashed(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}__{ip}/{port}")


# Names are hashed once: a resync of an unchanged endpoint costs a dict lookup
# on a string whose hash Python keeps (kube-proxy caches them in endpointInfo).
_hashed = lru_cache(maxsize=1 << 20)(hash_and_truncate)


@lru_cache(maxsize=1 << 16)
def parse_chain_service(chain: str) -> ServicePortName | None:
    """The service port a kube-proxy chain belongs to, from its name
    (`service-HASH-ns/name/proto/port[__ip/port]`), or None."""
    if "/" not in chain:
        return None
    _, sep, rest = chain.partition("-")
    _, sep2, rest = rest.partition("-")
    parts = rest.split("__")[0].split("/")
    if not (sep and sep2) or len(parts) != 4:
        return None
    ns, name, proto, port = parts
    return ServicePortName(ns, name, port, proto.upper())


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What the node and its kube-proxy configuration contribute (everything a
    full sync depends on besides the services)."""

    node_ip: int
    node_ips: tuple[int, ...]
    masq_mark: int
    masquerade_all: bool
    if_local: str  # LocalTrafficDetector.IfLocalNFT ("" = not implemented)
    if_not_local: str
    nodeport_ips: tuple[int, ...] | None  # None: match all local addresses
    service_cidrs: tuple[Cidr, ...]


def node_settings(view: NodeView) -> NodeSettings:
    config = view.config
    if_local = if_not_local = ""
    mode = config.detect_local_mode or "ClusterCIDR"
    if mode == "ClusterCIDR" and config.cluster_cidrs:
        cidr = config.cluster_cidrs[0]
        if_local, if_not_local = f"ip saddr {cidr}", f"ip saddr != {cidr}"
    elif mode == "NodeCIDR" and view.pod_cidrs:
        cidr = view.pod_cidrs[0]
        if_local, if_not_local = f"ip saddr {cidr}", f"ip saddr != {cidr}"
    elif mode == "BridgeInterface" and config.detect_local_bridge:
        # pkg/proxy/util/localdetector.go NewDetectLocalByBridgeInterface:
        # the name unquoted (nft lists it back quoted; the meaning is the same).
        name = config.detect_local_bridge
        if_local, if_not_local = f"iifname {name}", f"iifname != {name}"
    elif mode == "InterfaceNamePrefix" and config.detect_local_prefix:
        name = config.detect_local_prefix  # NewDetectLocalByInterfaceNamePrefix: NAME* (a wildcard)
        if_local, if_not_local = f"iifname {name}*", f"iifname != {name}*"
    return NodeSettings(
        node_ip=view.node_ip,
        node_ips=view.node_ips,
        masq_mark=config.masquerade_mark,
        masquerade_all=config.masquerade_all,
        if_local=if_local,
        if_not_local=if_not_local,
        nodeport_ips=_nodeport_ips(view),
        service_cidrs=view.service_cidrs,
    )


def _nodeport_ips(view: NodeView) -> tuple[int, ...] | None:
    """NodePortAddresses: empty means `primary` in nftables mode
    (cmd/kube-proxy/app/server_linux.go platformApplyDefaults), i.e. the node
    IP as a /32; a 0.0.0.0/0 CIDR (or none of this family) matches every local
    address (MatchAll); otherwise the node IPs inside the CIDRs, loopback excluded."""
    texts = view.config.node_port_addresses or ["primary"]
    cidrs: list[Cidr] = []
    for text in texts:
        if text == "primary":
            cidrs.append(Cidr(view.node_ip, 32))
            continue
        if ":" in text:
            continue
        cidrs.append(parse_cidr(text))
    if not cidrs or any(c.length == 0 for c in cidrs):
        return None
    return tuple(ip for ip in view.node_ips if (ip >> 24) != 127 and any(ip in c for c in cidrs))


def base_table(s: NodeSettings) -> Table:
    """setupNFTables: everything that does not depend on the services."""
    t = Table(FAMILY, TABLE, "rules for kube-proxy")
    for name, ctype, hook, prio in BASE_CHAINS:
        t.chains[name] = Chain(name, BaseHook(ctype, hook, prio))
    for dst, src, extra in JUMP_CHAINS:
        t.chains.setdefault(dst, Chain(dst))
        t.chains[src].rules.append(Rule(f"{extra} jump {dst}".strip()))
    for name in ("services", "cluster-ips-check", "masquerading", MARK_MASQ):
        t.chains.setdefault(name, Chain(name))
    mark = f"0x{s.masq_mark:08x}"  # NewProxier: fmt.Sprintf("%#08x", 1<<masqueradeBit)
    t.chains[MARK_MASQ].rules.append(Rule(f"mark set mark or {mark}"))
    masq = t.chains["masquerading"].rules
    masq += [Rule(f"mark and {mark} == 0 return"), Rule(f"mark set mark xor {mark}"), Rule("masquerade fully-random")]
    t.sets["cluster-ips"] = NftSet("cluster-ips", ("ipv4_addr",), comment="Active ClusterIPs")
    check = t.chains["cluster-ips-check"].rules
    check.append(Rule("ip daddr @cluster-ips reject", "Reject traffic to invalid ports of ClusterIPs"))
    if s.service_cidrs:
        cidrs = ", ".join(str(c) for c in s.service_cidrs)
        check.append(Rule(f"ip daddr {{ {cidrs} }} drop", "Drop traffic to unallocated ClusterIPs"))
    if s.nodeport_ips is not None:
        nodeports = NftSet("nodeport-ips", ("ipv4_addr",), comment="IPs that accept NodePort traffic")
        nodeports.members.update((ip, None) for ip in s.nodeport_ips)
        t.sets["nodeport-ips"] = nodeports
    for name, types, comment in VERDICT_MAPS:
        t.sets[name] = NftSet(name, types, is_map=True, value_type="verdict", comment=comment)
    t.chains[REJECT_CHAIN] = Chain(REJECT_CHAIN, comment="helper for @no-endpoint-services / @no-endpoint-nodeports")
    t.chains[REJECT_CHAIN].rules.append(Rule("reject"))
    dispatch = "ip daddr . meta l4proto . th dport vmap"
    t.chains["service-endpoints-check"].rules.append(Rule(f"{dispatch} @no-endpoint-services"))
    if s.nodeport_ips is None:
        t.chains["nodeport-endpoints-check"].rules.append(
            Rule("ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports")
        )
    else:
        t.chains["nodeport-endpoints-check"].rules.append(
            Rule("ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
        )
    t.chains["firewall-check"].rules.append(Rule(f"{dispatch} @firewall-ips"))
    services = t.chains["services"].rules
    services.append(Rule(f"{dispatch} @service-ips"))
    if s.nodeport_ips is None:
        services.append(
            Rule("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports")
        )
    else:
        services.append(Rule("ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"))
    return t


Element = tuple["VerdictT | None", "str | None"]  # a set or map element's value: (verdict, comment)


@dataclass(slots=True)
class Owned:
    """What one Service contributed to the table."""

    chains: list[str] = field(default_factory=list)
    elements: dict[tuple[str, Key], Element] = field(default_factory=dict)
    affinity_sets: list[str] = field(default_factory=list)


class ServiceWriter:
    """syncProxyRules for the ports of one Service, into a table and an `Owned` record."""

    def __init__(self, table: Table, s: NodeSettings, view: NodeView, owned: Owned) -> None:
        self.t = table
        self.s = s
        self.view = view
        self.owned = owned

    def chain(self, name: str) -> list[Rule]:
        chain = self.t.chains.get(name)
        if chain is None:
            chain = self.t.chains[name] = Chain(name)
        else:
            chain.rules.clear()
        self.owned.chains.append(name)
        return chain.rules

    def element(self, set_name: str, key: Key, verdict: VerdictT | None = None, comment: str | None = None) -> None:
        nset = self.t.sets[set_name]
        if nset.is_map:
            assert verdict is not None
            nset.verdicts[key] = verdict
        else:
            nset.members[key] = None
        if comment is not None:
            nset.comments[key] = comment
        self.owned.elements[(set_name, key)] = (verdict, comment)

    def write_port(self, info: ServicePortInfo) -> None:
        spn = info.name
        proto = PROTO_NAMES.get(info.protocol, str(info.protocol))
        base = service_chain_base(spn)
        cluster_chain, local_chain = "service-" + base, "local-" + base
        external_chain, fw_chain = "external-" + base, "firewall-" + base
        cat = self.view.categorize(info)
        has_any = cat.has_any
        affinity = info.session_affinity
        # IPv4 endpoints: `10.180.0.1:80` names its chain `.../p80__10.180.0.1/80`.
        ep_prefix = f"{spn.namespace}/{spn.name}/{proto}/{spn.port}__"
        ep_chains = {ep.text: "endpoint-" + _hashed(ep_prefix + ep.text.replace(":", "/")) for ep in cat.all_reachable}

        uses_cluster = bool(cat.cluster) and info.uses_cluster_endpoints
        uses_local = bool(cat.local) and info.uses_local_endpoints
        internal_chain, has_internal = cluster_chain, has_any
        if info.internal_policy_local:
            internal_chain, has_internal = local_chain, bool(cat.local)
        external_policy_chain, has_external = cluster_chain, has_any
        if info.external_policy_local:
            external_policy_chain, has_external = local_chain, bool(cat.local)
        uses_external = has_any and info.externally_accessible

        internal_verdict: VerdictT = GOTO_REJECT
        external_verdict: VerdictT = GOTO_REJECT
        if has_any:
            internal_verdict = external_verdict = DROP

        name = str(spn)
        port = info.port
        self.element("cluster-ips", info.cluster_ip)
        key = (info.cluster_ip, info.protocol, port)
        if has_internal:
            self.element("service-ips", key, ("goto", internal_chain))
        else:
            self.element("no-endpoint-services", key, internal_verdict, name)
        for ip in info.external_ips:
            if has_any:
                self.element("service-ips", (ip, info.protocol, port), ("goto", external_chain))
            if not has_external:
                self.element("no-endpoint-services", (ip, info.protocol, port), external_verdict, name)
        uses_fw = bool(info.lb_vips) and bool(info.lb_source_ranges)
        for ip in info.lb_vips:
            if has_any:
                self.element("service-ips", (ip, info.protocol, port), ("goto", external_chain))
            if uses_fw:
                self.element("firewall-ips", (ip, info.protocol, port), ("goto", fw_chain))
        if not has_external:
            for ip in info.lb_vips:
                self.element("no-endpoint-services", (ip, info.protocol, port), external_verdict, name)
        if info.node_port:
            np_key = (info.protocol, info.node_port)
            if has_any:
                self.element("service-nodeports", np_key, ("goto", external_chain))
            if not has_external:
                self.element("no-endpoint-nodeports", np_key, external_verdict, name)

        # Chains, in the order syncProxyRules adds their rules.
        if uses_cluster:
            self.chain(cluster_chain)
        if uses_local:
            self.chain(local_chain)
        if uses_external:
            self.chain(external_chain)
        if uses_fw:
            self.chain(fw_chain)
        chains, owned = self.t.chains, self.owned.chains
        for chain in ep_chains.values():
            if chain in chains:
                chains[chain].rules.clear()
            else:
                chains[chain] = Chain(chain, None, None, [])
            owned.append(chain)
        s = self.s
        if has_internal:
            masq = f"ip daddr {int_to_ip(info.cluster_ip)}"
            if s.masquerade_all:
                self.t.chains[internal_chain].rules.append(Rule(f"{masq} {proto} dport {port} jump {MARK_MASQ}"))
            elif s.if_not_local:
                self.t.chains[internal_chain].rules.append(Rule(f"{masq} {s.if_not_local} jump {MARK_MASQ}"))
        if uses_external:
            ext = self.t.chains[external_chain].rules
            if not info.external_policy_local:
                ext.append(Rule(f"jump {MARK_MASQ}"))
            else:
                if s.if_local:
                    ext.append(Rule(f"{s.if_local} goto {cluster_chain}", "short-circuit pod traffic"))
                ext.append(Rule(f"fib saddr type local jump {MARK_MASQ}", "masquerade local traffic"))
                ext.append(Rule(f"fib saddr type local goto {cluster_chain}", "short-circuit local traffic"))
            if has_external:
                ext.append(Rule(f"goto {external_policy_chain}"))
        if uses_fw:
            sources = [str(c) for c in info.lb_source_ranges]
            if any(s.node_ip in c for c in info.lb_source_ranges):
                sources += [int_to_ip(ip) for ip in info.lb_vips]
            self.t.chains[fw_chain].rules.append(Rule(f"ip saddr != {{ {' , '.join(sources)} }} drop"))
        if affinity:
            for ep in cat.all_reachable:
                set_name = "affinity-" + ep_chains[ep.text][len("endpoint-") :]
                # syncProxyRules adds the set on every sync of the Service:
                # `add set` over an existing one keeps its members (the kernel's
                # affinity state) and takes the timeout given.
                nset = self.t.sets.get(set_name)
                if nset is None:
                    self.t.sets[set_name] = NftSet(
                        set_name, ("ipv4_addr",), flags=("dynamic", "timeout"), timeout=float(info.sticky_seconds)
                    )
                else:
                    nset.timeout = float(info.sticky_seconds)
                self.owned.affinity_sets.append(set_name)
        if uses_cluster:
            self.endpoint_rules(cluster_chain, cat.cluster, ep_chains, affinity)
        if uses_local:
            self.endpoint_rules(local_chain, cat.local, ep_chains, affinity)
        dnat = f"meta l4proto {proto} dnat to "
        for ep in cat.all_reachable:
            text = ep.text
            chain = ep_chains[text]
            rules = chains[chain].rules
            rules.append(Rule(f"ip saddr {text[: text.rindex(':')]} jump {MARK_MASQ}"))
            if affinity:
                rules.append(Rule(f"update @affinity-{chain[9:]} {{ ip saddr }}"))  # 9: len("endpoint-")
            rules.append(Rule(dnat + text))

    def endpoint_rules(
        self, chain: str, endpoints: tuple[EndpointInfo, ...], ep_chains: dict[str, str], affinity: bool
    ) -> None:
        """writeServiceToEndpointRules: affinity jumps, then the numgen vmap."""
        rules = self.t.chains[chain].rules
        if affinity:
            for ep in endpoints:
                target = ep_chains[ep.text]
                rules.append(Rule(f"ip saddr @affinity-{target[len('endpoint-') :]} goto {target}"))
        elements = " , ".join(f"{n} : goto {ep_chains[ep.text]}" for n, ep in enumerate(endpoints))
        rules.append(Rule(f"numgen random mod {len(endpoints)} vmap {{ {elements} }}"))


def write_service(table: Table, s: NodeSettings, view: NodeView, entry: ServiceEntry) -> Owned:
    owned = Owned()
    writer = ServiceWriter(table, s, view, owned)
    for info in entry.ports:
        writer.write_port(info)
    return owned


@dataclass(slots=True)
class SyncResult:
    text: str  # what is sent to `nft -f`: the whole table, or a partial transaction
    partial: bool
    changed: int


class Syncer:
    """The table across syncs: full the first time (or when the node changed),
    partial afterwards."""

    def __init__(self) -> None:
        self.table = Table(FAMILY, TABLE)
        self.settings: NodeSettings | None = None
        self.view: NodeView | None = None
        self.owned: dict[NamespacedName, Owned] = {}
        # Who wrote each set or map element: one Service, or a list when
        # Services share it (nothing in the API forbids two Services the same
        # externalIP and port), so an element goes only when nobody claims it.
        self.owners: dict[tuple[str, Key], NamespacedName | list[NamespacedName]] = {}
        self.stale_chains: set[str] = set()
        self.rules = 0  # rules in the table, kept up to date by partial syncs

    def sync(self, view: NodeView) -> SyncResult:
        settings = node_settings(view)
        if self.view is None or settings != self.settings or not _same_node(self.view, view):
            return self.full(view, settings)
        return self.partial(view)

    def full(self, view: NodeView, settings: NodeSettings) -> SyncResult:
        # Hundreds of thousands of small objects and no cycles: the collector
        # would only slow the build down (netem.gcpause).
        with paused_gc():
            old = self.table if self.view is not None else None
            table = base_table(settings)
            if old is not None:
                # Affinity sets are only `add`ed by a sync: the kernel keeps their members.
                table.sets.update((n, s) for n, s in old.sets.items() if n.startswith("affinity-"))
            owned: dict[NamespacedName, Owned] = {}
            for name, entry in view.state.entries.items():
                owned[name] = write_service(table, settings, view, entry)
            preamble, stale = self._replacing(old, table, owned)
            self.table, self.settings, self.view, self.owned = table, settings, view, owned
            self.owners = {}
            for name, o in owned.items():
                self._claim(name, o)
            self.stale_chains = stale
            self.rules = table.rule_count()
            text = preamble + dump_commands(table)
        return SyncResult(text, False, len(owned))

    def _replacing(self, old: Table | None, new: Table, owned: dict[NamespacedName, Owned]) -> tuple[str, set[str]]:
        """A full sync over an existing table (the node or its configuration
        changed): what kube-proxy's full transaction does besides adding,
        i.e. every old chain and non-dynamic set or map flushed, affinity sets
        no longer used deleted, and old service chains kept empty until the
        next sync deletes them. Nothing for the first sync."""
        if old is None:
            return "", set()
        prefix = f"{FAMILY} {TABLE}"
        out = [f"flush chain {prefix} {name}" for name in sorted(old.chains)]
        used = {name for o in owned.values() for name in o.affinity_sets}
        for name, nset in sorted(old.sets.items()):
            kind = "map" if nset.is_map else "set"
            if name.startswith("affinity-"):
                if name not in used:
                    del new.sets[name]
                    out.append(f"delete set {prefix} {name}")
            elif name in new.sets:
                out.append(f"flush {kind} {prefix} {name}")
            else:  # e.g. nodeport-ips when NodePorts now match every local address
                out.append(f"delete {kind} {prefix} {name}")
        stale = {name for name in old.chains if name not in new.chains}
        for name in stale:
            new.chains[name] = Chain(name)
        return "".join(line + "\n" for line in out), stale

    def partial(self, view: NodeView) -> SyncResult:
        assert self.view is not None and self.settings is not None
        t = self.table
        prefix = f"{FAMILY} {TABLE}"
        out: list[str] = []
        # Chains flushed by the previous sync are unreferenced now: delete them.
        for chain in sorted(self.stale_chains):
            if chain in t.chains and not t.chains[chain].rules:
                del t.chains[chain]
                out.append(f"delete chain {prefix} {chain}")
        self.stale_chains = set()
        changes = diff_states(self.view.state, view.state)
        # What the kernel holds for every key the changes touch (None: nothing),
        # and what the changed Services write now.
        before: dict[tuple[str, Key], Element | None] = {}
        after: dict[tuple[str, Key], Element] = {}
        for name, (_, entry) in sorted(changes.items()):
            old = self.owned.pop(name, Owned())
            for k, element in old.elements.items():
                before.setdefault(k, self._held(k, element))
            self._release(name, old)
            self.rules -= sum(len(t.chains[c].rules) for c in old.chains if c in t.chains)
            new = Owned() if entry is None else write_service(t, self.settings, view, entry)
            self.rules += sum(len(t.chains[c].rules) for c in new.chains)
            for k in new.elements:
                if k not in before:
                    before[k] = self._holder_element(k)
            if entry is not None:
                self.owned[name] = new
                self._claim(name, new)
            after.update(new.elements)
            out += self._emit_service(old, new)
            for chain in old.chains:
                if chain not in new.chains and chain in t.chains:
                    t.chains[chain].rules.clear()
                    self.stale_chains.add(chain)
                    out.append(f"flush chain {prefix} {chain}")
            for set_name in old.affinity_sets:
                if set_name not in new.affinity_sets and set_name in t.sets:
                    del t.sets[set_name]
                    out.append(f"delete set {prefix} {set_name}")
        self.view = view
        return SyncResult("".join(line + "\n" for line in out + self._elements(before, after)), True, len(changes))

    def _held(self, key: tuple[str, Key], element: Element) -> Element:
        """The element the kernel holds for a key (a shared key holds the
        value of whichever owner wrote it last)."""
        nset = self.table.sets[key[0]]
        if not nset.is_map:
            return element
        return (nset.verdicts.get(key[1]), nset.comments.get(key[1]))

    def _holder_element(self, key: tuple[str, Key]) -> Element | None:
        """The element another Service holds for a key (None: nobody)."""
        owner = self.owners.get(key)
        if owner is None:
            return None
        return self.owned[min(owner) if isinstance(owner, list) else owner].elements[key]

    def _elements(
        self, before: dict[tuple[str, Key], Element | None], after: dict[tuple[str, Key], Element]
    ) -> list[str]:
        """The element part of a partial transaction, as ensureElem and
        cleanupLeftoverKeys write it: a map element whose value changes is
        deleted before it is added again (also when it passes from one
        Service to another), and a key nobody claims any more is deleted at
        the end. A key still claimed by a Service that did not change keeps
        that Service's element."""
        t = self.table
        prefix = f"{FAMILY} {TABLE}"
        for k in before:
            if k not in after:
                kept = self._holder_element(k)
                if kept is not None:
                    after[k] = kept
        out: list[str] = []
        leftovers: list[str] = []
        for (set_name, key), element in after.items():
            nset = t.sets[set_name]
            verdict, comment = element
            if nset.is_map:
                nset.verdicts[key] = verdict  # type: ignore[assignment]
            else:
                nset.members[key] = None
            if comment is not None:
                nset.comments[key] = comment
            held = before.get((set_name, key))
            if held == element or (held is not None and not nset.is_map):
                continue
            if held is not None:
                out.append(f"delete element {prefix} {set_name} {{ {format_key(nset.fields, key)} }}")
            out.append(f"add element {prefix} {set_name} {{ {element_text(nset, key)} }}")
        for set_name, key in before:
            if (set_name, key) in after:
                continue
            nset = t.sets[set_name]
            (nset.verdicts if nset.is_map else nset.members).pop(key, None)
            nset.comments.pop(key, None)
            leftovers.append(f"delete element {prefix} {set_name} {{ {format_key(nset.fields, key)} }}")
        return out + leftovers

    def _claim(self, name: NamespacedName, owned: Owned) -> None:
        owners = self.owners
        for k in owned.elements:
            held = owners.get(k)
            if held is None:
                owners[k] = name
            elif isinstance(held, list):
                held.append(name)
            else:
                owners[k] = [held, name]

    def _release(self, name: NamespacedName, owned: Owned) -> None:
        owners = self.owners
        for k in owned.elements:
            held = owners.get(k)
            if held == name:
                del owners[k]
            elif isinstance(held, list) and name in held:
                held.remove(name)
                if len(held) == 1:
                    owners[k] = held[0]

    def _emit_service(self, old: Owned, new: Owned) -> list[str]:
        t = self.table
        prefix = f"{FAMILY} {TABLE}"
        out: list[str] = []
        for set_name in new.affinity_sets:
            out.append(set_decl(t, t.sets[set_name]))
        # Every chain exists before a rule refers to it (syncProxyRules
        # ensures the endpoint chains first, then writes the rules).
        for chain in new.chains:
            out.append(chain_decl(t, t.chains[chain]))
            out.append(f"flush chain {prefix} {chain}")
        for chain in new.chains:
            out += [f"add rule {prefix} {chain} {rule.text()}" for rule in t.chains[chain].rules]
        return out


def _same_node(a: NodeView, b: NodeView) -> bool:
    return (a.node_name, a.node_ips, a.zone, a.pod_cidrs, a.config) == (
        b.node_name,
        b.node_ips,
        b.zone,
        b.pod_cidrs,
        b.config,
    )
