"""The IPVS data path: virtual service lookup, connection table, persistence.

Restated from net/netfilter/ipvs:

- ip_vs_core.c ip_vs_in(): a packet first looks up its connection (one hash
  lookup on the flow); a TCP SYN / any UDP packet without one looks up the
  virtual service by (protocol, address, port) and is scheduled
  (ip_vs_schedule), persistent services through ip_vs_sched_persist(). No
  destination means ICMP port unreachable (ip_vs_leave): verdict REJECT. A
  TCP segment that is not a SYN and has no connection is not IPVS's: it goes
  to the node's own stack, where nothing listens (ACCEPT, no DNAT).
- ip_vs_conn.c: a new connection is counted as *inactive* on its server
  (__ip_vs_update_dest sets IP_VS_CONN_F_INACTIVE in the dest's conn flags)
  and becomes active when the TCP state machine reaches ESTABLISHED
  (set_tcp_state in ip_vs_proto_tcp.c); UDP connections stay inactive. The
  timer restarts with the state's timeout at every packet (ip_vs_conn_put).
  At expiry the entry unbinds from its server (counters, OVERLOAD).
- Persistence templates (ip_vs_sched_persist, ip_vs_check_template): keyed
  by (protocol, client address & netmask, VIP, port); each new connection
  under it restarts its timer with the service timeout; a template that
  expires while it still controls connections is re-armed for 60 s
  (ip_vs_conn_expire); a template whose server is gone or quiesced (weight
  0, with kube-proxy's expire_quiescent_template=1) is invalidated and a new
  server is scheduled.
- expire_nodest_conn=1 (kube-proxy sets it): a packet of a connection whose
  server was removed expires that connection and is dropped; conn_reuse_mode
  (default 1): a new SYN on a connection in TIME_WAIT, or whose server has
  weight 0, expires it and is scheduled afresh.

The table is expired exactly, by `now`: a heap of (expiry, serial, conn)
holds one entry per connection, re-pushed lazily when the timer moved, so a
packet costs one comparison for it. Decisions are built once per
(destination, masquerade) and per connection and reused, so the hot path
allocates only the connection.
"""

from __future__ import annotations

import gc
import heapq
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from netem.addr import Cidr, int_to_ip, parse_ip
from netem.errors import RulesetError, UsageError
from netem.packet import ACK, FIN, RST, SYN, TCP, UDP, Packet, proto_name

from ..base import Decision, Reach, Ruleset, Step, Trace, Verdict
from ..view import NodeView
from . import formats
from .rules import CLUSTER, EXTERNAL, LOADBALANCER, NODEPORT, IPSet, IpvsState, VirtualServerSpec, build_state
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


# A TCP segment schedules a connection only as a pure SYN (tcp_conn_schedule).
_SCHED_FLAGS = SYN | ACK | RST | FIN


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


class Conn:
    """struct ip_vs_conn: a connection or (template=True) a persistence template."""

    __slots__ = (
        "active",
        "control",
        "decision",
        "dest",
        "expires",
        "flow",
        "key",
        "n_control",
        "proto",
        "queued",
        "state",
        "svc",
        "template",
        "timeout",
    )

    def __init__(self, flow: tuple[int, ...], dest: Dest, svc: Service, template: bool = False) -> None:
        self.flow = flow
        self.key: tuple[int, ...] | None = flow
        self.proto = flow[0]
        self.dest = dest
        self.svc = svc
        self.template = template
        self.active = False  # IP_VS_CONN_F_INACTIVE cleared
        self.state = NO
        self.timeout = 3.0
        self.expires = 0.0
        self.control: Conn | None = None
        self.n_control = 0
        self.queued = INF  # the timer bucket this entry waits in
        self.decision: Decision | None = None


