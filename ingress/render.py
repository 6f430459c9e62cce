"""nginx.conf from the model: decisions in Python, layout in Jinja2 templates.

templates/nginx.conf.j2 (the frame), upstream.j2 (an upstream and its maps),
server.j2 (a server block and the maps its locations need) and location.j2.
Every value a template prints must come through `q` (a quoted nginx string,
escaped) or `word` (a bare token checked against a strict allowlist), or be
a fragment this module rendered; the environment's `finalize` refuses
anything else, so no text from an Ingress can reach the config unquoted even
if a validator missed it (the lesson of CVE-2021-25742, CVE-2023-5043/5044
and CVE-2025-1974). StrictUndefined turns a template typo into an error.

Rendering is incremental: each upstream and server fragment is cached under
the (immutable) model objects it came from, so after one Ingress changes only
its servers are rendered again, and after an endpoints change only the
changed upstreams. The same model gives byte-identical output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jinja2

from netem.errors import KubenetemError

from . import templates_dir
from .locations import NginxLocation, nginx_locations
from .model import DEFAULT_SERVER, IngressModel, Location, Server, Upstream, needs_rewrite, paused_gc
from .router import HSTS, canary_percent

DEFAULT_CERT = "default-fake-certificate"  # ingress-nginx's name for its generated certificate
_WORD = re.compile(r"(?:\$[A-Za-z0-9_]+|[A-Za-z0-9._:/\-\[\]]+%?)\Z")  # a token (or a share like 30%), or one variable


class RenderError(KubenetemError):
    """A value that would reach nginx.conf unquoted: a bug, never user input."""


class Nginx(str):
    """Text that is safe to place in nginx.conf as it is."""


def q(value: object) -> Nginx:
    """A double-quoted nginx string (ngx_conf_read_token: \\\\ and \\" are the
    escapes; a `$` is escaped only where the caller wants no variables)."""
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise RenderError(f"control character in a value for nginx.conf: {text!r}")
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return Nginx('"' + text + '"')


def literal(value: object) -> Nginx:
    """A quoted string in which `$` is not a variable: nginx has no escape for
    `$` inside strings, so a value holding one is refused."""
    text = str(value)
    if "$" in text:
        raise RenderError(f"'$' in a literal for nginx.conf: {text!r}")
    return q(text)


def comment(value: object) -> Nginx:
    """A `# ...` comment: safe once it can hold no line break."""
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return Nginx("# " + text)


def word(value: object) -> Nginx:
    text = str(value)
    if not _WORD.match(text):
        raise RenderError(f"not a bare nginx token: {text!r}")
    return Nginx(text)


def regex_literal(text: str) -> str:
    """A PCRE that matches `text` exactly (for map keys)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def _finalize(value: Any) -> Any:
    if isinstance(value, Nginx) or value is None or value == "":
        return "" if value is None else value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise RenderError(f"unquoted value reached a template: {value!r}")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    listen_http: tuple[str, ...] = ("80",)
    listen_https: tuple[str, ...] = ("443",)
    workers: str = "auto"
    pid: str = "nginx.pid"
    error_log: str = "stderr"
    access_log: str = "off"


@dataclass
class Rendered:
    text: str
    files: dict[str, str]  # path relative to nginx.conf's directory -> content


