"""The controller against a real nginx: files in, checked config swapped in,
nginx reloaded; failures keep the last good config; bursts coalesce; an
endpoints change rebuilds upstreams only."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kn_nginx_harness import free_port, start_echo

from ingress.controller import Controller, SyncResult
from ingress.nginx_process import NginxProcess
from ingress.render import RenderOptions
from ingress.scenarios import ingress, ingress_class, service, tls_secret

pytestmark = pytest.mark.nginx
ENDPOINTS = [f"10.180.0.{i}" for i in range(1, 5)]


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.echoes = {f"{ip}:8080": start_echo(f"{ip}:8080") for ip in ENDPOINTS}
        self.addresses = {k: f"127.0.0.1:{s.server_address[1]}" for k, s in self.echoes.items()}
        self.port = free_port()
        self.manifest = tmp / "in" / "cluster.yaml"
        self.manifest.parent.mkdir()
        live = tmp / "live"
        live.mkdir()
        options = RenderOptions(
            listen_http=(f"127.0.0.1:{self.port}",), listen_https=(f"127.0.0.1:{free_port()}",), workers="1"
        )
        self.nginx = NginxProcess(live)
        self.controller = Controller(
            live, [str(self.manifest.parent)], options, nginx=self.nginx, address_of=self.addresses.__getitem__
        )

    def write(self, paths: list[str], endpoints: int = 2, extra: list[dict[str, Any]] | None = None) -> None:
        docs = [ingress_class(), *service("web", ENDPOINTS[:endpoints])]
        docs.append(ingress("web", [("ctl.test", [(p, "Prefix", "web", 80) for p in paths])]))
        text = yaml.safe_dump_all(docs + (extra or []))
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.manifest)

    def get(self, path: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Host": "ctl.test"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def close(self) -> None:
        self.nginx.stop()
        for s in self.echoes.values():
            s.shutdown()
            s.server_close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _server_blocks(text: str) -> str:
    return text[text.index("    server {") :]


def test_sync_reload_and_incremental_rebuilds(setup: Setup) -> None:
    setup.write(["/a"])
    first = setup.controller.sync()
    assert first.reloaded and not first.error and setup.nginx.proc is not None
    assert (setup.get("/a"), setup.get("/b")) == (200, 404)

    setup.write(["/a", "/b"])
    second = setup.controller.sync()
    assert second.reloaded and second.hosts == {"ctl.test"} and not second.upstreams
    assert (setup.get("/a"), setup.get("/b")) == (200, 200)

    before = setup.controller.running
    setup.write(["/a", "/b"], endpoints=4)
    third = setup.controller.sync()
    assert third.reloaded and third.hosts == set() and third.upstreams == {"default-web-80"}
    assert before is not None and setup.controller.running is not None
    assert _server_blocks(setup.controller.running.text) == _server_blocks(before.text)
    assert setup.controller.running.text.count("max_fails=0") == 4

    assert setup.controller.sync().summary() == "no change"


def test_a_config_nginx_refuses_keeps_the_last_good_one(setup: Setup) -> None:
    setup.write(["/a"])
    assert setup.controller.sync().reloaded
    broken = tls_secret("bad", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")  # fmt: skip
    doc = ingress("tls", [("tls.test", [("/", "Prefix", "web", 80)])], tls=[(["tls.test"], "bad")])
    setup.write(["/a", "/b"], extra=[broken, doc])
    result = setup.controller.sync()
    assert (
        not result.reloaded
        and "nginx -t failed" in result.error
        and "tls.test" not in (setup.controller.running.text if setup.controller.running else "")
    )
    assert (setup.get("/a"), setup.get("/b")) == (200, 404)  # still the old config
    setup.write(["/a", "/b"])
    assert setup.controller.sync().reloaded and setup.get("/b") == 200


def test_a_burst_of_changes_is_one_reload(setup: Setup) -> None:
    setup.write(["/a"])
    results: list[SyncResult] = []
    stop = threading.Event()
    loop = threading.Thread(
        target=setup.controller.run, args=(stop, results.append), kwargs={"interval": 0.05, "settle": 0.5}
    )
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.02)
        assert results and results[0].reloaded
        reloads = setup.controller.reloads
        for i in range(5):
            setup.write(["/a", *[f"/p{j}" for j in range(i + 1)]])
            time.sleep(0.1)
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)
    finally:
        stop.set()
        loop.join(10)
    assert len(results) == 2, [r.summary() for r in results]
    assert setup.controller.reloads == reloads + 1
    assert setup.get("/p4") == 200
