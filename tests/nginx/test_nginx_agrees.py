"""nginx, running the config we render, answers every request exactly as the
router decides: the spec's path examples, hosts and wildcards, TLS
redirects, default backends, every supported annotation, and a few thousand
generated host/path combinations."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from kn_nginx_harness import NginxHarness, compare

from ingress.nginx_process import default_certificate
from ingress.router import Request, Router
from ingress.scenarios import cluster, ingress, ingress_class, service, tls_secret

pytestmark = pytest.mark.nginx

A = "nginx.ingress.kubernetes.io/"
SPEC_TABLE = [
    [("/", "Prefix")],
    [("/foo", "Exact")],
    [("/foo/", "Exact")],
    [("/foo", "Prefix")],
    [("/foo/", "Prefix")],
    [("/aaa/bb", "Prefix")],
    [("/aaa/bbb", "Prefix")],
    [("/aaa/bbb/", "Prefix")],
    [("/", "Prefix"), ("/aaa", "Prefix")],
    [("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")],
    [("/aaa", "Prefix")],
    [("/foo", "Prefix"), ("/foo", "Exact")],
    [("/a/b/", "Exact"), ("/a", "Prefix")],
    [("/x", "ImplementationSpecific"), ("/x/y/", "Prefix"), ("/x/y/z", "Exact")],
]
SPEC_REQUESTS = [
    "/", "/foo", "/foo/", "/foo/bar", "/foobar", "/bar", "/aaa", "/aaa/", "/aaa/bb", "/aaa/bbb", "/aaa/bbb/",
    "/aaa/bbb/ccc", "/aaa/bbbxyz", "/aaa/ccc", "/ccc", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/x", "/xy",
    "/x/y", "/x/y/", "/x/y/z", "/x/y/z/", "//foo", "/foo/./", "/aaa/../foo", "/%66oo", "/FOO", "/foo?x=1",
]  # fmt: skip


def _docs() -> list[dict[str, Any]]:
    crt, key = default_certificate()
    docs: list[dict[str, Any]] = [ingress_class(), tls_secret("secure-tls", crt, key)]

    pods = iter(range(1, 1 << 16))

    def svc(name: str, n: int = 1) -> None:
        ips = [f"10.180.{k // 250}.{k % 250 + 1}" for k in (next(pods) for _ in range(n))]
        docs.extend(service(name, ips))

    for n, paths in enumerate(SPEC_TABLE):
        for i, (path, ptype) in enumerate(paths):
            svc(f"s{n}-{i}")
            docs.append(
                ingress(
                    f"spec{n}-{i}",
                    [(f"t{n}.spec.test", [(path, ptype, f"s{n}-{i}", 80)])],
                    created=f"2026-01-01T00:00:{i:02d}Z",
                )
            )
    for name in ("wild", "exactwild", "sec", "plain", "dflt", "rw", "rwstatic", "app", "sticky", "hash", "ewma", "rr",
                 "cmain", "ccan", "vmain", "vcan", "wmain", "wcan", "body", "allow"):  # fmt: skip
        svc(name, 3 if name in ("sticky", "hash", "ewma", "rr", "cmain", "ccan", "wmain", "wcan") else 1)
    docs += [
        ingress("wild", [("*.wild.test", [("/", "Prefix", "wild", 80)])]),
        ingress("exactwild", [("exact.wild.test", [("/", "Prefix", "exactwild", 80)])]),
        ingress("sec", [("secure.test", [("/", "Prefix", "sec", 80)])], tls=[(["secure.test"], "secure-tls")]),
        ingress("nossl", [("nossl.test", [("/", "Prefix", "plain", 80)])], tls=[(["nossl.test"], "secure-tls")],
                annotations={A + "ssl-redirect": "false"}),
        ingress("force", [("force.test", [("/", "Prefix", "plain", 80)])], annotations={A + "force-ssl-redirect": "true"}),  # noqa: E501
        ingress("dflt", [("dflt.test", [("/x", "Prefix", "plain", 80)])], default_backend=("dflt", 80),
                created="2025-06-01T00:00:00Z"),
        ingress("rw", [("rw.test", [("/api(/|$)(.*)", "ImplementationSpecific", "rw", 80)])],
                annotations={A + "use-regex": "true", A + "rewrite-target": "/$2"}),
        ingress("rwstatic", [("rw.test", [("/static", "Prefix", "rwstatic", 80)])]),
        ingress("app", [("app.test", [("/app1", "Prefix", "app", 80)])], annotations={A + "app-root": "/app1"}),
        ingress("sticky", [("sticky.test", [("/", "Prefix", "sticky", 80)])],
                annotations={A + "affinity": "cookie", A + "session-cookie-name": "route"}),
        ingress("hash", [("hash.test", [("/", "Prefix", "hash", 80)])], annotations={A + "upstream-hash-by": "$http_x_user"}),  # noqa: E501
        ingress("ewma", [("ewma.test", [("/", "Prefix", "ewma", 80)])], annotations={A + "load-balance": "ewma"}),
        ingress("rr", [("rr.test", [("/", "Prefix", "rr", 80)])]),
        ingress("cmain", [("canary.test", [("/", "Prefix", "cmain", 80)])]),
        ingress("ccan", [("canary.test", [("/", "Prefix", "ccan", 80)])],
                annotations={A + "canary": "true", A + "canary-by-header": "X-Canary", A + "canary-by-cookie": "beta"}),
        ingress("vmain", [("canaryv.test", [("/", "Prefix", "vmain", 80)])]),
        ingress("vcan", [("canaryv.test", [("/", "Prefix", "vcan", 80)])],
                annotations={A + "canary": "true", A + "canary-by-header": "X-Env", A + "canary-by-header-value": "beta",  # noqa: E501
                             A + "canary-weight": "100"}),
        ingress("body", [("body.test", [("/", "Prefix", "body", 80)])], annotations={A + "proxy-body-size": "1k"}),
        ingress("allow", [("allow.test", [("/", "Prefix", "allow", 80)])],
                annotations={A + "allowlist-source-range": "127.0.0.1/32, 10.0.0.0/8"}),
        ingress("deny", [("deny.test", [("/", "Prefix", "allow", 80)])],
                annotations={A + "whitelist-source-range": "10.0.0.0/8"}),
        ingress("deny2", [("deny2.test", [("/", "Prefix", "allow", 80)])],
                annotations={A + "denylist-source-range": "127.0.0.0/8", A + "allowlist-source-range": "127.0.0.1"}),
        ingress("nobackend", [("empty.test", [("/", "Prefix", "ghost", 80)])]),
        ingress("wmain", [("canaryw.test", [("/", "Prefix", "wmain", 80)])]),
        ingress("wcan", [("canaryw.test", [("/", "Prefix", "wcan", 80)])],
                annotations={A + "canary": "true", A + "canary-weight": "3", A + "canary-weight-total": "10"}),
    ]  # fmt: skip
    return docs


@pytest.fixture(scope="module")
def harness() -> Iterator[NginxHarness]:
    h = NginxHarness(cluster(_docs()))
    try:
        assert not h.model.error_list(), h.model.error_list()
        yield h
    finally:
        h.close()


def check(h: NginxHarness, url: str, headers: dict[str, str] | None = None, body: bytes = b"") -> Any:
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    decision, answer = h.request(scheme, host, "/" + path, headers, body)
    compare(decision, answer, url)
    return decision, answer


def test_spec_examples(harness: NginxHarness) -> None:
    for n in range(len(SPEC_TABLE)):
        for path in SPEC_REQUESTS:
            check(harness, f"http://t{n}.spec.test{path}")


def test_hosts_and_wildcards(harness: NginxHarness) -> None:
    got = {}
    for host in ("a.wild.test", "exact.wild.test", "a-b_c.wild.test", "a.b.wild.test", "wild.test", "A.WILD.TEST",
                 "unknown.test", "dflt.test", "t1.spec.test.", "t1.spec.test:80"):  # fmt: skip
        d, _ = check(harness, f"http://{host}/")
        got[host] = d.service
    assert got["a.wild.test"] == "default/wild" and got["A.WILD.TEST"] == "default/wild"
    assert got["exact.wild.test"] == "default/exactwild"
    assert got["a.b.wild.test"] == got["wild.test"] == got["unknown.test"] == "default/dflt"  # one label only


def test_tls_redirects_and_hsts(harness: NginxHarness) -> None:
    d, _ = check(harness, "http://secure.test/a?b=c")
    assert (d.status, d.redirect) == (308, "https://secure.test/a?b=c")
    d, a = check(harness, "https://secure.test/a")
    assert d.status == 200 and "strict-transport-security" in a.headers
    assert check(harness, "http://nossl.test/")[0].status == 200
    assert check(harness, "http://force.test/x")[0].status == 308
    assert check(harness, "https://force.test/x")[0].status == 200


def test_default_backends(harness: NginxHarness) -> None:
    assert check(harness, "http://dflt.test/x/1")[0].service == "default/plain"
    assert check(harness, "http://dflt.test/y")[0].service == "default/dflt"
    assert check(harness, "http://t10.spec.test/ccc")[0].status == 404  # no default for that host's Ingress
    assert check(harness, "http://empty.test/")[0].status == 503  # a Service without endpoints


def test_rewrite_and_regex(harness: NginxHarness) -> None:
    assert check(harness, "http://rw.test/api/x/y?q=1")[0].upstream_uri == "/x/y?q=1"
    for path in ("/API/z", "/api", "/apix", "/static/a", "/STATIC", "/staticx", "/other"):
        check(harness, f"http://rw.test{path}")


def test_app_root(harness: NginxHarness) -> None:
    d, _ = check(harness, "http://app.test/")
    assert (d.status, d.redirect) == (302, "http://app.test/app1")
    check(harness, "http://app.test/app1/x")


def test_cookie_affinity(harness: NginxHarness) -> None:
    first, answer = check(harness, "http://sticky.test/")
    cookie = answer.headers["set-cookie"].split(";")[0]
    for _ in range(5):
        d, a = check(harness, "http://sticky.test/", {"Cookie": cookie})
        assert d.endpoint == first.endpoint and "set-cookie" not in a.headers
    for _ in range(4):
        check(harness, "http://sticky.test/", {"Cookie": "route=0123456789abcdef"})


def test_balancers(harness: NginxHarness) -> None:
    seen = {check(harness, "http://rr.test/")[0].endpoint for _ in range(7)}
    assert len(seen) == 3
    for _ in range(7):
        check(harness, "http://ewma.test/")
    for i in range(30):
        check(harness, "http://hash.test/", {"X-User": f"user-{i}"})
    for _ in range(4):
        check(harness, "http://hash.test/")  # an empty key


def test_canary(harness: NginxHarness) -> None:
    assert check(harness, "http://canary.test/")[0].canary is False  # weight 0
    assert check(harness, "http://canary.test/", {"X-Canary": "always"})[0].canary is True
    assert check(harness, "http://canary.test/", {"X-Canary": "never", "Cookie": "beta=always"})[0].canary is False
    assert check(harness, "http://canary.test/", {"Cookie": "beta=always"})[0].canary is True
    assert check(harness, "http://canary.test/", {"X-Canary": "maybe", "Cookie": "beta=never"})[0].canary is False
    assert check(harness, "http://canaryv.test/", {"X-Env": "beta"})[0].canary is True
    assert check(harness, "http://canaryv.test/", {"X-Env": "Beta"})[0].canary is True  # falls through to weight 100


def test_canary_weight_splits_like_the_router_says(harness: NginxHarness) -> None:
    """A random split cannot be compared request by request: nginx's shares
    must fit the probability the router gives (30%), and every answer must
    come from the primary or the canary upstream."""
    up = harness.model.upstreams["default-wmain-80"]
    canary = {e.text for e in harness.model.upstreams[up.canary].endpoints}
    primary = {e.text for e in up.endpoints}
    n, hits = 400, 0
    for _ in range(n):
        _, answer = harness.request("http", "canaryw.test", "/")
        assert answer.status == 200 and answer.body is not None
        assert answer.body["endpoint"] in canary | primary
        hits += answer.body["endpoint"] in canary
    sigma = (n * 0.3 * 0.7) ** 0.5
    assert abs(hits - 0.3 * n) < 5 * sigma, hits
    rng_router = Router(harness.model, random.Random(1))
    shares = sum(rng_router.route(Request.from_url("http://canaryw.test/")).canary for _ in range(n))
    assert abs(shares - 0.3 * n) < 5 * sigma


def test_body_size_and_source_ranges(harness: NginxHarness) -> None:
    assert check(harness, "http://body.test/", body=b"x" * 1024)[0].status == 200
    assert check(harness, "http://body.test/", body=b"x" * 1025)[0].status == 413
    assert check(harness, "http://allow.test/")[0].status == 200
    assert check(harness, "http://deny.test/")[0].status == 403
    assert check(harness, "http://deny2.test/")[0].status == 403


def test_generated_requests(harness: NginxHarness) -> None:
    rng = random.Random(6)
    hosts = [f"t{n}.spec.test" for n in range(len(SPEC_TABLE))] + [
        "rw.test",
        "dflt.test",
        "a.wild.test",
        "nowhere.test",
    ]
    segments = ["foo", "aaa", "bbb", "bb", "a", "b", "x", "y", "z", "api", "static", "FOO", ".", "..", "", "%61"]
    for _ in range(2000):
        parts = [rng.choice(segments) for _ in range(rng.randint(0, 4))]
        path = "/" + "/".join(parts) + ("/" if rng.random() < 0.3 else "")
        if path.startswith("/..") or "/../.." in path:
            path = "/x" + path
        check(harness, f"http://{rng.choice(hosts)}{path}")


def test_ingress_nginx_locations_break_the_spec_and_the_router_knows(harness: NginxHarness) -> None:
    """keep_spec=False renders ingress-nginx's own locations: nginx then
    answers /foo with a 301 to /foo/ where the spec says "no match" (Exact
    /foo/) or "match" (Prefix /foo/); the router predicts those 301s too."""
    from ingress.model import ControllerConfig, IngressModel

    docs = _docs()
    model = IngressModel.from_cluster(
        cluster(docs), ControllerConfig(keep_spec=False), address_of=harness.model.address_of
    )
    harness.reload(model)
    try:
        for n in (2, 4, 7, 12, 13):
            for path in ("/foo", "/a/b", "/aaa/bbb", "/x/y", "/foo?q=1"):
                check(harness, f"http://t{n}.spec.test{path}")
        d, _ = check(harness, "http://t2.spec.test/foo?q=1")
        assert (d.status, d.redirect) == (301, f"http://t2.spec.test:{harness.http_port}/foo/?q=1")
        assert check(harness, "https://t4.spec.test/foo")[0].status == 301
    finally:
        harness.reload(IngressModel.from_cluster(cluster(docs), address_of=harness.model.address_of))


def test_nginx_accepts_every_config_we_emit_for_hostile_inputs() -> None:
    """Ingresses full of nginx syntax, quotes, variables, regex and control
    characters in paths, hosts and annotation values: each is rejected or
    rendered quoted, and `nginx -t` accepts the config made of the survivors."""
    from ingress.model import IngressModel
    from ingress.nginx_process import check
    from ingress.render import Renderer

    rng = random.Random(1974)
    hostile = [*"abc/._-~:^$[](){}*+?|&=\\;#'\" \t\n\r%", "${host}", "$1", "/..", "//", "}server{", "\u00e9"]
    benign = [*"abcxyz019/._-", "(/|$)(.*)", "[0-9]+", "\\d", "{2}", "^", "$"]
    values = {
        "rewrite-target": ["/$2", "/", "/new/$1"], "app-root": ["/app"],
        "upstream-hash-by": ["$remote_addr", "${uri}x"],
        "canary-by-header": ["X-C"], "canary-by-header-value": ["on"], "canary-by-cookie": ["beta"],
        "session-cookie-name": ["s1"], "session-cookie-path": ["/p"], "proxy-body-size": ["8k", "0"],
        "allowlist-source-range": ["10.0.0.0/8,127.0.0.1"], "denylist-source-range": ["192.0.2.1"],
        "affinity": ["cookie"], "load-balance": ["ewma"], "ssl-redirect": ["false"],
    }  # fmt: skip
    docs: list[dict[str, Any]] = [ingress_class(), *service("web", ["10.180.9.1"])]
    for i in range(150):
        alphabet = hostile if rng.random() < 0.3 else benign
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        ptype = rng.choice(["Exact", "Prefix", "ImplementationSpecific"])
        name = rng.choice(sorted(values))
        value = rng.choice(values[name]) if rng.random() < 0.7 else "".join(rng.choice(hostile) for _ in range(6))
        annotations = {A + name: value, A + "use-regex": rng.choice(["true", "false"])}
        docs.append(ingress(f"h{i}", [(f"h{i % 17}.test", [("/" + text, ptype, "web", 80)])], annotations=annotations))
    model = IngressModel.from_cluster(cluster(docs))
    assert len(model.error_list()) > 20 and len(model.ingresses) > 30
    check(Renderer().render(model))