@dataclass
class Renderer:
    options: RenderOptions = field(default_factory=RenderOptions)
    _ups: dict[str, tuple[object, Nginx]] = field(default_factory=dict)
    _srv: dict[str, tuple[object, Nginx]] = field(default_factory=dict)
    _ups_key: dict[str, tuple[object, str | None]] = field(default_factory=dict)
    _targets: dict[str, str] = field(default_factory=dict)
    _order: dict[str, list[str]] = field(default_factory=dict)
    _seen_model: tuple[int, int, bool] = (0, 0, True)
    _seen_log: int = 0
    _frame_cache: tuple[object, tuple[str, str, str]] | None = None
    _keep_spec: bool = True
    _env: jinja2.Environment = field(init=False)

    def __post_init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir())),
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
            autoescape=False,
            keep_trailing_newline=True,
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(q=q, word=word, literal=literal, fragment=Nginx)
        self._t_upstream = self._env.get_template("upstream.j2")
        self._t_conf = self._env.get_template("nginx.conf.j2")
        server = self._env.get_template("server.j2")
        macro = self._env.get_template("location.j2").module.location  # type: ignore[attr-defined]
        self._location = Shaped(macro, _location_shape, _location_values)
        self._server_text = Shaped(lambda view: server.render(s=view))

    def render(self, model: IngressModel, default_cert: tuple[str, str] | None = None) -> Rendered:
        with paused_gc():
            return self._render(model, default_cert)

    def _render(self, model: IngressModel, default_cert: tuple[str, str] | None) -> Rendered:
        ups = model.upstreams
        full = (id(model), model.epoch, model.config.keep_spec) != self._seen_model
        if full:
            self._seen_model = (id(model), model.epoch, model.config.keep_spec)
            self._keep_spec = model.config.keep_spec
            self._ups, self._ups_key, self._srv, self._targets, self._order = {}, {}, {}, {}, {}
            dirty_ups, dirty_hosts = set(ups), set(model.servers)
        else:
            news = model.log[self._seen_log :]
            dirty_ups = {name for kind, name in news if kind == "upstream"}
            dirty_hosts = {name for kind, name in news if kind == "server"}
        self._seen_log = len(model.log)
        moved = set()
        for name in dirty_ups:
            t = location_target(ups[name]) if name in ups else None
            if self._targets.get(name) != t:
                moved.add(name)
                self._targets[name] = t  # type: ignore[assignment]
        if moved and not full:
            # proxy_pass targets and canary maps that name a changed upstream
            dirty_hosts |= {
                h for h, srv in model.servers.items() if any(loc.upstream in moved for loc in srv.locations)
            }
            dirty_ups |= {n for n, u in ups.items() if u.canary in moved}
        for name in dirty_ups:
            if name in ups:
                self._upstream(ups[name], ups)
            else:
                self._forget(self._ups, name)
        for host in dirty_hosts:
            if host in model.servers:
                if host not in self._srv:
                    self._order.pop("srv", None)
                self._srv[host] = (model.servers[host], Nginx("\n" + self._server(model.servers[host], ups)))
            else:
                self._forget(self._srv, host)
        head, middle, tail = self._frame(model)
        pieces = [head]
        pieces += [self._ups[n][1] for n in self._sorted("ups", self._ups)]
        pieces.append(middle)
        pieces += [self._srv[h][1] for h in self._sorted("srv", self._srv)]
        pieces.append(tail)
        files = {f"ssl/{name}.pem": crt + key for name, (crt, key) in sorted(model.certificates.items())}
        if default_cert is not None:
            files[f"ssl/{DEFAULT_CERT}.pem"] = default_cert[0] + default_cert[1]
        return Rendered("".join(pieces), files)

    def _forget(self, cache: dict[str, tuple[object, Nginx]], name: str) -> None:
        if cache.pop(name, None) is not None:
            self._order.pop("ups" if cache is self._ups else "srv", None)

    def _sorted(self, which: str, cache: dict[str, tuple[object, Nginx]]) -> list[str]:
        order = self._order.get(which)
        if order is None or len(order) != len(cache):
            order = self._order[which] = sorted(cache)
        return order

    def _frame(self, model: IngressModel) -> tuple[str, str, str]:
        """nginx.conf.j2 around the upstreams and servers, rendered once per setting."""
        o = self.options
        key = (o, _pow2(max(len(model.servers), 512)), model.config.default_body_size)
        if self._frame_cache is None or self._frame_cache[0] != key:
            text = self._t_conf.render(
                workers=word(o.workers),
                pid=literal(o.pid),
                error_log=literal(o.error_log),
                access_log=literal(o.access_log) if o.access_log != "off" else Nginx("off"),
                hsts=literal(HSTS),
                upstreams=Nginx("\x00"),
                servers=Nginx("\x00"),
                names_hash=key[1],
                body_size=word(key[2]),
            )
            head, middle, tail = text.split("\x00")
            self._frame_cache = (key, (head, middle, tail))
        return self._frame_cache[1]

    # -- upstreams -------------------------------------------------------------

    def _upstream(self, up: Upstream, all_ups: dict[str, Upstream]) -> None:
        alt = all_ups.get(up.canary) if up.canary else None
        alt_target = target(alt) if alt else None
        hit = self._ups_key.get(up.name)
        if hit is not None and hit[0] is up and hit[1] == alt_target:
            return
        if up.name not in self._ups:
            self._order.pop("ups", None)
        self._ups[up.name] = (up, Nginx("\n" + self._t_upstream.render(u=_upstream_view(up, alt))))
        self._ups_key[up.name] = (up, alt_target)

    # -- servers -----------------------------------------------------------------

    def _server(self, server: Server, all_ups: dict[str, Upstream]) -> Nginx:
        locations = _location_texts(server, all_ups, self._keep_spec, self._location)
        return self._server_text(_server_view(server, self.options, Nginx("\n".join(locations))))


