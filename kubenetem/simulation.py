"""A cluster's traffic, simulated: netem's event simulator driven by real proxy modes.

`netem.sim` knows links, routes, TCP and UDP but no proxy mode (netem imports
nothing above it). This module is the glue and the control plane:

- `ModeRouter` wraps any registered mode (`proxy_modes.registry`, never a
  mode module) as a `netem.sim.Router`: the mode's `route()`, the reply tuple
  its conntrack holds, whether it is a user-space proxy (it has `set_dead`)
  or keeps a connection table without conntrack (IPVS: `track_replies`).
- `kernel_cost_model()` is the one place a decision becomes modeled kernel
  time (a base plus a per-rule cost, calibrated by the iptables mode's
  harness); a mode without a model costs nothing and the report says so.
- `ControlPlane` holds the cluster's truth (kube-proxy's view, `ProxyState`)
  and the modes of the nodes that saw traffic. A change (a pod killed,
  scaled, rolled) is true at once for the pods, but reaches every node's
  mode only after the propagation delay (default: kube-proxy's
  minSyncPeriod, 1 s): the EndpointSlice update, then kube-proxy's rate
  limited sync. Until then iptables, nftables and IPVS keep sending new
  connections to a dead pod; a user-space proxy finds out by dialling it.
- `simulate()` runs it and `Report` summarises it: shares per service and
  endpoint, latency percentiles, failed and retried connections, a timeline.
"""

from __future__ import annotations

import importlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netem.addr import int_to_ip, parse_ip
from netem.conntrack import ORIGINAL, Conntrack
from netem.errors import UsageError
from netem.packet import TCP, UDP, Flow, Packet, proto_name
from netem.sim import NS, OK, REFUSED, TIMEOUT, Sim, Target
from netem.topology import Topology
from netem.workloads import generate_name, template_hash
from proxy_modes import registry
from proxy_modes.view import EndpointInfo, NodeView, ProxyState, ServiceEntry, build_state, node_view

if TYPE_CHECKING:
    from collections.abc import Callable

    from netem.cluster import Cluster
    from netem.objects import Pod, Workload
    from proxy_modes.base import ProxyMode

CLIENT_NAMESPACE = "kubenetem-sim"
OUTSIDE_BASE = 0xCB007100  # 203.0.113.0/24, the documentation range for outside clients
DEFAULT_GRACE = 30.0  # terminationGracePeriodSeconds default
ROLLOUT_STEP = 2.0  # seconds between the steps of a rolling update


# --- the kernel's cost ---------------------------------------------------------


# Modes with a calibrated kernel cost model: the module keeping it (issue 3
# keeps iptables' in proxy_modes/netfilter/cost.py: `DEFAULT.walk_us(rules)`,
# the part of a connect's latency the kernel spends walking `rules` rules,
# fitted to this machine's kernel). The base of that fit is the namespace
# round trip, which the simulation's links already are, so only the walk
# is charged, per routed packet. IPVS's decisions report the rules of
# kube-proxy's iptables rules around it, walked by the same engine (its own
# hash lookups are O(1), like conntrack's, and inside that base).
COST_MODULES = {"iptables": "proxy_modes.netfilter.cost", "ipvs": "proxy_modes.netfilter.cost"}


def kernel_cost_model(mode: str) -> Callable[[int], int] | None:
    """Modeled kernel time (ns) of walking a decision's `rules`, or None: no
    model (the mode's decisions then cost nothing, and the report says so)."""
    module_name = COST_MODULES.get(mode)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    model = getattr(module, "DEFAULT", None)
    walk_us = getattr(model, "walk_us", None)
    if walk_us is None:
        return None
    return lambda rules: round(walk_us(rules) * 1000)


# --- the mode as the simulator sees it -------------------------------------------


