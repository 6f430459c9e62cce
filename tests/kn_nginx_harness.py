"""A real nginx serving our config on loopback, echo backends, and the router
beside it, so a test can send the same request to both and compare.

Echo backends are tiny HTTP servers on 127.0.0.1 (one per pod endpoint, on a
port the kernel picks) that answer with the endpoint they stand for and the
request line they received. nginx runs our rendered config in its own prefix
directory with one worker (nginx's balancer state is per worker, as the
router's is per Router), listening on free loopback ports. Everything is
stopped in `close()`, which the fixtures call in `finally`.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ingress.model import IngressModel
from ingress.nginx_process import NginxProcess, default_certificate, write_tree
from ingress.render import Renderer, RenderOptions
from ingress.router import Decision, Request, Router
from netem.cluster import Cluster
from proxy_modes.view import build_state


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            # the request line as received: http.server's self.path folds a leading "//"
            {
                "endpoint": self.server.endpoint,
                "target": self.requestline.split(" ")[1],
                "host": self.headers.get("Host"),
            }  # type: ignore[attr-defined]
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args: Any) -> None:
        pass


def start_echo(endpoint: str) -> ThreadingHTTPServer:
    """An echo backend standing in for the pod endpoint `endpoint`; stop it with
    shutdown() and server_close()."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.endpoint = endpoint  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None


class NginxHarness:
    def __init__(self, cluster: Cluster, seed_model: IngressModel | None = None) -> None:
        self.echoes: list[ThreadingHTTPServer] = []
        self.nginx: NginxProcess | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix="kn-ingress-e2e-")
        self.conns: dict[str, http.client.HTTPConnection] = {}
        try:
            self._start(cluster)
        except BaseException:
            self.close()
            raise

    def _start(self, cluster: Cluster) -> None:
        state = build_state(cluster)
        addresses: dict[str, str] = {}
        for entry in state.entries.values():
            for eps in entry.endpoints.values():
                for ep in eps:
                    if ep.text not in addresses:
                        addresses[ep.text] = self._echo(ep.text)
        self.model = IngressModel.from_cluster(cluster, state=state, address_of=addresses.__getitem__)
        self.http_port, self.https_port = free_port(), free_port()
        options = RenderOptions(
            listen_http=(f"127.0.0.1:{self.http_port}",),
            listen_https=(f"127.0.0.1:{self.https_port}",),
            workers="1",
            error_log="error.log",
        )
        self.renderer = Renderer(options)
        self.rendered = self.renderer.render(self.model, default_certificate())
        directory = Path(self.tmp.name)
        write_tree(directory, self.rendered)
        self.nginx = NginxProcess(directory)
        self.nginx.start()
        self.router = Router(self.model, random.Random(0))

    def _echo(self, endpoint: str) -> str:
        server = start_echo(endpoint)
        self.echoes.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        if self.nginx is not None:
            self.nginx.stop()
        for server in self.echoes:
            server.shutdown()
            server.server_close()
        self.tmp.cleanup()

    # -- one request to both -------------------------------------------------

    def request(
        self,
        scheme: str,
        host: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[Decision, Answer]:
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        port = self.https_port if scheme == "https" else self.http_port
        req = Request(scheme, host, target, hdrs | {"host": host}, "127.0.0.1", port, len(body))
        decision = self.router.route(req)
        answer = self.fetch(scheme, host, target, headers or {}, body)
        return decision, answer

    def fetch(self, scheme: str, host: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        for attempt in (1, 2):
            conn = self._conn(scheme, host)
            try:
                conn.putrequest("POST" if body else "GET", target, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", host)
                for k, v in headers.items():
                    conn.putheader(k, v)
                if body:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self._drop(scheme, host)
                parsed = json.loads(data) if hdrs.get("content-type") == "application/json" else None
                return Answer(resp.status, hdrs, parsed)
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                self._drop(scheme, host)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _conn(self, scheme: str, host: str) -> http.client.HTTPConnection:
        key = f"{scheme}://{host}"
        conn = self.conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = _SNIConnection(self.https_port, host)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
            self.conns[key] = conn
        return conn

    def _drop(self, scheme: str, host: str) -> None:
        conn = self.conns.pop(f"{scheme}://{host}", None)
        if conn is not None:
            conn.close()

    def reload(self, model: IngressModel) -> None:
        """Render `model` into the running nginx and reload; the router starts afresh."""
        assert self.nginx is not None
        self.model = model
        self.rendered = self.renderer.render(model, default_certificate())
        write_tree(Path(self.tmp.name), self.rendered)
        for key in list(self.conns):
            self.conns.pop(key).close()
        self.nginx.reload()
        self.router = Router(model, random.Random(0))


class _SNIConnection(http.client.HTTPSConnection):
    """https to 127.0.0.1 with the SNI of the virtual host; nobody verifies."""

    def __init__(self, port: int, sni: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        super().__init__("127.0.0.1", port, context=ctx, timeout=10)
        self._ctx, self._sni = ctx, sni

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._sni)


def compare(decision: Decision, answer: Answer, what: str) -> None:
    """nginx's answer equals the router's decision: status, endpoint, the URI
    the backend saw, redirect target, affinity cookie, HSTS."""
    assert answer.status == decision.status, f"{what}: nginx {answer.status}, router {decision}"
    if decision.status == 200:
        assert answer.body is not None, what
        assert decision.endpoint is not None
        assert answer.body["endpoint"] == decision.endpoint.text, f"{what}: nginx {answer.body}, router {decision}"
        assert answer.body["target"] == decision.upstream_uri, f"{what}: nginx {answer.body}, router {decision}"
        assert answer.headers.get("set-cookie") == decision.set_cookie, f"{what}: {answer.headers}, {decision}"
    if decision.redirect is not None:
        assert answer.headers.get("location") == decision.redirect, f"{what}: {answer.headers}, {decision}"
    assert ("strict-transport-security" in answer.headers) == decision.hsts, f"{what}: {answer.headers} {decision}"
