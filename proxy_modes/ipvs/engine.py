"""The IPVS data path: virtual service lookup, connection table, persistence.

Restated from net/netfilter/ipvs:

- ip_vs_core.c ip_vs_in(): a packet first looks up its connection (one hash
  lookup on the flow); a TCP SYN / any UDP packet without one looks up the
  virtual service by (protocol, address, port) and is scheduled
  (ip_vs_schedule), persistent services through ip_vs_sched_persist(). No
  destination means ICMP port unreachable (ip_vs_leave): verdict REJECT. A
  TCP segment without SYN (or with RST) and no connection is not IPVS's: it
  goes to the node's own stack, which answers with a RST (REJECT here; see
  `_not_scheduled`).
- ip_vs_conn.c: a new connection is counted as *inactive* on its server
  (__ip_vs_update_dest sets IP_VS_CONN_F_INACTIVE in the dest's conn flags)
  and becomes active when the TCP state machine reaches ESTABLISHED
  (set_tcp_state in ip_vs_proto_tcp.c); UDP connections stay inactive. The
  timer restarts with the state's timeout at every packet (ip_vs_conn_put).
  At expiry the entry unbinds from its server (counters, OVERLOAD).
- Persistence templates (ip_vs_sched_persist, ip_vs_check_template): keyed
  by (protocol, client address & netmask, VIP, port); each new connection
  under it restarts its timer with the template's timeout (the service's,
  or 60 s once a template that expired while it still controlled
  connections was re-armed: ip_vs_conn_expire); a template whose server is
  gone or quiesced (weight
  0, with kube-proxy's expire_quiescent_template=1) is invalidated and a new
  server is scheduled.
- expire_nodest_conn=1 (kube-proxy sets it): deleting a server flushes the
  connections (and then templates) on it that control nothing
  (ip_vs_expire_nodest_conn_flush, kernel 5.9+), so the flow's next packet is
  scheduled afresh; a packet of a connection whose server was removed but
  that is still there (it controls others) expires it and is dropped; a SYN on a
  connection whose server has weight 0, or (conn_reuse_mode 1) in
  TIME_WAIT/CLOSE without a template, expires it and is scheduled afresh,
  unless the node's conntrack entry is the old one: then it is dropped
  (`_reuse`, ip_vs_in_hook's old_ct).
- Around IPVS, kube-proxy's iptables rules (hooks.py, walked by the shared
  netfilter engine) decide masquerading and what the packet costs.

The table is expired exactly, by `now`: connections wait in buckets of the
whole second their timer ends in (a heap of those seconds), queued again
lazily when the timer moved later, so a packet costs one comparison for it.
The rules' walks are cached per service and per real server under a key of
the packet properties they can depend on (hooks.py), so a new connection
allocates only its entry. At 30,000 services every object a packet reads
is a likely cache miss, so the data path reads few: an established packet
reads its connection (its packets count on it and reach its server's stats
when it goes or is listed, `fold_stats`; its server is looked at only after
some server was deleted, `_GONE`) and returns the connection's own copy of
its decision; a new one reads its service (found by address alone first),
the server list, the server and its plan (a one-entry cache on the server).
"""

from __future__ import annotations

import heapq
from fractions import Fraction
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from netem.addr import int_to_ip, parse_ip
from netem.errors import RulesetError, UsageError
from netem.gcpause import paused_gc
from netem.packet import ACK, FIN, RST, SYN, TCP, UDP, Packet, proto_name
from proxy_modes.netfilter.cost import DEFAULT as KERNEL_COST
from proxy_modes.netfilter.engine import V_ACCEPT, V_DROP, V_REJECT

from ..base import Decision, Reach, Ruleset, Step, Trace, Verdict
from ..view import NodeView
from . import formats
from .hooks import OPENS, NodeRules, Walked
from .rules import IPSet, IpvsState, VirtualServerSpec, build_state
from .schedulers import ADD, DEL, F_PERSISTENT, UPD, Dest, Scheduler, make_scheduler

if TYPE_CHECKING:
    import random

# IPVS TCP states (enum IP_VS_TCP_S_*), their names and default timeouts.
NO, ES, SS, SR, FW, TW, CL, CW, LA, LI, SA = range(11)
TCP_STATE_NAMES = (
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
)
TCP_TIMEOUTS = (2, 15 * 60, 2 * 60, 60, 2 * 60, 2 * 60, 10, 60, 30, 2 * 60, 120)
UDP_TIMEOUT = 5 * 60  # udp_timeouts[IP_VS_UDP_S_NORMAL]
TEMPLATE_REARM = 60  # ip_vs_conn_expire: a controlling template lives on 60 s
INPUT, OUTPUT = 0, 4  # TCP_DIR_INPUT / TCP_DIR_OUTPUT offsets
INF = float("inf")

# tcp_states[] (secure_tcp off), rows INPUT syn/fin/ack/rst then OUTPUT
# syn/fin/ack/rst; columns NONE ES SS SR FW TW CL CW LA LI SA.
TCP_STATES: tuple[tuple[int, ...], ...] = (
    (SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR),
    (CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW),
    (CL, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES),
    (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR),
    (SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR),
    (TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW),
    (ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES),
    (CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL),
)


# tcp_conn_schedule(): a TCP segment schedules a connection when it has SYN
# and not RST ("no !th->ack check to allow scheduling on SYN+ACK").
_SYN_RST = SYN | RST
_VERDICTS = {V_ACCEPT: Verdict.DNAT, V_DROP: Verdict.DROP, V_REJECT: Verdict.REJECT}
_NOT_WALKED = Walked(V_ACCEPT, 0, -1, False)  # no rules known (a captured table): no conntrack lookup either
# TCP flags whose walk is the SYN's: IPVS schedules them and conntrack opens
# an entry (a SYN+ACK is scheduled too, but conntrack finds it INVALID, so its
# walk differs: it is never cached).
_CACHED_FLAGS = tuple(f & _SYN_RST == SYN and OPENS[f] for f in range(256))


def _no_key(packet: Packet) -> int:
    """The walk key when there are no rules to walk (a captured table)."""
    return 0


def _opens(packet: Packet) -> bool:
    """Whether this packet's walk may be cached under its key."""
    return packet.proto != TCP or _CACHED_FLAGS[packet.flags & 0xFF]


def tcp_state_idx(flags: int) -> int:
    """tcp_state_idx(): rst 3, syn 0, fin 1, ack 2, else -1."""
    if flags & RST:
        return 3
    if flags & SYN:
        return 0
    if flags & FIN:
        return 1
    if flags & ACK:
        return 2
    return -1


def _next_states(direction: int) -> tuple[tuple[int, ...], ...]:
    """set_tcp_state()'s next state per TCP flags byte and current state, for
    one direction (a segment with none of rst/syn/fin/ack moves to CLOSE)."""
    rows = []
    for flags in range(256):
        idx = tcp_state_idx(flags)
        rows.append((CL,) * len(TCP_STATE_NAMES) if idx < 0 else TCP_STATES[direction + idx])
    return tuple(rows)


NEXT_STATE = {INPUT: _next_states(INPUT), OUTPUT: _next_states(OUTPUT)}
# The client's next state for route()'s fast path; -1 for a SYN, which
# is_new_conn() may turn into a new connection (`_existing` decides).
_IN_FAST = tuple((-1,) * len(row) if flags & SYN else row for flags, row in enumerate(NEXT_STATE[INPUT]))
_FLOW = slice(0, 5)  # packet[_FLOW] is its flow (a constant: no slice object per packet)