class Service:
    """struct ip_vs_service: a virtual server and its destination list."""

    __slots__ = (
        "addr",
        "dest_index",
        "dests",
        "flags",
        "kind",
        "local",
        "netmask",
        "port",
        "proto",
        "sched",
        "sched_name",
        "spn",
        "stats",
        "timeout",
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
        self.dests: list[Dest] = []
        self.dest_index: dict[tuple[int, int], Dest] = {}
        self.stats = [0, 0, 0, 0, 0]
        try:
            self.sched: Scheduler = make_scheduler(spec.scheduler, spec.flags)
        except KeyError:
            raise UsageError(f"unknown IPVS scheduler {spec.scheduler!r}") from None
        self.sched.init(self.dests)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & F_PERSISTENT)

    def text(self) -> str:
        return f"{proto_name(self.proto).upper()} {int_to_ip(self.addr)}:{self.port}"

    def add_dest(self, addr: int, port: int, weight: int, u_threshold: int = 0, l_threshold: int = 0) -> Dest:
        """ip_vs_add_dest: new servers go to the head of the list."""
        d = Dest(addr, port, weight, u_threshold, l_threshold)
        self.dests.insert(0, d)
        self.dest_index[d.key] = d
        self.sched.changed(self.dests, ADD, 0)
        return d

    def edit_dest(self, d: Dest, weight: int) -> None:
        """__ip_vs_update_dest for an existing server: last_weight keeps the
        latest non-zero weight (the mh table does not move on quiescing)."""
        if weight != 0:
            d.last_weight = weight
        d.weight = weight
        d.available = True
        self.sched.changed(self.dests, UPD, self.dests.index(d))

    def del_dest(self, d: Dest) -> None:
        """ip_vs_del_dest: unlink; the server is no longer AVAILABLE (its
        connections and templates see that)."""
        index = self.dests.index(d)
        del self.dests[index]
        del self.dest_index[d.key]
        d.available = False
        self.sched.changed(self.dests, DEL, index)


