"""The L7 router: what the rendered nginx.conf does with one HTTP request.

Sans-IO and fast: servers are found in a dict (exact names) or by the one
label a wildcard allows; a server's `=` and prefix locations (and the URIs of
its 301s) in one dict, probed with the URI, then with its leading parts of
the prefix names' lengths (longest first); regex locations in order. A
request for a location that only balances round robin is decided without a
further call (most of what it costs with 10,000 hosts is fetching memory, so
the objects it touches are few and built close together). The decision
follows nginx's request phases in their real order
(ngx_http_core_module.c: server rewrite, find config, location rewrite,
access, content):

1. server selection by Host (ngx_http_find_virtual_server: exact names, then
   regex names; none matches -> the `default_server`); app-root's
   server-level `if ($uri = /) { return 302 ... }`;
2. location selection (ngx_http_core_find_location: `=` exact, longest
   prefix, then regexes in order unless the match was exact; the 301 of
   auto_redirect), then client_max_body_size (413) in the find-config phase;
3. the rewrite phase: the 308 to https (ssl-redirect / force-ssl-redirect),
   rewrite-target;
4. the access phase: deny/allow (403);
5. content: the default backend (404), the canary choice, the endpoint
   (cookie affinity, consistent hash, round robin), or 503 without endpoints.

Endpoint choice restates nginx's own balancers: round robin is the smooth
weighted round robin of ngx_http_upstream_round_robin.c (equal weights: in
order, per upstream, reset by a reload); `least_conn` (our ewma) picks the
same way when no request is in flight; `hash KEY consistent` is the ketama
ring of ngx_http_upstream_hash_module.c (160 points per server,
crc32(host \\0 port prev_hash)).
"""

from __future__ import annotations

import bisect
import re
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from netem.addr import Cidr, parse_ip
from netem.errors import UsageError

from .annotations import VARIABLE, size_bytes
from .locations import NginxLocation, nginx_locations
from .model import DEFAULT_SERVER, Endpoint, IngressModel, Server, Upstream, needs_rewrite

if TYPE_CHECKING:
    import random

HSTS = "max-age=31536000; includeSubDomains"  # ingress-nginx defaults hsts-max-age, hsts-include-subdomains


class Request(NamedTuple):
    scheme: str  # "http" or "https"
    host: str  # the Host header as sent ("" when absent)
    target: str  # the request target: path and query, as sent
    headers: Mapping[str, str]  # lower-case names
    client: str = "203.0.113.10"
    port: int = 0  # the local port the request arrived on (0: 80 or 443)
    content_length: int = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        client: str = "203.0.113.10",
        content_length: int = 0,
    ) -> Request:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--url must be http://HOST/PATH or https://HOST/PATH (got {url!r})")
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if cookies:
            jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
            hdrs["cookie"] = f"{hdrs['cookie']}; {jar}" if "cookie" in hdrs else jar
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(
            parts.scheme,
            sys.intern(hdrs.get("host", parts.netloc)),
            target,
            hdrs,
            client,
            parts.port or 0,
            content_length,
        )


class Decision(NamedTuple):
    status: int
    server: str
    location: NginxLocation | None = None
    ingress: str | None = None
    service: str | None = None
    port: int | str | None = None
    endpoint: Endpoint | None = None
    redirect: str | None = None
    upstream: str | None = None
    upstream_uri: str | None = None
    set_cookie: str | None = None
    canary: bool = False
    hsts: bool = False

    def to_json(self) -> dict[str, Any]:
        loc = self.location.location if self.location is not None else None
        return {
            "status": self.status,
            "server": self.server,
            "location": None if loc is None or loc.fallback else {"path": loc.path, "pathType": loc.path_type},
            "ingress": self.ingress,
            "backend": None if self.service is None else {"service": self.service, "port": self.port},
            "endpoint": None if self.endpoint is None else {"ip": self.endpoint.ip, "port": self.endpoint.port},
            "redirect": self.redirect,
            "nginx_location": None if self.location is None else self.location.text,
            "upstream": self.upstream,
            "upstream_uri": self.upstream_uri,
            "set_cookie": self.set_cookie,
            "canary": self.canary,
        }

    def to_text(self) -> str:
        j = self.to_json()
        rows = [("status", str(self.status)), ("server", self.server)]
        if self.location is not None:
            rows.append(("location", self.location.text + ("  (default backend)" if j["location"] is None else "")))
        rows += [(key, str(j[key])) for key in ("ingress", "redirect", "upstream_uri", "set_cookie") if j[key]]
        if self.service is not None:
            rows.append(("backend", f"{self.service}:{self.port}" + ("  (canary)" if self.canary else "")))
        if self.endpoint is not None:
            rows.append(("endpoint", self.endpoint.text))
        return "\n".join(f"{key + ':':<14}{value}" for key, value in rows)


