"""userspace mode: the decision per new connection, and the real proxy on
loopback against a direct connection and HAProxy (issue 5's targets: decision
at most 1 us median; bulk throughput at least HAProxy's; connection rate at
least half of HAProxy's).

The three paths are measured in the same run, on the same sink, with the same
client, interleaved round by round (best round kept: the machine is shared,
and interference only ever slows a round down):

- direct: client -> sink;
- haproxy: client -> HAProxy (`mode tcp`, Debian's package, its default
  threading) -> sink;
- kubenetem: client -> `kubenetem proxy` (its own process, one service whose
  endpoint is the sink) -> sink.

Bulk: one connection sends N bytes and half-closes; the sink counts them and
answers the count (checked). Rate: sequential connections, each a one-byte
request and a one-byte answer. Under `--benchmark-disable` everything runs
once with small amounts, so the harness itself stays tested.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kubenetem.scenarios import synthetic_cluster
from netem.packet import TCP, Packet
from proxy_modes.userspace.engine import UserspaceMode
from proxy_modes.view import build_state, node_view

BATCH = 1000

SINK = textwrap.dedent(
    """
    import socket, struct, sys
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    print(s.getsockname()[1], flush=True)
    buf = bytearray(1 << 20)
    while True:
        c, _ = s.accept()
        try:
            k = c.recv_into(buf)
            if buf[:1] == b"R":
                c.send(b"r")
            else:
                n = k
                while k:
                    k = c.recv_into(buf)
                    n += k
                c.sendall(struct.pack("!Q", n))
        except OSError:
            pass
        c.close()
    """
)


# --- the decision --------------------------------------------------------------


def _synced(services: int) -> tuple[UserspaceMode, list[Packet]]:
    cluster = synthetic_cluster(services=services, endpoints=10, nodes=10, mode="userspace")
    mode = UserspaceMode(random.Random(1))
    mode.sync(node_view(cluster, build_state(cluster)))
    ips = [p.info.cluster_ip for p in mode.portals.values()]
    rnd = random.Random(2)
    packets = [Packet(TCP, (10 << 24) + n, 1024 + n, rnd.choice(ips), 80) for n in range(BATCH)]
    return mode, packets


@pytest.mark.benchmark(group="userspace: decision per new connection (batch of 1000)")
def test_decision_per_new_connection(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    """Portal lookup + LoadBalancerRR + dial model: kube-proxy's own choice."""
    mode, packets = _synced(services)
    decide = mode.decide

    def batch() -> int:
        return sum(1 for p in packets if decide(p, 1.0) is not None)

    assert benchmark.pedantic(batch, rounds=1 if benchmark.disabled else 200, iterations=1) == BATCH
    if benchmark.stats:
        benchmark.extra_info["median_us_per_connection"] = benchmark.stats.stats.median / BATCH * 1e6


@pytest.mark.benchmark(group="userspace: route() per new connection (batch of 1000)")
def test_route_per_new_connection(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    """The whole emulated path: the walk's cost, the choice, the kernel's conntrack entry."""
    mode, packets = _synced(services)

    def batch() -> int:
        mode.conntrack.flush()
        return sum(1 for p in packets if mode.route(p, 1.0).endpoint is not None)

    assert benchmark.pedantic(batch, rounds=1 if benchmark.disabled else 100, iterations=1) == BATCH
    if benchmark.stats:
        benchmark.extra_info["median_us_per_connection"] = benchmark.stats.stats.median / BATCH * 1e6


# --- the real proxy against direct and HAProxy ---------------------------------


def _haproxy() -> str:
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else "")
    if not path:
        if os.environ.get("KUBENETEM_REQUIRE_REAL") == "1":
            pytest.fail("KUBENETEM_REQUIRE_REAL=1 but haproxy is missing", pytrace=False)
        pytest.skip("haproxy is not installed")
    return path


