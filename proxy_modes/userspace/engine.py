"""userspace mode: kube-proxy's original proxy, decided without I/O.

The kernel only redirects (rules.py): a new connection to a service address is
REDIRECTed to a local proxy port, kube-proxy accepts it there, picks an
endpoint and dials it, then copies bytes both ways. Every byte crosses user
space; in exchange a dead endpoint is survivable, because a failed dial is
retried on the next one. This module is that decision, shared by the emulated
mode (`UserspaceMode`) and the real proxy (`server.py`):

- `LoadBalancerRR` (pkg/proxy/userspace/roundrobin.go): per service port the
  endpoint list, shuffled whenever it changes (ShuffleStrings, with the
  caller's seeded `random.Random`), then round robin from index 0; ClientIP
  affinity keyed by client address: an entry younger than the timeout
  (`int(seconds since last use) < ttl`, NextEndpoint) wins and is refreshed,
  otherwise the next round-robin endpoint is taken and remembered. Entries of
  removed endpoints are dropped (removeStaleAffinity), expired ones at every
  sync (CleanupStaleStickySessions).
- `Dial` (proxysocket.go TryConnectEndpoints): up to four dials with the
  timeouts 250 ms, 500 ms, 1 s, 2 s, each to NextEndpoint; after a failure the
  affinity entry is bypassed (sessionAffinityReset) so the next round-robin
  endpoint is tried and remembered instead.

`UserspaceMode` is the ProxyMode: `sync` allocates proxy ports and builds the
portal rules, `route` finds the portal the kernel would use (an index whose
verdict, target and rule count equal the shared netfilter engine's walk of the
rendered rules, proxy_modes.netfilter: a differential test holds them
together), then plays the proxy: accept, choose, dial. `trace` shows the
engine's walk itself, up to the REDIRECT/DNAT to the proxy port, then the
proxy's choice. Endpoints marked dead (`set_dead`) fail their
dial, by timeout (the whole timeout is paid) or by refusal (an RST: nothing
paid), and `last_latency` is the dial time the client waited. UDP keeps a
per-client association that lives for `udpIdleTimeout` after the last packet
(proxysocket.go getBackendConn/proxyClient); a UDP "dial" never fails, so a
dead UDP endpoint just swallows datagrams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netem.addr import int_to_ip
from netem.conntrack import ORIGINAL, SEEN_REPLY, Conntrack, CtEntry, kube_proxy_timeouts, tcp_next_state
from netem.errors import UsageError
from netem.packet import TCP, UDP, Packet, proto_name
from proxy_modes.base import Decision, Reach, Ruleset, Step, Trace, Verdict
from proxy_modes.netfilter.engine import Netfilter
from proxy_modes.view import NodeView, ServicePortInfo, ServicePortName

from . import rules as r

if TYPE_CHECKING:
    import random

Endpoint = tuple[int, int]  # (ip, port)

# proxysocket.go EndpointDialTimeouts: one dial per timeout, in order.
DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)
# v1.DefaultClientIPServiceAffinitySeconds: a ttl of 0 means three hours.
DEFAULT_STICKY_SECONDS = 10800
# KubeProxyConfiguration udpIdleTimeout default for the userspace proxier.
DEFAULT_UDP_IDLE_TIMEOUT = 0.25
# With no portRange, kube-proxy binds port 0 (randomAllocator) and the kernel
# picks a free port from net.ipv4.ip_local_port_range (default 32768-60999).
EPHEMERAL_PORTS = (32768, 60999 - 32768 + 1)

TIMEOUT, REFUSED = "timeout", "refused"
# Whether a TCP segment with these flags opens a conntrack entry; one that
# cannot is INVALID: the nat table (the portals) never sees it.
OPENS = tuple(tcp_next_state(ORIGINAL, flags, 0) < 10 for flags in range(256))


def endpoint_text(ep: Endpoint) -> str:
    return f"{int_to_ip(ep[0])}:{ep[1]}"


class Balancer:
    """balancerState + affinityPolicy of one service port."""

    __slots__ = ("affinity", "clients", "endpoints", "index", "ttl")

    def __init__(self, affinity: bool, ttl: int) -> None:
        self.endpoints: list[Endpoint] = []
        self.index = 0
        self.affinity = affinity  # ClientIP (an unset type counts as None)
        self.ttl = ttl
        self.clients: dict[int, list[Any]] = {}  # client ip -> [endpoint, last used]

    def next(self, client: int, now: float, reset: bool = False) -> Endpoint | None:
        """NextEndpoint: the affinity entry if fresh (and not reset), else the
        next endpoint round robin, remembered for the client."""
        endpoints = self.endpoints
        if not endpoints:
            return None
        if self.affinity and not reset:
            hit = self.clients.get(client)
            # int(time.Since(lastUsed).Seconds()) < ttlSeconds: whole seconds.
            if hit is not None and int(now - hit[1]) < self.ttl:
                hit[1] = now
                found: Endpoint = hit[0]
                return found
        ep = endpoints[self.index]
        self.index = (self.index + 1) % len(endpoints)
        if self.affinity:
            self.clients[client] = [ep, now]
        return ep

    def affinity_entry(self, client: int) -> tuple[Endpoint, float] | None:
        hit = self.clients.get(client)
        return None if hit is None else (hit[0], hit[1])


class LoadBalancerRR:
    """roundrobin.go LoadBalancerRR: balancers by service port name."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.services: dict[ServicePortName, Balancer] = {}

    def new_service(self, name: ServicePortName, affinity: bool | None, ttl: int = 0) -> Balancer:
        """newServiceInternal. `affinity=None` is the endpoints handler's call
        (an empty affinity type). An existing balancer keeps its ttl and only
        takes a non-empty type, as in kube-proxy: so when the endpoints were
        seen first (always at start-up), timeoutSeconds is never applied."""
        balancer = self.services.get(name)
        if balancer is None:
            balancer = self.services[name] = Balancer(bool(affinity), ttl or DEFAULT_STICKY_SECONDS)
        elif affinity is not None:
            balancer.affinity = affinity
        return balancer

    def delete_service(self, name: ServicePortName) -> None:
        self.services.pop(name, None)

    def update_endpoints(self, name: ServicePortName, endpoints: list[Endpoint]) -> bool:
        """OnEndpointsUpdate for one port: a changed set of endpoints drops the
        affinity entries of removed ones, is shuffled and restarts at index 0;
        an empty one resets the port (resetService). True if anything changed."""
        balancer = self.services.get(name)
        if not endpoints:
            if balancer is not None and (balancer.endpoints or balancer.clients):
                self.reset_service(name)
                return True
            return False
        if balancer is not None and sorted(balancer.endpoints) == sorted(endpoints):
            return False
        if balancer is not None:
            keep = set(endpoints)
            balancer.clients = {ip: e for ip, e in balancer.clients.items() if e[0] in keep}
        balancer = self.new_service(name, None)
        shuffled = list(endpoints)
        self.rng.shuffle(shuffled)  # util.ShuffleStrings
        balancer.endpoints = shuffled
        balancer.index = 0
        return True

    def reset_service(self, name: ServicePortName) -> None:
        balancer = self.services.get(name)
        if balancer is not None:
            balancer.endpoints = []
            balancer.index = 0
            balancer.clients = {}

    def next_endpoint(self, name: ServicePortName, client: int, now: float, reset: bool = False) -> Endpoint | None:
        balancer = self.services.get(name)
        return None if balancer is None else balancer.next(client, now, reset)

    def cleanup_stale(self, name: ServicePortName, now: float) -> None:
        """CleanupStaleStickySessions: drop entries at least ttl seconds old."""
        balancer = self.services.get(name)
        if balancer is not None and balancer.clients:
            ttl = balancer.ttl
            balancer.clients = {ip: e for ip, e in balancer.clients.items() if int(now - e[1]) < ttl}


