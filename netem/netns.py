"""Real-kernel network namespaces for tests: a node, pods and clients on veths.

Kernel tests prove the emulator against Linux itself. This module builds the
smallest network that shows what a node's netfilter does: one *node*
namespace, and any number of *leaf* namespaces (pods, in-cluster clients, an
outside host) each joined to the node by its own veth pair. It knows nothing
about iptables or nftables: loading rules is a separate step (`node.run(
["iptables-restore"], input=text)`, `node.run(["nft", "-f", "-"], input=...)`),
so every mode's kernel test can share it.

The shape is routed, like Calico: a leaf has its addresses as /32s on `eth0`
and a default route out of it; the node side of each veth has no address,
answers ARP by proxy, and routes each leaf address to its veth. The node's own
addresses live on `lo` (where the kernel looks first when it picks a source
address for MASQUERADE or for a connection the node opens), so a masqueraded
packet leaves with the node IP, as on a real node. The node's default route
points at one leaf (the "outside host" by convention), so a packet to a
service address that no rule rewrote is routed, and the filter table's
REJECT/DROP decides its fate, as in a cluster.

Every leaf (and the node) runs one *agent*: a small Python process inside the
namespace (`python -m netem.netns agent`) that takes JSON requests on stdin.
It serves TCP/UDP ports answering `IDENTITY SRC:SPORT DST:DPORT` (who
answered, the source address the server saw: masqueraded or not, and the
address it answered on: which endpoint a DNAT chose), and it opens connections
on request (one, or a batch of N for distributions), classifying each as
answered / refused (RST or ICMP unreachable: REJECT) / timeout (DROP).

Names follow the house traffic rule: every namespace is `PREFIX-PID-N-NAME`
(unique across engineers running tests at once), links live only inside the
namespaces this topology created (both ends of every veth), the root
namespace gets no address or route, and `close()` (also on failure: use it as
a context manager) kills the agents and deletes every namespace.

Usage::

    with Topology("ipt") as topo:
        node = topo.node(["192.168.0.2"])
        pod = topo.leaf("pod-a", ["10.180.0.2"])
        client = topo.leaf("client", ["203.0.113.10"], default_route=True)
        pod.serve(8080)                          # tcp; serve(53, "udp") for UDP
        node.run(["iptables-restore"], input=rules_text)
        r = client.connect("172.30.0.41", 80)    # Reply(status="ok", ident="pod-a", seen="192.168.0.2:...")
        many = client.connect_many("172.30.0.41", 80, count=2000)
"""

from __future__ import annotations

import atexit
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from typing import Any

_COUNTER = count()
_LIVE: list[Topology] = []
SYSCTLS_NODE = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
    "net.ipv4.conf.default.proxy_arp=1",
    # kube-proxy sets this for NodePorts on localhost (proxier.go NewProxier).
    "net.ipv4.conf.all.route_localnet=1",
)
SYSCTLS_LEAF = ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")


class NetnsError(RuntimeError):
    """A command in a namespace failed; the message names the command and its stderr."""


def run(argv: list[str], input: str | None = None, check: bool = True, timeout: float = 60) -> str:
    """Run a command (in the root namespace, e.g. `ip netns add`) and return stdout."""
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Reply:
    """What one connection attempt saw."""

    status: str  # "ok", "refused", "timeout", "unreachable", "reset", "error"
    ident: str = ""  # the answering server's identity
    seen: str = ""  # "IP:PORT" the server saw as the client's address
    local: str = ""  # "IP:PORT" the client used
    elapsed: float = 0.0  # seconds from connect to answer
    server: str = ""  # "IP:PORT" the server answered on (after any DNAT: which endpoint)

    @property
    def seen_ip(self) -> str:
        return self.seen.rpartition(":")[0]

    @property
    def server_ip(self) -> str:
        return self.server.rpartition(":")[0]


