"""Validation, class selection and merging of Ingresses."""

from __future__ import annotations

from typing import Any

import pytest

from ingress.model import DEFAULT_SERVER, ControllerConfig, IngressModel
from ingress.scenarios import cluster, ingress, ingress_class, service, tls_secret

A = "nginx.ingress.kubernetes.io/"
CRT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def model(*docs: dict[str, Any], config: ControllerConfig | None = None) -> IngressModel:
    base = [ingress_class(), *service("web", ["10.180.0.1", "10.180.0.2"]), *service("api", ["10.180.1.1"])]
    return IngressModel.from_cluster(cluster([*base, *docs]), config)


def one(
    name: str = "ing", host: str = "a.example.com", path: str = "/", ptype: str = "Prefix", **kw: Any
) -> dict[str, Any]:
    return ingress(name, [(host, [(path, ptype, kw.pop("svc", "web"), 80)])], **kw)


def errors(m: IngressModel) -> list[str]:
    return [e.line() for e in m.error_list()]


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"path": "foo", "ptype": "Exact"}, "spec.rules[0].http.paths[0].path", "must be an absolute path"),
        ({"path": "/a//b"}, "spec.rules[0].http.paths[0].path", "must not contain '//'"),
        ({"path": "/a/.."}, "spec.rules[0].http.paths[0].path", "cannot end with '/..'"),
        ({"path": "/a;b"}, "spec.rules[0].http.paths[0].path", "strict-validate-path-type"),
        ({"path": '/a"}'}, "spec.rules[0].http.paths[0].path", "strict-validate-path-type"),
        ({"path": "/a\nb", "ptype": "ImplementationSpecific"}, "spec.rules[0].http.paths[0].path", "may only contain"),
        ({"path": "/a b", "ptype": "ImplementationSpecific"}, "spec.rules[0].http.paths[0].path", "may only contain"),
        # Python's `$` also matches before a final newline; Go's (ingress-nginx) does not
        ({"path": "/a\n", "ptype": "ImplementationSpecific"}, "spec.rules[0].http.paths[0].path", "may only contain"),
        ({"path": "/a\n"}, "spec.rules[0].http.paths[0].path", "strict-validate-path-type"),
        ({"annotations": {A + "proxy-body-size": "1m\n"}}, "proxy-body-size", "size"),
        ({"annotations": {A + "canary-by-cookie": "c\n"}}, "canary-by-cookie", "letters"),
        ({"ptype": "Regex"}, "spec.rules[0].http.paths[0].pathType", "Unsupported value"),
        ({"host": "10.0.0.1"}, "spec.rules[0].host", "not an IP address"),
        ({"host": "a.example.com:80"}, "spec.rules[0].host", "RFC 1123 subdomain"),
        ({"host": "a.*.example.com"}, "spec.rules[0].host", "whole first label"),
        ({"host": "Shop.example.com"}, "spec.rules[0].host", "RFC 1123 subdomain"),
        ({"svc": "Bad_Name"}, "spec.rules[0].http.paths[0].backend.service.name", "DNS-1035"),
        ({"annotations": {A + "rewrite-target": "/$1;\n}"}}, "rewrite-target", "must be a path"),
        ({"annotations": {A + "configuration-snippet": "return 200;"}}, "configuration-snippet", "snippet"),
        ({"annotations": {A + "proxy-body-size": "1m;"}}, "proxy-body-size", "size"),
        ({"annotations": {A + "upstream-hash-by": "$remote_addr;}"}}, "upstream-hash-by", "must be nginx variables"),
        ({"annotations": {A + "upstream-hash-by": "$foo"}}, "upstream-hash-by", "unsupported variable $foo"),
        ({"annotations": {A + "canary-by-header-value": 'a"b'}}, "canary-by-header-value", "has characters"),
        ({"annotations": {A + "whitelist-source-range": "10.0.0.0/8;"}}, "whitelist-source-range", "CIDRs"),
        ({"annotations": {A + "app-root": "http://evil"}}, "app-root", "starting with"),
        ({"annotations": {A + "load-balance": "random"}}, "load-balance", "one of"),
        ({"annotations": {A + "ssl-redirect": "yes"}}, "ssl-redirect", "boolean"),
    ],
)
def test_rejected_ingress_names_itself_and_the_field(kwargs: dict[str, Any], field: str, message: str) -> None:
    m = model(one("bad", **kwargs), one("good", host="b.example.com"))
    lines = errors(m)
    assert len(lines) == 1, lines
    assert "Ingress default/bad" in lines[0] and field in lines[0] and message in lines[0], lines[0]
    assert "b.example.com" in m.servers and "default/bad" not in m.ingresses


