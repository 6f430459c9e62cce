"""The controller's model: which Ingresses are ours, and the servers,
locations and upstreams they merge into.

Restated from ingress-nginx internal/ingress/controller/controller.go
(createUpstreams, createServers, getBackendServers, mergeAlternativeBackends)
and location.go (updateServerLocations):

- Ingresses are taken oldest first (store.go sortIngressSlice: by
  creationTimestamp; on a tie by "namespace/name" *descending*, as
  ingress-nginx does). The first Ingress to claim a host, path and pathType
  wins; later ones are reported as conflicts. Server-level settings (the
  host's fallback backend, TLS certificate, app-root) come from the oldest too.
- One server per host (plus the catch-all `_`). Each server has a `/`
  fallback location sending to the defaultBackend of the oldest Ingress that
  names the host, or to the default backend (404). The catch-all uses the
  oldest Ingress's defaultBackend (ingress-nginx lets the *newest* overwrite
  it, a quirk we do not copy: the issue asks oldest-wins for every conflict).
- One upstream per service port (`ns-name-port`), its load-balancing settings
  from the first Ingress that references it. Canary Ingresses create no
  locations; their backend becomes the alternative of the primary upstream
  at the same host, path and pathType (per upstream, as in ingress-nginx).

`IngressModel` keeps all of this and updates it incrementally: a changed
Ingress rebuilds only the servers of the hosts it touches, an endpoints change
only the upstreams of the changed services. `nginx_locations` (in
`locations.py`) turns a server's locations into the nginx `location` blocks
that both the renderer and the router use, so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from netem.addr import int_to_ip
from netem.cluster import Cluster
from netem.errors import KubenetemError
from netem.gcpause import paused_gc
from netem.objects import RawObject, Service
from proxy_modes.view import EndpointInfo, ProxyState, ServicePortName, build_state

from .annotations import Canary, Settings
from .objects import (
    EXACT,
    PREFIX,
    BackendRef,
    Ingress,
    IngressClass,
    parse_ingress,
    parse_ingress_class,
    parse_tls_secret,
)

DEFAULT_SERVER = "_"
CONTROLLER = "k8s.io/ingress-nginx"


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """The controller's flags (ingress-nginx --controller-class, --ingress-class, ...)."""

    controller: str = CONTROLLER
    ingress_class: str = "nginx"  # the value the deprecated kubernetes.io/ingress.class annotation must have
    watch_without_class: bool = False
    default_body_size: str = "1m"  # ConfigMap proxy-body-size
    # Keep the Ingress spec where ingress-nginx's output breaks it (locations.py);
    # False renders ingress-nginx's locations as they are.
    keep_spec: bool = True


class Endpoint(NamedTuple):
    text: str  # the pod endpoint "ip:port" as the cluster knows it
    ip: str
    port: int
    address: str  # where nginx connects (the same, unless tests map it to a loopback port)
    cookie: str  # the affinity cookie value for it


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    service: str  # "ns/name"
    port: int | str
    endpoints: tuple[Endpoint, ...]
    balance: str = "round_robin"
    hash_by: str = ""
    affinity_cookie: str = ""
    cookie_path: str = "/"
    canary: str = ""  # the alternative upstream's name
    canary_policy: Canary | None = None

    @property
    def var(self) -> str:
        """A stable nginx-variable-safe id for the upstream's maps."""
        return hashlib.sha1(self.name.encode()).hexdigest()[:12]


class Location(NamedTuple):
    path: str
    path_type: str
    ingress: str | None  # "ns/name" of the Ingress the location (or fallback backend) comes from
    upstream: str | None  # None: the default backend (404)
    settings: Settings
    fallback: bool = False  # the server's `/` when no Ingress path claims it
    service: str = ""
    port: int | str = 0


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    locations: tuple[Location, ...]
    cert: str = ""  # certificate name ("ns-secret") from a Secret, "" = the default certificate
    app_root: str = ""

    @property
    def regex(self) -> bool:
        """enforceRegexModifier (template.go): any location using a regex or a rewrite."""
        return any(loc.settings.use_regex or needs_rewrite(loc) for loc in self.locations)


def needs_rewrite(loc: Location) -> bool:
    """location.go needsRewrite: a rewrite-target that differs from the path."""
    return bool(loc.settings.rewrite_target) and loc.settings.rewrite_target != loc.path