class ModeRouter:
    """A ProxyMode as a netem.sim.Router (duck-typed optional parts, no mode imports)."""

    def __init__(self, mode: ProxyMode, cost: Callable[[int], int] | None) -> None:
        self.mode = mode
        self.name = mode.name
        self.route = mode.route  # type: ignore[method-assign]  # the hot path, one call shorter
        # A user-space proxy dials endpoints itself and can be told which are dead.
        self.proxy = hasattr(mode, "set_dead")
        # IPVS keeps its own connection table instead of conntrack; it sees
        # replies once conntrack has undone the masquerade, so it indexes them
        # by the client's address.
        self.desnat_replies = hasattr(mode, "track_replies")
        if self.desnat_replies:
            mode.track_replies = True  # type: ignore[attr-defined]
        self._cost = cost
        self.cost = cost is not None
        self.cost_total = 0
        # The walk's time depends on the rule count alone and a run sees few
        # distinct counts: each is modeled once, the hot path pays a dict hit.
        self._ns_by_rules: dict[int, int] = {}
        self._ct = self.conntrack()

    def route(self, packet: Packet, now: float) -> Any:  # replaced per instance by the mode's own
        return self.mode.route(packet, now)

    def cost_ns(self, decision: Any) -> int:
        rules = decision.rules
        ns = self._ns_by_rules.get(rules)
        if ns is None:
            assert self._cost is not None
            ns = self._ns_by_rules[rules] = self._cost(rules)
        self.cost_total += ns
        return ns

    def synced(self) -> None:
        """The mode synced: its conntrack table may be a new object."""
        self._ct = self.conntrack()

    def conntrack(self) -> Conntrack | None:
        """The mode's conntrack table, wherever the mode keeps it (itself or its engine)."""
        found = getattr(self.mode, "conntrack", None)
        if isinstance(found, Conntrack):
            return found
        for value in vars(self.mode).values():
            found = getattr(value, "conntrack", None)
            if isinstance(found, Conntrack):
                return found
        return None

    def reply_flow(self, flow: Flow, now: float) -> Flow | None:
        ct = self._ct
        if ct is None:
            return None
        hit = ct.lookup(flow, now)
        if hit is None or hit[1] != ORIGINAL:
            return None
        return hit[0].reply

    def dial(self, packet: Packet, now: float) -> tuple[Any, list[tuple[tuple[int, int], str]], float]:
        """The proxy's choice for a new connection: decision, failed dials, seconds they took.

        While endpoints are dead the decision is traced (trace() changes state
        exactly as route() does) to learn which dials failed and how."""
        mode: Any = self.mode
        if not getattr(mode, "dead", None):
            decision = mode.route(packet, now)
            return decision, [], float(getattr(mode, "last_latency", 0.0))
        trace = mode.trace(packet, now)
        failed = []
        for step in trace.steps:
            result = step.detail.get("result")
            if result in (TIMEOUT, REFUSED):
                host, _, port = str(step.detail["endpoint"]).rpartition(":")
                failed.append(((parse_ip(host), int(port)), str(result)))
        return trace.decision, failed, float(getattr(mode, "last_latency", 0.0))


# --- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """A pod dies at `at` seconds: deleted (`timeout`: its address goes silent) or its process died (`refused`)."""

    pod: str  # NAME or NS/NAME
    at: float
    how: str = TIMEOUT


@dataclass(frozen=True)
class Scale:
    deployment: str  # NAME or NS/NAME
    replicas: int
    at: float


@dataclass(frozen=True)
class Rollout:
    deployment: str
    at: float


Event = Kill | Scale | Rollout


@dataclass
class SimConfig:
    mode: str
    clients: int = 10
    connections: int = 10  # per client
    duration: float = 10.0  # seconds over which each client spreads its connections
    link: str | None = None  # netem options for every link
    events: list[Event] = field(default_factory=list)
    seed: int = 0
    propagation: float | None = None  # None: the KubeProxyConfiguration's minSyncPeriod
    services: list[str] = field(default_factory=list)  # NS/NAME filters; empty: every service port
    outside: bool = False  # clients outside the cluster, to NodePorts
    grace: float = DEFAULT_GRACE
    request_bytes: int = 100
    response_bytes: int = 1000
    capture: bool = False


# --- the control plane -----------------------------------------------------------------


