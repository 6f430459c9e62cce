"""The rules kube-proxy's iptables mode writes, from one node's view.

Restated from pkg/proxy/iptables/proxier.go (syncProxyRules,
writeServiceToEndpointRules, iptablesJumpChains): the same chains, names
(sha256 + base32 of `ns/name:port` + protocol, 16 characters; endpoint
chains also hash `ip:port`), comments, probabilities (1/(n-i) with 10
decimals), marks and order of lines, so the text can be loaded with
`iptables-restore` and diffed against a real node.

Each service port renders to a `ServiceRules` fragment, cached while its
view entry is unchanged. A full sync writes every fragment; a partial sync
(what kube-proxy does between full syncs) writes the top-level chains whole
but only the changed services' own chains (KUBE-SVC/SVL/EXT/FW/SEP), plus
`-X` for chains no longer used. Applied with `iptables-restore --noflush`
to the previous rules, it yields exactly the full render (a property test
holds this).

Choices where kube-proxy depends on the host: `--random-fully` on the
MASQUERADE rule (iptables >= 1.6.2, i.e. every current node) is written;
the `-m nfacct` counters of kube-proxy >= 1.29 are written only with
`nfacct=True` (they need the nfnetlink_acct objects, which this kernel lacks,
and kube-proxy leaves them out when it cannot create them); the INVALID drop
in KUBE-FORWARD is written (nf_conntrack_tcp_be_liberal=0, the default).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from netem.addr import int_to_ip
from netem.gcpause import paused_gc
from netem.objects import ProxyConfig
from proxy_modes.view import EndpointInfo, NamespacedName, NodeView, ServicePortInfo, ServicePortName

# pkg/proxy/iptables/proxier.go
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's, duplicated by kube-proxy
LARGE_CLUSTER_ENDPOINTS = 1000  # largeClusterEndpointsThreshold
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-")
LOCALHOST_NODEPORT_COUNTER = "localhost_nps_accepted_pkts"  # metrics.LocalhostNodePortAcceptedNFAcctCounter
INVALID_DROP_COUNTER = "ct_state_invalid_dropped_pkts"  # metrics.IPTablesCTStateInvalidDroppedNFAcctCounter

# iptablesJumpChains (+ iptablesKubeletJumpChains): the rules kube-proxy
# keeps in the built-in chains with `iptables -I` (EnsureRule Prepend).
# (table, chain jumped to, built-in chain, comment, extra match arguments)
JUMP_CHAINS: tuple[tuple[str, str, str, str, str], ...] = (
    ("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", "NEW"),
    ("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", "NEW"),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", ""),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", "NEW"),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", "NEW"),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", "NEW"),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", "NEW"),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", "NEW"),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ""),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ""),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ""),
)
BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}


def _hash16(text: str) -> str:
    """The first 16 base32 characters of sha256(text): exactly its first 80 bits."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    pairs = _B32_PAIRS
    return (
        pairs[n >> 70]
        + pairs[(n >> 60) & 1023]
        + pairs[(n >> 50) & 1023]
        + pairs[(n >> 40) & 1023]
        + pairs[(n >> 30) & 1023]
        + pairs[(n >> 20) & 1023]
        + pairs[(n >> 10) & 1023]
        + pairs[n & 1023]
    )


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32.StdEncoding's alphabet
_B32_PAIRS = [a + b for a in _B32 for b in _B32]


def port_proto_hash(name: str, protocol: str) -> str:
    """portProtoHash: base32(sha256(`ns/name:port` + protocol))[:16]."""
    return _hash16(name + protocol)


def service_chain(name: str, protocol: str) -> str:
    return "KUBE-SVC-" + port_proto_hash(name, protocol)


def local_chain(name: str, protocol: str) -> str:
    return "KUBE-SVL-" + port_proto_hash(name, protocol)


def firewall_chain(name: str, protocol: str) -> str:
    return "KUBE-FW-" + port_proto_hash(name, protocol)


def external_chain(name: str, protocol: str) -> str:
    return "KUBE-EXT-" + port_proto_hash(name, protocol)