def order_key(ing: Ingress) -> tuple[str, str]:
    return ing.order


def upstream_name(namespace: str, ref: BackendRef) -> str:
    """controller.go upstreamName: namespace-service-port."""
    return f"{namespace}-{ref.service}-{ref.port}"


@dataclass
class IngressModel:
    """All our Ingresses, merged; updated incrementally. Sans-IO."""

    config: ControllerConfig = field(default_factory=ControllerConfig)
    address_of: Callable[[str], str] | None = None  # endpoint "ip:port" -> nginx address (tests)
    ingresses: dict[str, Ingress] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    certificates: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (crt, key)
    errors: dict[str, list[KubenetemError]] = field(default_factory=dict)  # per Ingress key
    warnings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    _raw: dict[str, RawObject] = field(default_factory=dict)
    _classes: dict[str, IngressClass] = field(default_factory=dict)
    _secrets: dict[str, RawObject] = field(default_factory=dict)
    _services: dict[tuple[str, str], Service] = field(default_factory=dict)
    _state: ProxyState | None = None
    _hosts: dict[str, set[str]] = field(default_factory=dict)  # host -> Ingress keys
    _refs: dict[str, set[str]] = field(default_factory=dict)  # upstream -> Ingress keys
    _host_warnings: dict[str, list[str]] = field(default_factory=dict)
    # What was rebuilt, for incremental renderers: ("server", host) and
    # ("upstream", name) entries; a new epoch means "everything".
    epoch: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)

    # -- loading ---------------------------------------------------------------

    @classmethod
    def from_cluster(
        cls,
        cluster: Cluster,
        config: ControllerConfig | None = None,
        state: ProxyState | None = None,
        address_of: Callable[[str], str] | None = None,
    ) -> IngressModel:
        model = cls(config=config or ControllerConfig(), address_of=address_of)
        model.load(cluster, state)
        return model

    def load(self, cluster: Cluster, state: ProxyState | None = None) -> None:
        """Everything from scratch."""
        with paused_gc():
            self._load(cluster, state)

    def _load(self, cluster: Cluster, state: ProxyState | None) -> None:
        self._classes = {c.name: c for c in map(parse_ingress_class, cluster.ingress_classes)}
        self._secrets = {f"{s.meta.namespace}/{s.meta.name}": s for s in cluster.secrets}
        self._services = dict(cluster.services)
        self._state = state if state is not None else build_state(cluster)
        self.ingresses, self._raw, self.errors, self.ignored = {}, {}, {}, []
        for raw in cluster.ingresses:
            self._admit(raw)
        self._rebuild_all()

    def _admit(self, raw: RawObject) -> str:
        key = f"{raw.meta.namespace or 'default'}/{raw.meta.name}"
        self._raw[key] = raw
        self.errors.pop(key, None)
        if not self._is_ours(raw):
            self.ignored.append(key)
            return key
        ing, errors = parse_ingress(raw)
        if ing is None:
            self.errors[key] = list(errors)
            return key
        self.ingresses[key] = ing
        return key

    def _is_ours(self, raw: RawObject) -> bool:
        """store.go GetIngressClass: the deprecated annotation first, then
        spec.ingressClassName naming an IngressClass of our controller, then
        the default IngressClass (the API server's admission plugin sets it on
        Ingresses created without a class), then --watch-ingress-without-class."""
        annotation = raw.meta.annotations.get("kubernetes.io/ingress.class")
        if annotation is not None:
            return annotation == self.config.ingress_class
        spec = raw.body.get("spec")
        name = spec.get("ingressClassName") if isinstance(spec, dict) else None
        if name:
            cls = self._classes.get(str(name))
            return cls is not None and cls.controller == self.config.controller
        defaults = [c for c in self._classes.values() if c.default]
        if defaults:
            return any(c.controller == self.config.controller for c in defaults[:1])
        return self.config.watch_without_class

    # -- incremental changes -----------------------------------------------------

    def apply(self, changed: Iterable[RawObject] = (), removed: Iterable[str] = ()) -> set[str]:
        """Ingresses added/changed and removed ("ns/name"); returns the hosts rebuilt."""
        touched: set[str] = set()
        upstreams: set[str] = set()
        canary_changed = False
        for key in list(removed) + [f"{r.meta.namespace or 'default'}/{r.meta.name}" for r in changed]:
            old = self.ingresses.pop(key, None)
            self._raw.pop(key, None)
            self.errors.pop(key, None)
            if key in self.ignored:
                self.ignored.remove(key)
            if old is not None:
                touched |= self._unindex(old)
                upstreams |= _upstreams_of(old)
                canary_changed |= old.settings.canary is not None
        for raw in changed:
            key = self._admit(raw)
            new = self.ingresses.get(key)
            if new is not None:
                touched |= self._index(new)
                upstreams |= _upstreams_of(new)
                canary_changed |= new.settings.canary is not None
        for name in upstreams:
            self._build_upstream(name)
        if canary_changed:
            touched |= self._attach_canaries()
        for host in touched:
            self._build_server(host)
        self._collect_warnings()
        if len(self.log) > 100_000:
            self.epoch, self.log = self.epoch + 1, []
        return touched

    def set_state(self, state: ProxyState, services: dict[tuple[str, str], Service] | None = None) -> set[str]:
        """New endpoints: rebuild only the upstreams whose service entry changed
        (entries compare by value, so two loads of the same files are equal)."""
        old, self._state = self._state, state
        if services is not None:
            self._services = dict(services)
        changed = {
            key
            for key in set(state.entries) | set(old.entries if old else {})
            if old is None or old.entries.get(key) != state.entries.get(key)
        }
        names = {n for n, u in self.upstreams.items() if tuple(u.service.split("/", 1)) in changed}
        for name in names:
            self._build_upstream(name, keep_canary=True)
        return names

    # -- building ------------------------------------------------------------------

    def _rebuild_all(self) -> None:
        self.epoch += 1
        self.log = []
        self._hosts, self._refs, self.servers, self.upstreams = {}, {}, {}, {}
        for ing in self.ingresses.values():
            self._index(ing)
        for name in list(self._refs):
            self._build_upstream(name)
        self._attach_canaries()
        for host in [*self._hosts, DEFAULT_SERVER]:
            self._build_server(host)
        self._collect_warnings()

    def _index(self, ing: Ingress) -> set[str]:
        hosts = _hosts_of(ing)
        for host in hosts:
            self._hosts.setdefault(host, set()).add(ing.key)
        for name in _upstreams_of(ing):
            self._refs.setdefault(name, set()).add(ing.key)
        return hosts

    def _unindex(self, ing: Ingress) -> set[str]:
        hosts = _hosts_of(ing)
        for host in hosts:
            self._hosts.get(host, set()).discard(ing.key)
        for name in _upstreams_of(ing):
            self._refs.get(name, set()).discard(ing.key)
        return hosts

    def _ordered(self, keys: Iterable[str]) -> list[Ingress]:
        return sorted((self.ingresses[k] for k in keys if k in self.ingresses), key=order_key)

    def _build_upstream(self, name: str, keep_canary: bool = False) -> None:
        self.log.append(("upstream", name))
        users = self._ordered(self._refs.get(name, ()))
        if not users:
            self.upstreams.pop(name, None)
            self._refs.pop(name, None)
            return
        first = users[0]
        ref = next(r for r in _backends_of(first) if upstream_name(first.namespace, r) == name)
        endpoints = self._endpoints(first.namespace, ref, name)
        s = first.settings
        old = self.upstreams.get(name)
        up = Upstream(
            name=name,
            service=f"{first.namespace}/{ref.service}",
            port=ref.port,
            endpoints=endpoints,
            balance=s.load_balance,
            hash_by=s.hash_by,
            affinity_cookie=s.affinity_cookie,
            cookie_path=s.cookie_path or "/",
        )
        if keep_canary and old is not None:
            up = replace(up, canary=old.canary, canary_policy=old.canary_policy)
        self.upstreams[name] = up

    def _endpoints(self, namespace: str, ref: BackendRef, name: str) -> tuple[Endpoint, ...]:
        """controller.go serviceEndpoints: the service port whose port, targetPort
        or name equals the backend's port; its ready endpoints (getEndpointsFromSlices)."""
        svc = self._services.get((namespace, ref.service))
        if svc is None or self._state is None:
            return ()
        for p in svc.ports:
            if p.protocol == "TCP" and (
                str(p.port) == str(ref.port) or str(p.target_port) == str(ref.port) or p.name == ref.port
            ):
                eps = self._state.endpoints(ServicePortName(namespace, ref.service, p.name, "TCP"))
                return tuple(self._endpoint(e, name) for e in eps if e.ready)
        return ()

    def _endpoint(self, e: EndpointInfo, upstream: str) -> Endpoint:
        address = self.address_of(e.text) if self.address_of else e.text
        # nodemap.lua create_map: md5(salt .. endpoint), the salt being the backend name.
        cookie = hashlib.md5((upstream + e.text).encode()).hexdigest()
        return Endpoint(e.text, int_to_ip(e.ip), e.port, address, cookie)

    def _attach_canaries(self) -> set[str]:
        """mergeAlternativeBackends: a canary's backend becomes the alternative
        of the primary upstream at the same host, path and pathType. Returns
        the hosts whose locations use an upstream whose alternative changed."""
        before = {n: (u.canary, u.canary_policy) for n, u in self.upstreams.items()}
        for name, up in self.upstreams.items():
            if up.canary:
                self.upstreams[name] = replace(up, canary="", canary_policy=None)
                self.log.append(("upstream", name))
        canaries = self._ordered(k for k, i in self.ingresses.items() if i.settings.canary is not None)
        for ing in canaries:
            for host, path, ptype, ref in _canary_targets(ing):
                self._merge_canary(ing, host, path, ptype, upstream_name(ing.namespace, ref))
        changed = {n for n, u in self.upstreams.items() if before.get(n) != (u.canary, u.canary_policy)}
        if not changed:
            return set()
        return {
            h
            for h, keys in self._hosts.items()
            if any(_upstreams_of(self.ingresses[k]) & changed for k in keys if k in self.ingresses)
        }

    def _merge_canary(self, ing: Ingress, host: str, path: str, ptype: str, alt: str) -> None:
        for primary in self._ordered(self._hosts.get(host, ())):
            if primary.settings.canary is not None:
                continue
            for p_host, p_path, p_type, ref in _paths_of(primary):
                name = upstream_name(primary.namespace, ref)
                if (p_host, p_path, p_type) != (host, path, ptype) or name == alt or name not in self.upstreams:
                    continue
                up = self.upstreams[name]
                if not up.canary and alt in self.upstreams:
                    self.upstreams[name] = replace(up, canary=alt, canary_policy=ing.settings.canary)
                    self.log.append(("upstream", name))
                return

    def _build_server(self, host: str) -> None:
        self.log.append(("server", host))
        ings = [i for i in self._ordered(self._hosts.get(host, ())) if i.settings.canary is None]
        self._host_warnings.pop(host, None)
        if not ings and host != DEFAULT_SERVER:
            self.servers.pop(host, None)
            return
        locations = [self._fallback(host, ings)]
        taken: dict[tuple[str, str], str] = {}
        for ing in ings:
            for p_host, path, ptype, ref in _paths_of(ing):
                if p_host != host:
                    continue
                if (path, ptype) in taken:
                    self._warn(
                        host,
                        f"{ing.key}: host {host!r} path {path!r} ({ptype}) is already defined by "
                        f"{taken[(path, ptype)]}; ignored",
                    )
                    continue
                taken[(path, ptype)] = ing.key
                name = upstream_name(ing.namespace, ref)
                loc = Location(
                    path, ptype, ing.key, name, ing.settings, service=f"{ing.namespace}/{ref.service}", port=ref.port
                )
                locations.append(loc)
        if any(loc.path == "/" and loc.path_type != EXACT for loc in locations[1:]):
            del locations[0]  # an Ingress's own `location /` replaces the fallback
        server = Server(host, tuple(locations), self._certificate(host, ings), _app_root(locations))
        if server.regex:
            server = self._drop_bad_regexes(server)
        self.servers[host] = server

    def _drop_bad_regexes(self, server: Server) -> Server:
        """A host in regex mode makes every path a regex (ImplementationSpecific
        ones of other Ingresses too); one that is no valid regex would fail
        `nginx -t` for everybody, so that location is left out, with a warning."""
        keep = []
        for loc in server.locations:
            try:
                re.compile(loc.path)
                keep.append(loc)
            except re.error as exc:
                self._warn(
                    server.host,
                    f"{loc.ingress}: path {loc.path!r} is no valid regex on regex host {server.host} ({exc}); ignored",
                )
        return replace(server, locations=tuple(keep))

    def _fallback(self, host: str, ings: list[Ingress]) -> Location:
        """The `/` location every server has (createServers)."""
        if host == DEFAULT_SERVER:
            owners = self._ordered(
                k for k, i in self.ingresses.items() if i.default_backend and i.settings.canary is None
            )
            owner = next((i for i in owners if i.default_backend and i.default_backend.service), None)
            if owner is None or owner.default_backend is None:
                return Location("/", PREFIX, None, None, Settings(), fallback=True)
            ref = owner.default_backend
            settings = Settings() if owner.rules else _without_rewrite(owner.settings)
            return Location(
                "/",
                PREFIX,
                owner.key,
                upstream_name(owner.namespace, ref),
                settings,
                True,
                f"{owner.namespace}/{ref.service}",
                ref.port,
            )
        first = ings[0]
        own = first.default_backend
        if own is None or not own.service:
            return Location("/", PREFIX, None, None, first.settings, fallback=True)
        ref = own
        return Location(
            "/",
            PREFIX,
            first.key,
            upstream_name(first.namespace, ref),
            first.settings,
            True,
            f"{first.namespace}/{ref.service}",
            ref.port,
        )

    def _certificate(self, host: str, ings: list[Ingress]) -> str:
        """createServers: the first Ingress whose TLS section names the host
        (extractTLSSecretName) gives the certificate; a missing or broken
        Secret falls back to the default certificate, with a warning."""
        if host == DEFAULT_SERVER:
            return ""
        for ing in ings:
            for tls in ing.tls:
                if host not in tls.hosts:
                    continue
                if not tls.secret:
                    return ""
                key = f"{ing.namespace}/{tls.secret}"
                raw = self._secrets.get(key)
                if raw is None:
                    self._warn(host, f"{ing.key}: TLS Secret {key} not found; host {host} uses the default certificate")
                    return ""
                pair = parse_tls_secret(raw)
                if isinstance(pair, str):
                    self._warn(host, f"{ing.key}: TLS Secret {key} {pair}; host {host} uses the default certificate")
                    return ""
                name = f"{ing.namespace}-{tls.secret}"
                self.certificates[name] = pair
                return name
        return ""

    def _warn(self, host: str, text: str) -> None:
        self._host_warnings.setdefault(host, []).append(text)

    def _collect_warnings(self) -> None:
        self.warnings = [w for host in sorted(self._host_warnings) for w in self._host_warnings[host]]
        used = {s.cert for s in self.servers.values() if s.cert}
        for name in [n for n in self.certificates if n not in used]:
            del self.certificates[name]

    # -- views -----------------------------------------------------------------------

    def error_list(self) -> list[KubenetemError]:
        return [e for key in sorted(self.errors) for e in self.errors[key]]

    def sorted_servers(self) -> list[Server]:
        return [self.servers[h] for h in sorted(self.servers)]


