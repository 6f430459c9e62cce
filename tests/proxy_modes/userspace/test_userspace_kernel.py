"""The userspace portal rules in the real kernel, in a namespace of our own.

1. Round trip: our iptables-restore text, loaded with the real
   `iptables-restore` (nf_tables and legacy backends) and dumped with
   `iptables-save`, comes back line for line.
2. The host path for real: in the namespace (loopback plus a veth pair, both
   ends inside, with the node's address), a connection the node makes to a ClusterIP is DNATed
   by KUBE-PORTALS-HOST to the proxy port where the real proxy listens, and
   reaches the sink behind it; the kernel's conntrack entry is the one the
   engine predicted.
3. The pod path for real (netem/netns.py): a client namespace reaches a
   ClusterIP through the kernel's REDIRECT (KUBE-PORTALS-CONTAINER, nat
   PREROUTING) into the real proxy running inside the node namespace, which
   dials a pod namespace whose server reports the source it saw: the node.
   The kernel's conntrack entry and the trace's walk are the engine's.

Nothing here touches the root namespace; namespaces (and the proxy process)
are removed in a `finally`, also when a test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from userspace_cluster import service, synced, write_cluster

from netem.addr import int_to_ip, parse_ip
from netem.netns import Topology
from netem.packet import SYN, TCP, Packet
from proxy_modes.base import Verdict

pytestmark = pytest.mark.kernel
_counter = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"kn-us-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def nsexec(ns: str, *args: str, stdin: str | None = None, timeout: float = 30) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def rule_lines(text: str) -> dict[str, list[str]]:
    """Per table, chain declarations and rules in order (counters and
    comments left out; iptables-save prints the tables in its own order)."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line.startswith(":"):
            current.append(line.split(" [")[0])
        elif line.startswith("-A"):
            current.append(line)
    return tables


@pytest.mark.parametrize("backend", ["iptables", "iptables-legacy"])
def test_rules_round_trip_through_the_real_iptables(netns: str, backend: str, tmp_path: Path) -> None:
    config = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nportRange: 36000-36099\n"
    cluster = write_cluster(
        tmp_path,
        service("web", "172.30.0.10", ["10.180.0.1", "10.180.0.2"]),
        service("dns", "172.30.0.53", ["10.180.0.8"], port=53, target=53, proto="UDP"),
        service("np", "172.30.0.12", ["10.180.0.6"], extra="  type: NodePort\n").replace(
            "{name: p, port: 80, protocol: TCP}", "{name: p, port: 80, protocol: TCP, nodePort: 30080}"
        ),
        config=config,
    )
    text = synced(cluster).dump()
    nsexec(netns, f"{backend}-restore", stdin=text)
    saved = nsexec(netns, f"{backend}-save")
    assert rule_lines(saved) == rule_lines(text)


SCRIPT = textwrap.dedent(
    """
    import asyncio, json, random, socket, sys
    from proxy_modes.userspace.server import ProxyServer, ServiceSpec
    from proxy_modes.view import ServicePortName
    cfg = json.loads(sys.argv[1])

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        sink = await asyncio.start_server(echo, "127.0.0.1", cfg["sink_port"])
        name = ServicePortName("ns", "web", "p", "TCP")
        spec = ServiceSpec(name, 6, ((0x7F000001, cfg["sink_port"]),))
        px = ProxyServer(listen_ip="0.0.0.0", may_dial=lambda ip: True, port_for=lambda s: cfg["proxy_port"])
        await px.start([spec])
        reader, writer = await asyncio.open_connection(cfg["cluster_ip"], 80)
        writer.write(b"through the portal")
        writer.write_eof()
        answer = await reader.read()
        sport = writer.get_extra_info("sockname")[1]
        proc = await asyncio.create_subprocess_exec(
            "conntrack", "-L", "-p", "tcp", "--orig-dst", cfg["cluster_ip"],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        table = (await proc.communicate())[0].decode()
        writer.close()
        await px.close(0.5)
        sink.close()
        print(json.dumps({"answer": answer.decode(), "sport": sport, "conntrack": table,
                          "accepted": px.stats.accepted}))

    asyncio.run(main())
    """
)


def test_node_reaches_a_cluster_ip_through_the_portal_into_the_real_proxy(netns: str, tmp_path: Path) -> None:
    node_ip = "192.168.0.2"
    config = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nportRange: 36000-36099\n"
    cluster = write_cluster(tmp_path, service("web", "172.30.0.10", ["127.0.0.1"], target=9080), config=config)
    mode = synced(cluster)
    proxy_port = next(iter(mode.portals.values())).proxy_port
    link = "kn-us-a0"  # a veth pair with both ends in our namespace
    nsexec(netns, "ip", "link", "set", "lo", "up")
    nsexec(netns, "ip", "link", "add", link, "type", "veth", "peer", "name", "kn-us-b0")
    nsexec(netns, "ip", "addr", "add", f"{node_ip}/24", "dev", link)
    nsexec(netns, "ip", "link", "set", link, "up")
    nsexec(netns, "ip", "link", "set", "kn-us-b0", "up")
    nsexec(netns, "ip", "route", "add", "default", "dev", link)
    nsexec(netns, "iptables-restore", stdin=mode.dump())
    cfg = {"sink_port": 9080, "proxy_port": proxy_port, "cluster_ip": "172.30.0.10"}
    out = json.loads(nsexec(netns, sys.executable, "-c", SCRIPT, json.dumps(cfg), timeout=60))
    assert out["answer"] == "through the portal" and out["accepted"] == 1
    # The engine's prediction for the same packet: DNAT by KUBE-PORTALS-HOST to
    # the node's address and the proxy port, as the kernel's entry shows.
    decision = mode.route(Packet(TCP, parse_ip(node_ip), out["sport"], parse_ip("172.30.0.10"), 80, True), 0.0)
    assert decision.verdict is Verdict.DNAT and decision.endpoint == (parse_ip("127.0.0.1"), 9080)
    entry = mode.conntrack.lookup((TCP, parse_ip(node_ip), out["sport"], parse_ip("172.30.0.10"), 80), 0.0)
    assert entry is not None
    _, rsrc, rsport, rdst, rdport = entry[0].reply
    expected = f"src={int_to_ip(rsrc)} dst={int_to_ip(rdst)} sport={rsport} dport={rdport}"
    assert expected in out["conntrack"], out["conntrack"]


