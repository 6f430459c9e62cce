"""The rendered locations keep the Ingress spec's path semantics.

The router says what the generated nginx config does (tests/nginx proves it
against a running nginx); here it is held against the spec itself: the
examples table of the Ingress concept page ("Examples" under "Path types")
and an independent, literal reading of the matching rules run on generated
path sets.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.model import IngressModel
from ingress.router import Request, Router
from ingress.scenarios import cluster, ingress, ingress_class, service

# (paths, request path, index of the path that must win or None for the default backend)
SPEC_TABLE = [
    ([("/", "Prefix")], "/anything/at/all", 0),
    ([("/foo", "Exact")], "/foo", 0),
    ([("/foo", "Exact")], "/bar", None),
    ([("/foo", "Exact")], "/foo/", None),
    ([("/foo/", "Exact")], "/foo", None),
    ([("/foo", "Prefix")], "/foo", 0),
    ([("/foo", "Prefix")], "/foo/", 0),
    ([("/foo/", "Prefix")], "/foo", 0),
    ([("/foo/", "Prefix")], "/foo/", 0),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", None),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", 0),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", 0),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", 0),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", 0),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", 1),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", 2),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", 0),
    ([("/aaa", "Prefix")], "/ccc", None),
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", 1),
]


def _model(path_sets: list[list[tuple[str, str]]]) -> IngressModel:
    """Host tN.spec.test per path set; path i of set N goes to service sN-i,
    each path from its own Ingress, older in list order."""
    docs = [ingress_class()]
    for n, paths in enumerate(path_sets):
        for i, (path, ptype) in enumerate(paths):
            docs += service(f"s{n}-{i}", [f"10.180.{n % 250}.{i + 1}"])
            created = f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z"
            docs.append(ingress(f"i{n}-{i}", [(f"t{n}.spec.test", [(path, ptype, f"s{n}-{i}", 80)])], created=created))
    return IngressModel.from_cluster(cluster(docs))


def _winner(router: Router, n: int, request_path: str) -> int | None:
    decision = router.route(Request.from_url(f"http://t{n}.spec.test{request_path}"))
    if decision.status == 404:
        assert decision.location is None or decision.location.location.fallback
        return None
    assert decision.status == 200, decision
    assert decision.service is not None
    return int(decision.service.rsplit("-", 1)[1])


def test_the_spec_examples_table() -> None:
    model = _model([paths for paths, _, _ in SPEC_TABLE])
    assert not model.error_list() and not model.warnings
    router = Router(model)
    for n, (paths, request_path, expected) in enumerate(SPEC_TABLE):
        assert _winner(router, n, request_path) == expected, (paths, request_path)


def spec_winner(paths: list[tuple[str, str]], request_path: str) -> int | None:
    """A literal reading of the spec (networking.k8s.io/v1 HTTPIngressPath):
    Exact = equal strings; Prefix = element-wise prefix of the '/'-split path
    (a trailing slash ignored); the longest match wins, Exact over Prefix on
    a tie. ImplementationSpecific is read as Prefix (our choice). Of paths
    that are the same match (same kind and elements) the oldest Ingress wins."""
    req = [e for e in request_path.split("/") if e]
    best: tuple[int, int, int] | None = None  # (elements, exact?, -index)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for i, (path, ptype) in enumerate(paths):
        elems = tuple(e for e in path.split("/") if e)
        kind = "exact" if ptype == "Exact" else "prefix"
        key = (kind, (path,) if kind == "exact" else elems)
        if key in seen:
            continue
        seen.add(key)
        ok = path == request_path if kind == "exact" else list(elems) == req[: len(elems)]
        rank = (len(elems), kind == "exact", -i)
        if ok and (best is None or rank > best):
            best = rank
    return None if best is None else -best[2]


_SEGMENT = st.sampled_from(["a", "b", "aa", "ab"])
_PATH = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(_SEGMENT, max_size=3),
    st.booleans(),
)
_TYPE = st.sampled_from(["Exact", "Prefix", "ImplementationSpecific"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(_PATH, _TYPE), min_size=1, max_size=6), min_size=1, max_size=8), st.data())
def test_generated_path_sets_follow_the_spec(path_sets: list[list[tuple[str, str]]], data: st.DataObject) -> None:
    router = Router(_model(path_sets))
    for n, paths in enumerate(path_sets):
        for request_path in data.draw(st.lists(_PATH, min_size=1, max_size=6)):
            assert _winner(router, n, request_path) == spec_winner(paths, request_path), (paths, request_path)


def test_the_oracle_is_not_trivial() -> None:
    assert spec_winner([("/a", "Prefix"), ("/a/b", "Prefix")], "/a/b/c") == 1
    assert spec_winner([("/a", "Prefix")], "/ab") is None
    assert spec_winner([("/a/", "Exact"), ("/", "Prefix")], "/a") == 1
    assert string.ascii_lowercase  # the alphabet above is a subset