class Conn:
    """struct ip_vs_conn: a connection or (template=True) a persistence
    template. Made by `open_conn` (no __init__: the data path makes one per
    new flow and a type call with a Python __init__ costs twice as much)."""

    # What a packet of an established connection reads and writes comes
    # first: those fields share the object's first cache lines (not sorted on
    # purpose). Such a packet touches only this object, never its server.
    __slots__ = (  # noqa: RUF023
        "state",
        "proto",
        "seen",
        "decision",
        "expires",
        "queued",
        "timeout",
        "inpkts",
        "inbytes",
        "dest",
        "key",
        "flow",
        "svc",
        "first",
        "plan",
        "active",
        "control",
        "n_control",
        "reply",
        "replied",
        "reopen",
        "template",
    )

    state: int
    proto: int
    seen: int  # _GONE[0] when its server was last seen available (see route)
    decision: Decision | None  # for the client's packets (None: work it out)
    expires: float
    queued: float  # the timer bucket this entry waits in
    timeout: float
    inpkts: int  # the client's packets and bytes not yet added to the server's stats (fold_stats)
    inbytes: int
    dest: Dest
    key: tuple[int, ...] | None
    flow: tuple[int, ...]
    svc: Service
    first: Packet | None  # the packet that opened it (what its walks depend on)
    plan: Plan | None
    active: bool  # IP_VS_CONN_F_INACTIVE cleared
    control: Conn | None
    n_control: int
    reply: Decision | None  # for the server's replies
    replied: bool  # the server answered: conntrack's ESTABLISHED (SEEN_REPLY)
    reopen: bool  # closed so that conntrack would reopen it for a new SYN (see _old_conntrack)
    template: bool


_new_object = object.__new__
_VS_KEY = itemgetter(0, 3, 4)  # a flow's (protocol, address, port): its virtual service's key


def open_conn(
    flow: tuple[int, ...],
    dest: Dest,
    svc: Service,
    first: Packet | None,
    plan: Plan | None,
    state: int,
    timeout: float,
    expires: float,
    queued: float,
    template: bool,
    control: Conn | None,
    decision: Decision | None,
) -> Conn:
    """A new entry (ip_vs_conn_new), every field set. Its packets and bytes
    start at the opening packet's (none for a template)."""
    cp: Conn = _new_object(Conn)
    cp.state = state
    cp.proto = flow[0]
    cp.seen = _GONE[0]
    cp.decision = decision
    cp.expires = expires
    cp.queued = queued
    cp.timeout = timeout
    if first is not None:
        cp.inpkts = 1
        cp.inbytes = first[8]
    else:
        cp.inpkts = cp.inbytes = 0
    cp.dest = dest
    cp.key = cp.flow = flow
    cp.svc = svc
    cp.first = first
    cp.plan = plan
    cp.active = cp.replied = cp.reopen = False
    cp.control = control
    cp.n_control = 0
    cp.reply = None
    cp.template = template
    return cp


# Bumped whenever a real server is deleted (no longer AVAILABLE), in any
# mode: a connection whose `seen` is older checks its server once more
# before its packet takes the fast path (ip_vs_in_hook's dest check).
_GONE = [0]


class Plan:
    """The decisions of connections to one real server whose first packets
    had the same walk key: the first packet's, and the client's later ones
    before and after the server answered (the latter made on first use).
    Made once, reused while the rules stay (the sync clears them)."""

    __slots__ = ("endpoint", "est", "est_replied", "masquerade", "new", "spn", "stale", "walks")

    def __init__(
        self, new: Decision, walks: tuple[Walked, Walked, Walked], endpoint: tuple[int, int], spn: Any
    ) -> None:
        self.new = new
        self.walks = walks
        self.endpoint = endpoint
        self.spn = spn
        self.masquerade = walks[0].masquerade
        self.est: Decision | None = None
        self.est_replied: Decision | None = None
        self.stale = False  # the rules changed since: walk again (the NAT stays)

    def later(self, replied: bool) -> Decision:
        """The decision for the client's later packets."""
        dec = self.est_replied if replied else self.est
        if dec is None:
            dec = made(self.walks[2 if replied else 1], self.endpoint, self.spn, 1, True)
            if replied:
                self.est_replied = dec
            else:
                self.est = dec
        return dec


def _own(dec: Decision) -> Decision:
    """A connection's own copy of a decision shared by its real server's
    connections, returned for each of its later packets. Made when the
    connection's decision is worked out, it lies in memory among the
    connection's own recent objects, where the shared one (one per real
    server and key: 300,000 at 30,000 services) is a cache and TLB miss."""
    own: Decision = _new_object(Decision)
    own.verdict, own.endpoint, own.masquerade = dec.verdict, dec.endpoint, dec.masquerade
    own.rules, own.lookups, own.service, own.established = dec.rules, dec.lookups, dec.service, dec.established
    return own


def made(w: Walked, endpoint: tuple[int, int] | None, spn: Any, ipvs_lookups: int, established: bool) -> Decision:
    """A Decision from a walk: its verdict (ACCEPT with an endpoint is IPVS's
    DNAT), its rules, and the lookups: conntrack's and each ipset test, plus
    IPVS's own (connection table, service, template)."""
    lookups = ipvs_lookups + (0 if w.lookups < 0 else 1 + w.lookups)
    if w.verdict == V_ACCEPT and endpoint is not None:
        return Decision(Verdict.DNAT, endpoint, w.masquerade, w.rules, lookups, spn, established)
    verdict = Verdict.ACCEPT if w.verdict == V_ACCEPT else _VERDICTS[w.verdict]
    return Decision(verdict, None, False, w.rules, lookups, spn, established)


class Service:
    """struct ip_vs_service: a virtual server and its destination list."""

    # What a new connection reads first (persistent ones: to the port),
    # sharing the object's first cache lines (not sorted on purpose).
    __slots__ = (  # noqa: RUF023
        "pre",
        "flags",
        "sched",
        "dests",
        "proto",
        "netmask",
        "addr",
        "port",
        "timeout",
        "spn",
        "cls",
        "dest_index",
        "kind",
        "local",
        "sched_name",
        "stats",
    )

    def __init__(self, spec: VirtualServerSpec) -> None:
        self.proto, self.addr, self.port = spec.proto, spec.addr, spec.port
        self.sched_name = spec.scheduler
        self.flags = spec.flags
        self.timeout = spec.timeout
        self.netmask = spec.netmask
        self.spn = spec.spn
        self.kind = spec.kind
        self.local = spec.local
        # A tuple, replaced on each change: a scheduler reads the servers
        # from one object (a list keeps them in a second one).
        self.dests: tuple[Dest, ...] = ()
        self.dest_index: dict[tuple[int, int], Dest] = {}
        self.stats = [0, 0, 0, 0, 0]
        # Per walk key of a client no set holds: (reached IPVS?, the walk up to
        # IPVS or all of it). One dict for every service of its class (sync).
        self.pre: dict[object, tuple[bool, Walked]] = {}
        self.cls: Any = (0, 0)  # hooks.vip_class (coarse, full): services alike to the rules share walks
        try:
            self.sched: Scheduler = make_scheduler(spec.scheduler, spec.flags)
        except KeyError:
            raise UsageError(f"unknown IPVS scheduler {spec.scheduler!r}") from None
        self.sched.init(self.dests)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & F_PERSISTENT)

    def edit(self, spec: VirtualServerSpec) -> None:
        """ip_vs_edit_service (kube-proxy's UpdateVirtualServer: "during
        updates, service VIP will not go down"): flags, timeout and netmask
        change in place and a new scheduler is bound to the same server list,
        so the connections and their servers carry on."""
        if spec.scheduler != self.sched_name:
            try:
                sched = make_scheduler(spec.scheduler, spec.flags)
            except KeyError:
                raise UsageError(f"unknown IPVS scheduler {spec.scheduler!r}") from None
            sched.init(self.dests)
            self.sched, self.sched_name = sched, spec.scheduler
        self.sched.flags = spec.flags  # schedulers read svc->flags as they go (sh/mh port and fallback)
        self.flags, self.timeout, self.netmask = spec.flags, spec.timeout, spec.netmask

    def text(self) -> str:
        return f"{proto_name(self.proto).upper()} {int_to_ip(self.addr)}:{self.port}"

    def add_dest(self, addr: int, port: int, weight: int, u_threshold: int = 0, l_threshold: int = 0) -> Dest:
        d = Dest(addr, port, weight, u_threshold, l_threshold)
        self._link(d)
        return d

    def edit_dest(self, d: Dest, weight: int) -> None:
        """__ip_vs_update_dest for an existing server."""
        _reweigh(d, weight)
        self.sched.changed(self.dests, UPD, self.dests.index(d))

    def readd_dest(self, d: Dest, weight: int) -> None:
        """ip_vs_del_dest then ip_vs_add_dest of the same server: out of the
        list (the schedulers step back as for any deletion), then in again at
        its head, available, with the new weight."""
        self.del_dest(d)
        _reweigh(d, weight)
        self._link(d)

    def _link(self, d: Dest) -> None:
        """ip_vs_add_dest: a server goes to the head of the list."""
        self.dests = (d, *self.dests)
        self.dest_index[d.key] = d
        self.sched.changed(self.dests, ADD, 0)

    def del_dest(self, d: Dest) -> None:
        """ip_vs_del_dest: unlink; the server is no longer AVAILABLE (its
        connections and templates see that)."""
        index = self.dests.index(d)
        self.dests = self.dests[:index] + self.dests[index + 1 :]
        del self.dest_index[d.key]
        d.available = False
        _GONE[0] += 1
        self.sched.changed(self.dests, DEL, index)