def endpoint_chain(name: str, protocol: str, endpoint: str) -> str:
    """servicePortEndpointChainName: the hash also covers `ip:port`."""
    return "KUBE-SEP-" + _hash16(name + protocol + endpoint)


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


def probability(n: int) -> str:
    """computeProbability: fmt.Sprintf("%0.10f", 1.0/float64(n))."""
    return f"{1.0 / n:0.10f}"


@dataclass(frozen=True)
class Settings:
    """What the rules depend on besides the services: the node and KubeProxyConfiguration."""

    node_ip: int
    node_ips: tuple[int, ...]
    mark: str  # the masquerade mark as kube-proxy prints it ("%#08x": 0x00004000)
    masquerade_all: bool
    local_if: str  # the local-traffic detector's "is local" arguments ("" = not implemented)
    local_if_not: str
    localhost_nodeports: bool
    nodeport_ips: tuple[str, ...] | None  # None = every local address (addrtype LOCAL)
    random_fully: bool = True
    nfacct: bool = False
    tcp_be_liberal: bool = False


def settings_for(view: NodeView, random_fully: bool = True, nfacct: bool = False) -> Settings:
    cfg = view.config
    local_if, local_if_not = local_detector(cfg, view)
    nodeport_ips, loopback = _nodeport_addresses(cfg, view)
    return Settings(
        node_ip=view.node_ips[0] if view.node_ips else 0,
        node_ips=view.node_ips,
        # NewProxier: masqueradeMark := fmt.Sprintf("%#08x", 1<<masqueradeBit) (Go pads
        # the digits to 8, then adds 0x).
        mark=f"0x{1 << cfg.masquerade_bit:08x}",
        masquerade_all=cfg.masquerade_all,
        local_if=local_if,
        local_if_not=local_if_not,
        localhost_nodeports=cfg.localhost_node_ports and loopback,
        nodeport_ips=nodeport_ips,
        random_fully=random_fully,
        nfacct=nfacct,
    )


def local_detector(cfg: ProxyConfig, view: NodeView) -> tuple[str, str]:
    """pkg/proxy/util/localdetector.go: the arguments for IfLocal / IfNotLocal."""
    mode = cfg.detect_local_mode
    if mode == "ClusterCIDR" and cfg.cluster_cidrs:
        cidr = str(cfg.cluster_cidrs[0])
        return f"-s {cidr}", f"! -s {cidr}"
    if mode == "NodeCIDR" and view.pod_cidrs:
        cidr = str(view.pod_cidrs[0])
        return f"-s {cidr}", f"! -s {cidr}"
    if mode == "BridgeInterface" and cfg.detect_local_bridge:
        return f"-i {cfg.detect_local_bridge}", f"! -i {cfg.detect_local_bridge}"
    if mode == "InterfaceNamePrefix" and cfg.detect_local_prefix:
        return f"-i {cfg.detect_local_prefix}+", f"! -i {cfg.detect_local_prefix}+"
    return "", ""


def _nodeport_addresses(cfg: ProxyConfig, view: NodeView) -> tuple[tuple[str, ...] | None, bool]:
    """NodePortAddresses (pkg/proxy/util/nodeport_addresses.go): empty means
    every address (and so loopback too); otherwise the node's addresses
    (with 127.0.0.1 on lo) inside the given CIDRs, or its primary IP."""
    from netem.addr import parse_cidr

    if not cfg.node_port_addresses:
        return None, True
    candidates = [*view.node_ips, 0x7F000001]
    chosen: list[int] = []
    loopback = False
    for text in cfg.node_port_addresses:
        if text == "primary":
            picks = list(view.node_ips[:1])
        else:
            cidr = parse_cidr(text, strict=False)
            picks = [ip for ip in candidates if ip in cidr]
            loopback = loopback or 0x7F000001 in cidr
        chosen += [ip for ip in picks if ip not in chosen]
    return tuple(int_to_ip(ip) for ip in chosen), loopback