def _pow2(n: int) -> int:
    p = 512
    while p < n:
        p *= 2
    return p


def var(up: Upstream) -> str:
    return up.var


def target(up: Upstream) -> str:
    """What proxy_pass names for an upstream: the group, or the affinity map."""
    return f"$kn_aff_{up.var}" if up.affinity_cookie else up.name


def location_target(up: Upstream | None) -> str:
    if up is None:
        return ""
    return f"$kn_cn_{up.var}" if up.canary else target(up)


def _upstream_view(up: Upstream, alt: Upstream | None) -> dict[str, Any]:
    servers = [word(e.address) for e in up.endpoints]
    view: dict[str, Any] = {
        "name": word(up.name),
        "comment": comment(f"{up.service}:{up.port}"),
        "servers": servers,
        "method": None,
        "affinity": None,
        "canary": None,
    }
    if up.hash_by:
        view["method"] = Nginx(f"hash {q(up.hash_by)} consistent")
    elif up.balance == "ewma":
        view["method"] = Nginx("least_conn")
    if up.affinity_cookie and up.endpoints:
        name = up.affinity_cookie
        cookies = "|".join(regex_literal(e.cookie) for e in up.endpoints)
        view["affinity"] = {
            "var": word(up.var),
            "cookie_var": word(f"$cookie_{name}"),
            "pick": [(q(f"~^{regex_literal(e.cookie)}$"), word(e.address)) for e in up.endpoints],
            "default": word(up.name),
            "key": q(f"$cookie_{name}|$upstream_addr"),
            "known": q(f"~^(?:{cookies})\\|"),
            "set": [
                (q(f"~\\|{regex_literal(e.address)}$"), literal(f"{name}={e.cookie}; Path={up.cookie_path}; HttpOnly"))
                for e in up.endpoints
            ],
        }
    if alt is not None and up.canary_policy is not None:
        view["canary"] = _canary_view(up, alt)
    return view


def _canary_view(up: Upstream, alt: Upstream) -> dict[str, Any]:
    """balancer.lua's order as chained maps: the first of header, cookie and
    weight that has an opinion ("y" or "n") decides."""
    p = up.canary_policy
    assert p is not None
    v = up.var
    parts: list[str] = []
    view: dict[str, Any] = {"var": word(v), "header": None, "cookie": None, "split": None}
    if p.header:
        values = [(p.header_value, "y")] if p.header_value else [("always", "y"), ("never", "n")]
        view["header"] = {
            "source": word("$http_" + p.header.lower().replace("-", "_")),
            "values": [(q(f"~^{regex_literal(val)}$"), word(r)) for val, r in values],
        }
        parts.append(f"${{kn_cnh_{v}}}")
    if p.cookie:
        view["cookie"] = {
            "source": word(f"$cookie_{p.cookie}"),
            "values": [(q("~^always$"), word("y")), (q("~^never$"), word("n"))],
        }
        parts.append(f"${{kn_cnc_{v}}}")
    percent = canary_percent(p.weight, p.weight_total)
    if 0 < percent < 100:
        view["split"] = word(f"{percent:g}%")
        parts.append(f"${{kn_cnw_{v}}}")
    else:
        parts.append("y" if percent >= 100 else "n")
    view["key"] = q("".join(parts))
    view["canary_target"] = word(target(alt))
    view["primary_target"] = word(target(up))
    return view