@contextmanager
def _process(args: list[str], **kw: object) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(directory: Path, sink_port: int) -> Path:
    path = directory / "sink.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Service
            metadata: {{name: sink, namespace: default}}
            spec:
              ports: [{{name: tcp, port: 80, protocol: TCP}}]
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: sink-1
              namespace: default
              labels: {{kubernetes.io/service-name: sink}}
            addressType: IPv4
            ports: [{{name: tcp, port: {sink_port}, protocol: TCP}}]
            endpoints:
            - addresses: [127.0.0.1]
            """
        )
    )
    return path


def bulk_gbits(port: int, nbytes: int) -> float:
    chunk = memoryview(bytearray(b"B" * (1 << 20)))
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        left = nbytes
        while left:
            left -= c.send(chunk[: min(left, len(chunk))])
        c.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < 8 and (data := c.recv(8 - len(answer))):
            answer += data
    elapsed = time.perf_counter() - start
    assert struct.unpack("!Q", answer)[0] == nbytes, "the sink did not get every byte"
    return nbytes * 8 / elapsed / 1e9


def connection_rate(port: int, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"R")
            assert c.recv(1) == b"r"
    return count / (time.perf_counter() - start)


@pytest.mark.benchmark(group="userspace: real proxy vs direct vs HAProxy")
def test_real_proxy_against_direct_and_haproxy(benchmark) -> None:  # type: ignore[no-untyped-def]
    haproxy = _haproxy()
    fast = benchmark.disabled
    nbytes, conns, rounds = (32 << 20, 200, 1) if fast else (2 << 30, 3000, 3)
    with tempfile.TemporaryDirectory(prefix="kn-us-bench-") as tmp, _process([sys.executable, "-c", SINK]) as sink:
        assert sink.stdout is not None
        sink_port = int(sink.stdout.readline())
        hp_port = _free_port()
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(
            "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
            f"  timeout server 60s\nlisten bench\n  bind 127.0.0.1:{hp_port}\n  server sink 127.0.0.1:{sink_port}\n"
        )
        proxy_cmd = [sys.executable, "-m", "kubenetem.cli", "proxy", "-f", str(_manifest(Path(tmp), sink_port))]
        with _process([haproxy, "-db", "-q", "-f", str(cfg)]), _process(proxy_cmd) as px:
            assert px.stdout is not None
            px.stdout.readline()  # the header
            kn_port = int(px.stdout.readline().split()[2].rsplit(":", 1)[1])
            _wait_port(hp_port)
            targets = {"direct": sink_port, "haproxy": hp_port, "kubenetem": kn_port}
            best = {name: [0.0, 0.0] for name in targets}

            def measure() -> None:
                for _ in range(rounds):
                    for name, port in targets.items():
                        best[name][0] = max(best[name][0], bulk_gbits(port, nbytes))
                        best[name][1] = max(best[name][1], connection_rate(port, conns))

            benchmark.pedantic(measure, rounds=1, iterations=1)
    for name, (gbits, rate) in best.items():
        benchmark.extra_info[f"{name}_gbit_s"] = round(gbits, 2)
        benchmark.extra_info[f"{name}_conn_s"] = round(rate)
    ratio_bulk = best["kubenetem"][0] / best["haproxy"][0]
    ratio_rate = best["kubenetem"][1] / best["haproxy"][1]
    benchmark.extra_info["bulk_vs_haproxy"] = round(ratio_bulk, 2)
    benchmark.extra_info["rate_vs_haproxy"] = round(ratio_rate, 2)
    print(
        f"\nuserspace proxy on loopback (best of {rounds} rounds, {nbytes >> 20} MiB bulk, {conns} connections):\n"
        + "".join(f"  {n:<10} {g:6.2f} Gbit/s  {r:8.0f} conn/s\n" for n, (g, r) in best.items())
        + f"  kubenetem/haproxy: bulk x{ratio_bulk:.2f} (target >= 1), rate x{ratio_rate:.2f} (target >= 0.5)"
    )
    assert all(g > 0 and r > 0 for g, r in best.values())