class IpvsMode:
    """The IPVS proxy mode (proxy_modes.base protocol)."""

    name = "ipvs"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.services: dict[tuple[int, int, int], Service] = {}
        self.conns: dict[tuple[int, ...], Conn] = {}
        self.templates: dict[tuple[int, ...], Conn] = {}
        self._wheel: dict[float, list[Conn]] = {}
        self._ticks: list[float] = []
        self._next_expiry = INF
        self.track_replies = False  # index connections by their reply tuple too
        self.timeouts: list[float] = list(TCP_TIMEOUTS)
        self.udp_timeout: float = UDP_TIMEOUT
        self.state: IpvsState | None = None
        self.cluster_cidrs: tuple[Cidr, ...] = ()
        self.masquerade_all = False
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
        # them are garbage, so pause it for the build.
        paused = gc.isenabled()
        gc.disable()
        try:
            self._apply_state(build_state(view))
        finally:
            if paused:
                gc.enable()
        return sum(1 + len(s.dests) for s in self.services.values())

    def _apply_state(self, state: IpvsState, now: float = 0.0) -> None:
        self.state = state
        self.cluster_cidrs = state.cluster_cidrs
        self.masquerade_all = state.masquerade_all
        self.local_ips = set(state.node_ips) | set(state.addresses)
        tcp, tcpfin, udp = state.timeouts
        if tcp:
            self.timeouts[ES] = tcp
        if tcpfin:
            self.timeouts[FW] = tcpfin
        if udp:
            self.udp_timeout = udp
        wanted = {spec.key: spec for spec in state.services}
        for key in list(self.services):
            if key not in wanted:
                self._delete_service(self.services[key])
        for key, spec in wanted.items():
            svc = self.services.get(key)
            if svc is None or svc.sched_name != spec.scheduler or svc.flags != spec.flags:
                if svc is not None:
                    self._delete_service(svc)
                svc = self.services[key] = Service(spec)
            svc.timeout, svc.spn, svc.kind, svc.local = spec.timeout, spec.spn, spec.kind, spec.local
            self._sync_dests(svc, spec, now)

    def _sync_dests(self, svc: Service, spec: VirtualServerSpec, now: float) -> None:
        want = {(a, p): w for a, p, w in spec.dests}
        for (a, p), w in want.items():
            d = svc.dest_index.get((a, p))
            if d is None:
                svc.add_dest(a, p, w)
            else:
                self.graceful.pop((svc_key(svc), d.key), None)
                if d.weight != w:
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
                    if int(cp.expires) == tick:
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
            if self.track_replies and not cp.template and self.conns.get(reply_key(cp)) is cp:
                del self.conns[reply_key(cp)]
        if cp.control is not None:
            cp.control.n_control -= 1
            cp.control = None
        cp.dest.unbound(cp.active, cp.template)

    def _arm(self, cp: Conn, now: float) -> None:
        """(Re)start the timer (ip_vs_conn_put); the entry is queued again
        only when it is now due in an earlier bucket."""
        cp.expires = exp = now + cp.timeout
        if exp < cp.queued:
            self._queue(cp)
        elif exp < self._next_expiry:
            self._next_expiry = exp

    def _queue(self, cp: Conn) -> None:
        tick = float(int(cp.expires))  # the whole second the timer ends in
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
        flow = packet[:5]
        cp = self.conns.get(flow)
        if cp is not None:
            return self._existing(cp, packet, now, flow)
        return self._new_fast(packet, now, flow)

    def _new_fast(self, packet: Packet, now: float, flow: tuple[int, ...]) -> Decision:
        """`_new` without a trace, for the common case (a SYN or datagram to
        a virtual service whose scheduler finds a server), with its helpers
        inlined; the hot path of every new flow. The rare cases (no service,
        not a SYN, no server) go through `_new`, which states each step."""
        proto = flow[0]
        svc = self.services.get((proto, flow[3], flow[4]))
        if svc is None or (proto == TCP and packet.flags & _SCHED_FLAGS != SYN):
            return self._new(packet, now, flow, None)
        if svc.flags & F_PERSISTENT:
            dest, ct = self._persist(svc, flow[1], flow[2], flow[3], now, None)
            lookups = 3
        else:
            dest = svc.sched.schedule(svc.dests, flow[1], flow[2], flow[3])
            ct = None
            lookups = 2
        if dest is None:
            return Decision(Verdict.REJECT, lookups=lookups, service=svc.spn)
        cp = Conn(flow, dest, svc)
        dest.inactive += 1  # dest.bound(False, False)
        if dest.u_threshold and dest.total() >= dest.u_threshold:
            dest.overloaded = True
        if ct is not None:
            cp.control = ct
            ct.n_control += 1
        masq = self._masquerade(svc, packet, dest)
        pair = dest.decisions.get(masq + lookups * 2)
        if pair is None:
            pair = dest.decisions[masq + lookups * 2] = (
                self._decision(dest, svc, masq, False, lookups),
                self._decision(dest, svc, masq, True, lookups),
            )
        cp.decision = pair[1]  # type: ignore[index]
        conns = self.conns
        conns[flow] = cp
        if self.track_replies:
            conns[reply_key(cp)] = cp
        # The SYN moves NONE -> SYN_RECV (tcp_states INPUT syn): still inactive.
        if proto == TCP:
            cp.state = SR
            cp.timeout = timeout = self.timeouts[SR]
        else:
            cp.timeout = timeout = self.udp_timeout
        cp.expires = expires = now + timeout
        # _queue(), inlined: a new entry waits in the bucket of its second.
        cp.queued = tick = float(int(expires))
        bucket = self._wheel.get(tick)
        if bucket is None:
            self._wheel[tick] = [cp]
            heapq.heappush(self._ticks, tick)
        else:
            bucket.append(cp)
        if expires < self._next_expiry:
            self._next_expiry = expires
        st = dest.stats
        st[0] += 1
        st[1] += 1
        st[3] += packet.length
        return pair[0]  # type: ignore[index]

    def _existing(self, cp: Conn, packet: Packet, now: float, flow: tuple[int, ...]) -> Decision:
        direction = INPUT if cp.key == flow else OUTPUT
        d = cp.dest
        flags = packet.flags
        if direction == INPUT:
            if not d.available:
                # expire_nodest_conn: the server was removed.
                self._unlink(cp)
                return Decision(Verdict.DROP, lookups=1)
            if cp.proto == TCP and flags & SYN and not flags & ACK and (cp.state == TW or d.weight == 0):
                # conn_reuse_mode: a new connection on an old tuple is scheduled afresh.
                if not cp.n_control:
                    self._unlink(cp)
                return self._new(packet, now, flow, None)
        if cp.proto == TCP:
            self._tcp_state(cp, direction, flags)
        else:
            cp.timeout = self.udp_timeout
        self._arm(cp, now)
        st = d.stats
        if direction == INPUT:
            st[1] += 1
            st[3] += packet.length
        else:
            st[2] += 1
            st[4] += packet.length
        dec = cp.decision
        assert dec is not None
        return dec

    def _tcp_state(self, cp: Conn, direction: int, flags: int) -> None:
        """set_tcp_state(): next state from the table; leaving or entering
        ESTABLISHED moves the connection between the active and inactive
        counts; the timeout is the new state's."""
        idx = tcp_state_idx(flags)
        new = CL if idx < 0 else TCP_STATES[direction + idx][cp.state]
        if new != cp.state:
            d = cp.dest
            if cp.active and new != ES:
                d.active -= 1
                d.inactive += 1
                cp.active = False
            elif not cp.active and new == ES:
                d.active += 1
                d.inactive -= 1
                cp.active = True
        cp.state = new
        cp.timeout = self.timeouts[new]

    def _new(self, packet: Packet, now: float, flow: tuple[int, ...], trace: list[Step] | None) -> Decision:
        proto, src, sport, dst, dport = flow
        svc = self.services.get((proto, dst, dport))
        if svc is None:
            if trace is not None:
                trace.append(Step("lookup", f"no virtual service {proto_name(proto).upper()} {int_to_ip(dst)}:{dport}"))
            return Decision(Verdict.ACCEPT, lookups=2)
        if proto == TCP and (not packet.flags & SYN or packet.flags & (ACK | RST | FIN)):
            # tcp_conn_schedule(): only a SYN opens a connection.
            if trace is not None:
                trace.append(Step("note", "not a SYN and no connection: IPVS does not schedule it"))
            return Decision(Verdict.ACCEPT, lookups=2, service=svc.spn)
        if trace is not None:
            trace.append(Step("lookup", f"virtual service {svc.text()} {svc.sched_name}", {"service": str(svc.spn)}))
        lookups = 2
        if svc.flags & F_PERSISTENT:
            lookups += 1
            dest, ct = self._persist(svc, src, sport, dst, now, trace)
        else:
            ct = None
            if trace is not None:
                trace.append(self._explain_step(svc, src, sport, dst))
            dest = svc.sched.schedule(svc.dests, src, sport, dst)
        if dest is None:
            if trace is not None:
                trace.append(Step("schedule", "no destination available: ICMP port unreachable"))
            return Decision(Verdict.REJECT, lookups=lookups, service=svc.spn)
        cp = Conn(flow, dest, svc)
        dest.bound(False, False)
        if ct is not None:
            cp.control = ct
            ct.n_control += 1
        masq = self._masquerade(svc, packet, dest)
        cp.decision = self._decision(dest, svc, masq, True, lookups)
        self.conns[flow] = cp
        if self.track_replies:
            self.conns[reply_key(cp)] = cp
        # The SYN moves NONE -> SYN_RECV (tcp_states INPUT syn): still inactive.
        if proto == TCP:
            cp.state = SR
            cp.timeout = self.timeouts[SR]
        else:
            cp.timeout = self.udp_timeout
        self._arm(cp, now)
        st = dest.stats
        st[0] += 1
        st[1] += 1
        st[3] += packet.length
        return self._decision(dest, svc, masq, False, lookups)

    def _decision(self, dest: Dest, svc: Service, masq: bool, established: bool, lookups: int) -> Decision:
        """The Decision for this server, built once: a server belongs to one
        service, so only masquerading and new/established vary."""
        cache = dest.decisions
        key = (masq, established, lookups)
        dec = cache.get(key)
        if dec is None:
            dec = cache[key] = Decision(
                Verdict.DNAT, (dest.addr, dest.port), masq, 0, 1 if established else lookups, svc.spn, established
            )
        return dec  # type: ignore[return-value]

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
            ct.timeout = svc.timeout
            self._arm(ct, now)
            return ct.dest, ct
        if trace is not None:
            trace.append(self._explain_step(svc, src, sport, dst))
        dest = svc.sched.schedule(svc.dests, src, sport, dst)
        if dest is None:
            return None, None
        ct = Conn(tkey, dest, svc, template=True)
        dest.bound(False, True)
        ct.timeout = svc.timeout
        self.templates[tkey] = ct
        self._arm(ct, now)
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

    def _masquerade(self, svc: Service, packet: Packet, dest: Dest) -> bool:
        """Whether the iptables rules kube-proxy installs mark this new
        connection for SNAT (KUBE-MARK-MASQ) or the hairpin set matches.

        Stand-in until the iptables engine (issue 3) walks rules.iptables
        with these ipsets; it states the same rules in code."""
        src = packet.src
        if (src >> 24) == 127:
            return False
        if dest.addr == src:
            return True  # KUBE-LOOP-BACK: a pod reaching itself through the service
        if self.masquerade_all:
            return True
        kind = svc.kind
        if kind == CLUSTER:
            if self.cluster_cidrs:
                return src not in self.cluster_cidrs[0]
            return False
        if kind == EXTERNAL:
            return not svc.local
        if kind in (LOADBALANCER, NODEPORT):
            return not svc.local
        return False

    # --- tracing ------------------------------------------------------------

    def trace(self, packet: Packet, now: float) -> Trace:
        steps: list[Step] = []
        if now >= self._next_expiry:
            self._expire(now)
        flow = packet[:5]
        cp = self.conns.get(flow)
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
            decision = self._existing(cp, packet, now, flow)
        else:
            decision = self._new(packet, now, flow, steps)
        if svc is not None:
            reach = self._next_reach(svc, packet, now)
        verdict_text = {
            Verdict.DNAT: f"DNAT to {decision.endpoint_text()} (IPVS masquerading forwarder)",
            Verdict.REJECT: "REJECT: ICMP port unreachable",
            Verdict.ACCEPT: "not an IPVS virtual service: accepted unchanged",
            Verdict.DROP: "DROP",
        }[decision.verdict]
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
                return formats.list_services(self._sorted_services(), stats=stats, rate=rate)
            if fmt == "save":
                return formats.save(self._sorted_services())
            if fmt == "connections":
                return formats.list_conns(self.conns, self.templates)
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

    def _sorted_services(self) -> list[Service]:
        return formats.sort_services(list(self.services.values()))

    # --- replaying a captured table -------------------------------------------

    def load_capture(self, text: str, local_ips: list[int], filename: str) -> None:
        """Replace the table with an `ipvsadm -S -n` dump (ipvsadm -R input)."""
        specs = formats.parse_save(text, filename)
        self.services.clear()
        self.conns.clear()
        self.templates.clear()
        self.state = None
        self._captured = True
        self.local_ips = set(local_ips)
        for spec, dests in specs:
            svc = Service(spec)
            # ipvsadm -R adds the servers in file order, each at the list head.
            for addr, port, weight, upper, lower in dests:
                svc.add_dest(addr, port, weight, upper, lower)
            self.services[spec.key] = svc

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