@dataclass
class ServiceRules:
    """One service port's share of the restore input."""

    filter: list[str] = field(default_factory=list)  # filter rule lines, in write order
    top: list[str] = field(default_factory=list)  # nat KUBE-SERVICES / KUBE-NODEPORTS lines
    chains: list[str] = field(default_factory=list)  # nat chains it owns (SVC/SVL/EXT/FW/SEP)
    nat: list[str] = field(default_factory=list)  # nat rule lines of those chains
    endpoints: int = 0  # all endpoints (large-cluster mode counts them)
    parsed: Any = field(default=None, repr=False, compare=False)  # the mode's parsed form, made once
    stamp: int = 0  # the sync that wrote this fragment's chains
    filter_text: str = ""  # the lines above, joined (each ends with a newline)
    top_text: str = ""
    nat_text: str = ""
    decl_text: str = ""  # the chain declarations of `chains`

    def seal(self) -> ServiceRules:
        """Join the lines once: a sync of 10k services concatenates texts, not lines."""
        self.filter_text = "".join(line + "\n" for line in self.filter)
        self.top_text = "".join(line + "\n" for line in self.top)
        self.nat_text = "".join(line + "\n" for line in self.nat)
        self.decl_text = "".join(f":{c} - [0:0]\n" for c in self.chains)
        return self


