"""The iptables rules of kube-proxy's userspace mode: portals to proxy ports.

In userspace mode the kernel does not balance anything. kube-proxy opens one
listening socket (a "proxy port") per service port and installs *portal*
rules that send every new connection for the service's addresses to that
socket (pkg/proxy/userspace/proxier.go, v1.25 and before; the mode was removed
in v1.26):

- nat PREROUTING jumps to KUBE-PORTALS-CONTAINER (traffic from pods and from
  outside) and nat OUTPUT to KUBE-PORTALS-HOST (traffic the node sends), both
  *prepended* so they come before anything else (iptablesInit);
- then, appended and guarded by `-m addrtype --dst-type LOCAL`, the NodePort
  chains KUBE-NODEPORT-CONTAINER / KUBE-NODEPORT-HOST, and in the filter table
  INPUT jumps to KUBE-NODEPORT-NON-LOCAL, which accepts NEW connections to the
  proxy ports of NodePort services (a default-deny firewall would otherwise
  drop them).

Each portal rule matches protocol, destination port and (except NodePorts)
the destination address, and carries the service port name as its comment
(iptablesCommonPortalArgs). Container rules REDIRECT to the proxy port when
the proxy listens on 0.0.0.0, else DNAT to the listen address
(iptablesContainerPortalArgs); host rules always DNAT, to the node's address
when listening on 0.0.0.0, because a REDIRECT of a locally sent packet goes to
127.0.0.1 and the reply comes from the wrong address (iptablesHostPortalArgs).
External IPs get two container rules (`-m physdev ! --physdev-is-in`, and
`-m addrtype --dst-type LOCAL`) and a host rule only for local destinations;
load-balancer IPs are portals like the ClusterIP (openOnePortal).

Rules are kept as small tuples (`Rule`), rendered here in the form
`iptables-save` prints them (matches `-d`/`-p` first, then the `-m` modules in
the order given), so `iptables-restore` of our text followed by `iptables-save`
gives the same text back (tests/kernel checks that against the real tool). The
rendered text is what the shared netfilter engine (proxy_modes.netfilter)
walks for `kubenetem trace`, and what the mode's index must agree with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from netem.addr import int_to_ip
from netem.packet import proto_name

PORTALS_CONTAINER = "KUBE-PORTALS-CONTAINER"
PORTALS_HOST = "KUBE-PORTALS-HOST"
NODEPORT_CONTAINER = "KUBE-NODEPORT-CONTAINER"
NODEPORT_HOST = "KUBE-NODEPORT-HOST"
NODEPORT_NON_LOCAL = "KUBE-NODEPORT-NON-LOCAL"

PORTALS_COMMENT = "handle ClusterIPs; NOTE: this must be before the NodePort rules"
NODEPORTS_COMMENT = "handle service NodePorts; NOTE: this must be the last rule in the chain"
NON_LOCAL_COMMENT = "Ensure that non-local NodePort traffic can flow"

LOOPBACK_NET = 127  # 127.0.0.0/8 is LOCAL to addrtype


class Rule(NamedTuple):
    """One iptables rule of the userspace mode (a jump or a portal)."""

    chain: str
    target: str  # a chain name, "REDIRECT", "DNAT" or "ACCEPT"
    comment: str
    proto: int = 0  # 0: any
    dport: int = 0
    dst: int | None = None
    physdev_not_in: bool = False  # -m physdev ! --physdev-is-in
    dst_local: bool = False  # -m addrtype --dst-type LOCAL
    state_new: bool = False  # -m state --state NEW
    to_ip: int = 0  # DNAT --to-destination ip:port (REDIRECT: port only)
    to_port: int = 0
    service: str = ""  # the service port name of a portal rule ("" for jumps)
    table: str = "nat"


class PortalSpec(NamedTuple):
    """What the rules need to know of one proxied service port."""

    name: str  # ns/name:port
    proto: int
    port: int
    cluster_ip: int
    external_ips: tuple[int, ...]
    lb_ips: tuple[int, ...]
    node_port: int
    proxy_port: int


def jump_rules() -> list[Rule]:
    """iptablesInit: the jumps into our chains, in the order the kernel sees them."""
    return [
        Rule("PREROUTING", PORTALS_CONTAINER, PORTALS_COMMENT),
        Rule("PREROUTING", NODEPORT_CONTAINER, NODEPORTS_COMMENT, dst_local=True),
        Rule("OUTPUT", PORTALS_HOST, PORTALS_COMMENT),
        Rule("OUTPUT", NODEPORT_HOST, NODEPORTS_COMMENT, dst_local=True),
        Rule("INPUT", NODEPORT_NON_LOCAL, NON_LOCAL_COMMENT, table="filter"),
    ]


def portal_rules(specs: Iterable[PortalSpec], listen_ip: int, host_ip: int) -> list[Rule]:
    """The rules of openPortal/openNodePort for each service port, in order."""
    rules: list[Rule] = []
    for spec in specs:
        rules += _one_portal(spec, spec.cluster_ip, False, listen_ip, host_ip)
        for ip in spec.external_ips:
            rules += _one_portal(spec, ip, True, listen_ip, host_ip)
        for ip in spec.lb_ips:
            rules += _one_portal(spec, ip, False, listen_ip, host_ip)
        if spec.node_port:
            rules += _node_port(spec, listen_ip, host_ip)
    return rules


def _container_target(listen_ip: int, proxy_port: int) -> tuple[str, int, int]:
    # REDIRECT when listening on 0.0.0.0, DNAT to the listen address otherwise.
    return ("REDIRECT", 0, proxy_port) if listen_ip == 0 else ("DNAT", listen_ip, proxy_port)


def _host_target(listen_ip: int, host_ip: int, proxy_port: int) -> tuple[str, int, int]:
    return ("DNAT", listen_ip or host_ip, proxy_port)


def _one_portal(spec: PortalSpec, ip: int, external: bool, listen_ip: int, host_ip: int) -> list[Rule]:
    """openOnePortal: container rule(s), then the host rule."""
    ct, cip, cport = _container_target(listen_ip, spec.proxy_port)
    ht, hip, hport = _host_target(listen_ip, host_ip, spec.proxy_port)
    name, proto, port = spec.name, spec.proto, spec.port
    rules = [Rule(PORTALS_CONTAINER, ct, name, proto, port, ip, external, False, False, cip, cport, name)]
    if external:
        rules.append(Rule(PORTALS_CONTAINER, ct, name, proto, port, ip, False, True, False, cip, cport, name))
    rules.append(Rule(PORTALS_HOST, ht, name, proto, port, ip, False, external, False, hip, hport, name))
    return rules


def _node_port(spec: PortalSpec, listen_ip: int, host_ip: int) -> list[Rule]:
    """openNodePort: the two NodePort rules and the filter ACCEPT for the proxy port."""
    ct, cip, cport = _container_target(listen_ip, spec.proxy_port)
    ht, hip, hport = _host_target(listen_ip, host_ip, spec.proxy_port)
    name, proto = spec.name, spec.proto
    return [
        Rule(NODEPORT_CONTAINER, ct, name, proto, spec.node_port, to_ip=cip, to_port=cport, service=name),
        Rule(NODEPORT_HOST, ht, name, proto, spec.node_port, to_ip=hip, to_port=hport, service=name),
        Rule(NODEPORT_NON_LOCAL, "ACCEPT", name, proto, spec.proxy_port, state_new=True, service=name, table="filter"),
    ]


# --- helpers -------------------------------------------------------------------


def is_local(ip: int, node_ips: frozenset[int]) -> bool:
    """addrtype --dst-type LOCAL: an address of the node, or 127.0.0.0/8."""
    return ip in node_ips or ip >> 24 == LOOPBACK_NET


def chains_of(rules: Iterable[Rule]) -> dict[str, list[Rule]]:
    """Rules by chain: nat chains by name, filter chains as "filter CHAIN"."""
    chains: dict[str, list[Rule]] = {}
    for rule in rules:
        key = rule.chain if rule.table == "nat" else f"{rule.table} {rule.chain}"
        chains.setdefault(key, []).append(rule)
    return chains


# --- rendering ---------------------------------------------------------------

NAT_BUILTINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
FILTER_BUILTINS = ("INPUT", "FORWARD", "OUTPUT")
NAT_CHAINS = (NODEPORT_CONTAINER, NODEPORT_HOST, PORTALS_CONTAINER, PORTALS_HOST)
FILTER_CHAINS = (NODEPORT_NON_LOCAL,)


def quote(text: str) -> str:
    """xtables_save_string(): bare when only [A-Za-z0-9_-], else double-quoted."""
    if text and all(c.isascii() and (c.isalnum() or c in "_-") for c in text):
        return text
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in text)
    return f'"{escaped}"'


def rule_text(rule: Rule) -> str:
    """`-A CHAIN ...` exactly as iptables-save prints the rule."""
    parts = [f"-A {rule.chain}"]
    if rule.dst is not None:
        parts.append(f"-d {int_to_ip(rule.dst)}/32")
    if rule.proto:
        parts.append(f"-p {proto_name(rule.proto)}")
    if rule.dst_local and not rule.proto:  # the jump rules: addrtype before comment
        parts.append("-m addrtype --dst-type LOCAL")
    parts.append(f"-m comment --comment {quote(rule.comment)}")
    if rule.proto:
        parts.append(f"-m {proto_name(rule.proto)} --dport {rule.dport}")
    if rule.physdev_not_in:
        parts.append("-m physdev ! --physdev-is-in")
    if rule.dst_local and rule.proto:
        parts.append("-m addrtype --dst-type LOCAL")
    if rule.state_new:
        parts.append("-m state --state NEW")
    parts.append(f"-j {rule.target}")
    if rule.target == "REDIRECT":
        parts.append(f"--to-ports {rule.to_port}")
    elif rule.target == "DNAT":
        parts.append(f"--to-destination {int_to_ip(rule.to_ip)}:{rule.to_port}")
    return " ".join(parts)


def render(chains: dict[str, list[Rule]]) -> str:
    """The nat and filter tables in iptables-restore format (what iptables-save
    shows on a node in userspace mode, with zeroed counters)."""
    out = ["*nat"]
    out += [f":{c} ACCEPT [0:0]" for c in NAT_BUILTINS]
    out += [f":{c} - [0:0]" for c in NAT_CHAINS]
    for chain in (*NAT_BUILTINS, *NAT_CHAINS):
        out += [rule_text(r) for r in chains.get(chain, [])]
    out.append("COMMIT")
    out.append("*filter")
    out += [f":{c} ACCEPT [0:0]" for c in FILTER_BUILTINS]
    out += [f":{c} - [0:0]" for c in FILTER_CHAINS]
    for chain in (*FILTER_BUILTINS, *FILTER_CHAINS):
        out += [rule_text(r) for r in chains.get(f"filter {chain}", [])]
    out.append("COMMIT")
    return "\n".join(out) + "\n"