@dataclass
class Host:
    """One namespace of the topology (the node or a leaf)."""

    topo: Topology
    name: str
    netns: str  # the full namespace name
    addresses: list[str]
    link: str = ""  # for a leaf: the node-side veth that leads to it
    _agent: Agent | None = field(default=None, repr=False)

    def run(self, argv: list[str], input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        """Run a command inside this namespace; returns its stdout."""
        return run(["ip", "netns", "exec", self.netns, *argv], input=input, check=check, timeout=timeout)

    def sysctl(self, *settings: str) -> None:
        self.run(["sysctl", "-q", "-w", *settings])

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            self._agent = Agent(self.netns)
        return self._agent

    def serve(self, port: int, proto: str = "tcp", ident: str | None = None) -> None:
        """Answer on `port` (all addresses) with `IDENT SRC:SPORT` per connection/datagram/line."""
        self.agent.request({"op": "serve", "proto": proto, "port": port, "ident": ident or self.name})

    def connect(
        self,
        dst: str,
        port: int,
        proto: str = "tcp",
        src: str | None = None,
        sport: int | None = None,
        timeout: float = 1.0,
    ) -> Reply:
        """One connection (or datagram) and its answer."""
        return self.connect_many(dst, port, proto, src, sport, timeout, count=1)[0]

    def connect_many(
        self,
        dst: str,
        port: int,
        proto: str = "tcp",
        src: str | None = None,
        sport: int | None = None,
        timeout: float = 1.0,
        count: int = 1,
    ) -> list[Reply]:
        """`count` new connections in a row (source port `sport + i` when given)."""
        answer = self.agent.request(
            {
                "op": "connect",
                "proto": proto,
                "dst": dst,
                "port": port,
                "src": src,
                "sport": sport,
                "timeout": timeout,
                "count": count,
            },
            timeout=30 + count * (timeout + 0.5),
        )
        return [Reply(**r) for r in answer["results"]]

    def open(
        self, dst: str, port: int, src: str | None = None, sport: int | None = None, timeout: float = 1.0
    ) -> tuple[int, Reply]:
        """Open a TCP connection and keep it: (handle, first answer)."""
        answer = self.agent.request(
            {"op": "open", "dst": dst, "port": port, "src": src, "sport": sport, "timeout": timeout}
        )
        return int(answer["id"]), Reply(**answer["reply"])

    def send(self, handle: int, timeout: float = 1.0) -> Reply:
        """One more request on an open connection: who answers now?"""
        return Reply(**self.agent.request({"op": "send", "id": handle, "timeout": timeout})["reply"])

    def close_connection(self, handle: int) -> None:
        self.agent.request({"op": "close", "id": handle})


class Topology:
    """A node namespace and leaves on veths; removes all of it on `close()`."""

    def __init__(self, prefix: str) -> None:
        # Namespace names are file names under /run/netns; keep them short and unique.
        self.prefix = f"{prefix}-{os.getpid()}-{next(_COUNTER)}"
        self.hosts: dict[str, Host] = {}
        self._node: Host | None = None
        self._veths = 0
        self._default_set = False
        _LIVE.append(self)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building ----------------------------------------------------------

    def _namespace(self, name: str) -> Host:
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already")
        netns = f"{self.prefix}-{name}"
        run(["ip", "netns", "add", netns])
        host = Host(self, name, netns, [])
        self.hosts[name] = host
        host.run(["ip", "link", "set", "lo", "up"])
        return host

    def node(self, addresses: list[str], name: str = "node") -> Host:
        """The node namespace: forwarding on, its addresses on lo (created once)."""
        if self._node is not None:
            return self._node
        host = self._namespace(name)
        host.sysctl(*SYSCTLS_NODE)
        for addr in addresses:
            host.run(["ip", "addr", "add", f"{addr}/32", "dev", "lo"])
        host.addresses = list(addresses)
        self._node = host
        return host

    def leaf(self, name: str, addresses: list[str], default_route: bool = False) -> Host:
        """A namespace joined to the node by a veth; the node routes `addresses` to it.
        `default_route=True` makes it where the node sends what it has no route for."""
        node = self._node
        if node is None:
            raise ValueError("create the node first: topo.node([...])")
        host = self._namespace(name)
        host.sysctl(*SYSCTLS_LEAF)
        link = host.link = f"veth{self._veths}"
        self._veths += 1
        # Both ends are created inside namespaces this topology owns.
        node.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        node.run(["ip", "link", "set", link, "up"])
        # Answer proxied ARP at once: the default waits up to 0.8 s, longer than a SYN timeout.
        node.sysctl(
            f"net.ipv4.conf.{link}.proxy_arp=1",
            # ... also for addresses routed back out of the same veth (the default-route leaf).
            f"net.ipv4.conf.{link}.proxy_arp_pvlan=1",
            f"net.ipv4.conf.{link}.rp_filter=0",
            f"net.ipv4.neigh.{link}.proxy_delay=0",
        )
        host.run(["ip", "link", "set", "eth0", "up"])
        for addr in addresses:
            self.add_address(host, addr, link)
        host.run(["ip", "route", "add", "default", "dev", "eth0"])
        if default_route and not self._default_set:
            node.run(["ip", "route", "add", "default", "dev", link])
            self._default_set = True
        return host

    def add_address(self, host: Host, addr: str, link: str | None = None) -> None:
        """Give a leaf one more address (a /32, routed to it by the node)."""
        node = self._node
        assert node is not None
        link = link or host.link
        host.run(["ip", "addr", "add", f"{addr}/32", "dev", "eth0"])
        node.run(["ip", "route", "add", f"{addr}/32", "dev", link])
        host.addresses.append(addr)

    # --- tearing down ------------------------------------------------------

    def close(self) -> None:
        """Kill every agent, delete every namespace (their veths go with them)."""
        for host in self.hosts.values():
            if host._agent is not None:
                host._agent.close()
                host._agent = None
        for host in self.hosts.values():
            run(["ip", "netns", "del", host.netns], check=False)
        self.hosts.clear()
        self._node = None
        if self in _LIVE:
            _LIVE.remove(self)


@atexit.register
def _close_all() -> None:
    for topo in list(_LIVE):
        topo.close()


def leftover_namespaces(prefix: str) -> list[str]:
    """Namespaces of this process with `prefix` still present (for tests of the cleanup)."""
    mine = f"{prefix}-{os.getpid()}-"
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.startswith(mine)]


