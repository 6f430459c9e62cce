"""The router's indexed location lookup against a literal walk of nginx's.

The router finds a location through a dict per server (`=` and prefix names,
prefix candidates by length, the auto_redirect 301s as entries) and decides
most requests on a fast path. Here both are held against plain readings: the
rendered location list walked as ngx_http_core_find_location walks it, and
one round robin per upstream whichever path takes the request.
"""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.locations import NginxLocation, nginx_locations
from ingress.model import ControllerConfig, IngressModel
from ingress.router import Request, Router
from ingress.scenarios import cluster, ingress, ingress_class, service

A = "nginx.ingress.kubernetes.io/"
MOVED = "301"


def nginx_walk(nls: list[NginxLocation], uri: str) -> NginxLocation | str | None:
    """ngx_http_core_find_location over the rendered locations, literally:
    an `=` location named as the URI; else the 301 when a proxying location
    is named URI + "/" and none is named URI (auto_redirect); else the
    longest prefix location, unless a regex matches (in order, first wins)."""
    for nl in nls:
        if nl.modifier == "=" and nl.name == uri:
            return nl
    named = {nl.name for nl in nls if nl.modifier != "~*"}
    if uri not in named and any(nl.modifier != "~*" and nl.name == uri + "/" and nl.location.upstream for nl in nls):
        return MOVED
    best = None
    for nl in nls:
        if nl.modifier == "" and uri.startswith(nl.name) and (best is None or len(nl.name) > len(best.name)):
            best = nl
    for nl in nls:
        if nl.modifier == "~*" and re.match(nl.name, uri, re.IGNORECASE):
            return nl
    return best


def _model(path_sets: list[tuple[bool, list[tuple[str, str]]]], keep_spec: bool) -> IngressModel:
    """Host tN.index.test per path set, each path from its own Ingress;
    a set marked True uses regex locations (use-regex)."""
    docs = [ingress_class()]
    for n, (regex, paths) in enumerate(path_sets):
        notes = {A + "use-regex": "true"} if regex else None
        for i, (path, ptype) in enumerate(paths):
            docs += service(f"s{n}-{i}", [f"10.180.{n % 250}.{i + 1}"])
            created = f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z"
            rule = [(f"t{n}.index.test", [(path, ptype, f"s{n}-{i}", 80)])]
            docs.append(ingress(f"i{n}-{i}", rule, annotations=notes, created=created))
    return IngressModel.from_cluster(cluster(docs), ControllerConfig(keep_spec=keep_spec))


_SEGMENT = st.sampled_from(["a", "b", "aa", "ab", "A"])
_PATH = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(_SEGMENT, max_size=3),
    st.booleans(),
)
_TYPE = st.sampled_from(["Exact", "Prefix", "ImplementationSpecific"])
_SET = st.tuples(st.booleans(), st.lists(st.tuples(_PATH, _TYPE), min_size=1, max_size=6))


@settings(max_examples=60, deadline=None)
@given(st.lists(_SET, min_size=1, max_size=6), st.booleans(), st.data())
def test_the_index_finds_what_nginx_walks_to(
    path_sets: list[tuple[bool, list[tuple[str, str]]]], keep_spec: bool, data: st.DataObject
) -> None:
    model = _model(path_sets, keep_spec)
    router = Router(model)
    for n in range(len(path_sets)):
        host = f"t{n}.index.test"
        nls = nginx_locations(model.servers[host], keep_spec)
        edges = [uri for nl in nls if nl.modifier != "~*" for uri in (nl.name, nl.name[:-1] or "/", nl.name + "b")]
        for uri in edges + data.draw(st.lists(_PATH, min_size=1, max_size=8)):
            decision = router.route(Request("http", host, uri, {}))
            expected = nginx_walk(nls, uri)
            if expected == MOVED:
                assert decision.status == 301, (nls, uri, decision)
            elif expected is None:
                assert (decision.status, decision.location) == (404, None), (nls, uri, decision)
            else:
                assert decision.location == expected and decision.status != 301, (nls, uri, decision)


def test_the_walk_is_not_trivial() -> None:
    model = _model([(False, [("/a/", "Exact"), ("/a", "Prefix")]), (True, [("/a", "Prefix")])], keep_spec=False)
    plain = nginx_locations(model.servers["t0.index.test"], False)
    assert [(nl.modifier, nl.name) for nl in plain] == [("=", "/a/"), ("", "/a/"), ("=", "/a"), ("", "/")]
    assert nginx_walk(plain, "/a/") == plain[0] and nginx_walk(plain, "/a/b") == plain[1]
    assert nginx_walk(plain, "/b") == plain[3]
    regex = nginx_locations(model.servers["t1.index.test"], False)
    assert nginx_walk(regex, "/A/x").name == "^/a"  # type: ignore[union-attr]


def test_one_round_robin_per_upstream_whatever_path_decides() -> None:
    """nginx keeps one peer list per upstream block: requests the fast path
    decides (a.test) and those it leaves to the general path (b.test has an
    allowlist, a request with a body has a size to check) take turns."""
    docs = [
        ingress_class(),
        *service("web", ["10.180.0.1", "10.180.0.2", "10.180.0.3"]),
        ingress("a", [("a.test", [("/", "Prefix", "web", 80)])]),
        ingress(
            "b", [("b.test", [("/", "Prefix", "web", 80)])], annotations={A + "allowlist-source-range": "0.0.0.0/0"}
        ),
    ]
    router = Router(IngressModel.from_cluster(cluster(docs)), random.Random(1))

    def pick(url: str, body: int = 0) -> str:
        endpoint = router.route(Request.from_url(url, content_length=body)).endpoint
        assert endpoint is not None
        return endpoint.ip

    urls = [("http://a.test/", 0), ("http://b.test/", 0), ("http://a.test/x", 10), ("http://a.test/y", 0)] * 2
    assert [pick(url, body) for url, body in urls] == [f"10.180.0.{1 + i % 3}" for i in range(8)]
    router.reset()  # a reload starts every round robin again
    assert [pick("http://b.test/"), pick("http://a.test/")] == ["10.180.0.1", "10.180.0.2"]