class BadRequest(Exception):
    pass


def normalize_uri(path: str) -> str:
    """ngx_http_parse_complex_uri, the parts that matter here: %XX decoding
    (a bad escape or %00 is a 400), merged slashes, `.` and `..` segments
    (climbing above the root is a 400)."""
    if "%" in path:
        out = bytearray()
        i, raw = 0, path.encode("latin-1", "replace")
        while i < len(raw):
            c = raw[i]
            if c == 0x25:
                pair = raw[i + 1 : i + 3]
                if len(pair) < 2 or not all(chr(b) in "0123456789abcdefABCDEF" for b in pair):
                    raise BadRequest("bad escape")
                c = int(pair, 16)
                if c == 0:
                    raise BadRequest("%00")
                i += 2
            out.append(c)
            i += 1
        path = out.decode("latin-1")
    parts: list[str] = []
    for seg in path.split("/")[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise BadRequest("above the root")
            parts.pop()
            continue
        parts.append(seg)
    trailing = path.endswith(("/", "/.", "/..")) and parts != []
    return "/" + "/".join(parts) + ("/" if trailing else "")


def _simple(path: str) -> bool:
    return "%" not in path and "//" not in path and "/." not in path


def _copy(text: str) -> str:
    """A new str equal to `text` (see _Balancer)."""
    return "".join((text, ""))


@dataclass(slots=True, eq=False)
class _Balancer:
    """One upstream as the fast path needs it: its round robin, shared by
    every location that proxies to it (nginx keeps one peer list per
    upstream block), and the values a decision for it carries.

    Those values are copies made while the router is built, so the objects a
    decision references for 1,000 upstreams sit together in a few pages
    instead of all over the model's heap: with 10,000 hosts and random
    requests, the time of a decision is mostly memory the CPU must fetch."""

    next: int  # how many requests it has sent: endpoints[next % len(endpoints)] is the next one
    endpoints: tuple[Endpoint, ...]
    name: str
    service: str
    port: int | str

    @classmethod
    def of(cls, up: Upstream) -> _Balancer:
        endpoints = tuple(Endpoint(*ep) for ep in up.endpoints)
        return cls(0, endpoints, _copy(up.name), _copy(up.service), up.port)

    def choose(self) -> Endpoint:
        """Smooth weighted round robin with equal weights: in order."""
        i = self.next
        self.next = i + 1
        return self.endpoints[i % len(self.endpoints)]


@dataclass(slots=True, eq=False)
class _Plan:
    """What one nginx location does, precomputed. The fields the fast path
    reads come first (close together in memory)."""

    exact: bool  # an `=` location, or `moved`: the URI's own match, which ends the search
    fast: bool  # round robin and nothing else: no 308, rewrite, access rules, canary, affinity or hash
    balancer: _Balancer | None  # the upstream's
    nl: NginxLocation
    ingress: str | None
    twin: _Plan | None  # on an `=` location: the prefix location of the same name
    moved: bool  # not a location: the 301 to URI + "/" that location `nl` (named URI + "/") answers
    service: str | None
    port: int | str | None
    limit: int  # client_max_body_size in bytes, 0 = unlimited
    redirect: bool  # the 308 to https applies
    rewrite: bool
    access: bool  # deny/allow rules
    upstream: Upstream | None


class _Locations(dict[str, _Plan]):
    """One server block: its `=` and prefix locations by name, and the
    server's other facts as attributes (a Host leads to one object).

    Locations are found as ngx_http_core_find_location finds them: the `=`
    location named as the URI, else the longest prefix location, unless a
    regex matches (in order, first wins). A prefix location's name always
    ends in "/" (locations.py), so its candidates are the URI's leading parts
    of the lengths in `lengths`. A name can be both `= /a/` and `/a/`: the
    `=` plan then holds the prefix plan as its `twin`. The URIs nginx answers
    with its auto_redirect 301 are in the dict too, as plans marked `moved`."""

    __slots__ = ("app_root", "lengths", "name", "regexes")
    lengths: tuple[int, ...]  # of the prefix names, longest first
    name: str
    app_root: str
    regexes: tuple[tuple[re.Pattern[str], _Plan], ...]

    @classmethod
    def build(
        cls,
        server: Server,
        plan: Callable[[NginxLocation, Server], _Plan],
        keep_spec: bool = True,
        shared: dict[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> _Locations:
        """`shared` holds the length tuples other servers already use: the
        10,000 servers of a big config then share a few (as they share the
        interned location names) instead of one copy each."""
        nls = nginx_locations(server, keep_spec)
        exact = {sys.intern(nl.name): plan(nl, server) for nl in nls if nl.modifier == "="}
        prefix = {sys.intern(nl.name): plan(nl, server) for nl in nls if nl.modifier == ""}
        regexes = tuple((re.compile(nl.name, re.IGNORECASE), plan(nl, server)) for nl in nls if nl.modifier == "~*")
        # what route() relies on (locations.py): a prefix name ends in "/";
        # a server's locations are all regexes or none
        assert all(name.endswith("/") for name in prefix) and not (regexes and (exact or prefix)), server.host
        index = cls(prefix)
        for name, hit in exact.items():
            hit.twin = prefix.get(name)
            index[name] = hit
        # proxy_pass sets auto_redirect on a location whose name ends in "/";
        # every location we render proxies, except those without a backend.
        # A request for that name without the "/" gets the 301, unless a
        # location is named exactly so (ngx_http_core_find_static_location).
        for name, hit in [*exact.items(), *prefix.items()]:
            bare = name[:-1]
            if name.endswith("/") and hit.nl.location.upstream and bare not in exact and bare not in prefix:
                index.setdefault(sys.intern(bare), replace(hit, exact=True, fast=False, twin=None, moved=True))
        lengths = tuple(sorted({len(p) for p in prefix}, reverse=True))
        index.lengths = lengths if shared is None else shared.setdefault(lengths, lengths)
        index.name, index.app_root, index.regexes = sys.intern(server.host), server.app_root, regexes
        return index

    def regex(self, uri: str) -> _Plan | None:
        """On a server of regex locations: the first that matches."""
        return next((plan for rx, plan in self.regexes if rx.match(uri)), None)


_LABEL = re.compile(r"[\w-]+\Z", re.ASCII)  # buildServerName: ~^(?<subdomain>[\w-]+)\.example\.com$
_new = tuple.__new__  # a Decision without the NamedTuple's Python-level __new__ (a large share of the fast path)


class Router:
    """Routes requests through an IngressModel as the rendered config would."""

    def __init__(self, model: IngressModel, rng: random.Random | None = None) -> None:
        self.model = model
        self.rng = rng
        self.upstreams: dict[str, Upstream] = dict(model.upstreams)
        self.exact: dict[str, _Locations] = {}
        self.wildcard: dict[str, _Locations] = {}
        keep = model.config.keep_spec
        self._limit = size_bytes(model.config.default_body_size)
        self._balancers = {name: _Balancer.of(up) for name, up in self.upstreams.items()}
        self._ingresses: dict[str, str] = {}  # each Ingress's name, copied as _Balancer's values are
        shared: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.default = _Locations.build(model.servers[DEFAULT_SERVER], self._plan, keep, shared)
        for host, server in model.servers.items():
            if host == DEFAULT_SERVER:
                continue
            index = _Locations.build(server, self._plan, keep, shared)
            if host.startswith("*."):
                self.wildcard[host[2:]] = index
            else:
                self.exact[sys.intern(host)] = index
        self._rings: dict[str, tuple[list[int], list[Endpoint]]] = {}

    def _plan(self, nl: NginxLocation, server: Server) -> _Plan:
        loc = nl.location
        s = loc.settings
        up = self.upstreams.get(loc.upstream) if loc.upstream else None
        service, port = (loc.service, loc.port) if loc.service else ((up.service, up.port) if up else (None, None))
        redirect = s.force_ssl_redirect or (s.ssl_redirect and bool(server.cert))
        rewrite, access = needs_rewrite(loc), bool(s.deny or s.allow)
        simple = up is not None and bool(up.endpoints) and not (up.canary or up.affinity_cookie or up.hash_by)
        # the fast path reports the upstream's service and port (the same as the location's)
        same = up is not None and (service, port) == (up.service, up.port)
        return _Plan(
            nl.modifier == "=",
            simple and same and not (redirect or rewrite or access),
            self._balancers[up.name] if up is not None else None,
            nl,
            self._ingresses.setdefault(loc.ingress, _copy(loc.ingress)) if loc.ingress else None,
            None,
            False,
            service,
            port,
            size_bytes(s.body_size) if s.body_size else self._limit,
            redirect,
            rewrite,
            access,
            up,
        )

    # -- the decision ----------------------------------------------------------

    def route(self, req: Request) -> Decision:
        """The whole decision for one request (the phases of the module
        docstring). The common request (a plain path, a location that only
        balances round robin) is decided here without further calls."""
        scheme, host, target, _, _, _, content_length = req
        index = self.exact.get(host)
        if index is None:
            index, host = self._server(host)
            name = index.name
        else:
            name = host  # the server's name, interned: it was found under it
        uri, args = target, ""
        if "?" in target or "%" in target or "//" in target or "/." in target:
            path, _, args = target.partition("?")
            try:
                uri = path if _simple(path) else normalize_uri(path)
            except BadRequest:
                return Decision(400, name)
        https = scheme == "https"
        if uri == "/" and index.app_root:
            # a server-level `return`: no location, so no location's add_header (HSTS)
            return Decision(302, name, redirect=f"{scheme}://{req.host or host}{index.app_root}")
        plan = index.get(uri)  # the `=` location (or 301) named so, else the prefix location named so: the longest
        if plan is None and index:
            # the longest prefix location shorter than the URI: its name is
            # the URI's leading part of one of the lengths (loop inline: hot)
            n = len(uri)
            for length in index.lengths:
                if length < n:
                    plan = index.get(uri[:length])
                    if plan is not None:
                        plan = plan.twin if plan.exact else plan  # `= /a/` is no prefix; `/a/` may share its name
                        if plan is not None:
                            break
        elif plan is None:  # locations.py makes a server's locations all regexes or none
            plan = index.regex(uri)
        if plan is None:
            return Decision(404, name)
        if plan.fast and not content_length:
            up = plan.balancer
            assert up is not None  # a fast plan has an upstream
            i = up.next  # up.choose(), inline
            up.next = i + 1
            endpoints = up.endpoints
            return _new(Decision, (
                200, name, plan.nl, plan.ingress, up.service, up.port, endpoints[i % len(endpoints)], None, up.name,
                target, None, False, https,
            ))  # fmt: skip
        if plan.moved:
            return Decision(301, name, redirect=self._moved(req, host, uri, args), hsts=https)
        return self._location(req, name, plan, uri, args, https)

    def _server(self, host: str) -> tuple[_Locations, str]:
        """The server for a Host that is not a server name as sent: nginx
        drops the port and a trailing dot and lower-cases it
        (ngx_http_validate_host), then tries exact names, the wildcard, and
        falls back to the default server."""
        if ":" in host:
            host = host.split(":", 1)[0]
        host = host.lower()
        if host.endswith("."):
            host = host[:-1]
        index = self.exact.get(host)  # not `or`: a server with only regex locations is an empty dict
        return (self._wildcard(host) if index is None else index), host

    def _wildcard(self, host: str) -> _Locations:
        dot = host.find(".")
        if dot > 0 and self.wildcard:
            index = self.wildcard.get(host[dot + 1 :])
            if index is not None and _LABEL.match(host, 0, dot):
                return index
        return self.default

    def _location(self, req: Request, srv: str, plan: _Plan, uri: str, args: str, https: bool) -> Decision:
        nl = plan.nl
        loc = nl.location
        if plan.limit and req.content_length > plan.limit:
            return Decision(413, srv, nl, loc.ingress, hsts=https)
        if plan.redirect and not https:
            return Decision(308, srv, nl, loc.ingress, redirect=f"https://{req.host or srv}{req.target}")
        upstream_uri = req.target
        if plan.rewrite:
            upstream_uri = self._rewrite(loc.path, loc.settings.rewrite_target, uri, args, req)
        if plan.access and not _allowed(req.client, loc.settings.deny, loc.settings.allow):
            return Decision(403, srv, nl, loc.ingress, hsts=https)
        up = plan.upstream
        if up is None:
            return Decision(404, srv, nl, loc.ingress, hsts=https)
        canary = False
        service, port = plan.service, plan.port
        if up.canary and up.canary_policy is not None and up.canary in self.upstreams and self._to_canary(up, req):
            up, canary = self.upstreams[up.canary], True
            service, port = up.service, up.port
        if not up.endpoints:
            # error_page 502 =503 @kn_unavailable: the named location adds no HSTS
            return Decision(
                503, srv, nl, loc.ingress, service, port, upstream=up.name, upstream_uri=upstream_uri, canary=canary
            )
        endpoint, cookie = self._endpoint(up, req, uri)
        return Decision(
            200, srv, nl, loc.ingress, service, port, endpoint, None, up.name, upstream_uri, cookie, canary, https
        )

    def _moved(self, req: Request, host: str, uri: str, args: str) -> str:
        """The 301 of ngx_http_core_find_config_phase, made absolute by the
        header filter: server name from Host, the local port unless 80/443."""
        port = req.port or (443 if req.scheme == "https" else 80)
        port_part = "" if port in (80, 443) else f":{port}"
        return f"{req.scheme}://{host}{port_part}{uri}/" + (f"?{args}" if args else "")

    # -- rewrite, access, canary --------------------------------------------------

    def _rewrite(self, path: str, target: str, uri: str, args: str, req: Request) -> str:
        """`rewrite "(?i)PATH" TARGET break;` (template.go buildProxyPass): the
        whole URI becomes TARGET with $1..$9 and variables expanded; the
        original arguments are appended; nginx escapes the new URI."""
        m = re.search(path, uri, re.IGNORECASE)
        if m is None:
            return req.target
        new = self._expand(target, req, uri, m)
        return _escape_uri(new) + (f"?{args}" if args else "")

    def _expand(self, template: str, req: Request, uri: str, m: re.Match[str] | None = None) -> str:
        def var(v: re.Match[str]) -> str:
            if v.group(3):
                if m is None or int(v.group(3)) > (m.re.groups or 0):
                    return ""
                return m.group(int(v.group(3))) or ""
            return self.variable(v.group(1) or v.group(2), req, uri)

        return VARIABLE.sub(var, template)

    def variable(self, name: str, req: Request, uri: str) -> str:
        """The nginx variables the annotations may use (annotations.SIMPLE_VARIABLES)."""
        args = req.target.partition("?")[2]
        host = req.host.split(":", 1)[0].lower() if req.host else ""
        simple = {
            "remote_addr": req.client,
            "request_uri": req.target,
            "uri": uri,
            "host": host,
            "scheme": req.scheme,
            "args": args,
            "request_method": "GET",
        }
        if name in simple:
            return simple[name]
        if name.startswith("http_"):
            return req.headers.get(name[5:].replace("_", "-"), "")
        if name.startswith("cookie_"):
            return _cookie(req.headers.get("cookie", ""), name[7:]) or ""
        if name.startswith("arg_"):
            for pair in args.split("&"):
                k, _, val = pair.partition("=")
                if k.lower() == name[4:].lower():
                    return val
        return ""

    def _to_canary(self, up: Upstream, req: Request) -> bool:
        """balancer.lua route_to_alternative_balancer: the header (an exact
        value, or always/never), then the cookie (always/never), then the weight."""
        policy = up.canary_policy
        assert policy is not None
        if policy.header:
            value = req.headers.get(policy.header.lower())
            if value is not None:
                if policy.header_value:
                    if value == policy.header_value:
                        return True
                elif value == "always":
                    return True
                elif value == "never":
                    return False
        if policy.cookie:
            value = _cookie(req.headers.get("cookie", ""), policy.cookie)
            if value == "always":
                return True
            if value == "never":
                return False
        percent = canary_percent(policy.weight, policy.weight_total)
        if percent >= 100:
            return True
        if percent <= 0:
            return False
        if self.rng is None:
            raise UsageError("a canary weight between 0 and 100% needs a seeded random generator")
        return self.rng.random() * 100 < percent

    # -- endpoints ---------------------------------------------------------------------

    def _endpoint(self, up: Upstream, req: Request, uri: str) -> tuple[Endpoint, str | None]:
        cookie_out = None
        if up.affinity_cookie:
            have = _cookie(req.headers.get("cookie", ""), up.affinity_cookie)
            for ep in up.endpoints:
                if ep.cookie == have:
                    return ep, None
        key = self._expand(up.hash_by, req, uri) if up.hash_by else ""
        if key:
            endpoint = self._chash(up, key)
        else:  # no hash, or an empty key: round robin (ngx_http_upstream_get_chash_peer)
            endpoint = self._balancers[up.name].choose()
        if up.affinity_cookie:
            cookie_out = f"{up.affinity_cookie}={endpoint.cookie}; Path={up.cookie_path}; HttpOnly"
        return endpoint, cookie_out

    def _chash(self, up: Upstream, key: str) -> Endpoint:
        ring = self._rings.get(up.name)
        if ring is None:
            ring = self._rings[up.name] = chash_ring(up.endpoints)
        hashes, owners = ring
        point = bisect.bisect_left(hashes, zlib.crc32(key.encode()))
        return owners[point % len(hashes)]

    def reset(self) -> None:
        """What a reload does to nginx's balancer state."""
        for balancer in self._balancers.values():
            balancer.next = 0


def chash_ring(endpoints: tuple[Endpoint, ...]) -> tuple[list[int], list[Endpoint]]:
    """ngx_http_upstream_init_chash: 160 points per server (weight 1), point j
    = crc32(HOST "\\0" PORT prev_hash_le32), sorted, equal hashes collapsed."""
    points: list[tuple[int, int]] = []
    for order, ep in enumerate(endpoints):
        host, sep, port = ep.address.rpartition(":")
        if not sep or not port.isdigit():
            host, port = ep.address, ""
        base = zlib.crc32(host.encode() + b"\0" + port.encode())
        prev = 0
        for _ in range(160):
            h = zlib.crc32(prev.to_bytes(4, "little"), base)
            points.append((h, order))
            prev = h
    points.sort(key=lambda p: p[0])
    hashes: list[int] = []
    owners: list[Endpoint] = []
    for h, order in points:
        if hashes and hashes[-1] == h:
            continue
        hashes.append(h)
        owners.append(endpoints[order])
    return hashes, owners


def canary_percent(weight: int, total: int) -> float:
    """The split_clients percentage we render (nginx keeps two decimals)."""
    return round(weight * 100 / total, 2) if total else 0.0


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k.lower() == name.lower():  # ngx_http_parse_multi_header_lines: ngx_strncasecmp
            return v
    return None


def _allowed(client: str, deny: tuple[Cidr, ...], allow: tuple[Cidr, ...]) -> bool:
    """ngx_http_access_module: rules in order, first match wins; the template
    puts the denylist first, then the allowlist and `deny all`."""
    ip = parse_ip(client)
    if any(ip & c.mask == c.network & c.mask for c in deny):
        return False
    return not allow or any(ip & c.mask == c.network & c.mask for c in allow)


_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~/!$&'()*+,;=:@]")


def _escape_uri(uri: str) -> str:
    """ngx_escape_uri(NGX_ESCAPE_URI) for the characters our paths can hold."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8")), uri)
