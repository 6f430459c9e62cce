"""Traffic through a cluster, as a discrete-event simulation on a virtual clock.

Clients (pods, or hosts outside the cluster) open TCP connections or send UDP
requests to service addresses. Every packet leaves its sender over a netem
`Link`, enters a node, is decided by that node's proxy mode (a `Router`: the
kubenetem layer wraps a `proxy_modes` mode in one, so this module depends on
no mode), is routed by the node's host-gateway table (`topology.py`), crosses
the next link, and so on until a pod, a node-local socket or an outside host
takes it. Replies come back through the node that translated the request,
which undoes the translation. Time is integer nanoseconds; the clock is a
heap of `(time, seq, handler, a, b, c)` events, popped in order, `seq`
breaking ties first come first served.

What is modelled, and from where:

- TCP as Linux runs it, reduced to one request and one response per
  connection: SYN, SYN-ACK, ACK, request, response, FIN/ACK, FIN/ACK, ACK.
  A SYN is retransmitted after TCP_TIMEOUT_INIT (1 s, include/net/tcp.h,
  RFC 6298 2.1), doubling, `net.ipv4.tcp_syn_retries` (6) times; the connect
  fails after the last one's timeout, 127 s after the first SYN
  (tcp_timer.c tcp_write_timeout). After the handshake the RTO is the first
  RTT sample m plus max(2m, TCP_RTO_MIN = 200 ms) (tcp_input.c
  tcp_rtt_estimator, "make sure rto = 3*rtt": srtt = m, rttvar =
  max(2m, rto_min); __tcp_set_rto), doubling per retransmission up to
  TCP_RTO_MAX (120 s), at most `tcp_retries2` (15) times, a FIN after
  the application closed at most `tcp_orphan_retries` (8) times. A RST (a closed port) or an ICMP error in
  SYN_SENT fails the connect at once (tcp_ipv4.c tcp_v4_err, tcp_reset).
  The server answers every SYN with a SYN-ACK (a retransmitted SYN gets the
  SYN-ACK again, tcp_check_req); its own SYN-ACK timer is not modelled (the
  client's SYN retransmission recovers the same loss).
- UDP: one request datagram, one response; nothing retransmits, so a lost
  datagram is a lost request: the client gives up after UDP_REPLY_TIMEOUT
  (5 s, resolv.conf's default `timeout`, a typical UDP client).
- Each node calls its Router for every packet of a connection it translates
  (first packet: a decision; later ones and the replies: established state,
  e.g. IPVS moving a connection between inactive and active). A node that
  only forwards a connection asks the Router for the connection's opening
  packet only: the nat table is walked for new connections only, and later
  packets would merely refresh a conntrack entry there that translates
  nothing. The Router's modeled kernel cost (`cost_ns`) delays the packet.
- A user-space proxy (userspace mode) is two connections: the kernel
  REDIRECTs the client to the proxy on the node, which completes the
  handshake itself, then dials the endpoint (after the failed dials the
  Router reports: the dial oracle) from the node, relays the request and the
  response, and resets the client's connection when no dial succeeds.
- Pods die (`kill`): a deleted pod (`how="timeout"`) takes its veth with it,
  so packets to its address reach the node's bridge and nobody takes them:
  SYNs go unanswered and the client times out. (A node whose neighbour entry
  for the address fails, after its ARP probes go unanswered, also sends ICMP
  host unreachable; that is not modelled: the neighbour entry of an address
  in use stays valid for tens of seconds.) A pod whose process died but
  whose network namespace lives (`how="refused"`) answers a RST (TCP) or
  ICMP port unreachable (UDP): connection refused. Both answers are the
  kernel's (tests/netem/test_sim_kernel.py).

Speed (about one event per packet): a packet over a pod's own veth is
handled at once at its arrival time (`_to_host`), so is one a node only
forwards (`_to_transit`); retransmission timers become events only once a
packet of their connection is lost (see "retransmission timers"). Each rule
says when it is exact; otherwise every arrival and every timer is an event.
A steady link (a fixed delay: the common "delay 1ms") answers with the
arrival time alone (`Link.arrival`), and the cyclic garbage collector
rests during a run (`netem.gcpause.paused_gc`).
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import count
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .gcpause import paused_gc
from .link import CORRUPTED, Delivery, Link
from .netem_spec import parse_netem
from .packet import ACK, FIN, ICMP, PSH, RST, SYN, TCP, Flow, Packet
from .topology import BRIDGE, PodNet, Topology

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

NS = 1_000_000_000
MS = 1_000_000

TCP_TIMEOUT_INIT = NS  # include/net/tcp.h; RFC 6298 2.1
TCP_SYN_RETRIES = 6  # net.ipv4.tcp_syn_retries
TCP_RTO_MIN = 200 * MS  # include/net/tcp.h TCP_RTO_MIN
TCP_RTO_MAX = 120 * NS  # include/net/tcp.h TCP_RTO_MAX
TCP_RETRIES2 = 15  # net.ipv4.tcp_retries2
# A closed (orphaned) socket's FIN: net.ipv4.tcp_orphan_retries 0 means 8
# (tcp_timer.c tcp_orphan_retries()).
TCP_ORPHAN_RETRIES = 8
UDP_REPLY_TIMEOUT = 5 * NS  # resolv.conf(5) `timeout` default (RES_TIMEOUT)

# Bytes on the wire (IP header included): a SYN carries MSS, SACK-permitted,
# timestamps and window scale (20 bytes of options), later segments timestamps.
SYN_LEN = 60
ACK_LEN = 52
UDP_HDR = 28
ICMP_UNREACH_LEN = 56  # 20 IP + 8 ICMP + the offending IP header + 8 bytes
PORT_UNREACH, HOST_UNREACH = 3, 1  # ICMP destination unreachable codes

# The most links a packet crosses one way: an outside client's uplink, the
# entry node's eth0, a second node's eth0 (a reply via the entry node), a pod's veth.
MAX_HOPS = 4

# Kinds of hosts (where a socket lives) and of first hops.
POD, OUTSIDE, LOCAL = 0, 1, 2
TO_NODE, TO_HOST, NOWHERE = 0, 1, 2

# Client (initiator) and server (responder) states.
C_SYN, C_EST, C_REQ, C_FIN, C_DONE = range(5)
S_LISTEN, S_SYNRCVD, S_EST, S_RESP, S_LAST, S_CLOSED = range(6)

OK, TIMEOUT, REFUSED, RESET, UNREACHABLE = "ok", "timeout", "refused", "reset", "unreachable"

# ip_local_port_range default; connect() prefers even ports (inet_hashtables.c
# __inet_hash_connect since Linux 4.6).
EPHEMERAL_LOW, EPHEMERAL_HIGH = 32768, 60999

_new = tuple.__new__
NEVER = 1 << 62


class Router(Protocol):
    """A node's proxy mode as the simulation uses it (kubenetem wraps a ProxyMode).

    `route()` returns a decision with `verdict` ("DNAT", "ACCEPT", "DROP",
    "REJECT"), `endpoint`, `masquerade` and `service`, as proxy_modes.base's
    Decision. `proxy`: the mode is a user-space proxy (first packets go to
    `dial()`, which also returns the failed dials and the seconds they took).
    `desnat_replies`: the mode keeps no conntrack (IPVS's connection table):
    replies reach it with the masquerade already undone, as the kernel's
    conntrack does at PREROUTING before IPVS sees them. `reply_flow()`: the
    reply tuple the node's conntrack holds for a translated flow (None: no
    conntrack). `cost`: whether `cost_ns()` (modeled kernel time) is known.
    """

    proxy: bool
    desnat_replies: bool
    cost: bool

    def route(self, packet: Packet, now: float) -> Any: ...

    def dial(self, packet: Packet, now: float) -> tuple[Any, list[tuple[tuple[int, int], str]], float]: ...

    def reply_flow(self, flow: Flow, now: float) -> Flow | None: ...

    def cost_ns(self, decision: Any) -> int: ...


class Target(NamedTuple):
    """What a client connects to: a service port (ClusterIP, or a node's NodePort)."""

    name: str  # "ns/name:port" (the service port), for reports
    proto: int
    ip: int
    port: int
    node: str | None = None  # the node an outside client enters at (NodePort); None: the client's node


class Host:
    """Where sockets live: a pod, an outside host, or a node itself (LOCAL)."""

    __slots__ = ("dead", "dead_at", "down", "ip", "kind", "name", "next_port", "node", "up")

    def __init__(self, kind: int, ip: int, node: Node, name: str, up: Link | None, down: Link | None) -> None:
        self.kind = kind
        self.ip = ip
        self.node = node
        self.name = name
        self.up = up  # host -> node (a pod's eth0, an outside host's uplink)
        self.down = down  # node -> pod (the host side of the veth); None for outside and local
        self.dead = ""  # "", TIMEOUT (deleted) or REFUSED (its process died)
        self.dead_at = NEVER  # from when `dead` holds
        self.next_port = 0


class Node:
    """A node: its routing tables (topology), its Router, the link out of eth0."""

    __slots__ = ("hops", "ip", "local", "name", "net", "out", "router")

    def __init__(self, name: str, ip: int, out: Link | None) -> None:
        self.name = name
        self.ip = ip
        self.out = out
        self.router: Router | None = None
        self.hops: dict[int, tuple[Link | None, int, Any]] = {}  # dst -> first hop
        self.local = Host(LOCAL, ip, self, name, None, None)


class Conn:
    """One connection (or one UDP request), both ends' state in one object."""

    __slots__ = (
        "c_at",
        "c_rto",
        "c_sent",
        "c_tries",
        "c_wait",
        "client",
        "cst",
        "entry",
        "ep",
        "f_post",
        "f_pre",
        "leg1",
        "leg2",
        "local",
        "masq",
        "nat_node",
        "p_ep",
        "p_req",
        "p_wait",
        "proto",
        "proxied",
        "r_mode",
        "r_post",
        "r_pre",
        "redials",
        "resp",
        "s_at",
        "s_rto",
        "s_sent",
        "s_tries",
        "s_wait",
        "service",
        "sst",
        "syns",
        "t0",
        "t_conn",
        "t_syn",
        "t_synack",
        "target",
    )

    def __init__(self, proto: int, client: Host, entry: Node, f_pre: Flow, target: int, t0: int) -> None:
        self.proto = proto
        self.client = client
        self.entry = entry  # the first node the client's packets enter
        self.nat_node: Node | None = None  # the node that translates (None: nobody)
        self.target = target  # index into Sim.targets (-1: the proxy's own connection)
        self.local = client.kind == LOCAL
        self.f_pre = f_pre  # as the client sends it
        self.f_post = f_pre  # after the node's DNAT/SNAT
        self.r_pre = (f_pre[0], f_pre[3], f_pre[4], f_pre[1], f_pre[2])  # as the server sends it
        self.r_post = self.r_pre  # after the node undid the translation
        self.r_mode: Flow | None = None  # the reply as a conntrack-less mode wants it
        self.resp: Host | None = None
        self.ep: tuple[int, int] | None = None
        self.masq = False
        self.service: object = None
        self.t0 = t0
        self.t_syn = t0
        self.t_conn = -1
        self.t_synack = 0
        self.syns = 0
        self.redials = 0
        self.cst = C_SYN
        self.sst = S_LISTEN
        self.c_at = self.c_sent = self.c_wait = self.c_rto = self.c_tries = 0
        self.s_at = self.s_sent = self.s_wait = self.s_rto = self.s_tries = 0
        # a user-space proxy's leg 1 (client <-> proxy) and leg 2 (proxy <-> endpoint)
        self.proxied = False
        self.p_ep: tuple[int, int] | None = None
        self.p_wait = 0
        self.p_req = False
        self.leg1: Conn | None = None
        self.leg2: Conn | None = None


class Client:
    """A client process: `left` more connections, one every `interval` ns."""

    __slots__ = ("host", "interval", "left", "targets")

    def __init__(self, host: Host, targets: list[int], left: int, interval: int) -> None:
        self.host = host
        self.targets = targets
        self.left = left
        self.interval = interval


# A finished connection: (start, end, result, target index, endpoint, handshake ns
# (-1: none), SYN retransmissions, failed proxy dials, client address).
Record = tuple[int, int, str, int, "tuple[int, int] | None", int, int, int, int]


class Sim:
    """The simulation: build it, add clients and events, `run()`, read `records`."""

    def __init__(
        self,
        topology: Topology,
        router_for: Callable[[str], Router],
        rng: random.Random,
        link: str | None = None,
        request_bytes: int = 100,
        response_bytes: int = 1000,
        capture: bool = False,
    ) -> None:
        self.topology = topology
        self.router_for = router_for
        self.rng = rng
        self.link_spec = link
        self.request_len = ACK_LEN + request_bytes
        self.response_len = ACK_LEN + response_bytes
        self.udp_request_len = UDP_HDR + request_bytes
        self.udp_response_len = UDP_HDR + response_bytes
        self.heap: list[tuple[int, int, Any, Any, Any, Any]] = []
        self._next = count().__next__  # tie-breaker: first come, first served
        # Handlers bound once (a method looked up on self is a new object each time).
        self.h_fwd: Any = self._fwd_node
        self.h_rev: Any = self._rev_node
        self.h_resp: Any = self._at_responder
        self.h_init: Any = self._at_initiator
        self.now = 0
        self.links: list[Link] = []
        self.nodes: dict[str, Node] = {}
        self.hosts: dict[int, Host] = {}  # pods and outside hosts by address
        self.targets: list[Target] = []
        self.records: list[Record] = []
        # Every packet as its sender sent it and as a node translated it
        # (not again at each hop: one capture per tuple and transmission).
        self.captured: list[tuple[int, Packet]] | None = [] if capture else None
        spec = parse_netem(link) if link is not None else None
        if spec is not None and spec.slot_enabled:
            raise ValueError("netem `slot` releases packets at slot times; the simulation drives links with send()")
        # Hosts handle packets from their own veth at once unless the order of
        # sends matters: jitter and reorder reorder, a rate queues.
        self.inline = spec is None or not (spec.jitter or spec.rate or spec.gap or spec.reorder)
        # Timers only on loss (see "retransmission timers") while a handshake
        # (at most MAX_HOPS links each way) fits in the first SYN's timeout.
        self.lazy = self.inline and (spec is None or 2 * MAX_HOPS * spec.latency < TCP_TIMEOUT_INIT)
        self.sent = 0  # packets put on the network by endpoints (retransmissions included)
        self.retransmissions = 0
        self.drops: dict[str, int] = {"verdict": 0, "dead_pod": 0, "unroutable": 0, "corrupted": 0, "no_socket": 0}
        for name, net in topology.nodes.items():
            self.nodes[name] = Node(name, net.ip, self._link())
        for pod in topology.pods.values():
            self._add_host(pod)

    # --- building --------------------------------------------------------------

    def _link(self) -> Link | None:
        if self.link_spec is None:
            return None
        link = Link.from_tc(self.link_spec, self.rng)
        self.links.append(link)
        return link

    def _add_host(self, pod: PodNet) -> Host:
        host = Host(POD, pod.ip, self.nodes[pod.node], f"{pod.namespace}/{pod.name}", self._link(), self._link())
        self.hosts[pod.ip] = host
        return host

    def add_pod(self, namespace: str, name: str, ip: int, node: str) -> Host:
        """A pod that appears during the run (scale up, rolling update)."""
        self.topology.add_pod(namespace, name, ip, node)
        for n in self.nodes.values():
            n.hops.clear()
        return self._add_host(self.topology.pods[ip])

    def add_client_pod(self, name: str, node: str) -> Host:
        """A client pod on `node`, its address from the top of the node's podCIDR."""
        net = self.topology.node(node)
        if not net.pod_cidrs:
            raise ValueError(f"node {node} has no podCIDR for client pods")
        ip = net.pod_cidrs[0].last - 1
        while ip in self.topology.pods or ip in self.hosts:
            ip -= 1
        if ip <= net.pod_cidrs[0].network + 1:
            raise ValueError(f"node {node}: no free address in {net.pod_cidrs[0]} for client pods")
        return self.add_pod("kubenetem-sim", name, ip, node)

    def add_outside_host(self, ip: int, name: str) -> Host:
        host = Host(OUTSIDE, ip, next(iter(self.nodes.values())), name, self._link(), None)
        self.hosts[ip] = host
        return host

    def target_index(self, target: Target) -> int:
        self.targets.append(target)
        return len(self.targets) - 1

    def add_client(self, host: Host, targets: list[int], connections: int, start: int, interval: int) -> None:
        """A client on `host` opening `connections`, the first at `start`, then one every `interval` ns."""
        if connections <= 0:
            return
        client = Client(host, targets, connections, interval)
        heappush(self.heap, (start, self._next(), self._start, client, None, None))

    def at(self, t: int, fn: Callable[[int], None]) -> None:
        """Run `fn(t)` at time `t` (control-plane events: kills, syncs, scaling)."""
        heappush(self.heap, (t, self._next(), _call, fn, None, None))

    def kill(self, ip: int, how: str = TIMEOUT, at: int | None = None) -> None:
        """The pod at `ip` dies at `at` (default: now). TIMEOUT: deleted, its
        packets vanish; REFUSED: its process died. Known in advance, so that a
        packet handled ahead of its arrival (see `_to_host`) meets it."""
        if how not in (TIMEOUT, REFUSED):
            raise ValueError(f"how must be {TIMEOUT!r} or {REFUSED!r}")
        host = self.hosts[ip]
        when = self.now if at is None else at
        if when < host.dead_at:
            host.dead, host.dead_at = how, when

    def is_dead(self, ip: int, t: int) -> bool:
        host = self.hosts.get(ip)
        return host is not None and host.dead_at <= t

    def routers(self) -> dict[str, Router]:
        """The Routers made so far (nodes that saw traffic), by node name."""
        return {name: n.router for name, n in self.nodes.items() if n.router is not None}

    # --- the clock ----------------------------------------------------------------

    def run(self, until: int | None = None) -> None:
        """Pop events in time order until none is left (or the next is after `until`)."""
        # The cyclic collector rests for the run: it allocates many short-lived
        # tuples and keeps what the modes learn, so CPython's generational
        # collector would pass over it hundreds of times and walk every
        # node's rule tables in each full pass (10-15% of a ten-node run,
        # measured). Reference counting frees nearly everything as it goes;
        # the only cycles, a user-space proxy's two legs, stay collectable
        # (nothing is frozen).
        with paused_gc(freeze=False):
            self._run(until)

    def _run(self, until: int | None) -> None:
        heap = self.heap
        pop = heappop
        if until is None:  # the usual whole run: no bound to check per event
            while heap:
                t, _, fn, a, b, c = pop(heap)
                self.now = t
                fn(t, a, b, c)
            return
        while heap:
            event = pop(heap)
            t = event[0]
            if t > until:
                heappush(heap, event)
                return
            self.now = t
            event[2](t, event[3], event[4], event[5])

    def _to_node(self, link: Link | None, pkt: Packet, t: int, fn: Any, node: Any, conn: Conn) -> None:
        """Put `pkt` on `link` at `t` towards a node (or over a node's shared
        eth0): each copy that arrives is an event, so nodes and shared links
        see packets in time order."""
        if link is None:
            if t <= self.now:
                fn(t, node, conn, pkt)
            else:
                heappush(self.heap, (t, self._next(), fn, node, conn, pkt))
        elif link.steady:  # one copy at a known time, or none (see Link.arrival)
            when = link.arrival(pkt, t)
            if when is None:
                self._lost(conn)
            else:
                heappush(self.heap, (when, self._next(), fn, node, conn, pkt))
        else:
            for when, p, _ in self._arrived(link.send(pkt, t), conn):
                heappush(self.heap, (when, self._next(), fn, node, conn, p))

    def _arrived(self, deliveries: list[Delivery], conn: Conn) -> list[Delivery]:
        """What a link delivered intact: a lost or corrupted (the receiver's checksum fails) packet is lost."""
        if len(deliveries) == 1 and not deliveries[0][2]:
            return deliveries  # the common case: one unmarked copy
        intact = [d for d in deliveries if not d[2] & CORRUPTED]
        self.drops["corrupted"] += len(deliveries) - len(intact)
        if len(intact) < len(deliveries) or not deliveries:
            self._lost(conn)
        return intact

    def _to_transit(self, link: Link | None, pkt: Packet, t: int, node: Node, conn: Conn) -> None:
        """Towards a node that only forwards this packet (not the connection's
        first): that node asks no Router and sends on over the pod's own veth,
        so, as in `_to_host`, it is handled at once at its arrival time."""
        if link is None:
            self._forward(t, node, conn, pkt, True)
        elif link.steady:
            when = link.arrival(pkt, t)
            if when is None:
                self._lost(conn)
            else:
                self._forward(when, node, conn, pkt, True)
        else:
            for when, p, _ in self._arrived(link.send(pkt, t), conn):
                self._forward(when, node, conn, p, True)

    def _to_host(self, link: Link | None, pkt: Packet, t: int, fn: Any, host: Host, conn: Conn, due: int) -> None:
        """Put `pkt` on a pod's (or client's) own veth at `t`.

        Nothing else shares that veth or the connection's state at the far
        end, so with links whose order of sends does not matter (no jitter,
        rate or reorder: `inline`) the host handles the packet at once, at
        its arrival time, instead of as an event: one event less per packet.
        Death (`dead_at`) is known ahead, and a connection whose own timer
        (`due`) runs out before the arrival waits for its event as usual.
        Copies that jitter reorders on a veth would be handled in send order,
        hence inline only without jitter."""
        if link is None:
            self._at_host(t, pkt, fn, host, conn, due)
        elif link.steady:  # the hot path: `_at_host` inlined
            when = link.arrival(pkt, t)
            if when is None:
                self._lost(conn)
            elif self.inline and (not due or due >= when):
                fn(when, host, conn, pkt)
            else:
                heappush(self.heap, (when, self._next(), fn, host, conn, pkt))
        else:
            for when, p, _ in self._arrived(link.send(pkt, t), conn):
                self._at_host(when, p, fn, host, conn, due)

    def _at_host(self, t: int, pkt: Packet, fn: Any, host: Host, conn: Conn, due: int) -> None:
        """`pkt` reaches `host` over its own veth at `t`: handled now if that is exact (see `_to_host`)."""
        if self.inline and (not due or due >= t):
            fn(t, host, conn, pkt)
        else:
            heappush(self.heap, (t, self._next(), fn, host, conn, pkt))

    # --- clients ----------------------------------------------------------------

    def _start(self, t: int, client: Client, _a: object, _b: object) -> None:
        client.left -= 1
        if client.left > 0:
            heappush(self.heap, (t + client.interval, self._next(), self._start, client, None, None))
        targets = client.targets
        index = targets[0] if len(targets) == 1 else targets[self.rng.randrange(len(targets))]
        target = self.targets[index]
        host = client.host
        entry = host.node if target.node is None else self.nodes[target.node]
        conn = Conn(
            target.proto, host, entry, (target.proto, host.ip, self._port(host), target.ip, target.port), index, t
        )
        conn.nat_node = entry
        self._open(t, conn)

    def _port(self, host: Host) -> int:
        port = host.next_port
        if not port:
            port = EPHEMERAL_LOW + 2 * self.rng.randrange((EPHEMERAL_HIGH - EPHEMERAL_LOW) // 2)
        nxt = port + 2
        host.next_port = nxt if nxt <= EPHEMERAL_HIGH else EPHEMERAL_LOW
        return port

    def _open(self, t: int, conn: Conn) -> None:
        if conn.proto == TCP:
            conn.syns = 1
            self._c_out(t, conn, TCP_TIMEOUT_INIT)
            self._c_send(t, conn, SYN, SYN_LEN)
        else:
            self._c_out(t, conn, UDP_REPLY_TIMEOUT)
            self._c_send(t, conn, 0, self.udp_request_len)

    def _c_send(self, t: int, conn: Conn, flags: int, length: int) -> None:
        """The client sends a segment (always in its own, untranslated form)."""
        f = conn.f_pre
        pkt = _new(Packet, (f[0], f[1], f[2], f[3], f[4], conn.local, "", flags, length))
        self.sent += 1
        if self.captured is not None:
            self.captured.append((t, pkt))
        host = conn.client
        if host.kind == LOCAL:
            self._fwd_node(t, conn.entry, conn, pkt)
        else:
            self._to_node(host.up, pkt, t, self.h_fwd, conn.entry, conn)

    def _s_send(self, t: int, conn: Conn, flags: int, length: int) -> None:
        """The server (pod or proxy) sends a segment, as it sees the flow."""
        host = conn.resp
        assert host is not None
        f = conn.r_pre
        local = host.kind == LOCAL
        pkt = _new(Packet, (f[0], f[1], f[2], f[3], f[4], local, "", flags, length))
        self.sent += 1
        if self.captured is not None and not conn.proxied:  # a proxy's own replies are captured translated
            self.captured.append((t, pkt))
        if local:
            self._rev_node(t, host.node, conn, pkt)
        else:
            self._to_node(host.up, pkt, t, self.h_rev, host.node, conn)

    def _s_icmp(self, t: int, conn: Conn, code: int) -> None:
        """ICMP destination unreachable from the server's address about the client's packet.

        Encoded as Packet(ICMP, src, inner dport, dst, inner sport, flags =
        code | inner protocol << 8): the inner header is the outer one reversed."""
        host = conn.resp
        assert host is not None
        f = conn.r_pre
        pkt = _new(Packet, (ICMP, f[1], f[2], f[3], f[4], False, "", code | conn.proto << 8, ICMP_UNREACH_LEN))
        self.sent += 1
        if self.captured is not None:
            self.captured.append((t, pkt))
        self._to_node(host.up, pkt, t, self.h_rev, host.node, conn)

    # --- nodes --------------------------------------------------------------------

    def router(self, node: Node) -> Router:
        """The node's Router, made (and synced) on first use."""
        router = node.router
        if router is None:
            router = node.router = self.router_for(node.name)
        return router

    def _fwd_node(self, t: int, node: Node, conn: Conn, pkt: Packet) -> None:
        """A packet from the client's side enters `node`."""
        router = node.router or self.router(node)
        if node is conn.nat_node:
            if conn.proxied:
                router.route(pkt, t / NS)  # the kernel's REDIRECT entry; the proxy's socket takes it
                self._at_responder(t, node.local, conn, pkt)
                return
            if conn.ep is None and router.proxy:
                d, failed, wait = router.dial(pkt, t / NS)
                if d.service is not None:
                    self._bind_proxy(t, node, conn, d, failed, wait)
                    self._at_responder(t, node.local, conn, pkt)
                    return
            else:
                d = router.route(pkt, t / NS)
            if router.cost:
                t += router.cost_ns(d)
            verdict = d.verdict
            if verdict == "DNAT":
                if d.endpoint != conn.ep:
                    self._bind(t, node, conn, d)
                f = conn.f_post
                pkt = _new(Packet, (f[0], f[1], f[2], f[3], f[4], pkt[5], pkt[6], pkt[7], pkt[8]))
                if self.captured is not None:
                    self.captured.append((t, pkt))
            elif verdict == "REJECT":
                self._reject(t, node, conn)
                return
            elif verdict != "ACCEPT":
                self.drops["verdict"] += 1
                self._lost(conn)
                return
        elif pkt[0] != TCP or pkt[7] & (SYN | ACK) == SYN:
            # Only forwarded here: the nat table sees the connection's first packet.
            d = router.route(pkt, t / NS)
            if router.cost:
                t += router.cost_ns(d)
            if d.verdict in ("DROP", "REJECT"):
                self.drops["verdict"] += 1
                self._lost(conn)
                return
        self._forward(t, node, conn, pkt, True)

    def _rev_node(self, t: int, node: Node, conn: Conn, pkt: Packet) -> None:
        """A packet from the server's side enters `node`; the translating node undoes the NAT."""
        if node is not conn.nat_node:
            self._forward(t, node, conn, pkt, False)
            return
        f = conn.r_post
        if pkt[0] == ICMP:  # conntrack translates the error with its connection (RELATED)
            out = _new(Packet, (ICMP, f[1], f[2], f[3], f[4], False, "", pkt[7], pkt[8]))
            if self.captured is not None:
                self.captured.append((t, out))
            self._forward(t, node, conn, out, False)
            return
        router = node.router or self.router(node)
        seen = pkt
        m = conn.r_mode
        if m is not None:
            seen = _new(Packet, (m[0], m[1], m[2], m[3], m[4], pkt[5], pkt[6], pkt[7], pkt[8]))
        d = router.route(seen, t / NS)
        if router.cost:
            t += router.cost_ns(d)
        if d.verdict == "DROP":
            self.drops["verdict"] += 1
            self._lost(conn)
            return
        out = _new(Packet, (f[0], f[1], f[2], f[3], f[4], False, "", pkt[7], pkt[8]))
        if self.captured is not None:
            self.captured.append((t, out))
        self._forward(t, node, conn, out, False)

    def _bind(self, t: int, node: Node, conn: Conn, d: Any) -> None:
        """The node translated the connection to `d.endpoint`: its flows from now on."""
        router = node.router
        assert router is not None
        ep: tuple[int, int] = d.endpoint
        proto, cip, cport, vip, vport = conn.f_pre
        conn.ep = ep
        conn.masq = d.masquerade
        conn.service = d.service
        conn.resp = self._host_at(ep[0])
        reply = router.reply_flow(conn.f_pre, t / NS)
        if reply is None:
            # No conntrack to ask (IPVS): MASQUERADE takes the address of the
            # route out (nf_nat_masquerade_ipv4) and keeps the port.
            snat = (self._source(node, ep[0]), cport) if d.masquerade else (cip, cport)
            reply = (proto, ep[0], ep[1], snat[0], snat[1])
        conn.r_pre = reply
        conn.f_post = (proto, reply[3], reply[4], reply[1], reply[2])
        conn.r_post = (proto, vip, vport, cip, cport)
        conn.r_mode = (proto, ep[0], ep[1], cip, cport) if router.desnat_replies else None

    def _host_at(self, ip: int) -> Host | None:
        """The socket owner at an endpoint address: a pod, or a node (hostNetwork pods)."""
        host = self.hosts.get(ip)
        if host is None:
            name = self.topology.node_ips.get(ip)
            if name is not None:
                return self.nodes[name].local
        return host

    def _source(self, node: Node, dst: int) -> int:
        net = self.topology.nodes[node.name]
        found = net.lookup(dst)
        return node.ip if found is None else net.source_for(found[1])

    def _reject(self, t: int, node: Node, conn: Conn) -> None:
        """REJECT: ICMP port unreachable back to the client (connection refused)."""
        self.drops["verdict"] += 1
        f = conn.f_pre
        pkt = _new(Packet, (ICMP, f[3], f[4], f[1], f[2], False, "", PORT_UNREACH | f[0] << 8, ICMP_UNREACH_LEN))
        self.sent += 1
        if self.captured is not None:
            self.captured.append((t, pkt))
        self._forward(t, node, conn, pkt, False)

    def _forward(self, t: int, node: Node, conn: Conn, pkt: Packet, fwd: bool) -> None:
        hop = node.hops.get(pkt[3])
        if hop is None:
            hop = node.hops[pkt[3]] = self._first_hop(node, pkt[3])
        link, kind, target = hop
        if kind == TO_HOST:
            host_kind = target.kind
            if host_kind == POD:
                if fwd:
                    self._to_host(link, pkt, t, self.h_resp, target, conn, conn.s_at)
                else:
                    self._to_host(link, pkt, t, self.h_init, target, conn, conn.c_at)
            elif host_kind == LOCAL:
                (self.h_resp if fwd else self.h_init)(t, target, conn, pkt)
            else:  # an outside host, over the node's shared eth0
                self._to_node(link, pkt, t, self.h_resp if fwd else self.h_init, target, conn)
        elif kind == TO_NODE:
            if fwd and self.inline and target is not conn.nat_node and (pkt[0] == TCP and pkt[7] & (SYN | ACK) != SYN):
                self._to_transit(link, pkt, t, target, conn)
            else:
                self._to_node(link, pkt, t, self.h_fwd if fwd else self.h_rev, target, conn)
        else:
            self.drops["unroutable"] += 1
            self._lost(conn)

    def _first_hop(self, node: Node, dst: int) -> tuple[Link | None, int, Any]:
        """Where `node` sends a packet for `dst`: its routing table (fib_lookup), then who is there."""
        found = self.topology.nodes[node.name].lookup(dst)
        if found is None:
            return (None, NOWHERE, None)
        table, route = found
        if table == "local":
            return (None, TO_HOST, node.local)
        host = self.hosts.get(dst)
        if route.dev == BRIDGE:
            if host is not None and host.node is node and host.kind == POD:
                return (host.down, TO_HOST, host)
            return (None, NOWHERE, None)
        via = route.via if route.via is not None else dst
        other = self.topology.node_ips.get(via)
        if other is not None:
            return (node.out, TO_NODE, self.nodes[other])
        if host is not None and host.kind == OUTSIDE:
            return (node.out, TO_HOST, host)
        return (None, NOWHERE, None)

    # --- arrivals -------------------------------------------------------------------

    def _at_responder(self, t: int, host: Host, conn: Conn, pkt: Packet) -> None:
        if host is not conn.resp:
            self.drops["no_socket"] += 1  # e.g. an ACCEPTed packet to a node address nobody listens on
            self._lost(conn)
            return
        if host.dead_at <= t:
            self._dead(t, conn, pkt, host.dead)
        elif conn.proto == TCP:
            self._srv_tcp(t, conn, pkt[7])
        else:
            self._srv_udp(t, conn)

    def _at_initiator(self, t: int, host: Host, conn: Conn, pkt: Packet) -> None:
        if host is not conn.client:
            self.drops["no_socket"] += 1
            self._lost(conn)
            return
        if pkt[0] == ICMP:
            self._c_fail(t, conn, REFUSED if pkt[7] & 0xFF == PORT_UNREACH else UNREACHABLE)
        elif conn.proto == TCP:
            self._cli_tcp(t, conn, pkt[7])
        else:
            self._cli_udp(t, conn)

    def _dead(self, t: int, conn: Conn, pkt: Packet, how: str) -> None:
        if how == TIMEOUT:
            self.drops["dead_pod"] += 1
            self._lost(conn)
        elif pkt[0] == TCP:
            if not pkt[7] & RST:
                self._s_send(t, conn, RST | ACK, ACK_LEN - 12)  # tcp_v4_send_reset: no options
        else:
            self._s_icmp(t, conn, PORT_UNREACH)

    # --- retransmission timers ------------------------------------------------------
    #
    # Each side has at most one segment outstanding (SYN, request, FIN;
    # response, FIN): sent at `*_sent`, retransmitted `*_wait` ns later unless
    # acknowledged (`*_wait` = 0). With links that keep their order (`lazy`)
    # the timer becomes an event only when one of the connection's packets
    # is lost (a link drop, a dead pod, a DROP verdict): a timer that is
    # never lost to would only be cancelled, so only the losses pay for one.
    # That is exact as long as no round trip exceeds the RTO, which jitter, a
    # rate's queue or long delays can cause; then every timer is armed at once.

    def _c_out(self, t: int, conn: Conn, wait: int) -> None:
        conn.c_sent = t
        conn.c_wait = wait
        if not self.lazy:
            self._arm_c(conn)

    def _s_out(self, t: int, conn: Conn, wait: int) -> None:
        conn.s_sent = t
        conn.s_wait = wait
        if not self.lazy:
            self._arm_s(conn)

    def _lost(self, conn: Conn) -> None:
        """A packet of `conn` is gone: whatever either side waits for will need
        its timer, and so does the client a proxy's connection works for."""
        if self.lazy:
            if conn.c_wait:
                self._arm_c(conn)
            if conn.s_wait:
                self._arm_s(conn)
            if conn.leg1 is not None:
                self._lost(conn.leg1)

    def _arm_c(self, conn: Conn) -> None:
        deadline = conn.c_sent + conn.c_wait
        at = conn.c_at
        if at == 0 or deadline < at:
            conn.c_at = deadline
            heappush(self.heap, (deadline, self._next(), self._c_timer, conn, None, None))

    def _arm_s(self, conn: Conn) -> None:
        deadline = conn.s_sent + conn.s_wait
        at = conn.s_at
        if at == 0 or deadline < at:
            conn.s_at = deadline
            heappush(self.heap, (deadline, self._next(), self._s_timer, conn, None, None))

    def _c_timer(self, t: int, conn: Conn, _a: object, _b: object) -> None:
        if t != conn.c_at:
            return  # superseded by an earlier timer
        conn.c_at = 0
        if not conn.c_wait or conn.cst == C_DONE:
            return
        deadline = conn.c_sent + conn.c_wait
        if deadline > t:  # the segment was sent again since: wait for the new deadline
            conn.c_at = deadline
            heappush(self.heap, (deadline, self._next(), self._c_timer, conn, None, None))
            return
        st = conn.cst
        if conn.proto != TCP:
            self._c_fail(t, conn, TIMEOUT)
        elif st == C_SYN:
            if conn.syns > TCP_SYN_RETRIES:
                self._c_fail(t, conn, TIMEOUT)
                return
            self.retransmissions += 1
            conn.syns += 1
            conn.t_syn = t
            self._c_out(t, conn, TCP_TIMEOUT_INIT << (conn.syns - 1))
            self._c_send(t, conn, SYN, SYN_LEN)
        else:
            if conn.c_tries >= (TCP_RETRIES2 if st == C_REQ else TCP_ORPHAN_RETRIES):
                if st == C_REQ:
                    self._c_fail(t, conn, TIMEOUT)
                else:
                    conn.cst = C_DONE
                return
            conn.c_tries += 1
            self.retransmissions += 1
            conn.c_rto = min(conn.c_rto * 2, TCP_RTO_MAX)
            self._c_out(t, conn, conn.c_rto)
            if st == C_REQ:
                self._c_send(t, conn, PSH | ACK, self.request_len)
            else:
                self._c_send(t, conn, FIN | ACK, ACK_LEN)

    def _s_timer(self, t: int, conn: Conn, _a: object, _b: object) -> None:
        if t != conn.s_at:
            return
        conn.s_at = 0
        st = conn.sst
        if not conn.s_wait or st not in (S_RESP, S_LAST):
            return
        deadline = conn.s_sent + conn.s_wait
        if deadline > t:
            conn.s_at = deadline
            heappush(self.heap, (deadline, self._next(), self._s_timer, conn, None, None))
            return
        if conn.s_tries >= (TCP_RETRIES2 if st == S_RESP else TCP_ORPHAN_RETRIES):
            conn.sst = S_CLOSED
            conn.s_wait = 0
            return
        conn.s_tries += 1
        conn.s_rto = min(conn.s_rto * 2, TCP_RTO_MAX)
        self.retransmissions += 1
        self._s_out(t, conn, conn.s_rto)
        if st == S_RESP:
            self._s_send(t, conn, PSH | ACK, self.response_len)
        else:
            self._s_send(t, conn, FIN | ACK, ACK_LEN)

    # --- TCP, the client's side ---------------------------------------------------------

    def _cli_tcp(self, t: int, conn: Conn, flags: int) -> None:
        st = conn.cst
        if flags & RST:
            self._c_fail(t, conn, REFUSED if st == C_SYN else RESET)
            return
        if st == C_SYN:
            if flags & SYN and flags & ACK:
                conn.t_conn = t
                m = t - conn.t_syn
                conn.c_rto = min(m + max(2 * m, TCP_RTO_MIN), TCP_RTO_MAX)
                conn.c_wait = 0
                conn.cst = C_EST
                self._c_send(t, conn, ACK, ACK_LEN)
                leg1 = conn.leg1
                if leg1 is None or leg1.p_req:
                    self._c_request(t, conn)
            return
        if flags & SYN:  # a SYN-ACK again: our ACK was lost
            self._c_send(t, conn, ACK, ACK_LEN)
            return
        if st == C_REQ:
            if flags & PSH:
                self._c_response(t, conn)
            elif not flags & FIN:
                conn.c_wait = 0  # the request is acknowledged; the response will come
            return
        if st in (C_FIN, C_DONE):
            if flags & FIN:
                self._c_send(t, conn, ACK, ACK_LEN)
                conn.cst = C_DONE
                conn.c_wait = 0
            elif flags & PSH:
                self._c_send(t, conn, ACK, ACK_LEN)

    def _c_request(self, t: int, conn: Conn) -> None:
        conn.cst = C_REQ
        conn.c_tries = 0
        self._c_out(t, conn, conn.c_rto)
        self._c_send(t, conn, PSH | ACK, self.request_len)

    def _c_response(self, t: int, conn: Conn) -> None:
        conn.cst = C_FIN
        conn.c_tries = 0
        self._c_out(t, conn, conn.c_rto)
        self._c_send(t, conn, FIN | ACK, ACK_LEN)
        leg1 = conn.leg1
        if leg1 is not None:
            self._relay_response(t, leg1)
        else:
            self._record(t, conn, OK)

    def _c_fail(self, t: int, conn: Conn, why: str) -> None:
        """The client gives up (or is told to); recorded unless the response was already in."""
        st = conn.cst
        conn.cst = C_DONE
        conn.c_wait = 0
        if st >= C_FIN:
            return
        leg1 = conn.leg1
        if leg1 is not None:
            # The proxy's connection to the endpoint failed: it closes the client's.
            if leg1.proto == TCP and leg1.sst < S_CLOSED:
                leg1.sst = S_CLOSED
                leg1.s_wait = 0
                self._s_send(t, leg1, RST | ACK, ACK_LEN - 12)
        else:
            self._record(t, conn, why)

    # --- TCP, the server's side -------------------------------------------------------

    def _srv_tcp(self, t: int, conn: Conn, flags: int) -> None:
        st = conn.sst
        if flags & RST:
            conn.sst = S_CLOSED
            conn.s_wait = 0
            return
        if flags & SYN:
            if st <= S_SYNRCVD:
                conn.sst = S_SYNRCVD
                conn.t_synack = t
                self._s_send(t, conn, SYN | ACK, SYN_LEN)
            return
        if st == S_SYNRCVD:
            m = t - conn.t_synack
            conn.s_rto = min(m + max(2 * m, TCP_RTO_MIN), TCP_RTO_MAX)
            conn.sst = st = S_EST
            if conn.proxied:
                self._proxy_accept(t, conn)
        if flags & PSH:
            if st == S_EST and not conn.p_req:
                self._request(t, conn)
            else:
                self._s_send(t, conn, ACK, ACK_LEN)  # a duplicate: ACK it again
            return
        if flags & FIN:
            if st in (S_EST, S_RESP, S_CLOSED):
                conn.sst = S_LAST  # the FIN acknowledges the response; close too
                conn.s_tries = 0
                self._s_out(t, conn, conn.s_rto or TCP_TIMEOUT_INIT)
                self._s_send(t, conn, FIN | ACK, ACK_LEN)
            elif st == S_LAST:
                self._s_send(t, conn, FIN | ACK, ACK_LEN)
            return
        if st == S_LAST:
            conn.sst = S_CLOSED
            conn.s_wait = 0

    def _request(self, t: int, conn: Conn) -> None:
        conn.p_req = True
        if conn.proxied:
            self._s_send(t, conn, ACK, ACK_LEN)  # the kernel acknowledges; the proxy relays
            leg2 = conn.leg2
            if leg2 is not None and leg2.cst == C_EST:
                self._c_request(t, leg2)
            return
        self._respond(t, conn)

    def _respond(self, t: int, conn: Conn) -> None:
        conn.sst = S_RESP
        conn.s_tries = 0
        self._s_out(t, conn, conn.s_rto or TCP_TIMEOUT_INIT)
        self._s_send(t, conn, PSH | ACK, self.response_len)

    # --- UDP ------------------------------------------------------------------------

    def _srv_udp(self, t: int, conn: Conn) -> None:
        if conn.proxied:
            conn.p_req = True
            self._proxy_accept(t, conn)
            return
        self._s_send(t, conn, 0, self.udp_response_len)

    def _cli_udp(self, t: int, conn: Conn) -> None:
        if conn.cst == C_DONE:
            return
        conn.cst = C_DONE
        conn.c_wait = 0
        leg1 = conn.leg1
        if leg1 is not None:
            self._s_send(t, leg1, 0, self.udp_response_len)
        else:
            self._record(t, conn, OK)

    # --- the user-space proxy -----------------------------------------------------------

    def _bind_proxy(
        self, t: int, node: Node, conn: Conn, d: Any, failed: list[tuple[tuple[int, int], str]], wait: float
    ) -> None:
        """The kernel REDIRECTed the client to the proxy on `node`, which chose
        `d.endpoint` after `failed` dials that took `wait` seconds."""
        router = node.router
        assert router is not None
        conn.proxied = True
        conn.service = d.service
        conn.p_ep = d.endpoint if d.verdict == "DNAT" else None
        conn.p_wait = round(wait * NS)
        conn.redials = len(failed)
        conn.resp = node.local
        reply = router.reply_flow(conn.f_pre, t / NS)
        if reply is None:
            raise RuntimeError("a user-space proxy mode must keep the REDIRECT in conntrack")
        conn.r_pre = reply
        proto, cip, cport, vip, vport = conn.f_pre
        conn.r_post = (proto, vip, vport, cip, cport)

    def _proxy_accept(self, t: int, conn: Conn) -> None:
        """The proxy accepted the client's connection (or datagram): dial after the failed dials."""
        heappush(self.heap, (t + conn.p_wait, self._next(), self._proxy_dial, conn, None, None))

    def _proxy_dial(self, t: int, conn: Conn, _a: object, _b: object) -> None:
        ep = conn.p_ep
        if ep is None:
            if conn.proto == TCP and conn.sst < S_CLOSED:
                conn.sst = S_CLOSED  # no endpoint could be dialled: the proxy closes the connection
                self._s_send(t, conn, RST | ACK, ACK_LEN - 12)
            return
        node = conn.nat_node
        assert node is not None
        host = node.local
        src = self._source(node, ep[0])
        leg2 = Conn(conn.proto, host, node, (conn.proto, src, self._port(host), ep[0], ep[1]), -1, t)
        leg2.resp = self._host_at(ep[0])
        leg2.ep = ep
        leg2.leg1 = conn
        conn.leg2 = leg2
        conn.ep = ep
        self._open(t, leg2)

    def _relay_response(self, t: int, conn: Conn) -> None:
        """Leg 2 brought the response: the proxy writes it to the client."""
        if conn.proto == TCP:
            if conn.sst == S_EST:
                self._respond(t, conn)
        else:
            self._s_send(t, conn, 0, self.udp_response_len)

    # --- results -----------------------------------------------------------------------

    def _record(self, t: int, conn: Conn, result: str) -> None:
        handshake = conn.t_conn - conn.t0 if conn.t_conn >= 0 else -1
        ep = conn.ep if conn.ep is not None else conn.p_ep
        retries = conn.syns - 1 if conn.syns else 0
        self.records.append((conn.t0, t, result, conn.target, ep, handshake, retries, conn.redials, conn.client.ip))


def _call(t: int, fn: Callable[[int], None], _a: object, _b: object) -> None:
    fn(t)