def render_service(
    view: NodeView, info: ServicePortInfo, s: Settings, large: bool, endpoints: tuple[EndpointInfo, ...]
) -> ServiceRules:
    """syncProxyRules' loop body for one service port."""
    out = ServiceRules(endpoints=len(endpoints))
    cat = view.categorize(info)
    name = str(info.name)
    proto = info.name.protocol.lower()
    svc_chain, svl_chain = service_chain(name, proto), local_chain(name, proto)
    ext_chain, fw_chain = external_chain(name, proto), firewall_chain(name, proto)
    uses_cluster = bool(cat.cluster) and info.uses_cluster_endpoints
    uses_local = bool(cat.local) and info.uses_local_endpoints
    has_endpoints = cat.has_any
    internal_chain, has_internal = svc_chain, has_endpoints
    if info.internal_policy_local:
        internal_chain = svl_chain
        has_internal = has_internal and bool(cat.local)
    external_policy_chain, has_external = svc_chain, has_endpoints
    if info.external_policy_local:
        external_policy_chain = svl_chain
        has_external = has_external and bool(cat.local)
    uses_ext = has_endpoints and info.externally_accessible
    lb_chain = ext_chain
    uses_fw = has_endpoints and bool(info.lb_vips) and bool(info.lb_source_ranges)
    if uses_fw:
        lb_chain = fw_chain
    if not has_endpoints:
        int_target, int_comment = "REJECT", f'"{name} has no endpoints"'
        ext_target, ext_comment = "REJECT", int_comment
    else:
        int_target, int_comment = "DROP", f'"{name} has no local endpoints"'
        ext_target, ext_comment = "DROP", int_comment
    match = f"-m {proto} -p {proto}"
    cip = int_to_ip(info.cluster_ip)
    port = info.port
    dest = f"{match} -d {cip} --dport {port}"
    filt, top = out.filter, out.top

    # Capture the clusterIP.
    if has_internal:
        top.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} cluster IP" {dest} -j {internal_chain}')
    else:
        filt.append(f"-A {KUBE_SERVICES} -m comment --comment {int_comment} {dest} -j {int_target}")
    # Capture externalIPs.
    for eip in map(int_to_ip, info.external_ips):
        if has_endpoints:
            top.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{name} external IP" {match} -d {eip} --dport {port}'
                f" -j {ext_chain}"
            )
        if not has_external:
            filt.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {match} -d {eip} --dport {port}"
                f" -j {ext_target}"
            )
    # Capture load-balancer ingress.
    for lbip in map(int_to_ip, info.lb_vips):
        if has_endpoints:
            top.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{name} loadbalancer IP" {match} -d {lbip} --dport {port}'
                f" -j {lb_chain}"
            )
        if uses_fw:
            filt.append(
                f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{name} traffic not accepted by {fw_chain}" {match}'
                f" -d {lbip} --dport {port} -j DROP"
            )
    if not has_external:
        for lbip in map(int_to_ip, info.lb_vips):
            filt.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {match} -d {lbip} --dport {port}"
                f" -j {ext_target}"
            )
    # Capture nodeports.
    if info.node_port:
        if has_endpoints:
            if s.localhost_nodeports and s.nfacct:
                top.append(
                    f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} -d 127.0.0.0/8 --dport {info.node_port}"
                    f" -m nfacct --nfacct-name {LOCALHOST_NODEPORT_COUNTER} -j {ext_chain}"
                )
            top.append(
                f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} --dport {info.node_port} -j {ext_chain}"
            )
        if not has_external:
            filt.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} -m addrtype --dst-type LOCAL"
                f" {match} --dport {info.node_port} -j {ext_target}"
            )
    # Capture healthCheckNodePorts.
    if info.health_check_node_port:
        filt.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{name} health check node port" -m tcp -p tcp'
            f" --dport {info.health_check_node_port} -j ACCEPT"
        )

    nat, chains = out.nat, out.chains
    sep_names = {ep.text: endpoint_chain(name, proto, ep.text) for ep in cat.all_reachable}
    # Internal traffic: masquerade what does not come from a local pod.
    if has_internal:
        args = f'-m comment --comment "{name} cluster IP" {match} -d {cip} --dport {port}'
        if s.masquerade_all:
            nat.append(f"-A {internal_chain} {args} -j {KUBE_MARK_MASQ}")
        elif s.local_if_not:
            nat.append(f"-A {internal_chain} {args} {s.local_if_not} -j {KUBE_MARK_MASQ}")
    if uses_ext:
        chains.append(ext_chain)
        if not info.external_policy_local:
            nat.append(
                f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} external destinations"'
                f" -j {KUBE_MARK_MASQ}"
            )
        else:
            if s.local_if:
                nat.append(
                    f'-A {ext_chain} -m comment --comment "pod traffic for {name} external destinations"'
                    f" {s.local_if} -j {svc_chain}"
                )
            nat.append(
                f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {name} external destinations"'
                f" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            )
            nat.append(
                f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {name} external destinations"'
                f" -m addrtype --src-type LOCAL -j {svc_chain}"
            )
        if has_external:
            nat.append(f"-A {ext_chain} -j {external_policy_chain}")
    if uses_fw:
        chains.append(fw_chain)
        head = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
        allow_from_node = False
        for cidr in info.lb_source_ranges:
            nat.append(f"{head} -s {cidr} -j {ext_chain}")
            allow_from_node = allow_from_node or s.node_ip in cidr
        if allow_from_node:
            nat += [f"{head} -s {int_to_ip(lbip)} -j {ext_chain}" for lbip in info.lb_vips]
        nat.append(
            f'-A {fw_chain} -m comment --comment "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"'
        )
    if uses_cluster:
        chains.append(svc_chain)
        _service_to_endpoints(nat, name, proto, info, svc_chain, cat.cluster, large, sep_names)
    if uses_local:
        chains.append(svl_chain)
        _service_to_endpoints(nat, name, proto, info, svl_chain, cat.local, large, sep_names)
    for ep in cat.all_reachable:
        sep = sep_names[ep.text]
        chains.append(sep)
        head = f"-A {sep}" if large else f"-A {sep} -m comment --comment {name}"
        nat.append(f"{head} -s {int_to_ip(ep.ip)} -j {KUBE_MARK_MASQ}")
        affinity = f" -m recent --name {sep} --set" if info.session_affinity else ""
        nat.append(f"{head}{affinity} {match} -j DNAT --to-destination {ep.text}")
    return out.seal()


def _service_to_endpoints(
    nat: list[str],
    name: str,
    proto: str,
    info: ServicePortInfo,
    chain: str,
    endpoints: tuple[EndpointInfo, ...],
    large: bool,
    sep_names: dict[str, str],
) -> None:
    """writeServiceToEndpointRules: affinity checks first, then the random split."""
    seps = [sep_names[ep.text] for ep in endpoints]
    if info.session_affinity:
        for ep, sep in zip(endpoints, seps, strict=True):
            comment = "" if large else f' -m comment --comment "{name} -> {ep.text}"'
            nat.append(
                f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {info.sticky_seconds} --reap -j {sep}"
            )
    n = len(endpoints)
    for i, (ep, sep) in enumerate(zip(endpoints, seps, strict=True)):
        comment = "" if large else f' -m comment --comment "{name} -> {ep.text}"'
        stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        nat.append(f"-A {chain}{comment}{stat} -j {sep}")


@dataclass
class Rendered:
    """A sync's output: the restore input and what the whole ruleset is now."""

    text: str  # what kube-proxy passes to iptables-restore --noflush this sync
    partial: bool
    changed: int  # services whose chains were written
    deleted: list[str]  # stale chains removed by this sync
    rules: int  # rule lines of the whole ruleset
    large: bool
    written: list[tuple[ServicePortName, ServiceRules]]  # the services whose chains were written
    settings: Settings
    fragments: list[ServiceRules]  # every service port's fragment, in order
    stamp: int  # the fragments written by this sync carry it
    positions: list[int] = field(default_factory=list)  # of the written fragments in `fragments` (partial)
    reordered: bool = True  # the list of fragments is not the previous one with some replaced
    _full: str | None = None

    @property
    def full(self) -> str:
        """The restore input of a full sync of the same state (built when asked)."""
        if self._full is None:
            frags = self.fragments
            self._full = self.text if not self.partial and not self.deleted else assemble(self.settings, frags, -1, [])
        return self._full


class Renderer:
    """kube-proxy's iptables proxier for one node, minus the kernel: keeps
    the per-service fragments between syncs so a partial sync renders only
    what changed (and touches nothing per unchanged service but its
    KUBE-SERVICES lines, which kube-proxy rewrites every time)."""

    def __init__(self, random_fully: bool = True, nfacct: bool = False) -> None:
        self.random_fully = random_fully
        self.nfacct = nfacct
        self.fragments: dict[ServicePortName, tuple[object, ServiceRules]] = {}
        self.by_service: dict[NamespacedName, list[ServicePortName]] = {}
        self.order: list[ServicePortName] = []
        self.frag_list: list[ServiceRules] = []  # fragments in `order`
        self.position: dict[ServicePortName, int] = {}
        self.settings: Settings | None = None
        self.large: bool | None = None
        self.total = 0  # endpoints of every service port (large-cluster mode)
        self.count = 0  # rule lines of every fragment
        self.stamp = 0  # syncs so far

    def sync(self, view: NodeView, changed: Iterable[NamespacedName] | None = None) -> Rendered:
        """Render the node's rules. `changed`: the services that changed since
        the last sync (None forces a full sync, as kube-proxy's needFullSync)."""
        with paused_gc():
            settings = settings_for(view, self.random_fully, self.nfacct)
            if changed is None or settings != self.settings:
                return self._full(view, settings)
            return self._partial(view, settings, set(changed))

    def _full(self, view: NodeView, settings: Settings) -> Rendered:
        ports = sorted(view.service_ports(), key=lambda i: i.name)
        total = sum(len(view.endpoints(i.name)) for i in ports)
        large = total > LARGE_CLUSTER_ENDPOINTS
        entries = view.state.entries
        fragments: dict[ServicePortName, tuple[object, ServiceRules]] = {}
        written: list[tuple[ServicePortName, ServiceRules]] = []
        self.stamp += 1
        for info in ports:
            frag = render_service(view, info, settings, large, view.endpoints(info.name))
            frag.stamp = self.stamp
            fragments[info.name] = (entries[info.name.service], frag)
            written.append((info.name, frag))
        old_chains = {c for _, f in self.fragments.values() for c in f.chains}
        new_chains = {c for _, f in written for c in f.chains}
        deleted = sorted(old_chains - new_chains)
        self.fragments, self.order = fragments, [i.name for i in ports]
        self._index()
        self.settings, self.large, self.total = settings, large, total
        self.count = sum(len(f.filter) + len(f.top) + len(f.nat) for _, f in written)
        frags = [f for _, f in written]
        text = assemble(settings, frags, -1, deleted)
        count = self.count + _fixed_rules(settings)
        return Rendered(text, False, len(written), deleted, count, large, written, settings, frags, self.stamp)

    def _index(self) -> None:
        self.frag_list = [self.fragments[spn][1] for spn in self.order]
        self.position = {spn: i for i, spn in enumerate(self.order)}
        self.by_service = {}
        for spn in self.order:
            self.by_service.setdefault(spn.service, []).append(spn)

    def _partial(self, view: NodeView, settings: Settings, changed: set[NamespacedName]) -> Rendered:
        """Re-render the changed services only. Crossing the large-cluster
        threshold is no reason for a full sync (syncProxyRules recomputes
        largeClusterMode every time but only needFullSync rewrites every
        chain): the services written from now on get the new mode's chains,
        the others keep theirs until they change."""
        entries = view.state.entries
        old = {spn: self.fragments[spn] for key in changed for spn in self.by_service.get(key, ())}
        new_ports = [info for key in changed if key in entries for info in entries[key].ports]
        total = self.total - sum(f.endpoints for _, f in old.values())
        total += sum(len(view.endpoints(i.name)) for i in new_ports)
        large = self.large = total > LARGE_CLUSTER_ENDPOINTS
        written: list[tuple[ServicePortName, ServiceRules]] = []
        for spn, (_, frag) in old.items():
            del self.fragments[spn]
            self.count -= len(frag.filter) + len(frag.top) + len(frag.nat)
        self.stamp += 1
        for info in sorted(new_ports, key=lambda i: i.name):
            frag = render_service(view, info, settings, large, view.endpoints(info.name))
            frag.stamp = self.stamp
            self.fragments[info.name] = (entries[info.name.service], frag)
            self.count += len(frag.filter) + len(frag.top) + len(frag.nat)
            written.append((info.name, frag))
        reordered = set(old) != {i.name for i in new_ports}
        if reordered:
            self.order = sorted(self.fragments)
            self._index()
        else:
            for spn, frag in written:
                self.frag_list[self.position[spn]] = frag
        positions = sorted(self.position[spn] for spn, _ in written)
        self.total = total
        old_chains = {c for _, f in old.values() for c in f.chains}
        deleted = sorted(old_chains - {c for _, f in written for c in f.chains})
        frags = list(self.frag_list)
        text = assemble(settings, frags, self.stamp, deleted, positions)
        count = self.count + _fixed_rules(settings)
        return Rendered(
            text, True, len(written), deleted, count, large, written, settings, frags, self.stamp, positions, reordered
        )


def _fixed_rules(s: Settings) -> int:
    return (4 if s.localhost_nodeports else 3) + 4 + (1 if not s.tcp_be_liberal else 0) + 1


FILTER_TOP = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
NAT_TOP = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)


