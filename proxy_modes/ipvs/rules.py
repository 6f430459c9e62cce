"""What kube-proxy's IPVS mode programs on a node, from the proxy view.

Restated from pkg/proxy/ipvs/proxier.go (syncProxyRules, syncService,
syncEndpoint, writeIptablesRules):

- a virtual server per ClusterIP, externalIP and LoadBalancer ingress IP,
  and one per node IP for a NodePort, each with the configured scheduler
  (default rr), the persistent flag and timeout for ClientIP affinity, and
  the mh port flag (FlagSourceHash, 0x10) when the scheduler is mh;
- real servers with weight 1, masquerading (NAT) forwarding; the endpoints
  are the categorised Cluster ones, or the Local ones for
  externalTrafficPolicy/internalTrafficPolicy Local, falling back to the
  Cluster ones when the node has no local endpoint (kubernetes#97081);
- the ClusterIPs, externalIPs and LB IPs not already on another interface
  bound to the dummy device kube-ipvs0 (the KUBE-IPVS-IPS set);
- the ipsets (`IPSet`: name, type, comment, entries), and the few iptables
  rules that still match them (`iptables_restore()`), in
  iptables-restore's input format.

Go iterates maps in random order where kube-proxy walks services and
endpoints; we walk them in the view's sorted order so output is stable.
The real servers of one service are added in endpoint order, so the kernel
list (newest first) holds them in reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netem.addr import Cidr, int_to_ip
from netem.packet import SCTP, TCP, UDP, proto_name

from ..view import EndpointInfo, NodeView, ServicePortInfo, ServicePortName
from .schedulers import F_PERSISTENT, F_SCHED_PORT

DUMMY_DEVICE = "kube-ipvs0"

# (name, ipset type, comment) in ipsetInfo order (proxier.go, ipset.go).
IPSET_INFO: tuple[tuple[str, str, str], ...] = (
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    ("KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    (
        "KUBE-EXTERNAL-IP-LOCAL",
        "hash:ip,port",
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    (
        "KUBE-LOAD-BALANCER-FW",
        "hash:ip,port",
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    (
        "KUBE-LOAD-BALANCER-LOCAL",
        "hash:ip,port",
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    (
        "KUBE-LOAD-BALANCER-SOURCE-IP",
        "hash:ip,port,ip",
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    (
        "KUBE-LOAD-BALANCER-SOURCE-CIDR",
        "hash:ip,port,net",
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    (
        "KUBE-NODE-PORT-SCTP-HASH",
        "hash:ip,port",
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    (
        "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
        "hash:ip,port",
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"),
    ("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
)

# ipsetWithIptablesChain: (set, table, from chain, to, match, protocol).
IPSET_CHAINS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
)

# iptablesJumpChain and iptablesChains.
JUMPS: tuple[tuple[str, str, str, str], ...] = (
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
)
CHAINS: tuple[tuple[str, str], ...] = (
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-NODE-PORT"),
    ("nat", "KUBE-LOAD-BALANCER"),
    ("nat", "KUBE-MARK-MASQ"),
    ("filter", "KUBE-FORWARD"),
    ("filter", "KUBE-NODE-PORT"),
    ("filter", "KUBE-PROXY-FIREWALL"),
    ("filter", "KUBE-SOURCE-RANGES-FIREWALL"),
    ("filter", "KUBE-IPVS-FILTER"),
    ("filter", "KUBE-IPVS-OUT-FILTER"),
)

# Where a virtual server's address comes from (decides masquerading).
CLUSTER, EXTERNAL, LOADBALANCER, NODEPORT = "ClusterIP", "externalIP", "LoadBalancer", "NodePort"


@dataclass
class VirtualServerSpec:
    """One virtual server as kube-proxy asks for it (utilipvs.VirtualServer)."""

    proto: int
    addr: int
    port: int
    scheduler: str
    flags: int = 0
    timeout: int = 0
    netmask: int = 0xFFFFFFFF
    dests: list[tuple[int, int, int]] = field(default_factory=list)  # (addr, port, weight), add order
    spn: ServicePortName | None = None
    kind: str = CLUSTER
    local: bool = False  # externalTrafficPolicy Local (no SNAT for external traffic)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.proto, self.addr, self.port)


# The netfilter engine's dimension kinds for each set type (xt.IpSet.kinds).
SET_KINDS: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",),
    "hash:ip,port": ("ip", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "bitmap:port": ("port",),
}
PROTO_NUMBER = {"tcp": TCP, "udp": UDP, "sctp": SCTP}


@dataclass
class IPSet:
    """One ipset, and the `set` match's view of it (the netfilter engine's
    set provider: `kinds` and `test`). Members are kept as parsed, with the
    protocol as ipset writes it ("tcp"); `test` gets the engine's values,
    a port as (protocol number, port)."""

    name: str
    set_type: str
    comment: str
    entries: set[str] = field(default_factory=set)
    # Parsed members for matching: (ip, proto, port[, ip2 | net]) tuples or ports.
    members: set[tuple[object, ...]] = field(default_factory=set)
    _index: dict[tuple[object, ...], list[Cidr]] | set[Any] | None = field(default=None, repr=False, compare=False)
    _derived: dict[object, Any] = field(default_factory=dict, repr=False, compare=False)  # values(), project()

    def add(self, text: str, member: tuple[object, ...]) -> None:
        self.entries.add(text)
        self.members.add(member)
        self._index = None
        if self._derived:
            self._derived.clear()

    @property
    def kinds(self) -> tuple[str, ...]:
        return SET_KINDS[self.set_type]

    def test(self, values: tuple[object, ...]) -> bool:
        """ip_set_test(): is the packet's tuple a member? bitmap:port keeps
        ports only (the rule's `-p` chose the protocol); hash:ip,port,net
        matches the most specific stored net containing the address."""
        index = self._index
        if index is None:
            index = self._index = self._build_index()
        kind = self.set_type
        if kind == "hash:ip,port,net":
            ip, port, addr = values
            nets = index.get((ip, port)) if isinstance(index, dict) else None
            return nets is not None and any(addr in net for net in nets)
        if kind == "bitmap:port":
            return values[0][1] in index  # type: ignore[index]
        return values in index

    def _build_index(self) -> dict[tuple[object, ...], list[Cidr]] | set[Any]:
        if self.set_type == "bitmap:port":
            return {m[0] for m in self.members}
        if self.set_type == "hash:ip,port,net":
            nets: dict[tuple[object, ...], list[Cidr]] = {}
            for ip, proto, port, net in self.members:
                nets.setdefault((ip, (PROTO_NUMBER[str(proto)], port)), []).append(net)  # type: ignore[arg-type]
            return nets
        if self.set_type == "hash:ip":
            return set(self.members)
        out: set[tuple[object, ...]] = set()
        for m in self.members:
            out.add((m[0], (PROTO_NUMBER[str(m[1])], m[2]), *m[3:]))
        return out

    def project(self, positions: tuple[int, ...]) -> set[tuple[Any, ...]] | None:
        """The members' values at these dimensions, as the engine passes them
        (a port as (protocol number, port)); None when one is a net (a
        membership test, not an equality)."""
        kinds = self.kinds
        if self.set_type == "bitmap:port" or any(kinds[i] == "net" for i in positions):
            return None
        cached = self._derived.get(positions)
        if cached is not None:
            return cached
        out: set[tuple[Any, ...]] = self._derived.setdefault(positions, set())
        for m in self.members:
            values = (m[0], (PROTO_NUMBER[str(m[1])], m[2]), *m[3:]) if len(m) > 1 else m
            out.add(tuple(values[i] for i in positions))
        return out

    def values(self, kind: str) -> set[object]:
        """Every value a dimension of this kind holds ("ip": addresses,
        "net": Cidrs, "port": port numbers): what a membership can turn on."""
        cached = self._derived.get(kind)
        if cached is not None:
            return cached
        out: set[object] = self._derived.setdefault(kind, set())
        for position, k in enumerate(self.kinds):
            if k != kind:
                continue
            for m in self.members:
                if self.set_type == "bitmap:port":
                    out.add(m[0])
                elif k == "port":
                    out.add(m[position + 1])  # (ip, proto, port, ...): the port follows the protocol
                else:
                    out.add(m[position if position == 0 else position + 1])
        return out


@dataclass
class IpvsState:
    """Everything the sync produced for one node."""

    services: list[VirtualServerSpec]
    ipsets: dict[str, IPSet]
    addresses: list[int]  # bound to kube-ipvs0, in bind order
    iptables: str  # iptables-restore input
    node_ips: tuple[int, ...]
    cluster_cidrs: tuple[Cidr, ...]
    masquerade_all: bool
    timeouts: tuple[float, float, float]  # ipvsadm --set tcp tcpfin udp (0 = kernel default)


def _entry(ip: int, proto: str, port: int) -> str:
    return f"{int_to_ip(ip)},{proto}:{port}"


def build_state(view: NodeView) -> IpvsState:
    """syncProxyRules() for one node, without the I/O."""
    cfg = view.config
    scheduler = cfg.ipvs_scheduler or "rr"
    sets = {name: IPSet(name, set_type, comment) for name, set_type, comment in IPSET_INFO}
    services: list[VirtualServerSpec] = []
    bound: dict[int, None] = {}
    node_ips = view.node_ips
    node_addr_set = set(node_ips)
    has_node_port = any(info.node_port for info in view.service_ports())
    np_ips = node_ips if has_node_port else ()
    for info in sorted(view.service_ports(), key=lambda i: i.name):
        proto = proto_name(info.protocol)
        _loopback_entries(view, info, proto, sets["KUBE-LOOP-BACK"])
        sets["KUBE-CLUSTER-IP"].add(_entry(info.cluster_ip, proto, info.port), (info.cluster_ip, proto, info.port))
        services.append(_server(view, info, info.cluster_ip, info.port, scheduler, CLUSTER, info.internal_policy_local))
        bound.setdefault(info.cluster_ip)
        for ip in info.external_ips:
            name = "KUBE-EXTERNAL-IP-LOCAL" if info.external_policy_local else "KUBE-EXTERNAL-IP"
            sets[name].add(_entry(ip, proto, info.port), (ip, proto, info.port))
            services.append(_server(view, info, ip, info.port, scheduler, EXTERNAL, info.external_policy_local))
            if ip not in node_addr_set:
                bound.setdefault(ip)
        for ip in info.lb_vips:
            _lb_entries(view, info, ip, proto, sets)
            services.append(_server(view, info, ip, info.port, scheduler, LOADBALANCER, info.external_policy_local))
            if ip not in node_addr_set:
                bound.setdefault(ip)
        if info.node_port and np_ips:
            _node_port_entries(info, proto, np_ips, sets)
            for ip in np_ips:
                services.append(
                    _server(view, info, ip, info.node_port, scheduler, NODEPORT, info.external_policy_local)
                )
        if info.health_check_node_port:
            port = info.health_check_node_port
            sets["KUBE-HEALTH-CHECK-NODE-PORT"].add(str(port), (port,))
    for ip in bound:
        sets["KUBE-IPVS-IPS"].add(int_to_ip(ip), (ip,))
    cidrs = tuple(cfg.cluster_cidrs)
    text = iptables_restore(sets, cfg.masquerade_all, cidrs, cfg.masquerade_mark)
    timeouts = (cfg.ipvs_tcp_timeout, cfg.ipvs_tcp_fin_timeout, cfg.ipvs_udp_timeout)
    return IpvsState(services, sets, list(bound), text, node_ips, cidrs, cfg.masquerade_all, timeouts)


def _server(
    view: NodeView, info: ServicePortInfo, addr: int, port: int, scheduler: str, kind: str, local_only: bool
) -> VirtualServerSpec:
    flags = 0
    timeout = 0
    if info.session_affinity:
        flags |= F_PERSISTENT
        timeout = info.sticky_seconds
    if scheduler == "mh":
        flags |= F_SCHED_PORT  # utilipvs.FlagSourceHash
    spec = VirtualServerSpec(
        info.protocol, addr, port, scheduler, flags, timeout, spn=info.name, kind=kind, local=local_only
    )
    spec.dests = [(ep.ip, ep.port, 1) for ep in _endpoints(view, info, local_only)]
    return spec


def _endpoints(view: NodeView, info: ServicePortInfo, local_only: bool) -> tuple[EndpointInfo, ...]:
    """syncEndpoint(): Local endpoints when asked for and present, else Cluster ones."""
    cat = view.categorize(info)
    if local_only and cat.local:
        return cat.local
    return cat.cluster


def _loopback_entries(view: NodeView, info: ServicePortInfo, proto: str, loopback: IPSet) -> None:
    for ep in view.endpoints(info.name):
        if view.is_local(ep):
            ip = int_to_ip(ep.ip)
            loopback.add(f"{ip},{proto}:{ep.port},{ip}", (ep.ip, proto, ep.port, ep.ip))


def _lb_entries(view: NodeView, info: ServicePortInfo, ip: int, proto: str, sets: dict[str, IPSet]) -> None:
    entry, member = _entry(ip, proto, info.port), (ip, proto, info.port)
    sets["KUBE-LOAD-BALANCER"].add(entry, member)
    if info.external_policy_local:
        sets["KUBE-LOAD-BALANCER-LOCAL"].add(entry, member)
    if not info.lb_source_ranges:
        return
    sets["KUBE-LOAD-BALANCER-FW"].add(entry, member)
    allow_from_node = False
    for cidr in info.lb_source_ranges:
        sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"].add(f"{entry},{cidr}", (ip, proto, info.port, cidr))
        if view.node_ip in cidr:
            allow_from_node = True
    if allow_from_node:
        sets["KUBE-LOAD-BALANCER-SOURCE-IP"].add(f"{entry},{int_to_ip(ip)}", (ip, proto, info.port, ip))


def _node_port_entries(info: ServicePortInfo, proto: str, node_ips: tuple[int, ...], sets: dict[str, IPSet]) -> None:
    port = info.node_port
    if info.protocol == SCTP:
        names = ["KUBE-NODE-PORT-SCTP-HASH"] + (
            ["KUBE-NODE-PORT-LOCAL-SCTP-HASH"] if info.external_policy_local else []
        )
        for name in names:
            for ip in node_ips:
                sets[name].add(_entry(ip, proto, port), (ip, proto, port))
        return
    upper = "TCP" if info.protocol == TCP else "UDP"
    sets[f"KUBE-NODE-PORT-{upper}"].add(str(port), (port,))
    if info.external_policy_local:
        sets[f"KUBE-NODE-PORT-LOCAL-{upper}"].add(str(port), (port,))


def _q(comment: str) -> str:
    return f'"{comment}"'


def iptables_restore(sets: dict[str, IPSet], masquerade_all: bool, cidrs: tuple[Cidr, ...], mark: int) -> str:
    """writeIptablesRules() + createAndLinkKubeChain(): the text kube-proxy
    feeds to iptables-restore (--noflush). The jumps from the built-in chains
    are installed separately with `iptables -I`; we show them as -I lines in
    their table so the text loads on its own."""
    nat: list[str] = ["*nat"]
    flt: list[str] = ["*filter"]
    for table, chain in CHAINS:
        (nat if table == "nat" else flt).append(f":{chain} - [0:0]")
    for table, src, dst, comment in JUMPS:
        (nat if table == "nat" else flt).append(f"-I {src} -m comment --comment {_q(comment)} -j {dst}")
    mark_text = f"{mark:#08x}"
    nat.append("-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN")
    for name, table, src, dst, match, proto in IPSET_CHAINS:
        s = sets[name]
        if not s.entries:
            continue
        proto_part = f" -p {proto}" if proto else ""
        line = f"-A {src}{proto_part} -m comment --comment {_q(s.comment)} -m set --match-set {name} {match} -j {dst}"
        (flt if table == "filter" else nat).append(line)
    cluster = sets["KUBE-CLUSTER-IP"]
    if cluster.entries:
        head = f"-A KUBE-SERVICES -m comment --comment {_q(cluster.comment)} -m set --match-set KUBE-CLUSTER-IP"
        if masquerade_all:
            nat.append(f"{head} dst,dst -j KUBE-MARK-MASQ")
        elif cidrs:
            # LocalTrafficDetector for ClusterCIDR: "! -s <cidr>"
            nat.append(f"{head} dst,dst ! -s {cidrs[0]} -j KUBE-MARK-MASQ")
        else:
            nat.append(f"{head} src,dst -j KUBE-MARK-MASQ")
    for name, masq in (("KUBE-EXTERNAL-IP", True), ("KUBE-EXTERNAL-IP-LOCAL", False)):
        s = sets[name]
        if not s.entries:
            continue
        head = f"-A KUBE-SERVICES -m comment --comment {_q(s.comment)} -m set --match-set {name} dst,dst"
        if masq:
            nat.append(f"{head} -j KUBE-MARK-MASQ")
        nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
        nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
    flt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # acceptIPVSTraffic()
        if sets[name].entries:
            nat.append(f"-A KUBE-SERVICES -m set --match-set {name} dst,dst -j ACCEPT")
    flt.append(
        f"-A KUBE-FORWARD -m comment --comment {_q('kubernetes forwarding rules')}"
        f" -m mark --mark {mark_text}/{mark_text} -j ACCEPT"
    )
    flt.append(
        f"-A KUBE-FORWARD -m comment --comment {_q('kubernetes forwarding conntrack rule')}"
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    hc = sets["KUBE-HEALTH-CHECK-NODE-PORT"]
    flt.append(
        f"-A KUBE-NODE-PORT -m comment --comment {_q(hc.comment)}"
        " -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"
    )
    for name, match in (
        ("KUBE-LOAD-BALANCER", "dst,dst"),
        ("KUBE-CLUSTER-IP", "dst,dst"),
        ("KUBE-EXTERNAL-IP", "dst,dst"),
        ("KUBE-EXTERNAL-IP-LOCAL", "dst,dst"),
        ("KUBE-HEALTH-CHECK-NODE-PORT", "dst"),
    ):
        flt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {name} {match} -j RETURN")
    flt.append("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT")
    nat.append(f"-A KUBE-POSTROUTING -m mark ! --mark {mark_text}/{mark_text} -j RETURN")
    nat.append(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark_text}")
    nat.append(
        f"-A KUBE-POSTROUTING -m comment --comment {_q('kubernetes service traffic requiring SNAT')}"
        " -j MASQUERADE --random-fully"
    )
    nat.append(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark_text}")
    nat.append("COMMIT")
    flt.append("COMMIT")
    return "\n".join(nat + flt) + "\n"


PROTO_TEXT = {TCP: "tcp", UDP: "udp", SCTP: "sctp"}
