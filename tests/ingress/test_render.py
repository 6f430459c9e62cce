"""nginx.conf rendering: golden output, byte-identical re-renders, the
injection guard, incremental re-rendering, and templates inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kn_nginx_syntax import parse, walk

from ingress.model import IngressModel
from ingress.render import Nginx, Renderer, RenderError, literal, q, word
from ingress.scenarios import cluster, ingress, ingress_class, raw, service
from netem.cluster import load_cluster

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "example.nginx.conf"
A = "nginx.ingress.kubernetes.io/"
# Every directive name our templates may emit; an injection would add another.
ALLOWED = {
    "worker_processes", "pid", "error_log", "events", "worker_connections", "http", "access_log",
    "client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path",
    "server_names_hash_max_size", "server_names_hash_bucket_size", "map_hash_bucket_size",
    "variables_hash_max_size", "server_tokens", "map", "client_max_body_size", "add_header", "proxy_http_version",
    "proxy_set_header", "proxy_next_upstream", "error_page", "upstream", "server", "hash", "least_conn",
    "server_name", "listen", "ssl_certificate", "ssl_certificate_key", "if", "return", "location", "rewrite",
    "deny", "allow", "proxy_pass", "split_clients",
}  # fmt: skip


def example_model() -> IngressModel:
    return IngressModel.from_cluster(load_cluster([str(REPO / "examples")]))


def test_example_matches_the_golden_file() -> None:
    text = Renderer().render(example_model()).text
    if os.environ.get("KUBENETEM_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_same_input_gives_byte_identical_output() -> None:
    first = Renderer().render(example_model())
    again = Renderer().render(example_model())
    assert first.text == again.text and first.files == again.files
    assert set(first.files) == {"ssl/dev-shop-tls.pem"}
    assert "BEGIN CERTIFICATE" in first.files["ssl/dev-shop-tls.pem"]


def test_templates_refuse_unquoted_values() -> None:
    env = Renderer()._env
    with pytest.raises(RenderError, match="unquoted value"):
        env.from_string("return 200 {{ x }};").render(x="a; } server { listen 1")
    assert env.from_string("return 200 {{ x | q }};").render(x='a";}\\') == 'return 200 "a\\";}\\\\";'
    with pytest.raises(RenderError):
        q("a\nb")
    with pytest.raises(RenderError):
        literal("$host")
    with pytest.raises(RenderError):
        word("a;b")
    assert isinstance(word("$kn_x"), Nginx)


def _structure_ok(text: str) -> None:
    names = {d.name for d in walk(parse(text))}
    assert names <= ALLOWED, names - ALLOWED


def test_unknown_and_dangerous_annotations_never_reach_the_config() -> None:
    # CVE-2023-5044 (permanent-redirect), CVE-2025-1974 (auth-url, auth-tls-match-cn,
    # mirror-target): annotations we do not implement have no effect at all.
    payload = "http://x/;}\nssl_engine /tmp/evil.so; #"
    bad = {A + n: payload for n in ("permanent-redirect", "auth-url", "auth-tls-match-cn", "mirror-target")}
    docs = [
        ingress_class(),
        *service("web", ["10.180.0.1"]),
        ingress("x", [("x.test", [("/", "Prefix", "web", 80)])], annotations=bad),
    ]
    m = IngressModel.from_cluster(cluster(docs))
    text = Renderer().render(m).text
    assert "ssl_engine" not in text and "evil" not in text
    _structure_ok(text)


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(path=_TEXT, host=_TEXT, value=_TEXT, name=st.sampled_from(sorted(
    ["rewrite-target", "app-root", "upstream-hash-by", "canary-by-header", "canary-by-header-value",
     "canary-by-cookie", "session-cookie-name", "session-cookie-path", "proxy-body-size",
     "allowlist-source-range", "denylist-source-range", "load-balance"])),
    ptype=st.sampled_from(["Exact", "Prefix", "ImplementationSpecific"]))  # fmt: skip
def test_arbitrary_values_are_rejected_or_stay_inside_their_strings(
    path: str, host: str, value: str, name: str, ptype: str
) -> None:
    """Whatever text an Ingress carries, the config nginx reads has only our
    directives: the value was refused, or it sits inside a quoted string."""
    annotations = {A + name: value, A + "use-regex": "true", A + "affinity": "cookie", A + "canary": "false"}
    docs = [
        ingress_class(),
        *service("web", ["10.180.0.1"]),
        ingress("fuzz", [(host or "f.test", [("/" + path, ptype, "web", 80)])], annotations=annotations),
        ingress("plain", [("plain.test", [("/" + path, ptype, "web", 80)])]),
    ]
    m = IngressModel.from_cluster(cluster(docs))
    _structure_ok(Renderer().render(m).text)


def test_rerender_after_one_change_renders_one_server() -> None:
    docs = [ingress_class(), *service("web", ["10.180.0.1"])]
    docs += [ingress(f"i{i}", [(f"h{i}.test", [("/", "Prefix", "web", 80)])]) for i in range(20)]
    m = IngressModel.from_cluster(cluster(docs))
    r = Renderer()
    before = r.render(m).text
    calls: list[object] = []
    shaped = r._server_text
    r._server_text = lambda view: calls.append(view) or shaped(view)  # type: ignore[assignment,func-returns-value]
    m.apply(changed=[raw(ingress("i3", [("h3.test", [("/", "Prefix", "web", 80), ("/new", "Prefix", "web", 80)])]))])
    after = r.render(m).text
    assert len(calls) == 1 and after != before and '"/new/"' in after
    assert after == Renderer().render(m).text  # incremental == from scratch


def test_wheel_ships_the_templates_and_renders_from_them(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next((tmp_path / "dist").glob("kubenetem-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"ingress/templates/{t}" for t in ("nginx.conf.j2", "server.j2", "location.j2", "upstream.j2")} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ingress; "
        "from ingress.render import Renderer; from ingress.model import IngressModel; "
        "from netem.cluster import load_cluster; "
        "print(ingress.templates_dir()); "
        "print(Renderer().render(IngressModel.from_cluster(load_cluster([sys.argv[2]]))).text)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(site), str(REPO / "examples")], capture_output=True, text=True, check=True
    )
    first, _, text = out.stdout.partition("\n")
    assert first == str(site / "ingress" / "templates")
    assert text == Renderer().render(example_model()).text + "\n"
