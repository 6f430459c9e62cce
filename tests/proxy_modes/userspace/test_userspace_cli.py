"""`kubenetem rules|trace --mode userspace` and `kubenetem proxy`, end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kubenetem.cli import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_rules_and_trace_for_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--mode", "userspace", "-f", str(EXAMPLES)]) == 0
    rules = capsys.readouterr().out
    assert rules.startswith("*nat\n") and "-j KUBE-PORTALS-CONTAINER" in rules
    assert '-m comment --comment "dev/web-nodeport:http" -m tcp --dport 30080 -j REDIRECT --to-ports' in rules
    assert main(["rules", "--mode", "userspace", "-f", str(EXAMPLES), "--show", "proxy"]) == 0
    assert "dev/web:http" in capsys.readouterr().out
    web_ip = next(line.split()[3] for line in rules.splitlines() if '"dev/web:http"' in line and "-d " in line)
    web_ip = web_ip.split("/")[0]
    args = ["trace", "--mode", "userspace", "-f", str(EXAMPLES), "--src", "10.244.1.5", "--dst", f"{web_ip}:80"]
    assert main([*args, "-o", "json", "--connections", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "userspace" and out["verdict"] == "DNAT"
    assert len(set(out["sequence"])) == 3 and out["sequence"][:3] == out["sequence"][3:]  # round robin
    assert any("REDIRECT" in step["text"] for step in out["steps"])


def test_proxy_rejects_a_bad_listen_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "-f", str(EXAMPLES), "--listen", "nowhere"]) == 2
    assert "--listen: not an IPv4 address" in capsys.readouterr().err


def test_proxy_command_serves_and_shuts_down(tmp_path: Path) -> None:
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(8)

    def serve() -> None:
        conn, _ = sink.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    threading.Thread(target=serve, daemon=True).start()
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: up, namespace: default}\n"
        "spec:\n  ports: [{name: t, port: 80, protocol: TCP}]\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: up-1, namespace: default, labels: {kubernetes.io/service-name: up}}\n"
        f"addressType: IPv4\nports: [{{name: t, port: {sink.getsockname()[1]}, protocol: TCP}}]\n"
        "endpoints:\n- addresses: [127.0.0.1]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubenetem.cli", "proxy", "-f", str(manifest), "--grace", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("SERVICE PORT")
        row = proc.stdout.readline().split()
        assert row[0] == "default/up:t" and row[1] == "tcp"
        port = int(row[2].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"shout")
            assert c.recv(100) == b"SHOUT"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "1 connections accepted, 1 dialled" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sink.close()