class Dial:
    """TryConnectEndpoints as a state machine the caller drives: `next(now)`
    gives the endpoint and timeout of the next dial (None when the four dials
    are used up or there is no endpoint: `error` says which), `failed()` says
    the dial failed, so the next one bypasses the affinity entry."""

    __slots__ = ("attempt", "balancer", "client", "error", "reset")

    def __init__(self, balancer: Balancer | None, client: int) -> None:
        self.balancer = balancer
        self.client = client
        self.attempt = 0
        self.reset = False
        self.error = ""

    def next(self, now: float) -> tuple[Endpoint, float] | None:
        if self.balancer is None:
            self.error = "missing service entry"
            return None
        if self.attempt >= len(DIAL_TIMEOUTS):
            self.error = "failed to connect to an endpoint"
            return None
        ep = self.balancer.next(self.client, now, self.reset)
        if ep is None:
            self.error = "missing endpoints"
            return None
        timeout = DIAL_TIMEOUTS[self.attempt]
        self.attempt += 1
        return ep, timeout

    def failed(self) -> None:
        self.reset = True


class PortAllocator:
    """The proxy port a service port listens on. With a portRange kube-proxy's
    rangeAllocator picks a random free port and scans upwards from it
    (port_allocator.go nextFreePort); without one it binds port 0 and the
    kernel picks from the ephemeral range, emulated here the same way."""

    def __init__(self, rng: random.Random, base: int, size: int) -> None:
        self.rng = rng
        self.base, self.size = (base, size) if base else EPHEMERAL_PORTS
        self.used: set[int] = set()

    def allocate(self) -> int:
        start = self.rng.randrange(self.size)
        for offset in range(self.size):
            port = self.base + (start + offset) % self.size
            if port not in self.used:
                self.used.add(port)
                return port
        raise RuntimeError(
            "port allocation failed; there are no remaining ports left to allocate in the accepted range"
        )

    def release(self, port: int) -> None:
        self.used.discard(port)


