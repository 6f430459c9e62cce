"""Test helpers: node views shaped like kube-proxy's own nftables tests.

pkg/proxy/nftables/proxier_test.go (NewFakeProxier) uses: pod IPs 10.0.0.0/8,
ClusterIPs 172.30.0.0/16, node `test-node` at 192.168.0.2 (with 192.168.1.2
and the external IP 192.168.99.11 also local), external clients
203.0.113.0/24, `--nodeport-addresses 192.168.0.2/32` and mark bit 14.
`flow()` answers the way that file's packet-flow tracer does: the endpoints
a new connection can reach ("ip:port, ip:port"), or DROP / REJECT, or "" for a
packet no rule touched, plus whether it is masqueraded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from netem.addr import Cidr, parse_cidr, parse_ip
from netem.objects import ProxyConfig
from netem.packet import Packet, proto_number
from proxy_modes.base import Verdict
from proxy_modes.nftables.engine import NftablesMode
from proxy_modes.nftables.ruleset import Table
from proxy_modes.view import EndpointInfo, NodeView, ProxyState, ServiceEntry, ServicePortInfo, ServicePortName

TEST_NODE = "test-node"
NODE_IP = "192.168.0.2"
NODE_IP_ALT = "192.168.1.2"
TEST_EXTERNAL_IP = "192.168.99.11"
EXTERNAL_CLIENT = "203.0.113.2"
EXTERNAL_CLIENT_BLOCKED = "203.0.113.130"
NODE_IPS = (NODE_IP, NODE_IP_ALT, TEST_EXTERNAL_IP)


@dataclass
class Port:
    name: str
    port: int
    protocol: str = "TCP"
    node_port: int = 0


@dataclass
class Svc:
    ns: str
    name: str
    cluster_ip: str
    ports: list[Port]
    type: str = "ClusterIP"
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)
    etp_local: bool = False
    itp_local: bool = False
    affinity_seconds: int = 0
    # endpoints: (ip, node name or "", {port name: port}), all ready
    endpoints: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)

    def entry(self) -> ServiceEntry:
        infos = []
        eps: dict[ServicePortName, tuple[EndpointInfo, ...]] = {}
        accessible = bool(self.external_ips or self.lb_ips or any(p.node_port for p in self.ports))
        for p in self.ports:
            spn = ServicePortName(self.ns, self.name, p.name, p.protocol)
            infos.append(
                ServicePortInfo(
                    name=spn,
                    cluster_ip=parse_ip(self.cluster_ip),
                    port=p.port,
                    protocol=proto_number(p.protocol.lower()),
                    node_port=p.node_port,
                    session_affinity=self.affinity_seconds > 0,
                    sticky_seconds=self.affinity_seconds,
                    external_ips=tuple(parse_ip(ip) for ip in self.external_ips),
                    lb_vips=tuple(parse_ip(ip) for ip in self.lb_ips),
                    lb_source_ranges=tuple(parse_cidr(c.strip()) for c in self.source_ranges),
                    external_policy_local=self.etp_local and accessible,
                    internal_policy_local=self.itp_local,
                )
            )
            found = []
            for ip, node, ports in self.endpoints:
                if p.name in ports:
                    port = ports[p.name]
                    found.append(EndpointInfo(parse_ip(ip), port, f"{ip}:{port}", node_name=node))
            if found:
                eps[spn] = tuple(sorted(found, key=lambda e: e.text))
        return ServiceEntry(tuple(infos), eps)


def config(**overrides: object) -> ProxyConfig:
    base: dict[str, object] = {
        "mode": "nftables",
        "cluster_cidrs": [parse_cidr("10.0.0.0/8")],
        "node_port_addresses": [f"{NODE_IP}/32"],
    }
    base.update(overrides)
    return ProxyConfig(**base)  # type: ignore[arg-type]


def view(
    services: list[Svc], cfg: ProxyConfig | None = None, service_cidrs: tuple[Cidr, ...] | None = None
) -> NodeView:
    state = ProxyState({(s.ns, s.name): s.entry() for s in services})
    cidrs = (parse_cidr("172.30.0.0/16"),) if service_cidrs is None else service_cidrs
    return NodeView(
        state,
        TEST_NODE,
        tuple(parse_ip(ip) for ip in NODE_IPS),
        cfg or config(),
        service_cidrs=cidrs,
    )


def mode(services: list[Svc], cfg: ProxyConfig | None = None, seed: int = 0) -> NftablesMode:
    m = NftablesMode(random.Random(seed))
    m.sync(view(services, cfg))
    return m


class Flows:
    """Send new connections and describe them as kube-proxy's tracer does."""

    def __init__(self, m: NftablesMode) -> None:
        self.m = m
        self.sport = 20000
        self.now = 0.0

    def packet(self, src: str, dst: str, dport: int, proto: str = "tcp") -> Packet:
        self.sport += 1
        self.now += 0.001
        local = src in NODE_IPS
        return Packet(proto_number(proto), parse_ip(src), self.sport, parse_ip(dst), dport, local)

    def __call__(self, src: str, dst: str, dport: int, proto: str = "tcp") -> tuple[str, bool]:
        trace = self.m.trace(self.packet(src, dst, dport, proto), self.now)
        d = trace.decision
        if d.verdict in (Verdict.DROP, Verdict.REJECT):
            return str(d.verdict), False
        if d.verdict is Verdict.ACCEPT:
            return "", False
        outputs = sorted(f"{r.to_json()['ip']}:{r.port}" for r in trace.endpoints)
        return ", ".join(outputs), d.masquerade