def _without_rewrite(s: Settings) -> Settings:
    return replace(s, rewrite_target="", use_regex=False, ssl_redirect=True, force_ssl_redirect=False, app_root="")


def _app_root(locations: list[Location]) -> str:
    """The template emits `if ($uri = /) { return 302 ...; }` per location with
    app-root at server level: the first one in location order is the one that fires."""
    from .locations import ordered

    for loc in ordered(locations):
        if loc.settings.app_root:
            return loc.settings.app_root
    return ""


def _hosts_of(ing: Ingress) -> set[str]:
    hosts = {r.host or DEFAULT_SERVER for r in ing.rules}
    if ing.default_backend is not None:
        hosts.add(DEFAULT_SERVER)
    return hosts


def _paths_of(ing: Ingress) -> Iterable[tuple[str, str, str, BackendRef]]:
    """(host, path, pathType, service backend) for every path with a service."""
    for rule in ing.rules:
        for p in rule.paths:
            if p.backend.service:
                yield (rule.host or DEFAULT_SERVER, p.path, p.path_type, p.backend)


def _canary_targets(ing: Ingress) -> Iterable[tuple[str, str, str, BackendRef]]:
    yield from _paths_of(ing)


def _backends_of(ing: Ingress) -> list[BackendRef]:
    refs = [p[3] for p in _paths_of(ing)]
    if ing.default_backend is not None and ing.default_backend.service:
        refs.insert(0, ing.default_backend)
    return refs


def _upstreams_of(ing: Ingress) -> set[str]:
    return {upstream_name(ing.namespace, r) for r in _backends_of(ing)}