@dataclass(slots=True, eq=False)
class Portal:
    """One proxied service port: its socket's port and its balancer."""

    name: ServicePortName
    info: ServicePortInfo
    proxy_port: int
    balancer: Balancer
    config: tuple[object, ...]  # what sameConfig compares
    udp_clients: dict[tuple[int, int], list[Any]] = field(default_factory=dict)  # (ip, port) -> [ep, expires]


def same_config_key(info: ServicePortInfo) -> tuple[object, ...]:
    """proxier.go sameConfig: a change in any of these reopens the proxy port."""
    return (info.protocol, info.port, info.node_port, info.cluster_ip, info.external_ips, info.lb_vips,
            info.session_affinity)  # fmt: skip


@dataclass(slots=True)
class DialRecord:
    endpoint: Endpoint
    timeout: float
    result: str  # "connected", TIMEOUT, REFUSED


class UserspaceMode:
    """The userspace ProxyMode: portal rules in the kernel, the choice in kube-proxy."""

    name = "userspace"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lb = LoadBalancerRR(rng)
        self.portals: dict[ServicePortName, Portal] = {}
        self.conntrack = Conntrack()
        self.dead: dict[Endpoint, str] = {}
        self.rules: list[r.Rule] = []
        self.chains: dict[str, list[r.Rule]] = {}
        self.node_ips: frozenset[int] = frozenset()
        self.node_ip = 0  # the node's primary address (where REDIRECT sends a packet from elsewhere)
        self._nf: Netfilter | None = None  # the rendered rules in the netfilter engine (for trace)
        self.listen_ip = 0
        self.host_ip = 0
        self.udp_idle_timeout = DEFAULT_UDP_IDLE_TIMEOUT
        self.last_latency = 0.0  # dial time the last new connection waited
        self._ports: PortAllocator | None = None
        self.unallocated: set[ServicePortName] = set()  # no proxy port left for them
        self._synced = False
        # the index: (proto, dst, dport) -> (portal, rule, rules evaluated), per entry chain
        self._container: dict[tuple[int, int, int], tuple[Portal, r.Rule, int]] = {}
        self._host: dict[tuple[int, int, int], tuple[Portal, r.Rule, int]] = {}
        self._np_container: dict[tuple[int, int], tuple[Portal, r.Rule, int]] = {}
        self._np_host: dict[tuple[int, int], tuple[Portal, r.Rule, int]] = {}
        self._miss_cost = (2, 2)  # rules evaluated when no portal matches: (remote, local dst)
        self._miss_cost_host = (2, 2)
        # filter INPUT: the jump to KUBE-NODEPORT-NON-LOCAL, then its rules (by protocol and port)
        self._non_local: dict[tuple[int, int], int] = {}
        self._non_local_rules = 0

    # --- sync ----------------------------------------------------------------

    def sync(self, view: NodeView, now: float = 0.0) -> Ruleset:
        """syncProxyRules: merge services (new or changed ports get a fresh
        proxy port), feed endpoints to the balancer, rebuild the portals."""
        cfg = view.config
        if self._ports is None:
            self._ports = PortAllocator(self.rng, *cfg.port_range)
        self.listen_ip = cfg.bind_address
        self.host_ip = cfg.bind_address or view.node_ip
        self.udp_idle_timeout = cfg.udp_idle_timeout
        self.node_ips = frozenset(view.node_ips)
        self.node_ip = view.node_ip
        self.conntrack.timeouts = kube_proxy_timeouts(cfg)
        infos = {info.name: info for info in view.service_ports() if info.protocol in (TCP, UDP)}
        endpoints = {name: [(ep.ip, ep.port) for ep in view.endpoints(name) if ep.ready] for name in infos}
        if not self._synced:
            # At start-up the endpoints handler reaches the balancer before the
            # first sync merges the services (OnEndpointsAdd runs at once,
            # services wait for syncProxyRules).
            for name, eps in endpoints.items():
                if eps:
                    self.lb.update_endpoints(name, eps)
        changed = self._merge_services(infos)
        for name, eps in endpoints.items():
            self.lb.update_endpoints(name, eps)
        for name in self.portals:
            self.lb.cleanup_stale(name, now)
        self._synced = True
        self._build_rules()
        return Ruleset(self.dump(), len(self.rules), partial=False, changed=changed)

    def _merge_services(self, infos: dict[ServicePortName, ServicePortInfo]) -> int:
        assert self._ports is not None
        changed = 0
        self.unallocated &= set(infos)
        for name in sorted(set(self.portals) - set(infos)):  # unmergeService
            portal = self.portals.pop(name)
            self._ports.release(portal.proxy_port)
            self.lb.delete_service(name)
            if portal.info.protocol == UDP:
                self._clear_udp_conntrack(portal.info.cluster_ip)
            changed += 1
        for name in sorted(infos):  # mergeService
            info = infos[name]
            key = same_config_key(info)
            old = self.portals.get(name)
            if old is not None and old.config == key:
                old.info = info
                continue
            if old is not None:
                self._ports.release(old.proxy_port)
            try:
                port = self._ports.allocate()
            except RuntimeError:
                # mergeService: "failed to allocate proxy port" is logged and
                # the service port is skipped: more service ports than proxy ports.
                self.portals.pop(name, None)
                self.unallocated.add(name)
                continue
            self.unallocated.discard(name)
            balancer = self.lb.new_service(name, info.session_affinity, info.sticky_seconds)
            self.portals[name] = Portal(name, info, port, balancer, key)
            changed += 1
        return changed

    def _clear_udp_conntrack(self, ip: int) -> None:
        """conntrack.ClearEntriesForIP(svcIP, UDP) when a UDP service goes away."""
        for entry in self.conntrack.entries():
            if entry.orig[0] == UDP and entry.orig[3] == ip:
                self.conntrack.delete(entry)

    def _build_rules(self) -> None:
        specs = [
            r.PortalSpec(str(p.name), p.info.protocol, p.info.port, p.info.cluster_ip, p.info.external_ips,
                         p.info.lb_vips, p.info.node_port, p.proxy_port)
            for p in sorted(self.portals.values(), key=lambda p: p.name)
        ]  # fmt: skip
        self.rules = r.jump_rules() + r.portal_rules(specs, self.listen_ip, self.host_ip)
        self.chains = r.chains_of(self.rules)
        self._index()
        self._nf = None

    def netfilter(self, literal: bool = False) -> Netfilter:
        """The rules as the kernel holds them, in the shared netfilter engine
        (built on first use after a sync: only trace and the tests need it)."""
        if literal or self._nf is None:
            local = [self.node_ip, *sorted(self.node_ips - {self.node_ip})]
            nf = Netfilter.from_save(self.dump(), local, filename="kube-proxy (userspace)", literal=literal)
            if literal:
                return nf
            self._nf = nf
        return self._nf

    def _index(self) -> None:
        """Per entry chain, the first portal rule for each (proto, dst, dport)
        and the rules a literal walk evaluates to reach it."""
        by_name = {str(p.name): p for p in self.portals.values()}
        container = self.chains.get(r.PORTALS_CONTAINER, [])
        host = self.chains.get(r.PORTALS_HOST, [])
        self._container, self._host = {}, {}
        for table, chain in ((self._container, container), (self._host, host)):
            for pos, rule in enumerate(chain, start=1):
                key = (rule.proto, rule.dst or 0, rule.dport)
                # The first rule for a key is the one a walk reaches (two
                # services never share an address and port).
                table.setdefault(key, (by_name[rule.service], rule, 1 + pos))
        self._np_container, self._np_host = {}, {}
        for np_table, chain_name, before in (
            (self._np_container, r.NODEPORT_CONTAINER, len(container)),
            (self._np_host, r.NODEPORT_HOST, len(host)),
        ):
            for pos, rule in enumerate(self.chains.get(chain_name, []), start=1):
                np_table.setdefault((rule.proto, rule.dport), (by_name[rule.service], rule, 2 + before + pos))
        n_np_c = len(self.chains.get(r.NODEPORT_CONTAINER, []))
        n_np_h = len(self.chains.get(r.NODEPORT_HOST, []))
        self._miss_cost = (2 + len(container), 2 + len(container) + n_np_c)
        self._miss_cost_host = (2 + len(host), 2 + len(host) + n_np_h)
        non_local = self.chains.get(f"filter {r.NODEPORT_NON_LOCAL}", [])
        self._non_local = {}
        for pos, rule in enumerate(non_local, start=1):
            self._non_local.setdefault((rule.proto, rule.dport), pos)
        self._non_local_rules = len(non_local)

    def _input_cost(self, proto: int, dst: int, dport: int, new: bool) -> int:
        """Rules filter INPUT evaluates for a packet delivered to the node
        (after any NAT): the jump to KUBE-NODEPORT-NON-LOCAL, then its rules
        up to the `--state NEW` ACCEPT for this proxy port, or all of them;
        a packet routed elsewhere meets no rule (FORWARD is empty)."""
        if not r.is_local(dst, self.node_ips):
            return 0
        pos = self._non_local.get((proto, dport)) if new else None
        return 1 + (pos if pos is not None else self._non_local_rules)

    # --- faults --------------------------------------------------------------

    def set_dead(self, ip: int, port: int, how: str = TIMEOUT) -> None:
        """Mark an endpoint dead: its dials time out (TIMEOUT: a host that does
        not answer) or are refused (REFUSED: a pod whose process died)."""
        if how not in (TIMEOUT, REFUSED):
            raise ValueError(f"how must be {TIMEOUT!r} or {REFUSED!r}")
        self.dead[(ip, port)] = how

    def set_alive(self, ip: int, port: int) -> None:
        self.dead.pop((ip, port), None)

    # --- the hot path --------------------------------------------------------

    def find_portal(self, packet: Packet) -> tuple[Portal | None, r.Rule | None, int]:
        """The indexed nat walk of a new connection: (portal, rule, nat rules
        evaluated). `_route` adds filter INPUT's part; the total equals the
        netfilter engine's walk (tests/proxy_modes/userspace)."""
        key = (packet.proto, packet.dst, packet.dport)
        if packet.local:
            hit = self._host.get(key)
            np, miss = self._np_host, self._miss_cost_host
        else:
            hit = self._container.get(key)
            np, miss = self._np_container, self._miss_cost
        if hit is not None and (not hit[1].dst_local or r.is_local(packet.dst, self.node_ips)):
            return hit
        if not r.is_local(packet.dst, self.node_ips):
            return None, None, miss[0]
        found = np.get((packet.proto, packet.dport))
        return found if found is not None else (None, None, miss[1])

    def decide(self, packet: Packet, now: float) -> Endpoint | None:
        """kube-proxy's own decision for a new connection, without the
        kernel's bookkeeping: the portal it arrives on and the endpoint the
        proxy connects it to (None: no portal, or no endpoint could be dialled)."""
        proto = packet.proto
        if proto == TCP and not packet.local and not self.dead:
            # The common case inlined: a ClusterIP portal, every dial succeeds.
            hit = self._container.get((TCP, packet.dst, packet.dport))
            if hit is not None and not hit[1].dst_local:
                self.last_latency = 0.0
                return hit[0].balancer.next(packet.src, now)
        portal, _, _ = self.find_portal(packet)
        if portal is None:
            return None
        if proto == UDP:
            return self._udp_endpoint(portal, packet, now, None)
        return self._dial(portal, packet.src, now, None)

    def route(self, packet: Packet, now: float) -> Decision:
        return self._route(packet, now, None)

    def _route(self, packet: Packet, now: float, steps: list[Step] | None) -> Decision:
        tracked = self.conntrack.track(packet[:5], packet.flags, now)
        if tracked is not None:
            return self._established(packet, now, tracked, steps)
        proto = packet.proto
        if proto == TCP and not OPENS[packet.flags & 0xFF]:
            # conntrack calls it INVALID and opens no entry: no nat table, no portal.
            return Decision(Verdict.ACCEPT, rules=self._input_cost(proto, packet.dst, packet.dport, False), lookups=1)
        portal, rule, cost = self.find_portal(packet)
        if portal is None or rule is None:
            # Not a service's: conntrack still tracks it (later packets skip the nat table).
            self.conntrack.create(packet[:5], now, flags=packet.flags)
            cost += self._input_cost(proto, packet.dst, packet.dport, True)
            return Decision(Verdict.ACCEPT, rules=cost, lookups=1)
        to = self._redirect_to(packet, rule)
        cost += self._input_cost(proto, to[0], to[1], True)
        if packet.proto == UDP:
            ep = self._udp_endpoint(portal, packet, now, steps)
        else:
            ep = self._dial(portal, packet.src, now, steps)
        # The kernel remembers the REDIRECT; kube-proxy's own connection to
        # the endpoint is a second, local flow, not tracked here.
        self.conntrack.create(packet[:5], now, to, flags=packet.flags, data=(portal, ep))
        lookups = 3 if portal.balancer.affinity else 2  # conntrack, the proxy's balancer, its affinity map
        if ep is None:
            verdict = Verdict.DROP if packet.proto == UDP else Verdict.REJECT
            return Decision(verdict, None, False, cost, lookups, portal.name)
        return Decision(Verdict.DNAT, ep, True, cost, lookups, portal.name)

    def _redirect_to(self, packet: Packet, rule: r.Rule) -> tuple[int, int]:
        # REDIRECT sends to the primary address of the incoming interface;
        # here that is the node's address (a pod bridge would give its own).
        return (rule.to_ip or self.host_ip, rule.to_port)

    def _established(
        self, packet: Packet, now: float, tracked: tuple[CtEntry, int, bool], steps: list[Step] | None
    ) -> Decision:
        entry, direction, valid = tracked
        if not valid:
            # INVALID for its connection: the packet leaves conntrack without
            # the entry, so no REDIRECT either; it goes on as it was sent.
            if steps is not None:
                steps.append(Step("conntrack", "conntrack: INVALID for its connection: not redirected"))
            return Decision(
                Verdict.ACCEPT, rules=self._input_cost(packet.proto, packet.dst, packet.dport, False), lookups=1
            )
        if direction == ORIGINAL:  # filter INPUT at the proxy port: NEW until the proxy answered
            new = not entry.status & SEEN_REPLY
            cost = self._input_cost(entry.orig[0], entry.reply[1], entry.reply[2], new)
        else:  # kube-proxy's reply, back to the client (filter INPUT when the client is the node)
            cost = self._input_cost(entry.orig[0], entry.orig[1], entry.orig[2], False)
        data = entry.data
        if data is None:
            return Decision(Verdict.ACCEPT, rules=cost, lookups=1, established=True)
        portal: Portal = data[0]  # type: ignore[index]
        ep: Endpoint | None = data[1]  # type: ignore[index]
        if packet.proto == UDP and direction == 0:
            # The kernel's entry lives on (30 s+), the proxy's association may not.
            ep = self._udp_endpoint(portal, packet, now, steps)
            entry.data = (portal, ep)
        if steps is not None:
            steps.append(Step("conntrack", "conntrack: an existing connection; the kernel keeps redirecting it to "
                              f"kube-proxy's port {portal.proxy_port}, which relays to "
                              f"{endpoint_text(ep) if ep else 'nothing'}"))  # fmt: skip
        if ep is None:
            return Decision(Verdict.DROP, None, False, cost, 1, portal.name, True)
        return Decision(Verdict.DNAT, ep, True, cost, 1, portal.name, True)

    def _dial(self, portal: Portal, client: int, now: float, steps: list[Step] | None) -> Endpoint | None:
        """TryConnectEndpoints for a TCP connection; sets last_latency."""
        if not self.dead and steps is None:
            self.last_latency = 0.0
            return portal.balancer.next(client, now)  # every dial succeeds
        dial = Dial(portal.balancer, client)
        waited = 0.0
        records: list[DialRecord] = []
        while (attempt := dial.next(now + waited)) is not None:
            ep, timeout = attempt
            how = self.dead.get(ep)
            records.append(DialRecord(ep, timeout, how or "connected"))
            if how is None:
                break
            waited += timeout if how == TIMEOUT else 0.0
            dial.failed()
        self.last_latency = waited
        if steps is not None:
            self._dial_steps(portal, records, dial, steps)
        if records and records[-1].result == "connected":
            return records[-1].endpoint
        return None

    def _udp_endpoint(self, portal: Portal, packet: Packet, now: float, steps: list[Step] | None) -> Endpoint | None:
        """getBackendConn: the client's association if alive, else a new one
        (TryConnectEndpoints over UDP, which cannot fail on a live balancer)."""
        client = (packet.src, packet.sport)
        assoc = portal.udp_clients.get(client)
        if assoc is not None and now < assoc[1]:
            assoc[1] = now + self.udp_idle_timeout
            if steps is not None:
                steps.append(Step("lookup", f"UDP client {int_to_ip(packet.src)}:{packet.sport} has an association "
                                  f"to {endpoint_text(assoc[0])} (idle timeout "
                                  f"{self.udp_idle_timeout:g} s): the datagram follows it"))  # fmt: skip
            found: Endpoint = assoc[0]
            return found
        portal.udp_clients.pop(client, None)
        ep = portal.balancer.next(packet.src, now)
        self.last_latency = 0.0
        if steps is not None:
            self._choice_steps(portal, packet.src, ep, steps)
        if ep is not None:
            portal.udp_clients[client] = [ep, now + self.udp_idle_timeout]
            if steps is not None:
                steps.append(Step("nat", f"new UDP association {int_to_ip(packet.src)}:{packet.sport} -> "
                                  f"{endpoint_text(ep)}, idle timeout {self.udp_idle_timeout:g} s"))  # fmt: skip
        return ep

    # --- trace ---------------------------------------------------------------

    def trace(self, packet: Packet, now: float) -> Trace:
        """The kernel's part as the netfilter engine walks the rendered rules
        (every chain and rule up to the REDIRECT/DNAT to the proxy port, and
        filter INPUT after it), then kube-proxy's: accept, choose, dial."""
        steps: list[Step] = []
        existing = self.conntrack.lookup(packet[:5], now) is not None
        affinity = None
        if not existing:
            self.netfilter().walk(packet, now, steps)
            portal, rule, _ = self.find_portal(packet)
            opens = packet.proto != TCP or OPENS[packet.flags & 0xFF]
            if portal is not None and rule is not None and opens:
                to = self._redirect_to(packet, rule)
                steps.append(Step("lookup", f"kube-proxy's socket for {portal.name} on {endpoint_text(to)} accepts "
                                  "the connection", {"proxy_port": portal.proxy_port}))  # fmt: skip
                affinity = self._affinity_text(portal, packet.src, now)
                if affinity is not None:
                    affinity += self._ttl_note(portal)
            else:
                steps.append(Step("return", "no portal matches: the packet is not a service's (ACCEPT, unchanged)"))
        decision = self._route(packet, now, steps)
        reach = [Reach(decision.endpoint[0], decision.endpoint[1], 1)] if decision.endpoint else []
        if decision.service is not None and not existing and decision.endpoint is None:
            steps.append(Step("verdict", self._failure_text(packet)))
        return Trace(self.name, packet, decision, reach, steps, affinity)

    def _affinity_text(self, portal: Portal, client: int, now: float) -> str | None:
        b = portal.balancer
        if not b.affinity:
            return None
        entry = b.affinity_entry(client)
        if entry is None:
            return f"miss: no entry for {int_to_ip(client)} (timeout {b.ttl} s)"
        ep, last = entry
        age = int(now - last)
        state = "hit" if age < b.ttl else "expired"
        return f"{state}: {int_to_ip(client)} -> {endpoint_text(ep)} (last used {age} s ago, timeout {b.ttl} s)"

    def _ttl_note(self, portal: Portal) -> str:
        """Why the balancer's timeout may not be the Service's."""
        asked = portal.info.sticky_seconds or DEFAULT_STICKY_SECONDS
        if asked == portal.balancer.ttl:
            return ""
        return (f" (the Service asks for {asked} s, but the balancer was created by the endpoints handler "
                "first and NewService keeps its ttl: roundrobin.go newServiceInternal)")  # fmt: skip

    def _choice_steps(self, portal: Portal, client: int, ep: Endpoint | None, steps: list[Step]) -> None:
        b = portal.balancer
        order = " ".join(endpoint_text(e) for e in b.endpoints) or "none"
        steps.append(Step("schedule", f"LoadBalancerRR {portal.name}: shuffled order [{order}], "
                          f"next index {b.index} -> {endpoint_text(ep) if ep else 'no endpoint'}",
                          {"order": [endpoint_text(e) for e in b.endpoints]}))  # fmt: skip

    def _dial_steps(self, portal: Portal, records: list[DialRecord], dial: Dial, steps: list[Step]) -> None:
        b = portal.balancer
        order = " ".join(endpoint_text(e) for e in b.endpoints) or "none"
        steps.append(Step("schedule", f"LoadBalancerRR {portal.name}: shuffled order [{order}]",
                          {"order": [endpoint_text(e) for e in b.endpoints]}))  # fmt: skip
        for n, rec in enumerate(records, start=1):
            ms = int(rec.timeout * 1000)
            outcome = {
                "connected": "connected",
                TIMEOUT: f"timed out after {ms} ms; affinity bypassed, next endpoint",
                REFUSED: "refused (RST); affinity bypassed, next endpoint",
            }[rec.result]
            steps.append(Step("schedule", f"dial {n}: {endpoint_text(rec.endpoint)} with a {ms} ms timeout: {outcome}",
                              {"endpoint": endpoint_text(rec.endpoint), "timeout": rec.timeout,
                               "result": rec.result}))  # fmt: skip
        if dial.error:
            steps.append(Step("note", f"TryConnectEndpoints: {dial.error}"))
        if self.last_latency:
            steps.append(Step("note", f"the client waited {self.last_latency:g} s for the dials"))

    def _failure_text(self, packet: Packet) -> str:
        if packet.proto == UDP:
            return "no endpoint: kube-proxy drops the datagram"
        return "kube-proxy accepted the connection and closes it: no endpoint could be dialled"

    # --- dumps ---------------------------------------------------------------

    def dump(self) -> str:
        return r.render(self.chains)

    def dump_with(self, show: str | None = None, fmt: str | None = None, stats: bool = False,
                  rate: bool = False) -> str:  # fmt: skip
        """`--show proxy`: the proxy's own state: port, order, index, affinity."""
        if show not in (None, "proxy") or fmt or stats or rate:
            raise UsageError("userspace mode: only --show proxy is available")
        if show is None:
            return self.dump()
        return self.proxy_table()

    def proxy_table(self) -> str:
        lines = ["SERVICE PORT\tPROTO\tPROXY PORT\tINDEX\tENDPOINTS (shuffled order)\tAFFINITY"]
        for portal in sorted(self.portals.values(), key=lambda p: p.name):
            b = portal.balancer
            order = ",".join(endpoint_text(e) for e in b.endpoints) or "<none>"
            aff = f"ClientIP {b.ttl}s ({len(b.clients)} clients)" if b.affinity else "None"
            lines.append(f"{portal.name}\t{proto_name(portal.info.protocol)}\t{portal.proxy_port}\t{b.index}\t"
                         f"{order}\t{aff}")  # fmt: skip
        lines += [f"{name}\t-\t<no proxy port left>\t-\t-\t-" for name in sorted(self.unallocated)]
        return "\n".join(lines) + "\n"