def filter_chains(s: Settings) -> tuple[str, ...]:
    return (*FILTER_TOP, KUBE_FIREWALL) if s.localhost_nodeports else FILTER_TOP


def filter_head(s: Settings) -> list[str]:
    """The filter rules written before the services' (kubelet's localnet guard)."""
    if not s.localhost_nodeports:
        return []
    return [
        f'-A {KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8'
        " ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    ]


def filter_tail(s: Settings) -> list[str]:
    """KUBE-FORWARD, written after the services."""
    mark = s.mark
    out = []
    if not s.tcp_be_liberal:
        counter = f" -m nfacct --nfacct-name {INVALID_DROP_COUNTER}" if s.nfacct else ""
        out.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{counter} -j DROP")
    out.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT'
    )
    out.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    return out


def nat_head(s: Settings) -> list[str]:
    """KUBE-POSTROUTING and KUBE-MARK-MASQ, written before the services."""
    mark = s.mark
    masq = f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    return [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
        masq + (" --random-fully" if s.random_fully else ""),
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
    ]


def nat_tail(s: Settings) -> list[str]:
    """The jump to KUBE-NODEPORTS that must be the last rule of KUBE-SERVICES."""
    comment = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if s.nodeport_ips is None:
        local = "" if s.localhost_nodeports else " ! -d 127.0.0.0/8"
        return [f"-A {KUBE_SERVICES} {comment} -m addrtype --dst-type LOCAL{local} -j {KUBE_NODEPORTS}"]
    return [
        f"-A {KUBE_SERVICES} {comment} -d {ip} -j {KUBE_NODEPORTS}"
        for ip in s.nodeport_ips
        if s.localhost_nodeports or not ip.startswith("127.")
    ]