class ControlPlane:
    """The truth about endpoints, and the nodes' modes that learn it late."""

    def __init__(self, cluster: Cluster, config: SimConfig, sim_ref: list[Sim]) -> None:
        self.cluster = cluster
        self.config = config
        self.truth: ProxyState = build_state(cluster)
        self.synced: ProxyState = self.truth
        self.views: dict[str, NodeView] = {}
        self.routers: dict[str, ModeRouter] = {}
        self.cost = kernel_cost_model(config.mode)
        self.dead: dict[tuple[int, int], str] = {}  # endpoints a proxy's dial would find dead
        self.delay = config.propagation if config.propagation is not None else cluster.proxy_config.min_sync_period
        self.log: list[dict[str, Any]] = []
        self._sim = sim_ref
        self.used_ips: set[int] = {p.pod_ip for p in cluster.pods if p.pod_ip is not None}
        self.extra_pods: dict[int, tuple[str, str, str]] = {}  # ip -> (namespace, name, node) of pods made here
        self.current_rs: dict[int, str] = {}  # a rolled Deployment's new ReplicaSet, by id of the workload
        registry.create(config.mode, random.Random(0))  # an unknown mode fails now, not at the first packet

    @property
    def sim(self) -> Sim:
        return self._sim[0]

    def router_for(self, node: str) -> ModeRouter:
        mode = registry.create(self.config.mode, random.Random(f"{self.config.seed}/{node}"))
        share = getattr(mode, "share_with", None)
        if share is not None and self.routers:
            share(next(iter(self.routers.values())).mode)  # nodes program mostly the same rules (proxy_modes/base.py)
        view = node_view(self.cluster, self.synced, node)
        self.views[node] = view
        mode.sync(view)
        router = ModeRouter(mode, self.cost)
        self.routers[node] = router
        if router.proxy:
            for (ip, port), how in self.dead.items():
                mode.set_dead(ip, port, how)  # type: ignore[attr-defined]
        return router

    # -- changes --

    def change(self, t: int, what: str, state: ProxyState) -> None:
        """The truth changes at `t`; every node's mode syncs it after the delay."""
        self.truth = state
        at = t + round(self.delay * NS)
        self.log.append({"at_s": t / NS, "event": what, "synced_at_s": at / NS})
        self.sim.at(at, lambda when: self._sync(when, state))

    def _sync(self, t: int, state: ProxyState) -> None:
        self.synced = state
        for node, router in self.routers.items():
            view = self.views[node].with_state(state)
            self.views[node] = view
            router.mode.sync(view)
            router.synced()
        # Endpoints gone from the view are no longer dialled: forget they were dead.
        present = {
            (ep.ip, ep.port) for entry in state.entries.values() for eps in entry.endpoints.values() for ep in eps
        }
        for key in [k for k in self.dead if k not in present]:
            del self.dead[key]
            for router in self.routers.values():
                if router.proxy:
                    router.mode.set_alive(*key)  # type: ignore[attr-defined]

    def endpoints_of(self, ip: int) -> list[tuple[int, int]]:
        return sorted(
            {
                (ep.ip, ep.port)
                for e in self.truth.entries.values()
                for eps in e.endpoints.values()
                for ep in eps
                if ep.ip == ip
            }
        )

    def without(self, state: ProxyState, ip: int, terminating: bool) -> ProxyState:
        """The state with the pod at `ip` gone (or, `terminating`, not ready any more)."""
        for name, entry in list(state.entries.items()):
            if not any(ep.ip == ip for eps in entry.endpoints.values() for ep in eps):
                continue
            endpoints: dict[Any, tuple[EndpointInfo, ...]] = {}
            for spn, eps in entry.endpoints.items():
                if terminating:
                    endpoints[spn] = tuple(
                        ep._replace(ready=False, terminating=True) if ep.ip == ip else ep for ep in eps
                    )
                else:
                    endpoints[spn] = tuple(ep for ep in eps if ep.ip != ip)
            state = state.with_entry(name, ServiceEntry(entry.ports, endpoints))
        return state

    def with_pod(self, state: ProxyState, like: set[int], ip: int, node: str) -> ProxyState:
        """The state with a new ready pod at `ip` wherever a pod of `like` is an endpoint."""
        zone = self.cluster.nodes[node].zone if node in self.cluster.nodes else ""
        for name, entry in list(state.entries.items()):
            endpoints = dict(entry.endpoints)
            changed = False
            for spn, eps in entry.endpoints.items():
                model = next((ep for ep in eps if ep.ip in like), None)
                if model is None or any(ep.ip == ip for ep in eps):
                    continue
                text = f"{int_to_ip(ip)}:{model.port}"
                new = EndpointInfo(ip, model.port, text, True, True, False, node, zone)
                endpoints[spn] = tuple(sorted((*eps, new), key=lambda ep: ep.text))
                changed = True
            if changed:
                state = state.with_entry(name, ServiceEntry(entry.ports, endpoints))
        return state

    # -- events --

    def schedule(self, event: Event) -> None:
        at = round(event.at * NS)
        if isinstance(event, Kill):
            pod = self.find_pod(event.pod)
            self.sim.kill(pod[2], event.how, at)  # known ahead: packets handled ahead of time meet it
            self.sim.at(at, lambda t: self.kill(t, pod, event.how))
        elif isinstance(event, Scale):
            workload = self.find_deployment(event.deployment)
            self.sim.at(at, lambda t: self.scale(t, workload, event.replicas))
        else:
            workload = self.find_deployment(event.deployment)
            self.sim.at(at, lambda t: self.rollout(t, workload))

    def kill(self, t: int, pod: tuple[str, str, int], how: str) -> None:
        ns, name, ip = pod
        for key in self.endpoints_of(ip):
            self.dead[key] = how
            for router in self.routers.values():
                if router.proxy:
                    router.mode.set_dead(key[0], key[1], how)  # type: ignore[attr-defined]
        self.change(
            t,
            f"kill pod/{ns}/{name} ({'deleted' if how == TIMEOUT else 'process died'})",
            self.without(self.truth, ip, False),
        )

    def terminate(self, t: int, ns: str, name: str, ip: int) -> None:
        """Graceful deletion: not ready at once, serving until the grace period ends, then gone."""
        self.change(t, f"terminate pod/{ns}/{name}", self.without(self.truth, ip, True))
        gone = t + round(self.config.grace * NS)
        self.sim.kill(ip, TIMEOUT, gone)
        self.sim.at(gone, lambda when: self._gone(when, ns, name, ip))

    def _gone(self, t: int, ns: str, name: str, ip: int) -> None:
        self.change(t, f"pod/{ns}/{name} deleted after its grace period", self.without(self.truth, ip, False))

    def scale(self, t: int, workload: Workload, replicas: int) -> None:
        pods = self.live_pods(workload)
        if replicas > len(pods):
            self.add_pods(t, workload, replicas - len(pods), self.replicaset(workload))
        else:
            # The ReplicaSet controller deletes the newest pods first (ActivePods ranking, simplified).
            for ns, name, ip in pods[replicas:]:
                self.terminate(t, ns, name, ip)
        self.log.append({"at_s": t / NS, "event": f"scale deployment/{workload.meta.name} to {replicas}"})

    def rollout(self, t: int, workload: Workload) -> None:
        """A rolling update with the default strategy (maxSurge 25% rounded up,
        maxUnavailable 25% rounded down): each step adds `surge` new pods and
        terminates as many old ones, every ROLLOUT_STEP seconds."""
        old = self.live_pods(workload)
        surge = max(1, math.ceil(len(old) * 0.25))
        restarted = dict(workload.template_raw)
        restarted["metadata"] = {
            **restarted.get("metadata", {}),
            "annotations": {"kubectl.kubernetes.io/restartedAt": f"{t}"},
        }
        rs = f"{workload.meta.name}-{template_hash(restarted)}"
        self.current_rs[id(workload)] = rs  # a later scale adds pods of the new ReplicaSet
        for step, start in enumerate(range(0, len(old), surge)):
            batch = old[start : start + surge]
            when = t + round(step * ROLLOUT_STEP * NS)
            self.sim.at(when, self._roll_step(workload, batch, rs))
        self.log.append({"at_s": t / NS, "event": f"rollout deployment/{workload.meta.name}"})

    def _roll_step(self, workload: Workload, batch: list[tuple[str, str, int]], rs: str) -> Callable[[int], None]:
        def step(t: int) -> None:
            self.add_pods(t, workload, len(batch), rs)
            for ns, name, ip in batch:
                self.terminate(t, ns, name, ip)

        return step

    def add_pods(self, t: int, workload: Workload, n: int, rs: str) -> None:
        like = {ip for _, _, ip in self.live_pods(workload)} | {
            p.pod_ip for p in self.workload_pods(workload) if p.pod_ip
        }
        ns = workload.meta.namespace
        for _ in range(n):
            node = self.least_loaded()
            ip = self.free_ip(node)
            name = generate_name(f"{rs}-", f"{ns}/{rs}/{ip}")
            self.sim.add_pod(ns, name, ip, node)
            self.extra_pods[ip] = (ns, name, node)
            self.change(t, f"pod/{ns}/{name} ready on {node}", self.with_pod(self.truth, like, ip, node))

    # -- lookups --

    def find_pod(self, text: str) -> tuple[str, str, int]:
        ns, _, name = text.rpartition("/")
        found = [
            p for p in self.cluster.pods if p.meta.name == name and (not ns or p.meta.namespace == ns) and p.pod_ip
        ]
        if not found:
            raise UsageError(f"--kill: no pod named {text!r} with an address")
        if len(found) > 1:
            raise UsageError(f"--kill: {text!r} names pods in several namespaces; write pod/NAMESPACE/NAME")
        pod = found[0]
        assert pod.pod_ip is not None
        return (pod.meta.namespace, pod.meta.name, pod.pod_ip)

    def find_deployment(self, text: str) -> Workload:
        ns, _, name = text.rpartition("/")
        found = [
            w
            for w in self.cluster.workloads
            if w.kind == "Deployment" and w.meta.name == name and (not ns or w.meta.namespace == ns)
        ]
        if len(found) != 1:
            raise UsageError(f"no single Deployment named {text!r}")
        return found[0]

    def workload_pods(self, workload: Workload) -> list[Pod]:
        ns = workload.meta.namespace
        return [p for p in self.cluster.pods if p.meta.namespace == ns and workload.selector.matches(p.meta.labels)]

    def live_pods(self, workload: Workload) -> list[tuple[str, str, int]]:
        """The workload's pods that are alive and ready in the truth, oldest first."""
        ready = {ep.ip for e in self.truth.entries.values() for eps in e.endpoints.values() for ep in eps if ep.ready}
        pods = [(p.meta.namespace, p.meta.name, p.pod_ip) for p in self.workload_pods(workload) if p.pod_ip in ready]
        like = {p.pod_ip for p in self.workload_pods(workload)}
        pods += [(ns, name, ip) for ip, (ns, name, _) in self.extra_pods.items() if ip in ready and ip not in like]
        return [(ns, name, ip) for ns, name, ip in pods if ip is not None and not self.sim.is_dead(ip, self.sim.now)]

    def replicaset(self, workload: Workload) -> str:
        if id(workload) in self.current_rs:
            return self.current_rs[id(workload)]
        for pod in self.workload_pods(workload):
            if pod.owner is not None:
                return pod.owner[1]
        return f"{workload.meta.name}-{template_hash(workload.template_raw)}"

    def least_loaded(self) -> str:
        topo = self.sim.topology
        return min(topo.nodes, key=lambda n: (len(topo.nodes[n].pods), n))

    def free_ip(self, node: str) -> int:
        net = self.sim.topology.node(node)
        if not net.pod_cidrs:
            raise UsageError(f"node {node} has no podCIDR for new pods")
        cidr = net.pod_cidrs[0]
        ip = cidr.network + 2
        while ip in self.used_ips or ip in self.sim.hosts:
            ip += 1
        if ip >= cidr.last:
            raise UsageError(f"node {node}: podCIDR {cidr} is full")
        self.used_ips.add(ip)
        return ip