def test_missing_path_type_and_empty_spec_are_rejected() -> None:
    doc = one("nopt")
    del doc["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    empty = ingress("empty", [])
    m = model(doc, empty)
    lines = errors(m)
    assert any("default/nopt" in ln and "pathType must be specified" in ln for ln in lines)
    assert any("default/empty" in ln and "either `defaultBackend` or `rules`" in ln for ln in lines)


def test_class_selection() -> None:
    docs = [
        one("by-name", host="a.example.com"),
        one("other-class", host="b.example.com", class_name="other"),
        one("no-class", host="c.example.com", class_name=None),
        one("annotated", host="d.example.com", class_name=None, annotations={"kubernetes.io/ingress.class": "nginx"}),
        one("annotated-other", host="e.example.com", annotations={"kubernetes.io/ingress.class": "traefik"}),
        ingress_class("other", default=False, controller="example.com/other"),
    ]
    m = model(*docs)
    assert set(m.ingresses) == {"default/by-name", "default/no-class", "default/annotated"}
    assert set(m.ignored) == {"default/other-class", "default/annotated-other"}
    # Without a default IngressClass an Ingress without class is not ours,
    # unless --watch-ingress-without-class.
    plain = [*service("web", ["10.180.0.1"]), one("x", class_name=None)]
    assert not IngressModel.from_cluster(cluster(plain)).ingresses
    watch = IngressModel.from_cluster(cluster(plain), ControllerConfig(watch_without_class=True))
    assert set(watch.ingresses) == {"default/x"}


def test_oldest_ingress_wins_a_conflict_and_the_newer_is_reported() -> None:
    old = one("old", svc="web", created="2026-01-01T00:00:00Z")
    new = one("new", svc="api", created="2026-02-01T00:00:00Z")
    m = model(new, old)
    locs = [loc for loc in m.servers["a.example.com"].locations if not loc.fallback]
    assert [(loc.ingress, loc.upstream) for loc in locs] == [("default/old", "default-web-80")]
    assert any("default/new" in w and "already defined by default/old" in w for w in m.warnings)


def test_same_timestamp_orders_by_name_descending_like_ingress_nginx() -> None:
    a = one("aaa", svc="web", created="2026-01-01T00:00:00Z")
    z = one("zzz", svc="api", created="2026-01-01T00:00:00Z")
    locs = [loc for loc in model(a, z).servers["a.example.com"].locations if not loc.fallback]
    assert [loc.ingress for loc in locs] == ["default/zzz"]


def test_paths_of_several_ingresses_merge_into_one_server() -> None:
    m = model(one("i1", path="/a"), one("i2", path="/b", svc="api"))
    paths = sorted((loc.path, loc.upstream) for loc in m.servers["a.example.com"].locations)
    assert paths == [("/", None), ("/a", "default-web-80"), ("/b", "default-api-80")]


def test_tls_certificate_from_secret_and_fallbacks() -> None:
    docs = [
        tls_secret("good", CRT, KEY),
        tls_secret("broken", "not a pem", KEY),
        one("t1", host="a.example.com", tls=[(["a.example.com"], "good")]),
        one("t2", host="b.example.com", tls=[(["b.example.com"], "broken")]),
        one("t3", host="c.example.com", tls=[(["c.example.com"], "missing")]),
    ]
    m = model(*docs)
    assert m.servers["a.example.com"].cert == "default-good"
    assert m.certificates == {"default-good": (CRT, KEY)}
    assert m.servers["b.example.com"].cert == "" and m.servers["c.example.com"].cert == ""
    assert any("default/broken" in w and "no PEM certificate" in w for w in m.warnings)
    assert any("default/missing not found" in w for w in m.warnings)


def test_default_backend_of_the_oldest_ingress_serves_the_catch_all() -> None:
    m = model(
        ingress("newer", [], default_backend=("api", 80), created="2026-03-01T00:00:00Z"),
        ingress("older", [], default_backend=("web", 80), created="2026-01-01T00:00:00Z"),
    )
    fallback = m.servers[DEFAULT_SERVER].locations[0]
    assert (fallback.ingress, fallback.upstream) == ("default/older", "default-web-80")


def test_upstreams_list_ready_endpoints_and_settings_of_the_first_user() -> None:
    m = model(
        one("first", annotations={A + "load-balance": "ewma"}, created="2026-01-01T00:00:00Z"),
        one(
            "second",
            host="b.example.com",
            annotations={A + "upstream-hash-by": "$remote_addr"},
            created="2026-02-01T00:00:00Z",
        ),
    )
    up = m.upstreams["default-web-80"]
    assert [e.text for e in up.endpoints] == ["10.180.0.1:8080", "10.180.0.2:8080"]
    assert (up.balance, up.hash_by) == ("ewma", "")


def test_incremental_apply_touches_only_the_changed_hosts() -> None:
    from ingress.scenarios import raw

    m = model(one("i1", host="a.example.com"), one("i2", host="b.example.com"))
    before = dict(m.servers)
    touched = m.apply(changed=[raw(one("i2", host="b.example.com", path="/x"))])
    assert touched == {"b.example.com"}
    assert m.servers["a.example.com"] is before["a.example.com"]
    assert {loc.path for loc in m.servers["b.example.com"].locations} == {"/", "/x"}
    m.apply(removed=["default/i2"])
    assert "b.example.com" not in m.servers