PROXY = textwrap.dedent(
    """
    import asyncio, json, sys
    from proxy_modes.userspace.server import ProxyServer, ServiceSpec
    from proxy_modes.view import ServicePortName
    cfg = json.loads(sys.argv[1])

    async def main():
        spec = ServiceSpec(ServicePortName("ns", "web", "p", "TCP"), 6, tuple(map(tuple, cfg["endpoints"])))
        px = ProxyServer(listen_ip="0.0.0.0", may_dial=lambda ip: True, port_for=lambda s: cfg["proxy_port"])
        await px.start([spec])
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told to stop
        await px.close(0.5)
        print(json.dumps({"accepted": px.stats.accepted, "connected": px.stats.connected}), flush=True)

    asyncio.run(main())
    """
)


def _line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The process's next line of output, or "" if none comes in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_pod_reaches_a_cluster_ip_through_redirect_into_the_real_proxy_and_on_to_a_pod(tmp_path: Path) -> None:
    node_ip, pod_ip, client_ip, vip = "192.168.0.2", "10.180.0.1", "10.0.0.5", "172.30.0.10"
    config = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nportRange: 36000-36099\n"
    mode = synced(write_cluster(tmp_path, service("web", vip, [pod_ip]), config=config))
    proxy_port = next(iter(mode.portals.values())).proxy_port
    proxy: subprocess.Popen[str] | None = None
    with Topology("kn-us") as topo:
        try:
            node = topo.node([node_ip])
            pod = topo.leaf("pod", [pod_ip])
            client = topo.leaf("client", [client_ip], default_route=True)  # the node has a route for the VIP
            pod.serve(8080)
            node.run(["iptables-restore"], input=mode.dump())
            cfg = {"proxy_port": proxy_port, "endpoints": [[parse_ip(pod_ip), 8080]]}
            proxy = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, sys.executable, "-c", PROXY, json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert _line(proxy).strip() == "ready"

            # nf_nat_redirect_ipv4 sends to the first address of the interface the
            # packet came in on, and drops it when that has none: the harness's
            # node-side veths have no address (routed, like Calico). The portal
            # matched (its counter says so), and the SYN is gone.
            # (Half a second: TCP's first SYN retransmission, at 1 s, would count twice.)
            lost = client.connect(vip, 80, sport=41000, timeout=0.5)
            assert lost.status == "timeout", lost
            counted = [line for line in node.run(["iptables-save", "-c"]).splitlines() if "REDIRECT" in line]
            assert len(counted) == 1 and counted[0].startswith("[1:"), counted
            node.run(["ip", "addr", "add", f"{node_ip}/32", "dev", client.link])

            reply = client.connect(vip, 80, sport=41001)
            assert reply.status == "ok", reply
            assert reply.ident == "pod" and reply.server == f"{pod_ip}:8080"  # the pod answered ...
            assert reply.seen_ip == node_ip  # ... to the node: the proxy's own connection
            table = node.run(["conntrack", "-L", "-p", "tcp", "--orig-dst", vip])

            proxy.stdin.write("stop\n")  # type: ignore[union-attr]
            proxy.stdin.flush()  # type: ignore[union-attr]
            stats = json.loads(_line(proxy) or "{}")
            assert stats["accepted"] == 1 and stats["connected"] == 1  # the lost SYN never reached it
        finally:
            if proxy is not None:
                if proxy.poll() is None:
                    proxy.kill()
                proxy.communicate(timeout=10)

    # The engine's account of the same connection: REDIRECT by KUBE-PORTALS-CONTAINER
    # to the node's address and the proxy port, as the kernel's conntrack entry shows.
    packet = Packet(TCP, parse_ip(client_ip), 41001, parse_ip(vip), 80, False, "", SYN)
    trace = mode.trace(packet, 0.0)
    assert trace.decision.verdict is Verdict.DNAT and trace.decision.endpoint == (parse_ip(pod_ip), 8080)
    assert any(step.text == f"REDIRECT to {node_ip}:{proxy_port}" for step in trace.steps)
    assert any("KUBE-PORTALS-CONTAINER rule 1 matched" in step.text for step in trace.steps)
    entry = mode.conntrack.lookup(packet[:5], 0.0)
    assert entry is not None and entry[0].dnat == (parse_ip(node_ip), proxy_port)
    expected = f"src={node_ip} dst={client_ip} sport={proxy_port} dport=41001"
    assert expected in table, table