# --- running ----------------------------------------------------------------------------


def simulate(cluster: Cluster, config: SimConfig) -> Report:
    """Build the network and the clients, play the events, run to the end."""
    sim, control = prepare(cluster, config)
    sim.run()
    return Report(sim, control, config)


def prepare(cluster: Cluster, config: SimConfig) -> tuple[Sim, ControlPlane]:
    """Everything but the run: topology, nodes, clients and their schedule, events."""
    if config.clients <= 0 or config.connections <= 0:
        raise UsageError("--clients and --connections must be positive")
    if config.duration <= 0:
        raise UsageError("--duration must be positive")
    topology = Topology.from_cluster(cluster)
    if not topology.nodes:
        raise UsageError("the cluster has no nodes with an address (InternalIP): nothing to route on")
    sim_ref: list[Sim] = []
    control = ControlPlane(cluster, config, sim_ref)
    try:
        sim = Sim(
            topology,
            control.router_for,
            random.Random(config.seed),
            link=config.link,
            request_bytes=config.request_bytes,
            response_bytes=config.response_bytes,
            capture=config.capture,
        )
    except ValueError as exc:
        raise UsageError(f"--link: {exc}") from None
    sim_ref.append(sim)
    for node in sim.nodes.values():  # every node runs kube-proxy: its first sync is set-up, not traffic
        sim.router(node)
    targets = _targets(control.truth, config, sim)
    _clients(sim, config, targets)
    for event in config.events:
        control.schedule(event)
    return sim, control