class ServerView(NamedTuple):
    host: Nginx
    server_name: Nginx
    listen_http: list[Nginx]
    listen_https: list[Nginx]
    cert: Nginx
    app_root: Nginx | None
    locations: Nginx  # the rendered location blocks


def _server_view(server: Server, o: RenderOptions, locations: Nginx) -> ServerView:
    suffix = " default_server" if server.host == DEFAULT_SERVER else ""
    return ServerView(
        host=comment(server.host),
        server_name=_server_name(server.host),
        listen_http=[Nginx(f"{word(a)}{suffix}") for a in o.listen_http],
        listen_https=[Nginx(f"{word(a)}{suffix} ssl") for a in o.listen_https],
        cert=word(f"ssl/{server.cert or DEFAULT_CERT}.pem"),
        app_root=q("$scheme://$best_http_host" + server.app_root) if server.app_root else None,  # app_root has no "$"
        locations=locations,
    )


class Shaped:
    """A template rendered once per *shape* of its view (which fields are set,
    how long the lists are) with numbered sentinels in place of the values;
    later views of that shape are filled in with str.format. The layout stays
    in the template; a hundred thousand locations cost a format call each."""

    def __init__(
        self,
        render: Callable[[Any], str],
        shape: Callable[[Any], tuple[Any, ...]] | None = None,
        values: Callable[[Any], list[str]] | None = None,
    ) -> None:
        self.render = render
        self.shape = shape or _shape
        self.values = values or _values
        self.formats: dict[tuple[Any, ...], str] = {}

    def __call__(self, view: tuple[Any, ...]) -> Nginx:
        return Nginx(self.format_for(view).format(*self.values(view)))

    def format_for(self, view: tuple[Any, ...]) -> str:
        """The str.format pattern for views shaped like this one."""
        shape = self.shape(view)
        fmt = self.formats.get(shape)
        if fmt is None:
            fmt = self.formats[shape] = self._compile(view)
        return fmt

    def _compile(self, view: tuple[Any, ...]) -> str:
        counter = iter(range(1 << 30))

        def mark(v: Any) -> Any:
            if isinstance(v, list):
                return [mark(x) for x in v]
            if isinstance(v, tuple):
                return tuple(mark(x) for x in v)
            if isinstance(v, Nginx) and v:
                return Nginx(f"\x00{next(counter)}\x00")
            return v

        marked = type(view)(*(mark(v) for v in view))
        text = self.render(marked).replace("{", "{{").replace("}", "}}")
        return re.sub("\x00([0-9]+)\x00", r"{\1}", text)