def assemble(
    s: Settings, frags: list[ServiceRules], stamp: int, deleted: list[str], positions: list[int] | None = None
) -> str:
    """The restore input in syncProxyRules' order: filter chains and rules,
    then nat chains (top-level, those of the fragments written by sync
    `stamp` (-1: all), the deleted ones) and rules (postrouting, per service,
    -X, the NodePorts jump that must be last). `positions`: where the
    written fragments are in `frags`, when known (saves a pass)."""
    every = stamp == -1
    if positions is None:
        positions = [i for i, f in enumerate(frags) if every or f.stamp == stamp]
    head = ["*filter", *(f":{c} - [0:0]" for c in filter_chains(s)), *filter_head(s)]
    out = ["\n".join(head) + "\n"]
    out += [f.filter_text for f in frags]
    out.append("\n".join([*filter_tail(s), "COMMIT", "*nat", *(f":{c} - [0:0]" for c in NAT_TOP)]) + "\n")
    out += [frags[i].decl_text for i in positions]
    out += [f":{c} - [0:0]\n" for c in deleted]
    out.append("\n".join(nat_head(s)) + "\n")
    # Each service's KUBE-SERVICES/NODEPORTS lines, and its own chains' lines if written.
    if every:
        out += [f.top_text + f.nat_text for f in frags]
    else:
        prev = 0
        for pos in positions:
            out += [f.top_text for f in frags[prev : pos + 1]]
            out.append(frags[pos].nat_text)
            prev = pos + 1
        out += [f.top_text for f in frags[prev:]]
    out += [f"-X {c}\n" for c in deleted]
    out.append("\n".join([*nat_tail(s), "COMMIT"]) + "\n")
    return "".join(out)