def _targets(state: ProxyState, config: SimConfig, sim: Sim) -> list[int]:
    wanted = set(config.services)
    found: list[int] = []
    for info in state.service_ports():
        ns, name = info.name.service
        if wanted and f"{ns}/{name}" not in wanted and name not in wanted:
            continue
        if info.protocol not in (TCP, UDP):
            continue
        if config.outside:
            if not info.node_port:
                continue
            for node in sim.nodes.values():
                found.append(
                    sim.target_index(Target(str(info.name), info.protocol, node.ip, info.node_port, node.name))
                )
        else:
            found.append(sim.target_index(Target(str(info.name), info.protocol, info.cluster_ip, info.port)))
    if not found:
        what = "NodePort service ports" if config.outside else "service ports with a ClusterIP"
        chosen = f" among {', '.join(sorted(wanted))}" if wanted else ""
        raise UsageError(f"no {what}{chosen} to send traffic to")
    return found


def _clients(sim: Sim, config: SimConfig, targets: list[int]) -> None:
    rng = random.Random(f"{config.seed}/clients")
    interval = round(config.duration * NS / config.connections)
    nodes = sorted(sim.nodes)
    hosts_by_node: dict[str, list[Any]] = {n: [] for n in nodes}
    for i in range(config.clients):
        if config.outside:
            ip = OUTSIDE_BASE + 1 + i % 254
            host = sim.hosts.get(ip) or sim.add_outside_host(ip, f"outside-{int_to_ip(ip)}")
        else:
            node = nodes[i % len(nodes)]
            mine = hosts_by_node[node]
            try:
                host = sim.add_client_pod(f"client-{i}", node)
                mine.append(host)
            except ValueError:
                if not mine:
                    raise UsageError(f"node {node}: no free pod address for a client pod") from None
                host = mine[i % len(mine)]  # the podCIDR is full: clients share pods
        sim.add_client(host, targets, config.connections, round(rng.random() * interval), interval)