def signature(table: Table) -> dict[str, object]:
    """What a table means, whatever spelling it came in (for equality checks):
    chains with their hook and canonical rules, sets and maps with their
    non-dynamic contents."""
    chains = {name: (c.base, c.comment, [r.canonical() for r in c.rules]) for name, c in sorted(table.chains.items())}
    sets = {
        name: (
            s.types,
            s.is_map,
            s.value_type,
            tuple(sorted(s.flags)),
            s.timeout,
            s.comment,
            {} if s.dynamic else dict(s.members),
            dict(s.verdicts),
            dict(s.comments),
            sorted(s.intervals),
        )
        for name, s in sorted(table.sets.items())
    }
    return {"family": table.family, "name": table.name, "comment": table.comment, "chains": chains, "sets": sets}


def three_endpoints(**kw: object) -> Svc:
    return Svc(
        "ns1",
        "svc1",
        "172.30.0.41",
        [Port("p80", 80, node_port=3001)],
        endpoints=[(f"10.180.0.{n}", "", {"p80": 80}) for n in (1, 2, 3)],
        **kw,  # type: ignore[arg-type]
    )


def rich_services() -> list[Svc]:
    """Every rule shape kube-proxy writes (differential, syntax and kernel tests)."""
    return [
        three_endpoints(),
        Svc(
            "ns2",
            "lb",
            "172.30.0.42",
            [Port("p80", 80, node_port=3002), Port("dns", 53, "UDP", node_port=3003)],
            type="LoadBalancer",
            lb_ips=["1.2.3.4"],
            source_ranges=["203.0.113.0/25", "192.168.0.0/24"],
            affinity_seconds=100,
            endpoints=[
                ("10.180.0.4", "test-node", {"p80": 8080, "dns": 53}),
                ("10.180.0.5", "remote", {"p80": 8080, "dns": 53}),
            ],
        ),
        Svc(
            "ns3",
            "local",
            "172.30.0.43",
            [Port("p80", 80, node_port=3004)],
            type="LoadBalancer",
            etp_local=True,
            lb_ips=["5.6.7.8"],
            external_ips=["192.168.99.50"],
            endpoints=[("10.180.0.6", "test-node", {"p80": 80}), ("10.180.0.7", "remote", {"p80": 80})],
        ),
        Svc(
            "ns4",
            "nolocal",
            "172.30.0.44",
            [Port("p80", 80, node_port=3005)],
            type="LoadBalancer",
            etp_local=True,
            itp_local=True,
            endpoints=[("10.180.0.8", "remote", {"p80": 80})],
        ),
        Svc("ns5", "empty", "172.30.0.45", [Port("p80", 80, node_port=3006), Port("s", 9, "SCTP")]),
    ]