def jump_rules(table: str) -> list[str]:
    """The rules EnsureRule(Prepend) leaves in the built-in chains, in the
    order they end up (each prepended before the previous; kubelet's
    KUBE-FIREWALL jumps were there first, so they end up last)."""
    out: list[str] = []
    for t, target, builtin, comment, state in reversed(JUMP_CHAINS):
        if t == table:
            extra = "-m conntrack --ctstate NEW " if state else ""
            out.append(f'-A {builtin} {extra}-m comment --comment "{comment}" -j {target}')
    if table == "filter":
        out += [f"-A INPUT -j {KUBE_FIREWALL}", f"-A OUTPUT -j {KUBE_FIREWALL}"]
    # Keep each built-in chain's rules together, in hook order.
    return sorted(out, key=lambda line: BUILTIN[table].index(line.split()[1]))


def node_text(restore_text: str, localhost_nodeports: bool = True) -> str:
    """A full restore input made loadable as-is into an empty namespace: each
    table block gets its built-in chains, then kube-proxy's chains, then the
    jump rules kube-proxy keeps in the built-in chains, then its rules."""
    out: list[str] = []
    table = ""
    jumps_done = True
    for line in restore_text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.append(line)
            out += [f":{c} ACCEPT [0:0]" for c in BUILTIN.get(table, ())]
            if table == "filter" and not localhost_nodeports:
                out.append(f":{KUBE_FIREWALL} - [0:0]")  # kubelet's chain, jumped to below
            jumps_done = False
            continue
        if not jumps_done and not line.startswith(":"):
            out += jump_rules(table)
            jumps_done = True
        out.append(line)
    return "\n".join(out) + "\n"