# --- the report -------------------------------------------------------------------------


def percentiles(values: list[int]) -> dict[str, float]:
    """p50/p90/p99/max in ms, nearest-rank (the smallest value with at least p% at or below it)."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * n) - 1)] / 1e6

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1] / 1e6}


class Report:
    """What a run produced, as JSON-ready data and as text."""

    def __init__(self, sim: Sim, control: ControlPlane, config: SimConfig) -> None:
        self.sim = sim
        self.control = control
        self.config = config
        self.data = self._build()

    def _build(self) -> dict[str, Any]:
        sim, config = self.sim, self.config
        records = sim.records
        ok = [r for r in records if r[2] == OK]
        failed = Counter(r[2] for r in records if r[2] != OK)
        retried = sum(1 for r in ok if r[6] or r[7])
        lost = sum(link.stats.lost for link in sim.links)
        return {
            "mode": config.mode,
            "seed": config.seed,
            "clients": config.clients,
            "connections_per_client": config.connections,
            "duration_s": config.duration,
            "link": config.link,
            "propagation_s": self.control.delay,
            "simulated_s": max((r[1] for r in records), default=0) / NS,
            "packets": {
                "sent": sim.sent,
                "retransmitted": sim.retransmissions,
                "lost_on_links": lost,
                "dropped": dict(sim.drops),
            },
            "connections": {
                "total": len(records),
                "succeeded": len(ok),
                "failed": sum(failed.values()),
                "failed_by": dict(sorted(failed.items())),
                "retried": retried,
                "syn_retransmitted": sum(1 for r in records if r[6]),
                "redialed": sum(1 for r in records if r[7]),
            },
            "latency_ms": {
                "connect": percentiles([r[5] for r in ok if r[5] >= 0]),
                "response": percentiles([r[1] - r[0] for r in ok]),
            },
            "services": self._services(),
            "timeline": self._timeline(),
            "events": self.control.log,
            "kernel_cost": self._cost(),
        }

    def _pod_name(self, ip: int) -> str:
        host = self.sim.hosts.get(ip)
        return host.name if host is not None else "-"

    def _services(self) -> list[dict[str, Any]]:
        sim = self.sim
        by_service: dict[str, Counter[tuple[int, int] | None]] = {}
        failed: dict[str, Counter[tuple[int, int] | None]] = {}
        for r in sim.records:
            name = sim.targets[r[3]].name
            by_service.setdefault(name, Counter())[r[4]] += 1
            if r[2] != OK:
                failed.setdefault(name, Counter())[r[4]] += 1
        out = []
        total = len(sim.records) or 1
        protocols = {t.name: t.proto for t in sim.targets}
        for name in sorted(by_service):
            counts = by_service[name]
            n = sum(counts.values())
            bad = failed.get(name, Counter())
            endpoints = [
                {
                    "endpoint": "-" if ep is None else f"{int_to_ip(ep[0])}:{ep[1]}",
                    "pod": "-" if ep is None else self._pod_name(ep[0]),
                    "connections": c,
                    "share": c / n,
                    "failed": bad[ep],
                }
                for ep, c in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or (0, 0)))
            ]
            out.append(
                {
                    "service": name,
                    "protocol": proto_name(protocols[name]),
                    "connections": n,
                    "share": n / total,
                    "failed": sum(bad.values()),
                    "endpoints": endpoints,
                }
            )
        return out

    def _timeline(self) -> list[dict[str, int]]:
        """Per second of start time: connections started, failed, retried."""
        rows: dict[int, list[int]] = {}
        for r in self.sim.records:
            row = rows.setdefault(r[0] // NS, [0, 0, 0])
            row[0] += 1
            if r[2] != OK:
                row[1] += 1
            elif r[6] or r[7]:
                row[2] += 1
        return [{"second": s, "started": v[0], "failed": v[1], "retried": v[2]} for s, v in sorted(rows.items())]

    def _cost(self) -> dict[str, Any]:
        if self.control.cost is None:
            return {
                "model": "none",
                "note": f"no calibrated kernel cost model for {self.config.mode}: decisions cost 0",
            }
        total = sum(r.cost_total for r in self.control.routers.values())
        return {"model": self.config.mode, "total_ms": total / 1e6}

    def to_json(self) -> dict[str, Any]:
        return self.data

    def to_text(self) -> str:
        d = self.data
        c = d["connections"]
        lines = [
            f"mode {d['mode']}: {d['clients']} clients x {d['connections_per_client']} connections over "
            f"{d['duration_s']:g} s (seed {d['seed']}), link: {d['link'] or 'none'}, "
            f"propagation {d['propagation_s']:g} s; simulated until {d['simulated_s']:.3f} s",
            f"connections: {c['total']} total, {c['succeeded']} succeeded, {c['failed']} failed"
            + (f" ({', '.join(f'{k} {v}' for k, v in c['failed_by'].items())})" if c["failed_by"] else "")
            + f", {c['retried']} retried (SYN retransmitted {c['syn_retransmitted']}, re-dialled {c['redialed']})",
        ]
        for label, key in (("connect", "connect"), ("response", "response")):
            p = d["latency_ms"][key]
            if p:
                lines.append(
                    f"latency {label:8} ms: p50 {p['p50']:.3f}  p90 {p['p90']:.3f}"
                    f"  p99 {p['p99']:.3f}  max {p['max']:.3f}"
                )
        pk = d["packets"]
        dropped = ", ".join(f"{k} {v}" for k, v in pk["dropped"].items() if v) or "none"
        lines.append(
            f"packets: {pk['sent']} sent, {pk['retransmitted']} retransmitted, {pk['lost_on_links']} lost on links,"
            f" dropped: {dropped}"
        )
        cost = d["kernel_cost"]
        lines.append(
            "kernel cost: no model (0)"
            if cost["model"] == "none"
            else f"kernel cost: {cost['total_ms']:.3f} ms modeled"
        )
        for svc in d["services"]:
            lines.append(
                f"{svc['service']} ({svc['protocol']}): {svc['connections']} connections ({svc['share']:.1%}),"
                f" {svc['failed']} failed"
            )
            for ep in svc["endpoints"]:
                lines.append(
                    f"  {ep['endpoint']:<21} {ep['pod']:<32} {ep['connections']:>7} {ep['share']:>7.1%}"
                    f"  failed {ep['failed']}"
                )
        for ev in d["events"]:
            synced = f", synced by the nodes at {ev['synced_at_s']:g} s" if "synced_at_s" in ev else ""
            lines.append(f"event at {ev['at_s']:g} s: {ev['event']}{synced}")
        bad = [row for row in d["timeline"] if row["failed"] or row["retried"]]
        if bad:
            lines.append("seconds with failed or retried connections (by start time):")
            lines += [
                f"  {r['second']:>4} s: {r['started']} started, {r['failed']} failed, {r['retried']} retried"
                for r in bad
            ]
        return "\n".join(lines) + "\n"