def _reweigh(d: Dest, weight: int) -> None:
    """A server's new weight, available again; last_weight keeps the latest
    non-zero weight (the mh table does not move on quiescing)."""
    if weight != 0:
        d.last_weight = weight
    d.weight = weight
    d.available = True


class IpvsMode:
    """The IPVS proxy mode (proxy_modes.base protocol)."""

    name = "ipvs"

    def __init__(self, rng: random.Random, literal: bool = False) -> None:
        self.rng = rng
        self.literal = literal  # walk every packet through the rules (the differential test's reference)
        self.hooks: NodeRules | None = None
        self._key: Any = _no_key  # hooks.new_key when the walks can be cached; None: walk every packet
        self._reply_key: Any = None
        # Walks shared by every service (and real server) of a class, per client key.
        self._pre_walks: dict[tuple[Any, Any], tuple[bool, Walked]] = {}
        self._plan_walks: dict[tuple[Any, Any, Any], tuple[Walked, Walked, Walked]] = {}
        self.services: dict[tuple[int, int, int], Service] = {}
        self._by_vip: dict[int, Service] = {}  # one service per virtual address (_index_vips)
        self.conns: dict[tuple[int, ...], Conn] = {}
        self.templates: dict[tuple[int, ...], Conn] = {}
        self._wheel: dict[float, list[Conn]] = {}
        self._ticks: list[float] = []
        self._next_expiry = INF
        self.track_replies = False  # index connections by their reply tuple too (in _by_reply)
        self._by_reply: dict[tuple[int, ...], Conn] = {}
        self.timeouts: list[float] = list(TCP_TIMEOUTS)
        self.udp_timeout: float = UDP_TIMEOUT
        self.state: IpvsState | None = None
        self.local_ips: set[int] = set()
        self.graceful: dict[tuple[tuple[int, int, int], tuple[int, int]], float] = {}
        self._captured = False

    # --- programming the table ------------------------------------------------

    def sync(self, view: NodeView) -> Ruleset:
        """One syncProxyRules(): reconcile virtual and real servers with the
        view, removed TCP servers with connections going to weight 0
        (graceful_termination.go) and UDP/SCTP ones at once."""
        objects = self.program(view)
        return Ruleset(self.dump(), objects)

    def program(self, view: NodeView) -> int:
        """The sync without rendering text: build kube-proxy's state and
        reconcile the table with it. Returns virtual + real servers."""
        # Building 100k+ small objects at once sets off the cyclic garbage
        # collector again and again over the whole (large) heap; none of
        # them are garbage, so pause it for the build (and freeze what was
        # built: later collections need not walk it, netem/gcpause.py).
        with paused_gc():
            self._apply_state(build_state(view))
        return sum(1 + len(s.dests) for s in self.services.values())

    def _apply_state(self, state: IpvsState, now: float = 0.0) -> None:
        self.state = state
        self.local_ips = set(state.node_ips) | set(state.addresses)
        # The VIPs on kube-ipvs0 are the node's own addresses to the rules (addrtype LOCAL).
        self.hooks = NodeRules(state.iptables, [*state.node_ips, *state.addresses], state.ipsets, self.literal)
        self._key, self._reply_key = self.hooks.new_key, self.hooks.reply_key
        tcp, tcpfin, udp = state.timeouts
        if tcp:
            self.timeouts[ES] = tcp
        if tcpfin:
            self.timeouts[FW] = tcpfin
        if udp:
            self.udp_timeout = udp
        wanted = {spec.key: spec for spec in state.services}
        removed = False
        for key in list(self.services):
            if key not in wanted:
                self._delete_service(self.services[key])
                removed = True
        for key, spec in wanted.items():
            svc = self.services.get(key)
            if svc is None:
                svc = self.services[key] = Service(spec)
            elif (svc.sched_name, svc.flags, svc.timeout, svc.netmask) != (
                spec.scheduler,
                spec.flags,
                spec.timeout,
                spec.netmask,
            ):
                svc.edit(spec)
            svc.spn, svc.kind, svc.local = spec.spn, spec.kind, spec.local
            removed = self._sync_dests(svc, spec, now) or removed
        if removed:
            self._flush_nodest()
        self._index_vips()
        self._forget_walks()

    def _index_vips(self) -> None:
        """A service per virtual address, for the data path's first try: most
        addresses have one (a ClusterIP with one port), and a dict keyed by
        the address alone finds it without reading a key tuple (one object
        fewer to fetch: at 30,000 services each is a cache miss). Others are
        found in `services`."""
        self._by_vip = {svc.addr: svc for svc in self.services.values()}

    def _forget_walks(self) -> None:
        """New rules and sets: every cached walk and connection decision is
        worked out again when next needed (later packets walk the new filter
        rules, as in the kernel; the NAT a connection got stays)."""
        self._pre_walks.clear()
        self._plan_walks.clear()
        hooks = self.hooks
        vip_class = hooks.vip_class if hooks is not None else None
        server_class = hooks.server_class if hooks is not None else None
        by_class: dict[Any, dict[object, tuple[bool, Walked]]] = {}
        for svc in self.services.values():
            svc.cls = vip_class(svc.proto, svc.addr, svc.port) if vip_class is not None else (0, 0)
            svc.pre = by_class.setdefault(svc.cls[0], {})
            for d in svc.dests:
                d.decisions.clear()
                d.plan_key = d.plan = None
                d.replies.clear()
                d.cls = None if server_class is not None else (0, 0)  # worked out on first use
        for cp in self.conns.values():
            cp.decision = cp.reply = None
            if cp.plan is not None:
                cp.plan.stale = True

    def _sync_dests(self, svc: Service, spec: VirtualServerSpec, now: float) -> bool:
        """Reconcile one service's real servers; True if any was deleted."""
        removed = False
        want = {(a, p): w for a, p, w in spec.dests}
        for (a, p), w in want.items():
            d = svc.dest_index.get((a, p))
            if d is None:
                svc.add_dest(a, p, w)
            elif self.graceful.pop((svc_key(svc), d.key), None) is not None:
                # MoveRSOutofGracefulDeleteList: DeleteRealServer then AddRealServer;
                # the kernel takes the server back from its trash to the head of
                # the list (ip_vs_add_dest), its counters and connections kept.
                svc.readd_dest(d, w)
            elif d.weight != w:
                svc.edit_dest(d, w)
        for d in list(svc.dests):
            if d.key in want:
                continue
            gkey = (svc_key(svc), d.key)
            if gkey in self.graceful:
                continue
            if svc.proto == TCP and d.total():
                svc.edit_dest(d, 0)  # quiesce until the connections drain
                self.graceful[gkey] = now
            else:
                svc.del_dest(d)
                removed = True
        return removed

    def _flush_nodest(self) -> None:
        """ip_vs_expire_nodest_conn_flush (kernel 5.9+: a server's deletion
        queues it, as kube-proxy sets expire_nodest_conn=1): every entry
        whose server is no longer available and that controls nothing is
        expired at once; templates left controlling nothing go after them."""
        for table in (self.conns, self.templates):
            for cp in [cp for cp in table.values() if not cp.dest.available and not cp.n_control]:
                self._unlink(cp)

    def _delete_service(self, svc: Service) -> None:
        for d in list(svc.dests):
            svc.del_dest(d)
        self.services.pop(svc_key(svc), None)

    def tick(self, now: float) -> None:
        """Expire the table up to `now` and run kube-proxy's graceful
        termination check (every minute it deletes quiesced servers whose
        connections, active and inactive, have all gone)."""
        self._expire(now)
        for gkey, since in list(self.graceful.items()):
            svc = self.services.get(gkey[0])
            d = svc.dest_index.get(gkey[1]) if svc else None
            if svc is None or d is None:
                del self.graceful[gkey]
            elif d.total() == 0 and now - since >= 60:
                svc.del_dest(d)
                del self.graceful[gkey]
                self._flush_nodest()

    # --- the data path ----------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Run every timer due by `now`. Entries wait in whole-second buckets
        (the floor of their expiry), taken in time order; an entry whose
        timer moved later since it was queued is queued again, and in the
        bucket of the current second only the entries already due fire."""
        wheel, ticks = self._wheel, self._ticks
        while ticks and ticks[0] <= now:
            tick = heapq.heappop(ticks)
            waiting = []
            for cp in wheel.pop(tick, ()):
                if cp.queued != tick:
                    continue  # stale: re-queued earlier, or gone
                if cp.expires > now:
                    if cp.expires // 1.0 == tick:
                        waiting.append(cp)
                    else:
                        cp.queued = INF
                        self._queue(cp)
                else:
                    cp.queued = INF
                    self._expire_conn(cp, cp.expires)  # the timer fires at its own time
            if waiting:
                wheel.setdefault(tick, []).extend(waiting)
                heapq.heappush(ticks, tick)
                break
        self._next_expiry = self._due(now)

    def _due(self, now: float) -> float:
        """When _expire has work next: the earliest pending expiry."""
        ticks = self._ticks
        if not ticks:
            return INF
        bucket = self._wheel.get(ticks[0], ())
        if ticks[0] <= now:
            return min((cp.expires for cp in bucket if cp.queued == ticks[0]), default=ticks[0] + 1.0)
        return ticks[0]

    def _expire_conn(self, cp: Conn, now: float) -> None:
        """ip_vs_conn_expire(): a template still controlling connections is re-armed for 60 s."""
        if cp.n_control:
            cp.timeout = TEMPLATE_REARM
            self._arm(cp, now)
            return
        self._unlink(cp)

    def _unlink(self, cp: Conn) -> None:
        cp.queued = -1.0
        table = self.templates if cp.template else self.conns
        if cp.key is not None and table.get(cp.key) is cp:
            del table[cp.key]
            if not cp.template and self._by_reply.get(reply_key(cp)) is cp:
                del self._by_reply[reply_key(cp)]
        if cp.control is not None:
            cp.control.n_control -= 1
            cp.control = None
        d = cp.dest
        d.unbound(cp.active, cp.template)
        d.inpkts += cp.inpkts
        d.inbytes += cp.inbytes
        cp.inpkts = cp.inbytes = 0

    def fold_stats(self) -> None:
        """Add the packets and bytes the live connections counted on
        themselves to their servers' stats (ip_vs_in_stats counts them on the
        server at once; here a packet of an established connection touches
        only the connection, and the stats are read only by listings)."""
        for cp in self.conns.values():
            if cp.inpkts:
                d = cp.dest
                d.inpkts += cp.inpkts
                d.inbytes += cp.inbytes
                cp.inpkts = cp.inbytes = 0

    def _arm(self, cp: Conn, now: float) -> None:
        """(Re)start the timer (ip_vs_conn_put); the entry is queued again
        only when it is now due in an earlier bucket."""
        cp.expires = exp = now + cp.timeout
        if exp < cp.queued:
            self._queue(cp)
        elif exp < self._next_expiry:
            self._next_expiry = exp

    def _queue(self, cp: Conn) -> None:
        tick = cp.expires // 1.0  # the whole second the timer ends in
        cp.queued = tick
        bucket = self._wheel.get(tick)
        if bucket is None:
            self._wheel[tick] = [cp]
            heapq.heappush(self._ticks, tick)
        else:
            bucket.append(cp)
        self._next_expiry = min(self._next_expiry, cp.expires)

    def route(self, packet: Packet, now: float) -> Decision:
        if now >= self._next_expiry:
            self._expire(now)
        flow: tuple[int, ...] = packet[_FLOW]  # type: ignore[assignment]
        cp = self.conns.get(flow)
        if cp is None:
            if self.track_replies and (cp := self._by_reply.get(flow)) is not None:
                return self._existing(cp, packet, now, flow, None)  # the server's reply
            return self._new_fast(packet, now, flow)
        # The commonest packet, `_existing` inlined: the client's, no SYN, on a
        # connection whose server is still there. It touches the connection
        # only: the server is looked at again only after some server was
        # deleted (`seen`), and the packet counts on the connection.
        if cp.seen != _GONE[0]:
            if not cp.dest.available:
                return self._existing(cp, packet, now, flow, None)
            cp.seen = _GONE[0]
        flags = packet[7]
        if cp.proto == TCP:
            state = cp.state
            new = _IN_FAST[flags & 0xFF][state]
            if new != state:
                if new < 0:  # a SYN
                    return self._existing(cp, packet, now, flow, None)
                self._tcp_moved(cp, INPUT, flags, new)
            cp.timeout = timeout = self.timeouts[new]
        else:
            cp.timeout = timeout = self.udp_timeout
        cp.expires = expires = now + timeout  # _arm()
        if expires < cp.queued:
            self._queue(cp)
        elif expires < self._next_expiry:
            self._next_expiry = expires
        cp.inpkts += 1
        cp.inbytes += packet[8]
        dec = cp.decision
        if dec is None:
            dec = self._client_decision(cp, packet, now, None)
        return dec

    def _new_fast(self, packet: Packet, now: float, flow: tuple[int, ...]) -> Decision:
        """`_new` without a trace for the common case, its helpers inlined: a
        packet that can open a connection, to a virtual service, whose walk
        key was seen before (so the rules' part is known), scheduled or
        following a valid template. Every other case goes through `_new`
        (which walks and fills the caches) or `_persist`."""
        proto = flow[0]
        svc = self._by_vip.get(flow[3])
        if svc is None or svc.port != flow[4] or svc.proto != proto:
            svc = self.services.get(_VS_KEY(flow))
        key_fn = self._key
        if svc is None or key_fn is None or (proto == TCP and not _CACHED_FLAGS[packet[7] & 0xFF]):
            return self._new(packet, now, flow, None)
        key = key_fn(packet)
        pre = svc.pre.get(key)
        if pre is None:
            pre = self._pre_entry(svc, key)
            if pre is None:  # no service of its class seen with this key: walk
                return self._new(packet, now, flow, None)
        if not pre[0]:
            return made(pre[1], None, svc.spn, 0, False)  # the rules dropped or rejected it before IPVS
        dest: Dest | None
        ct: Conn | None
        if svc.flags & F_PERSISTENT:
            # ip_vs_sched_persist (`_persist` inlined): a template that
            # ip_vs_check_template finds valid (server available, not
            # quiesced) gets its timer restarted (_arm); without one, a new
            # one; an invalid one is for `_persist` (it unhashes it).
            tkey = (proto, flow[1] & svc.netmask, 0, svc.addr, svc.port)
            ct = self.templates.get(tkey)
            if ct is None:
                dest, ct = self._new_template(svc, tkey, flow[1], flow[2], flow[3], now, None)
            elif (dest := ct.dest).available and dest.weight != 0:
                ct.expires = texp = now + ct.timeout
                if texp < ct.queued:
                    self._queue(ct)
                elif texp < self._next_expiry:
                    self._next_expiry = texp
            else:
                dest, ct = self._persist(svc, flow[1], flow[2], flow[3], now, None)
        else:
            dest = svc.sched.schedule(svc.dests, flow[1], flow[2], flow[3])
            ct = None
        if dest is None:
            return self._no_server(svc, pre[1])  # ip_vs_leave: ICMP port unreachable
        if dest.plan_key == key:
            plan = dest.plan
        else:
            plan = dest.decisions.get(key)
            if plan is None:
                plan = self._plan_for(svc, dest, packet, now, key, None)
            dest.plan_key, dest.plan = key, plan
        # The SYN moves NONE -> SYN_RECV (tcp_states INPUT syn): still inactive.
        if proto == TCP:
            state, timeout = SR, self.timeouts[SR]
        else:
            state, timeout = NO, self.udp_timeout
        expires = now + timeout
        tick = expires // 1.0  # the timer waits in the bucket of its second (_queue)
        # open_conn() inlined (tests/proxy_modes/ipvs/test_engine.py checks
        # that every field is set); the later packets' decision is made on
        # the first of them.
        cp: Conn = _new_object(Conn)
        cp.state = state
        cp.proto = proto
        cp.seen = _GONE[0]
        cp.decision = cp.reply = None
        cp.expires = expires
        cp.queued = tick
        cp.timeout = timeout
        cp.inpkts = 1
        cp.inbytes = packet[8]
        cp.dest = dest
        cp.key = cp.flow = flow
        cp.svc = svc
        cp.first = packet
        cp.plan = plan
        cp.active = cp.replied = cp.reopen = cp.template = False
        cp.control = ct
        cp.n_control = 0
        # ip_vs_bind_dest: counted inactive; OVERLOAD at the upper threshold.
        dest.conns += 1
        dest.inactive += 1
        if dest.u_threshold and dest.total() >= dest.u_threshold:
            dest.overloaded = True
        if ct is not None:
            ct.n_control += 1
        self.conns[flow] = cp
        if self.track_replies:
            self._by_reply[reply_key(cp)] = cp
        bucket = self._wheel.get(tick)
        if bucket is None:
            self._wheel[tick] = [cp]
            heapq.heappush(self._ticks, tick)
        else:
            bucket.append(cp)
        if expires < self._next_expiry:
            self._next_expiry = expires
        return plan.new

    def _existing(
        self, cp: Conn, packet: Packet, now: float, flow: tuple[int, ...], steps: list[Step] | None
    ) -> Decision:
        """ip_vs_in_hook / ip_vs_out_hook for a packet of a known connection."""
        d = cp.dest
        flags = packet.flags
        if cp.key == flow:
            if flags & SYN and cp.proto == TCP:  # is_new_conn()
                again = self._reuse(cp, packet, now, flow, steps)
                if again is not None:
                    return again
            if not d.available:
                return self._no_dest(cp, packet, now, flow, steps)
            cp.seen = _GONE[0]
            if cp.proto == TCP:
                self._tcp_state(cp, INPUT, flags)
            else:
                cp.timeout = self.udp_timeout
            self._arm(cp, now)
            cp.inpkts += 1
            cp.inbytes += packet[8]
            dec = cp.decision
            if dec is None or steps is not None:
                dec = self._client_decision(cp, packet, now, steps)
            return dec
        if cp.proto == TCP:
            self._tcp_state(cp, OUTPUT, flags)
        else:
            cp.timeout = self.udp_timeout
        self._arm(cp, now)
        d.outpkts += 1
        d.outbytes += packet[8]
        if not cp.replied:
            cp.replied = True  # conntrack saw the reply: the client's packets are ESTABLISHED now
            cp.decision = None
        dec = cp.reply
        if dec is None or steps is not None:
            dec = self._server_decision(cp, now, steps)
        return dec

    def _reuse(
        self, cp: Conn, packet: Packet, now: float, flow: tuple[int, ...], steps: list[Step] | None
    ) -> Decision | None:
        """ip_vs_in_hook for a SYN that finds a connection (kube-proxy runs
        with expire_nodest_conn=1, conn_reuse_mode=1, conntrack=1): a server
        quiesced to weight 0, or a connection in TIME_WAIT/CLOSE that no
        template controls (is_new_conn_expected), is rescheduled. But when the
        node's conntrack entry for the tuple is the old, confirmed one
        (ip_vs_conn_uses_old_conntrack), the SYN is dropped while the
        connection (and that entry) expire: the client's retransmitted SYN,
        a second later, is scheduled afresh. None: the SYN follows `cp`."""
        if cp.dest.weight == 0:
            old = self._old_conntrack(cp)
        elif cp.control is None and cp.state in (TW, CL):
            old = self._old_conntrack(cp)
            if cp.n_control and old:
                return None  # a controlling connection on an old conntrack entry is kept
        else:
            return None
        if not cp.n_control:
            self._unlink(cp)  # ip_vs_conn_expire_now
        if old:
            if steps is not None:
                why = "its server is quiesced (weight 0)" if cp.dest.weight == 0 else "it is closing"
                steps.append(
                    Step(
                        "conntrack",
                        f"SYN on the IPVS connection to {cp.dest.text} ({self._state_name(cp)}): {why}, so it "
                        "is expired, but the node's conntrack entry for this tuple is the old, confirmed one: "
                        "the SYN is dropped (the client's retransmission is scheduled afresh)",
                    )
                )
            return self._dropped(cp, packet, now, steps)
        if steps is not None:
            steps.append(Step("conntrack", f"SYN on a finished IPVS connection to {cp.dest.text}: scheduled afresh"))
        return self._new(packet, now, flow, steps)

    def _no_dest(
        self, cp: Conn, packet: Packet, now: float, flow: tuple[int, ...], steps: list[Step] | None
    ) -> Decision:
        """ip_vs_in_hook, "the destination server is not available" with
        expire_nodest_conn=1: the connection expires; the packet is dropped
        while its conntrack entry is the old one (any packet but a SYN that
        conntrack reopens), else it is scheduled afresh."""
        old = not (packet.flags & SYN) or self._old_conntrack(cp)
        self._unlink(cp)
        if old:
            if steps is not None:
                steps.append(Step("conntrack", f"the connection's server {cp.dest.text} was removed: expired, dropped"))
            return self._dropped(cp, packet, now, steps)
        return self._new(packet, now, flow, steps)

    def _old_conntrack(self, cp: Conn) -> bool:
        """ip_vs_conn_uses_old_conntrack(): is the node's conntrack entry for
        the SYN's tuple still the confirmed one? nf_conntrack deletes and
        opens afresh (unconfirmed) an entry in TIME_WAIT, or in CLOSE after a
        FIN or a reset from the client (nf_conntrack_proto_tcp.c tcp_packet,
        "attempt to reopen a closed/aborted connection"); in any other state
        the SYN is ignored and the old entry stays. The IPVS connection's
        own state stands for conntrack's: both follow the same segments."""
        return not (cp.state == TW or (cp.state == CL and cp.reopen))

    def _dropped(self, cp: Conn, packet: Packet, now: float, steps: list[Step] | None) -> Decision:
        """DROP by IPVS: the rules before its hook were walked (the nat table
        not: conntrack knows the tuple)."""
        hooks = self.hooks
        masq = cp.plan.masquerade if cp.plan is not None else False
        w = _NOT_WALKED
        if hooks is not None:
            w = hooks.later(packet, (cp.dest.addr, cp.dest.port), cp.replied, masq, now, steps, until_ipvs=True)
        dec = self._made(w, None, cp.svc.spn, 1, True)
        return Decision(Verdict.DROP, None, False, dec.rules, dec.lookups, cp.svc.spn, True)

    def _tcp_state(self, cp: Conn, direction: int, flags: int) -> None:
        """set_tcp_state(): next state from the table; the timeout is the new state's."""
        new = NEXT_STATE[direction][flags & 0xFF][cp.state]
        if new != cp.state:
            self._tcp_moved(cp, direction, flags, new)
        cp.timeout = self.timeouts[new]

    def _tcp_moved(self, cp: Conn, direction: int, flags: int, new: int) -> None:
        """A change of state: leaving or entering ESTABLISHED moves the
        connection between its server's active and inactive counts."""
        d = cp.dest
        if cp.active and new != ES:
            d.active -= 1
            d.inactive += 1
            cp.active = False
        elif not cp.active and new == ES:
            d.active += 1
            d.inactive -= 1
            cp.active = True
        if new == CL:
            # conntrack reopens a CLOSE entry for a new SYN after a FIN, or a reset from the client.
            idx = tcp_state_idx(flags)
            cp.reopen = idx == 1 or cp.state in (FW, CW, LA, TW) or (idx == 3 and direction == INPUT)
        cp.state = new

    def _new(self, packet: Packet, now: float, flow: tuple[int, ...], trace: list[Step] | None) -> Decision:
        """A packet without an IPVS connection, every step stated: the rules
        before IPVS, the virtual service, the scheduler, the rules after."""
        proto = flow[0]
        hooks = self.hooks
        key = self._key(packet) if self._key is not None and _opens(packet) else None
        svc = self.services.get((proto, flow[3], flow[4]))
        if hooks is not None:
            verdict, st = hooks.first(packet, now, trace)
            if verdict != V_ACCEPT or not hooks.reaches_ipvs(st):
                if verdict == V_ACCEPT:  # forwarded: IPVS never sees it
                    verdict = hooks.passed(st)
                w = Walked(verdict, st.rules, st.lookups, st.snat is not None)
                dec = self._made(w, st.dnat, svc.spn if svc is not None else None, 0, False)
                if svc is not None and key is not None and st.dnat is None:
                    self._pre_walks[(self._cls(svc.cls, key), key)] = (False, w)
                return dec
            dst, dport = st.dst, st.dport
            svc = self.services.get((proto, dst, dport))
        else:
            st = None
            dst, dport = flow[3], flow[4]
        lookups = 2  # the connection table, then the virtual services
        if svc is None:
            if trace is not None:
                trace.append(Step("lookup", f"no virtual service {proto_name(proto).upper()} {int_to_ip(dst)}:{dport}"))
            return self._passed(st, lookups, None)
        if proto == TCP and packet.flags & _SYN_RST != SYN:
            return self._not_scheduled(st, svc, packet, trace)
        if trace is not None:
            trace.append(Step("lookup", f"virtual service {svc.text()} {svc.sched_name}", {"service": str(svc.spn)}))
        src, sport = flow[1], flow[2]
        if svc.flags & F_PERSISTENT:
            lookups += 1
            dest, ct = self._persist(svc, src, sport, dst, now, trace)
        else:
            ct = None
            if trace is not None:
                trace.append(self._explain_step(svc, src, sport, dst))
            dest = svc.sched.schedule(svc.dests, src, sport, dst)
        before = _NOT_WALKED if st is None else Walked(V_ACCEPT, st.rules, st.lookups, False)
        if key is not None:
            self._pre_walks[(self._cls(svc.cls, key), key)] = (True, before)
        if dest is None:
            if trace is not None:
                trace.append(Step("schedule", "no destination available: ICMP port unreachable"))
            return self._no_server(svc, before)
        if key is not None and trace is None:
            plan = dest.decisions.get(key)
            if plan is None:
                plan = self._plan_for(svc, dest, packet, now, key, st)
        else:
            plan = self._plan_from(self._walk_plan(svc, dest, packet, now, st), svc, dest)
        # The SYN moves NONE -> SYN_RECV (tcp_states INPUT syn): still inactive.
        state, timeout = (SR, self.timeouts[SR]) if proto == TCP else (NO, self.udp_timeout)
        # Its later packets' decision is worked out on the first (walked each
        # time when the rules cannot be cached).
        cp = open_conn(flow, dest, svc, packet, plan, state, timeout, 0.0, INF, False, ct, None)
        dest.bound(False, False)
        if ct is not None:
            ct.n_control += 1
        self.conns[flow] = cp
        if self.track_replies:
            self._by_reply[reply_key(cp)] = cp
        self._arm(cp, now)
        dest.conns += 1
        return plan.new

    def _pre_entry(self, svc: Service, key: Any) -> tuple[bool, Walked] | None:
        """A service's walk up to IPVS for this key, from its class's, if known
        (kept in the class's dict unless the client is one a set holds: then
        the service's exact class decides)."""
        hooks = self.hooks
        special = hooks is not None and hooks.special(key)
        entry = self._pre_walks.get((svc.cls[1] if special else svc.cls[0], key))
        if entry is not None and not special:
            svc.pre[key] = entry
        return entry

    def _cls(self, cls: tuple[Any, Any], key: Any) -> Any:
        """The part of a (coarse, full) class that matters for a client with this key."""
        hooks = self.hooks
        return cls[1] if hooks is not None and hooks.special(key) else cls[0]

    def _no_server(self, svc: Service, before: Walked) -> Decision:
        """ip_vs_leave(): ICMP port unreachable, after the rules up to IPVS."""
        lookups = 3 if svc.flags & F_PERSISTENT else 2
        return self._made(before._replace(verdict=V_REJECT), None, svc.spn, lookups, False)

    def _plan_for(self, svc: Service, dest: Dest, packet: Packet, now: float, key: Any, st: Any) -> Plan:
        """The plan of a connection to `dest` with this key: its decisions built
        from the walks its service's and real server's classes share (walked
        on the first connection of the kind)."""
        hooks = self.hooks
        if hooks is None or hooks.server_coarse is None:
            shared: tuple[Any, Any, Any] = (0, 0, key)
        elif hooks.special(key):  # the exact classes: rare, not kept
            shared = (svc.cls[1], hooks.server_class(svc.proto, dest.addr, dest.port)[1], key)  # type: ignore[misc]
        else:
            cls = dest.cls
            if cls is None:
                cls = dest.cls = hooks.server_coarse(svc.proto, dest.addr, dest.port)
            shared = (svc.cls[0], cls, key)
        walks = self._plan_walks.get(shared)
        if walks is None:
            walks = self._plan_walks[shared] = self._walk_plan(svc, dest, packet, now, st)
        ep = (dest.addr, dest.port)
        lookups = 3 if svc.flags & F_PERSISTENT else 2
        plan = dest.decisions[key] = Plan(made(walks[0], ep, svc.spn, lookups, False), walks, ep, svc.spn)
        dest.plan_key, dest.plan = key, plan
        return plan

    def _walk_plan(
        self, svc: Service, dest: Dest, packet: Packet, now: float, st: Any
    ) -> tuple[Walked, Walked, Walked]:
        """Walk the rules for a connection to `dest` opened by `packet`: its
        first packet's way out of IPVS (continuing `st`, the walk up to IPVS,
        when given), and the client's later packets, before and after the
        server's answer."""
        hooks = self.hooks
        if hooks is None:
            return _NOT_WALKED, _NOT_WALKED, _NOT_WALKED
        ep = (dest.addr, dest.port)
        if st is None:
            _, st = hooks.first(packet, now, None)
        verdict = hooks.after(st, ep)
        masq = st.snat is not None
        first = Walked(verdict, st.rules, st.lookups, masq)
        return first, hooks.later(packet, ep, False, masq, now), hooks.later(packet, ep, True, masq, now)

    def _plan_from(self, walks: tuple[Walked, Walked, Walked], svc: Service, dest: Dest) -> Plan:
        ep = (dest.addr, dest.port)
        lookups = 3 if svc.flags & F_PERSISTENT else 2
        return Plan(made(walks[0], ep, svc.spn, lookups, False), walks, ep, svc.spn)

    def _made(
        self, w: Walked, endpoint: tuple[int, int] | None, spn: Any, ipvs_lookups: int, established: bool
    ) -> Decision:
        return made(w, endpoint, spn, ipvs_lookups, established)

    def _passed(self, st: Any, lookups: int, spn: Any) -> Decision:
        """IPVS let the packet go on (not a virtual service's)."""
        if st is None or self.hooks is None:
            return Decision(Verdict.ACCEPT, lookups=lookups, service=spn)
        verdict = self.hooks.passed(st)
        return self._made(Walked(verdict, st.rules, st.lookups, st.snat is not None), None, spn, lookups, False)

    def _not_scheduled(self, st: Any, svc: Service, packet: Packet, trace: list[Step] | None) -> Decision:
        """A TCP segment without SYN (or with RST) and no connection:
        tcp_conn_schedule() does not schedule it and ip_vs_try_to_schedule()
        lets it go on (NF_ACCEPT) to the node's own stack. The VIP is a local
        address there (kube-ipvs0) but nothing listens on it, so tcp_v4_rcv
        finds no socket and answers with a RST (tcp_v4_send_reset); a RST
        itself is dropped without answer. The protocol has no RST verdict;
        REJECT (the client is refused at once, no endpoint) is the closest:
        ACCEPT would claim a delivery and DROP a silence, while the kernel
        answers. So: REJECT, or DROP for a RST."""
        dec = self._passed(st, 2, svc.spn)
        if trace is not None:
            trace.append(Step("note", "not a SYN and no IPVS connection: IPVS does not schedule it; the node's "
                              "TCP stack has no socket for the VIP and answers " +
                              ("nothing (a RST is not answered)" if packet.flags & RST else "with a RST")))  # fmt: skip
        if dec.verdict is not Verdict.ACCEPT:
            return dec  # the rules after IPVS dropped it first
        verdict = Verdict.DROP if packet.flags & RST else Verdict.REJECT
        return Decision(verdict, None, False, dec.rules, dec.lookups, svc.spn)

    def _client_decision(self, cp: Conn, packet: Packet, now: float, steps: list[Step] | None) -> Decision:
        """A later packet from the client: the rules' filter chains around
        IPVS (cached per real server and walk key, unless tracing or
        walking every packet)."""
        dest = cp.dest
        ep = (dest.addr, dest.port)
        plan = cp.plan
        masq = plan.masquerade if plan is not None else False
        hooks = self.hooks
        first = cp.first if cp.first is not None else packet
        if plan is not None and not plan.stale and steps is None and self._key is not None:
            dec = cp.decision = _own(plan.later(cp.replied))
            return dec
        if hooks is None:
            dec = Decision(Verdict.DNAT, ep, masq, 0, 1, cp.svc.spn, True)
        elif steps is None and self._key is not None and _opens(first):
            key = self._key(first)
            fresh = dest.decisions.get(key)
            if fresh is None:
                fresh = self._plan_for(cp.svc, dest, first, now, key, None)
            if fresh.masquerade == masq:
                dec = fresh.later(cp.replied)
            else:  # the rules changed their mind about SNAT; the connection keeps its NAT
                dec = self._made(hooks.later(first, ep, cp.replied, masq, now), ep, cp.svc.spn, 1, True)
            dec = cp.decision = _own(dec)
            return dec
        else:
            w = hooks.later(first._replace(flags=packet.flags), ep, cp.replied, masq, now, steps)
            dec = self._made(w, ep, cp.svc.spn, 1, True)
        if self._key is not None and steps is None:
            cp.decision = dec
        return dec

    def _server_decision(self, cp: Conn, now: float, steps: list[Step] | None) -> Decision:
        """A reply from the real server (cached per real server and reply key)."""
        dest = cp.dest
        ep = (dest.addr, dest.port)
        masq = cp.plan.masquerade if cp.plan is not None else False
        hooks = self.hooks
        if hooks is None:
            return Decision(Verdict.DNAT, ep, masq, 0, 1, cp.svc.spn, True)
        proto, client, cport = cp.flow[0], cp.flow[1], cp.flow[2]
        local = bool(cp.first.local) if cp.first is not None else False
        key = None
        if self._reply_key is not None and steps is None:
            key = self._reply_key(client, cport, local, masq)
            dec = dest.replies.get(key)
            if dec is not None:
                cp.reply = dec
                return dec
        w = hooks.reply(proto, ep, (client, cport), local, masq, now, steps)
        dec = self._made(w, ep, cp.svc.spn, 1, True)
        if key is not None:
            dest.replies[key] = cp.reply = dec
        return dec

    def _persist(
        self, svc: Service, src: int, sport: int, dst: int, now: float, trace: list[Step] | None
    ) -> tuple[Dest | None, Conn | None]:
        """ip_vs_sched_persist(): find or create the template, then its server."""
        tkey = (svc.proto, src & svc.netmask, 0, svc.addr, svc.port)
        ct = self.templates.get(tkey)
        if ct is not None and not self._check_template(ct):
            if trace is not None:
                trace.append(Step("conntrack", f"persistence template to {ct.dest.text} invalid: server unavailable"))
            ct = None
        if ct is not None:
            if trace is not None:
                left = ct.expires - now
                trace.append(
                    Step("conntrack", f"persistence template hit: {ct.dest.text} ({left:g} s left, restarted)")
                )
            # ip_vs_conn_put restarts the timer with the template's own timeout:
            # the service's, or the 60 s of a re-arm (ip_vs_conn_expire).
            self._arm(ct, now)
            return ct.dest, ct
        return self._new_template(svc, tkey, src, sport, dst, now, trace)

    def _new_template(
        self,
        svc: Service,
        tkey: tuple[int, ...],
        src: int,
        sport: int,
        dst: int,
        now: float,
        trace: list[Step] | None,
    ) -> tuple[Dest | None, Conn | None]:
        """ip_vs_sched_persist() without a valid template: schedule a server
        and make a template for it, timed with the service's timeout."""
        if trace is not None:
            trace.append(self._explain_step(svc, src, sport, dst))
        dest = svc.sched.schedule(svc.dests, src, sport, dst)
        if dest is None:
            return None, None
        timeout = svc.timeout
        ct = open_conn(tkey, dest, svc, None, None, NO, timeout, now + timeout, INF, True, None, None)
        dest.persist += 1  # dest.bound(False, True), inlined
        if dest.u_threshold and dest.total() >= dest.u_threshold:
            dest.overloaded = True
        self.templates[tkey] = ct
        self._queue(ct)
        if trace is not None:
            trace.append(Step("conntrack", f"new persistence template -> {dest.text} for {svc.timeout} s"))
        return dest, ct

    def _check_template(self, ct: Conn) -> bool:
        """ip_vs_check_template(): the server must be available and not
        quiesced; otherwise the template is unhashed (it stays until its
        timer ends, but nothing finds it any more)."""
        d = ct.dest
        if d.available and d.weight != 0:
            return True
        if ct.key is not None and self.templates.get(ct.key) is ct:
            del self.templates[ct.key]
        ct.key = None
        return False

    def modeled_latency_us(self, decision: Decision) -> float:
        """What the kernel spends on this decision beyond a connection's
        round trip: the rules it walked, through the calibrated netfilter
        model (proxy_modes/netfilter/cost.py), as the iptables mode reports
        it. IPVS's own lookups (connection table, virtual service, template)
        are O(1) hash lookups like conntrack's, which the model's base holds;
        this kernel has no IPVS to measure them more finely."""
        return KERNEL_COST.walk_us(decision.rules)

    def prepare(self, packet: Packet, now: float) -> None:
        """Build ahead what a new connection from this packet's client to its
        service builds lazily: the walk up to IPVS and every real server's
        plan (the benchmarks' warm-up). Nothing is scheduled, no connection
        made; the walks change no state (the cache holds only pure rules)."""
        key_fn, hooks = self._key, self.hooks
        svc = self.services.get((packet.proto, packet.dst, packet.dport))
        if svc is None or key_fn is None or not _opens(packet):
            return
        key = key_fn(packet)
        if svc.pre.get(key) is None and self._pre_entry(svc, key) is None:
            if hooks is None:
                return
            verdict, st = hooks.first(packet, now, None)
            if verdict != V_ACCEPT or not hooks.reaches_ipvs(st) or (st.dst, st.dport) != (svc.addr, svc.port):
                return  # the rules decide before IPVS: the first connection walks it
            self._pre_walks[(self._cls(svc.cls, key), key)] = (True, Walked(V_ACCEPT, st.rules, st.lookups, False))
        for dest in svc.dests:
            if key not in dest.decisions:
                self._plan_for(svc, dest, packet, now, key, None)

    # --- tracing ------------------------------------------------------------

    def trace(self, packet: Packet, now: float) -> Trace:
        steps: list[Step] = []
        if now >= self._next_expiry:
            self._expire(now)
        flow = packet[:5]
        cp = self.conns.get(flow) or self._by_reply.get(flow)
        svc = self.services.get((packet.proto, packet.dst, packet.dport))
        reach: list[Reach] = []
        affinity = None
        if svc is not None:
            affinity = self._affinity_text(svc, packet.src, now)
        if cp is not None:
            steps.append(
                Step(
                    "conntrack",
                    f"IPVS connection found: -> {cp.dest.text} state {self._state_name(cp)}",
                    {"state": self._state_name(cp)},
                )
            )
            decision = self._existing(cp, packet, now, flow, steps)
        else:
            decision = self._new(packet, now, flow, steps)
        if svc is not None:
            reach = self._next_reach(svc, packet, now)
        verdict_text = {
            Verdict.DNAT: f"DNAT to {decision.endpoint_text()} (IPVS masquerading forwarder)"
            + (", masqueraded to the node's address" if decision.masquerade else ""),
            Verdict.REJECT: "REJECT: ICMP port unreachable",
            Verdict.ACCEPT: "not an IPVS virtual service: accepted unchanged",
            Verdict.DROP: "DROP",
        }[decision.verdict]
        answered_by_stack = cp is None and svc is not None and packet.proto == TCP and packet.flags & _SYN_RST != SYN
        if decision.verdict is Verdict.REJECT and answered_by_stack:
            verdict_text = "REJECT: the node's TCP stack answers with a RST (no socket on the VIP)"
        steps.append(Step("verdict", verdict_text))
        return Trace(self.name, packet, decision, reach, steps, affinity)

    def _explain_step(self, svc: Service, src: int, sport: int, dst: int) -> Step:
        detail = svc.sched.explain(svc.dests, src, sport, dst)
        return Step("schedule", f"scheduler {svc.sched_name}: " + _detail_text(detail), {"scheduler": detail})

    def _affinity_text(self, svc: Service, src: int, now: float) -> str | None:
        if not svc.flags & F_PERSISTENT:
            return None
        ct = self.templates.get((svc.proto, src & svc.netmask, 0, svc.addr, svc.port))
        if ct is None:
            return f"persistent {svc.timeout} s: no template for {int_to_ip(src & svc.netmask)}"
        return f"persistent {svc.timeout} s: template -> {ct.dest.text}, {max(0.0, ct.expires - now):g} s left"

    def _next_reach(self, svc: Service, packet: Packet, now: float) -> list[Reach]:
        """Every endpoint the next new connection from this source could
        reach: IPVS schedulers are deterministic, so it is one server with
        probability 1 (or none when nothing is available)."""
        if svc.flags & F_PERSISTENT:
            ct = self.templates.get((svc.proto, packet.src & svc.netmask, 0, svc.addr, svc.port))
            if ct is not None and ct.dest.available and ct.dest.weight:
                return [Reach(ct.dest.addr, ct.dest.port, Fraction(1))]
        probe = _SchedulerProbe(svc)
        d = probe.next(packet.src, (packet.sport + 1) & 0xFFFF, packet.dst)
        return [Reach(d.addr, d.port, Fraction(1))] if d is not None else []

    def _state_name(self, cp: Conn) -> str:
        if cp.proto == TCP:
            return TCP_STATE_NAMES[cp.state]
        return "UDP"

    # --- output ---------------------------------------------------------------

    def dump(self) -> str:
        return formats.list_services(self._sorted_services(), stats=False, rate=False)

    def dump_with(
        self, show: str | None = None, fmt: str | None = None, stats: bool = False, rate: bool = False
    ) -> str:
        if show in (None, "", "ipvs"):
            if fmt in (None, "", "list"):
                if stats:
                    self.fold_stats()
                return formats.list_services(self._sorted_services(), stats=stats, rate=rate)
            if fmt == "save":
                return formats.save(self._sorted_services())
            if fmt == "connections":
                return formats.list_conns(self.conns, self.templates, self._last_seen())
            raise UsageError(f"unknown --format {fmt!r} for ipvs (list, save, connections)")
        if self.state is None:
            raise UsageError("--show needs a synced node (-f FILE...), not a captured table")
        if show == "ipsets":
            return formats.ipset_save(self.state.ipsets)
        if show == "iptables":
            return self.state.iptables
        if show == "addresses":
            return formats.ip_addr_show(self.state.addresses)
        raise UsageError(f"unknown --show {show!r} for ipvs (ipsets, iptables, addresses)")

    def _last_seen(self) -> float:
        """The time of the latest packet the table saw (every entry's timer
        was last restarted then or before): the `now` a dump of the table
        shows time left from, as /proc/net/ip_vs_conn does from jiffies."""
        return max((cp.expires - cp.timeout for t in (self.conns, self.templates) for cp in t.values()), default=0.0)

    def _sorted_services(self) -> list[Service]:
        return formats.sort_services(list(self.services.values()))

    # --- replaying a captured table -------------------------------------------

    def load_capture(self, text: str, local_ips: list[int], filename: str) -> None:
        """Replace the table with an `ipvsadm -S -n` dump (ipvsadm -R input)."""
        specs = formats.parse_save(text, filename)
        self.services.clear()
        self.conns.clear()
        self._by_reply.clear()
        self.templates.clear()
        self.state = None
        self.hooks, self._key, self._reply_key = None, _no_key, None  # no rules come with the table
        self._captured = True
        self.local_ips = set(local_ips)
        for spec, dests in specs:
            svc = Service(spec)
            # ipvsadm -R adds the servers in file order, each at the list head.
            for addr, port, weight, upper, lower in dests:
                svc.add_dest(addr, port, weight, upper, lower)
            self.services[spec.key] = svc
        self._index_vips()

    def ipsets(self) -> dict[str, IPSet]:
        """The ipsets as the iptables engine's set provider will want them."""
        return self.state.ipsets if self.state else {}


class _SchedulerProbe:
    """Asks a copy of a scheduler what it would choose next, without
    touching the real one (schedulers keep positions and tables)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def next(self, src: int, sport: int, dst: int) -> Dest | None:
        import copy

        sched = copy.copy(self.svc.sched)
        return sched.schedule(self.svc.dests, src, sport, dst)


def svc_key(svc: Service) -> tuple[int, int, int]:
    return (svc.proto, svc.addr, svc.port)


def reply_key(cp: Conn) -> tuple[int, ...]:
    """The tuple of the server's replies (before IPVS un-NATs them)."""
    proto, src, sport, _, _ = cp.flow
    return (proto, cp.dest.addr, cp.dest.port, src, sport)


def _detail_text(detail: dict[str, Any]) -> str:
    parts = []
    for k, v in detail.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        elif isinstance(v, list):
            v = " ".join(str(x) for x in v)
        parts.append(f"{k} {v}")
    return "; ".join(parts)


def parse_addr(text: str, filename: str) -> int:
    try:
        return parse_ip(text)
    except ValueError:
        raise RulesetError(f"not an IPv4 address: {text!r}", path=filename) from None


def udp_or_tcp(proto: int) -> bool:
    return proto in (TCP, UDP)
