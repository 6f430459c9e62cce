"""A server's Ingress paths as nginx `location` blocks.

Both the renderer and the router take their locations from here, so the
router always says what the rendered config does.

Plain hosts (no regex): Exact `/foo` is `location = /foo`; Prefix `/foo`
(and `/foo/`) is `location /foo/` plus `location = /foo`, unless an Exact
`/foo` exists (ingress-nginx location.go updateServerLocations), which makes
nginx's character-prefix match a path-element match as the spec asks.
ImplementationSpecific is rendered as Prefix (the issue's choice;
ingress-nginx leaves it a character prefix, so `/foo` also takes `/foobar`).

Where ingress-nginx breaks the spec we keep the spec: nginx answers a request
for `/foo` with a 301 to `/foo/` when a proxying location is named `/foo/`
(ngx_http_core_find_static_location, auto_redirect set by proxy_pass), so an
Exact `/foo/` would capture `/foo`. For every such name without a location
for `/foo` we add a "shadow" `location = /foo` that goes where `/foo` would go
without the redirect (nginx's own advice in the proxy_pass documentation).
ingress-nginx itself renders Prefix `/foo/` as `/foo/` + `= /foo/`, so `/foo`
gets the 301 there; we emit `= /foo`, which the spec table asks for
("Prefix /aaa/bbb/ matches /aaa/bbb").

Regex hosts (any location with use-regex or a rewrite-target): every
location is `~* "^path"`, ordered as getBackendServers sorts them (path
descending, then length descending), Prefix paths of Ingresses that do not
themselves use regex normalised to `path/` plus their exact twin right after;
nginx takes the first regex that matches, case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .model import Location, Server, needs_rewrite
from .objects import EXACT, PREFIX


class NginxLocation(NamedTuple):
    modifier: str  # "=", "" (prefix) or "~*"
    name: str  # the location's path or regex
    location: Location
    shadow: bool = False  # added to keep the spec (see module docstring)

    @property
    def text(self) -> str:
        return f"{self.modifier} {self.name}" if self.modifier else self.name


def ordered(locations: Iterable[Location]) -> list[Location]:
    """getBackendServers: sort by path descending, then (stable) by length descending."""
    by_path = sorted(locations, key=lambda loc: loc.path, reverse=True)
    return sorted(by_path, key=lambda loc: -len(loc.path))


def nginx_locations(server: Server, keep_spec: bool = True) -> list[NginxLocation]:
    """keep_spec=False renders exactly what ingress-nginx renders (Prefix
    `/foo/` as `/foo/` + `= /foo/`, no shadows), to show where it differs."""
    if server.regex:
        return _regex_locations(server.locations)
    return _plain_locations(server.locations, keep_spec)


def _plain_locations(locations: tuple[Location, ...], keep_spec: bool) -> list[NginxLocation]:
    exact = {loc.path for loc in locations if loc.path_type == EXACT}
    chosen: dict[tuple[str, str], NginxLocation] = {}

    def add(modifier: str, name: str, loc: Location) -> None:
        key = (modifier, name)
        held = chosen.get(key)
        if held is None or (held.location.fallback and not loc.fallback):
            chosen[key] = NginxLocation(modifier, name, loc)

    # Oldest Ingress first (the order the model built them in): on a clash of
    # rendered names (Prefix /foo and Prefix /foo/) the older location wins.
    for loc in locations:
        if loc.path_type == EXACT:
            add("=", loc.path, loc)
        elif loc.path == "/":
            add("", "/", loc)
        else:
            base = loc.path.rstrip("/") or "/"
            add("", base + "/" if base != "/" else "/", loc)
            twin = base if keep_spec else loc.path  # location.go: the exact twin keeps the path as written
            if twin not in exact and base != "/":
                add("=", twin, loc)
    by_loc: dict[int, list[NginxLocation]] = {}
    for nl in chosen.values():
        by_loc.setdefault(id(nl.location), []).append(nl)
    plain = [nl for loc in ordered(locations) for nl in by_loc.pop(id(loc), ())]
    return plain + _shadows(plain) if keep_spec else plain


def _shadows(plain: list[NginxLocation]) -> list[NginxLocation]:
    exact = {nl.name for nl in plain if nl.modifier == "="}
    prefix = {nl.name: nl for nl in plain if nl.modifier == ""}
    out = []
    for nl in plain:
        if nl.name == "/" or not nl.name.endswith("/"):
            continue
        bare = nl.name[:-1]
        if bare in exact or bare in prefix:
            continue
        target = longest_prefix(prefix, bare)
        if target is not None:
            out.append(NginxLocation("=", bare, target.location, shadow=True))
            exact.add(bare)
    return out


def longest_prefix(prefix: dict[str, NginxLocation], uri: str) -> NginxLocation | None:
    best = None
    for name, nl in prefix.items():
        if uri.startswith(name) and (best is None or len(name) > len(best.name)):
            best = nl
    return best


def _regex_locations(locations: tuple[Location, ...]) -> list[NginxLocation]:
    exact = {loc.path for loc in locations if loc.path_type == EXACT}
    out: list[NginxLocation] = []
    seen: set[str] = set()

    def add(path: str, loc: Location) -> None:
        name = "^" + path
        if name not in seen:
            seen.add(name)
            out.append(NginxLocation("~*", name, loc))

    for loc in ordered(locations):
        keeps_path = loc.path == "/" or loc.path_type != PREFIX or loc.settings.use_regex or needs_rewrite(loc)
        if keeps_path:
            add(loc.path, loc)
            continue
        add(loc.path if loc.path.endswith("/") else loc.path + "/", loc)
        if loc.path not in exact:
            add(loc.path, loc)
    return out