def _shape(view: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(len(v) if isinstance(v, list | tuple) else bool(v) for v in view)


def _location_shape(v: LocationView) -> tuple[Any, ...]:
    return (
        v.body_size is None,
        v.ssl_redirect,
        v.rewrite is None,
        len(v.deny),
        len(v.allow),
        v.target is None,
        v.set_cookie is None,
        v.canary_cookie is None,
    )


def _location_values(v: LocationView) -> list[str]:
    """The sentinel order of Shaped._compile: fields in order, set ones only."""
    out: list[str] = [v.name, v.comment]
    if v.body_size is not None:
        out.append(v.body_size)
    if v.rewrite is not None:
        out += v.rewrite
    out += v.deny
    out += v.allow
    for extra in (v.target, v.set_cookie, v.canary_cookie):
        if extra is not None:
            out.append(extra)
    return out


def _values(view: tuple[Any, ...]) -> list[str]:
    out: list[str] = []
    for v in view:
        if isinstance(v, list | tuple):
            out.extend(x for x in v if isinstance(x, Nginx) and x)
        elif isinstance(v, Nginx) and v:
            out.append(v)
    return out


def _server_name(host: str) -> Nginx:
    """buildServerName: a wildcard is a regex matching exactly one label."""
    if host == DEFAULT_SERVER:
        return Nginx("_")
    if host.startswith("*."):
        return q("~^(?<subdomain>[\\w-]+)\\." + host[2:].replace(".", "\\.") + "$")
    return word(host)


class LocationView(NamedTuple):
    name: Nginx
    comment: Nginx
    body_size: Nginx | None
    ssl_redirect: bool
    rewrite: tuple[Nginx, Nginx] | None
    deny: list[Nginx]
    allow: list[Nginx]
    target: Nginx | None
    set_cookie: Nginx | None
    canary_cookie: Nginx | None


def _location_texts(server: Server, all_ups: dict[str, Upstream], keep_spec: bool, shaped: Shaped) -> list[str]:
    """Every location block of a server. What depends only on the Ingress
    path (the format for its shape and its values) is worked out once for a
    path and its exact twin; the twin differs only in the location's name."""
    common: dict[int, tuple[str, list[str]]] = {}
    texts: list[str] = []
    for nl in nginx_locations(server, keep_spec):
        name = Nginx(f"{nl.modifier} {q(nl.name)}" if nl.modifier else q(nl.name))
        if nl.shadow:
            view = _location_common(nl.location, server, all_ups)._replace(name=name, comment=_why(nl, server))
            texts.append(shaped(view))
            continue
        hit = common.get(id(nl.location))
        if hit is None:
            view = _location_common(nl.location, server, all_ups)._replace(name=name)
            hit = common[id(nl.location)] = (shaped.format_for(view), _location_values(view)[1:])
        texts.append(hit[0].format(name, *hit[1]))
    return texts


def _why(nl: NginxLocation, server: Server) -> Nginx:
    loc = nl.location
    if loc.fallback:
        why = f"{loc.ingress or 'no Ingress'}: fallback of {server.host}"
    else:
        why = f"{loc.ingress}: {loc.path_type} {loc.path}"
    if nl.shadow:
        why += " (keeps the spec: no 301 to the path with '/')"
    return comment(why)


def _location_common(loc: Location, server: Server, all_ups: dict[str, Upstream]) -> LocationView:
    s = loc.settings
    up = all_ups.get(loc.upstream) if loc.upstream else None
    return LocationView(
        name=Nginx(),
        comment=_why(NginxLocation("", "", loc), server),
        body_size=word(s.body_size) if s.body_size else None,
        ssl_redirect=s.force_ssl_redirect or (s.ssl_redirect and bool(server.cert)),
        rewrite=(q("(?i)" + loc.path), q(s.rewrite_target)) if needs_rewrite(loc) else None,
        deny=[word(_cidr(c)) for c in s.deny] if s.deny else [],
        allow=[word(_cidr(c)) for c in s.allow] if s.allow else [],
        target=None if up is None else word(location_target(up)),
        set_cookie=word(f"$kn_affset_{up.var}") if up is not None and up.affinity_cookie and up.endpoints else None,
        canary_cookie=_canary_cookie(up, all_ups),
    )


def _canary_cookie(up: Upstream | None, all_ups: dict[str, Upstream]) -> Nginx | None:
    if up is None or not up.canary:
        return None
    alt = all_ups.get(up.canary)
    if alt is not None and alt.affinity_cookie and alt.endpoints:
        return word(f"$kn_affset_{alt.var}")
    return None


def _cidr(c: Any) -> str:
    from netem.addr import int_to_ip

    return f"{int_to_ip(c.network)}/{c.length}"