# --- the agent: the process inside a namespace -----------------------------


class Agent:
    """The test-side handle on an agent process: one JSON request, one JSON answer."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "netem.netns", "agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.request({"op": "ping"}, timeout=30)

    def request(self, message: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            raise NetnsError(f"agent in {self.netns} died: {self._stderr()}") from None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise NetnsError(f"agent in {self.netns} did not answer {message.get('op')} within {timeout}s")
        line = proc.stdout.readline()
        if not line:
            raise NetnsError(f"agent in {self.netns} died: {self._stderr()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise NetnsError(f"agent in {self.netns}: {answer['error']}")
        return answer

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().strip()[-2000:]

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                proc.stdin.flush()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h; Python < 3.12 lacks the name
_PROTOS = {"tcp": (socket.SOCK_STREAM, 0), "udp": (socket.SOCK_DGRAM, 0)}


class _Server:
    """Agent side: the listening sockets and the connections kept open."""

    def __init__(self) -> None:
        self.conns: dict[int, socket.socket] = {}
        self.next_id = 1

    def serve(self, proto: str, port: int, ident: str) -> None:
        kind, _ = _PROTOS[proto]
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        if proto == "udp":
            threading.Thread(target=self._udp_loop, args=(sock, ident), daemon=True).start()
        else:
            sock.listen(512)
            threading.Thread(target=self._accept_loop, args=(sock, ident), daemon=True).start()

    @staticmethod
    def _udp_loop(sock: socket.socket, ident: str) -> None:
        # IP_PKTINFO tells which local address a datagram was sent to (the endpoint after DNAT).
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        port = sock.getsockname()[1]
        while True:
            _, ancillary, _, peer = sock.recvmsg(2048, socket.CMSG_SPACE(12))
            local = "0.0.0.0"
            for level, kind, data in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    local = socket.inet_ntoa(data[8:12])  # struct in_pktinfo: ifindex, spec_dst, addr
            answer = f"{ident} {peer[0]}:{peer[1]} {local}:{port}\n".encode()
            sock.sendmsg(
                [answer], [(socket.IPPROTO_IP, IP_PKTINFO, b"\0" * 4 + socket.inet_aton(local) + b"\0" * 4)], 0, peer
            )

    def _accept_loop(self, sock: socket.socket, ident: str) -> None:
        while True:
            conn, peer = sock.accept()
            threading.Thread(target=self._tcp_conn, args=(conn, peer, ident), daemon=True).start()

    @staticmethod
    def _tcp_conn(conn: socket.socket, peer: tuple[str, int], ident: str) -> None:
        local = conn.getsockname()
        answer = f"{ident} {peer[0]}:{peer[1]} {local[0]}:{local[1]}\n".encode()
        with conn:
            try:
                conn.sendall(answer)
                while conn.recv(64):
                    conn.sendall(answer)
            except OSError:
                pass


def _client_socket(proto: str, src: str | None, sport: int | None, timeout: float) -> socket.socket:
    kind, _ = _PROTOS[proto]
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if proto == "tcp":
        # No TIME_WAIT on our side: close with RST so source ports can be reused at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    if src or sport:
        sock.bind((src or "0.0.0.0", sport or 0))
    sock.settimeout(timeout)
    return sock


def _read_reply(sock: socket.socket, start: float) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)
        if not chunk:
            return {"status": "reset", "elapsed": time.monotonic() - start}
        data += chunk
    ident, seen, server = [*data.decode().split(), "", ""][:3]
    local = "{}:{}".format(*sock.getsockname())
    return {
        "status": "ok",
        "ident": ident,
        "seen": seen,
        "local": local,
        "server": server,
        "elapsed": time.monotonic() - start,
    }


def _attempt(proto: str, dst: str, port: int, src: str | None, sport: int | None, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    try:
        sock = _client_socket(proto, src, sport, timeout)
    except OSError as exc:
        return {"status": "error", "ident": exc.strerror or str(exc)}
    try:
        sock.connect((dst, port))
        if proto == "udp":
            sock.send(b"hello\n")
        return _read_reply(sock, start)
    except TimeoutError:
        return {"status": "timeout", "elapsed": time.monotonic() - start}
    except ConnectionRefusedError:
        return {"status": "refused", "elapsed": time.monotonic() - start}
    except ConnectionResetError:
        return {"status": "reset", "elapsed": time.monotonic() - start}
    except OSError as exc:
        status = "unreachable" if exc.errno in (113, 101) else "error"  # EHOSTUNREACH, ENETUNREACH
        return {"status": status, "ident": exc.strerror or str(exc), "elapsed": time.monotonic() - start}
    finally:
        sock.close()


def _handle(server: _Server, msg: dict[str, Any]) -> dict[str, Any]:
    op = msg["op"]
    if op == "ping":
        return {"ok": True}
    if op == "serve":
        server.serve(msg["proto"], int(msg["port"]), msg["ident"])
        return {"ok": True}
    if op == "connect":
        sport = msg.get("sport")
        results = [
            _attempt(
                msg["proto"], msg["dst"], int(msg["port"]), msg.get("src"), sport + i if sport else None, msg["timeout"]
            )
            for i in range(int(msg.get("count", 1)))
        ]
        return {"results": results}
    if op == "open":
        start = time.monotonic()
        sock = _client_socket("tcp", msg.get("src"), msg.get("sport"), msg["timeout"])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x00" * 8)
        try:
            sock.connect((msg["dst"], int(msg["port"])))
            reply = _read_reply(sock, start)
        except OSError as exc:
            sock.close()
            return {"id": 0, "reply": {"status": "error", "ident": str(exc)}}
        handle = server.next_id
        server.next_id += 1
        server.conns[handle] = sock
        return {"id": handle, "reply": reply}
    if op == "send":
        sock = server.conns[int(msg["id"])]
        sock.settimeout(msg["timeout"])
        start = time.monotonic()
        try:
            sock.sendall(b"again\n")
            return {"reply": _read_reply(sock, start)}
        except TimeoutError:
            return {"reply": {"status": "timeout"}}
        except OSError as exc:
            return {"reply": {"status": "reset", "ident": str(exc)}}
    if op == "close":
        server.conns.pop(int(msg["id"])).close()
        return {"ok": True}
    return {"error": f"unknown op {op!r}"}


def agent_main() -> None:
    """The agent loop: one JSON request per stdin line, one JSON answer per stdout line."""
    server = _Server()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "exit":
            break
        try:
            answer = _handle(server, msg)
        except Exception as exc:  # reported to the test side, which raises NetnsError
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["agent"]:
        agent_main()
    else:
        sys.exit("usage: python -m netem.netns agent")
