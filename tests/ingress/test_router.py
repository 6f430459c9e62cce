"""Router details that need no nginx: URI normalisation, variables, canary
probabilities, the JSON shape, and the consistent-hash ring."""

from __future__ import annotations

import random

import pytest

from ingress.model import IngressModel
from ingress.router import Request, Router, chash_ring, normalize_uri
from ingress.scenarios import cluster, ingress, ingress_class, service

A = "nginx.ingress.kubernetes.io/"


def router(*docs: dict, seed: int = 1) -> Router:  # type: ignore[type-arg]
    base = [
        ingress_class(),
        *service("web", ["10.180.0.1", "10.180.0.2", "10.180.0.3"]),
        *service("can", ["10.180.1.1"]),
    ]
    return Router(IngressModel.from_cluster(cluster([*base, *docs])), random.Random(seed))


@pytest.mark.parametrize(
    ("raw", "uri"),
    [("/a//b", "/a/b"), ("/a/./b/", "/a/b/"), ("/a/b/../c", "/a/c"), ("/%61%2Fb", "/a/b"), ("/a/..", "/"), ("/.", "/")],
)
def test_normalize_uri(raw: str, uri: str) -> None:
    assert normalize_uri(raw) == uri


@pytest.mark.parametrize("target", ["/%zz", "/../x", "/a/%00", "/%4"])
def test_bad_uris_are_400(target: str) -> None:
    r = router(ingress("x", [("x.test", [("/", "Prefix", "web", 80)])]))
    assert r.route(Request("http", "x.test", target, {})).status == 400


def test_hash_key_variables_pick_consistently() -> None:
    r = router(
        ingress(
            "h", [("h.test", [("/", "Prefix", "web", 80)])], annotations={A + "upstream-hash-by": "$arg_u$http_x_a"}
        )
    )
    picks = {r.route(Request.from_url(f"http://h.test/?u={i}", {"X-A": "k"})).endpoint for i in range(40)}
    again = {r.route(Request.from_url(f"http://h.test/?u={i}", {"X-A": "k"})).endpoint for i in range(40)}
    assert picks == again and len(picks) == 3
    assert r.variable("cookie_s", Request.from_url("http://h.test/", cookies={"S": "v"}), "/") == "v"


def test_chash_ring_has_160_points_per_server() -> None:
    r = router(ingress("h", [("h.test", [("/", "Prefix", "web", 80)])]))
    hashes, owners = chash_ring(r.upstreams["default-web-80"].endpoints)
    assert len(hashes) == 480 and hashes == sorted(hashes)
    assert {o.text for o in owners} == {"10.180.0.1:8080", "10.180.0.2:8080", "10.180.0.3:8080"}


def test_canary_weight_and_weight_total() -> None:
    docs = [
        ingress("m", [("c.test", [("/", "Prefix", "web", 80)])]),
        ingress("c", [("c.test", [("/", "Prefix", "can", 80)])],
                annotations={A + "canary": "true", A + "canary-weight": "1", A + "canary-weight-total": "4"}),
    ]  # fmt: skip
    r = router(*docs)
    n = 4000
    share = sum(r.route(Request.from_url("http://c.test/")).canary for _ in range(n)) / n
    assert abs(share - 0.25) < 0.03


def test_decision_json_has_the_issue_shape() -> None:
    r = router(ingress("x", [("x.test", [("/a", "Exact", "web", 80)])]))
    j = r.route(Request.from_url("http://x.test/a")).to_json()
    assert {"status", "server", "location", "ingress", "backend", "endpoint", "redirect"} <= set(j)
    assert j["location"] == {"path": "/a", "pathType": "Exact"} and j["backend"] == {
        "service": "default/web",
        "port": 80,
    }
    assert j["endpoint"] == {"ip": "10.180.0.1", "port": 8080}
    miss = r.route(Request.from_url("http://x.test/b")).to_json()
    assert (miss["status"], miss["location"], miss["backend"], miss["endpoint"]) == (404, None, None, None)


def test_hsts_only_on_https_location_answers() -> None:
    r = router(ingress("x", [("x.test", [("/", "Prefix", "web", 80)])], annotations={A + "app-root": "/app"}))
    assert r.route(Request.from_url("https://x.test/a")).hsts
    assert not r.route(Request.from_url("http://x.test/a")).hsts
    assert not r.route(Request.from_url("https://x.test/")).hsts  # the server-level app-root return
