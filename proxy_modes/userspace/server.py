"""The real userspace proxy: asyncio, one listener per service port, bytes moved.

This is kube-proxy's userspace proxier as a running program (proxysocket.go
ProxyLoop / ProxyTCP / proxyClient, proxier.go addServiceOnPortInternal): a
TCP or UDP socket per service port, the engine's `LoadBalancerRR` and `Dial`
to choose and dial an endpoint (dial timeouts 250 ms, 500 ms, 1 s, 2 s, the
affinity entry bypassed after a failure), then bytes copied both ways until
both sides are done.

Shaped for speed and for bounded resources:

- No task per connection: accept, dial and copy are callbacks on the event
  loop's selector (`add_reader`/`add_writer`), a connection is two small
  objects. A dial is a non-blocking `connect` with a timer.
- Bytes never enter Python: each direction is `os.splice` from the source
  socket into a pipe and from the pipe to the destination socket (zero-copy;
  Go's io.Copy between two TCPConns, which kube-proxy used, splices too). A
  direction stops reading while its pipe is full, so a slow reader costs at
  most one pipe of kernel memory per direction, never Python memory.
- Half-close is passed on: EOF from one side becomes `shutdown(SHUT_WR)`
  towards the other once the pipe is drained, and the connection ends when
  both directions have. kube-proxy v1.23's copyBytes instead closed both
  sockets at the first EOF; `half_close=False` does that.
- UDP: one association per client address, a connected socket to the chosen
  endpoint that lives `udp_idle_timeout` after its last datagram either way
  (getBackendConn / proxyClient); datagrams are read into kube-proxy's 4 KiB
  buffer (larger ones are truncated, as there) unless `udp_buffer` says more.
  A read error on the backend socket (ICMP port unreachable) ends the
  association, so the next datagram is dialled to the next endpoint.
- `apply()` reconfigures while running: new service ports get a listener,
  removed ones lose theirs (established connections are left alone, as
  tcpProxySocket.Close does), endpoint changes go to the balancer.
  `close(grace)` stops listening, lets connections finish for `grace`
  seconds, then aborts the rest.

Endpoints are dialled only if `may_dial(ip)` allows (the CLI allows loopback
only); others fail their dial like a refused one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import resource
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from netem.addr import int_to_ip, parse_ip
from netem.packet import TCP, UDP, proto_name
from proxy_modes.view import NodeView, ServicePortName

from .engine import Balancer, Dial, Endpoint, LoadBalancerRR, endpoint_text

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
PIPE_SIZE = 256 * 1024  # per direction: the most a slow reader can make us hold
PIPE_POOL = 256  # idle pipes kept for the next connections
ACCEPT_BATCH = 64  # connections accepted per wake-up
UDP_BATCH = 64
KUBE_PROXY_UDP_BUFFER = 4096  # proxysocket.go: "4KiB should be enough for most whole-packets"
RLIMIT_NOFILE_WANTED = 64 * 1000  # proxier.go NewCustomProxier: setRLimit(64 * 1000)
_FATAL = (ConnectionError, OSError)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service port as the proxy serves it (from a NodeView or by hand)."""

    name: ServicePortName
    protocol: int  # TCP or UDP
    endpoints: tuple[Endpoint, ...]  # ready endpoints (ip int, port)
    affinity: bool = False
    sticky_seconds: int = 0
    port: int = 0  # the service's own port, for display only

    @property
    def config(self) -> tuple[object, ...]:
        return (self.protocol, self.affinity, self.port)


def specs_from_view(view: NodeView) -> list[ServiceSpec]:
    """Every TCP/UDP service port of the view with its ready endpoints."""
    out = []
    for info in view.service_ports():
        if info.protocol not in (TCP, UDP):
            continue  # SCTP: "SCTP is not supported for user space proxy"
        eps = tuple((ep.ip, ep.port) for ep in view.endpoints(info.name) if ep.ready)
        out.append(ServiceSpec(info.name, info.protocol, eps, info.session_affinity, info.sticky_seconds, info.port))
    return sorted(out, key=lambda s: s.name)


def raise_fd_limit(wanted: int = RLIMIT_NOFILE_WANTED) -> int:
    """setRLimit: raise the soft open-files limit (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class Stats:
    accepted: int = 0
    connected: int = 0
    dial_failures: int = 0  # single dials that failed (the next endpoint is tried)
    closed_unserved: int = 0  # accepted connections closed without a backend
    active: int = 0
    bytes_up: int = 0  # client -> endpoint
    bytes_down: int = 0
    udp_associations: int = 0
    udp_datagrams: int = 0


class _PipePool:
    """Pipes for splice, kept for reuse (creating one costs two syscalls and a resize)."""

    def __init__(self, size: int, keep: int) -> None:
        self.size, self.keep = size, keep
        self.free: list[tuple[int, int]] = []
        self.capacity = 0  # what the kernel granted (pipe-max-size may cap it)

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.capacity = fcntl.fcntl(wfd, F_SETPIPE_SZ, self.size)
        except OSError:
            self.capacity = fcntl.fcntl(wfd, F_GETPIPE_SZ)
        return rfd, wfd

    def put(self, pipe: tuple[int, int], empty: bool) -> None:
        if empty and len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for rfd, wfd in self.free:
            os.close(rfd)
            os.close(wfd)
        self.free.clear()


class _Pump:
    """One direction of a TCP connection: src socket -> pipe -> dst socket."""

    __slots__ = ("buffered", "conn", "dst", "eof", "loop", "pipe", "reading", "src", "up", "writing")

    def __init__(self, conn: _TcpConn, src: socket.socket, dst: socket.socket, up: bool) -> None:
        self.conn, self.src, self.dst, self.up = conn, src, dst, up
        self.loop = conn.server.loop
        self.pipe = conn.server.pipes.get()
        self.buffered = 0
        self.eof = self.reading = self.writing = False

    def start(self) -> None:
        self.reading = True
        self.loop.add_reader(self.src.fileno(), self.on_readable)

    def on_readable(self) -> None:
        """Fill the pipe from the source and drain it to the destination, a
        few rounds per wake-up (each wake-up costs more than a splice)."""
        src_fd, pipe_w = self.src.fileno(), self.pipe[1]
        size = self.conn.server.pipes.capacity
        for _ in range(4):
            try:
                n = os.splice(src_fd, pipe_w, size - self.buffered, flags=SPLICE_FLAGS)
            except BlockingIOError:
                # Nothing to read, or the pipe is out of slots (a pipe holds a
                # number of buffers, not of bytes): then wait for the writer,
                # which is armed whenever something is buffered.
                if self.buffered:
                    self._stop_reading()
                return
            except _FATAL:
                self.conn.abort()
                return
            if n == 0:
                self.eof = True
                self._stop_reading()
                self.flush()
                return
            self.buffered += n
            if self.up:
                self.conn.server.stats.bytes_up += n
            else:
                self.conn.server.stats.bytes_down += n
            if not self.flush() or n < size // 2:
                return

    def flush(self) -> bool:
        """Drain the pipe; False if the destination is full (or gone)."""
        dst_fd = self.dst.fileno()
        while self.buffered:
            try:
                n = os.splice(self.pipe[0], dst_fd, self.buffered, flags=SPLICE_FLAGS)
            except BlockingIOError:
                if not self.writing:
                    self.writing = True
                    self.loop.add_writer(dst_fd, self.flush)
                if self.buffered >= self.conn.server.pipes.capacity:
                    self._stop_reading()  # backpressure: the pipe is full
                return False
            except _FATAL:
                self.conn.abort()
                return False
            self.buffered -= n
        if self.writing:
            self.writing = False
            self.loop.remove_writer(dst_fd)
        if self.eof:
            self.conn.direction_done(self)
            return False
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.src.fileno(), self.on_readable)
        return True

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src.fileno())

    def stop(self) -> None:
        """Unhook from the loop and give the pipe back (kept only if empty)."""
        self._stop_reading()
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.dst.fileno())
        if self.pipe[0] >= 0:
            self.conn.server.pipes.put(self.pipe, self.buffered == 0)
            self.pipe = (-1, -1)


class _TcpConn:
    """One accepted connection: dialling, then two pumps."""

    __slots__ = ("client", "dial", "done", "down", "listener", "server", "timer", "up", "upstream")

    def __init__(self, listener: _TcpListener, client: socket.socket, client_ip: int) -> None:
        self.listener = listener
        self.server = listener.server
        self.client = client
        self.upstream: socket.socket | None = None
        self.dial = Dial(listener.balancer, client_ip)
        self.timer: asyncio.TimerHandle | None = None
        self.up: _Pump | None = None
        self.down: _Pump | None = None
        self.done = 0

    # dialling: TryConnectEndpoints, one non-blocking connect per attempt
    def try_next(self) -> None:
        server = self.server
        while True:
            attempt = self.dial.next(server.loop.time())
            if attempt is None:
                server.stats.closed_unserved += 1
                self.close()
                return
            (ip, port), timeout = attempt
            if not server.may_dial(ip):
                server.stats.dial_failures += 1
                self.dial.failed()
                continue
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            up.setblocking(False)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Go's default
            err = up.connect_ex(server.address(ip, port))
            if err == errno.EINPROGRESS:
                # On loopback the handshake is usually over before connect()
                # returns: one getsockopt spares a wake-up and a timer.
                err = up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or _connected(up)
            if err == 0:
                self.upstream = up
                self.connected()
                return
            if err == errno.EINPROGRESS:
                self.upstream = up
                server.loop.add_writer(up.fileno(), self.on_connect)
                self.timer = server.loop.call_later(timeout, self.on_timeout)
                return
            up.close()
            server.stats.dial_failures += 1
            self.dial.failed()

    def on_connect(self) -> None:
        up = self.upstream
        assert up is not None
        self.server.loop.remove_writer(up.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._dial_failed()
        else:
            self.connected()

    def on_timeout(self) -> None:
        self.timer = None
        if self.upstream is not None:
            self.server.loop.remove_writer(self.upstream.fileno())
        self._dial_failed()

    def _dial_failed(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.server.stats.dial_failures += 1
        self.dial.failed()
        self.try_next()

    def connected(self) -> None:
        assert self.upstream is not None
        self.server.stats.connected += 1
        self.up = _Pump(self, self.client, self.upstream, True)
        self.down = _Pump(self, self.upstream, self.client, False)
        self.up.start()
        self.down.start()

    # copying
    def direction_done(self, pump: _Pump) -> None:
        if not self.server.half_close:
            self.close()  # copyBytes: dest.Close(); src.Close()
            return
        pump.stop()
        with contextlib.suppress(OSError):
            pump.dst.shutdown(socket.SHUT_WR)
        self.done += 1
        if self.done == 2:
            self.close()

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        server = self.server
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for pump in (self.up, self.down):
            if pump is not None:
                pump.stop()
        if self.upstream is not None:
            with contextlib.suppress(ValueError, OSError):
                server.loop.remove_writer(self.upstream.fileno())
            self.upstream.close()
            self.upstream = None
        if self.client.fileno() >= 0:
            self.client.close()
            server.conns.discard(self)
            server.stats.active -= 1


class _TcpListener:
    """ProxyLoop for TCP: accept, then TryConnectEndpoints."""

    def __init__(self, server: ProxyServer, spec: ServiceSpec, sock: socket.socket, balancer: Balancer) -> None:
        self.server, self.spec, self.sock, self.balancer = server, spec, sock, balancer
        self.client_ips: dict[str, int] = {}
        server.loop.add_reader(sock.fileno(), self.on_accept)

    def on_accept(self) -> None:
        server = self.server
        for _ in range(ACCEPT_BATCH):
            try:
                client, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # "too many open files": kube-proxy panics; we stop accepting
                    # for a moment instead of spinning on a ready listener.
                    server.loop.remove_reader(self.sock.fileno())
                    server.loop.call_later(0.1, self._resume)
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ip = self.client_ips.get(addr[0])
            if ip is None:
                ip = self.client_ips[addr[0]] = parse_ip(addr[0])
                if len(self.client_ips) > 4096:
                    self.client_ips.clear()
            conn = _TcpConn(self, client, ip)
            server.conns.add(conn)
            server.stats.accepted += 1
            server.stats.active += 1
            conn.try_next()

    def _resume(self) -> None:
        if self.sock.fileno() >= 0:
            self.server.loop.add_reader(self.sock.fileno(), self.on_accept)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.server.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _UdpAssoc:
    """One UDP client: a connected socket to its endpoint, idle-timed."""

    __slots__ = ("client", "endpoint", "expires", "listener", "sock", "timer")

    def __init__(self, listener: _UdpListener, client: tuple[str, int], endpoint: Endpoint) -> None:
        self.listener, self.client, self.endpoint = listener, client, endpoint
        loop = listener.server.loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect((int_to_ip(endpoint[0]), endpoint[1]))
        self.expires = loop.time() + listener.server.udp_idle_timeout
        self.timer: asyncio.TimerHandle | None = loop.call_at(self.expires, self.on_timer)
        loop.add_reader(self.sock.fileno(), self.on_reply)

    def touch(self) -> None:
        # SetDeadline(now + timeout) after every datagram, either way.
        self.expires = self.listener.server.loop.time() + self.listener.server.udp_idle_timeout

    def on_timer(self) -> None:
        loop = self.listener.server.loop
        if loop.time() >= self.expires:
            self.timer = None
            self.close()
        else:
            self.timer = loop.call_at(self.expires, self.on_timer)

    def on_reply(self) -> None:
        for _ in range(UDP_BATCH):
            try:
                data = self.sock.recv(self.listener.server.udp_buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()  # proxyClient: a read error ends the association
                return
            self.touch()
            try:
                self.listener.sock.sendto(data, self.client)
            except (BlockingIOError, InterruptedError):
                continue  # the datagram is lost, as on a full socket buffer
            except OSError:
                self.close()
                return

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock.fileno() >= 0:
            self.listener.server.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.listener.clients.get(self.client) is self:
            del self.listener.clients[self.client]


class _UdpListener:
    """ProxyLoop for UDP: a datagram from a known client follows its
    association, one from a new client gets TryConnectEndpoints."""

    def __init__(self, server: ProxyServer, spec: ServiceSpec, sock: socket.socket, balancer: Balancer) -> None:
        self.server, self.spec, self.sock, self.balancer = server, spec, sock, balancer
        self.clients: dict[tuple[str, int], _UdpAssoc] = {}
        server.loop.add_reader(sock.fileno(), self.on_datagram)

    def on_datagram(self) -> None:
        server = self.server
        for _ in range(UDP_BATCH):
            try:
                data, client = self.sock.recvfrom(server.udp_buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            server.stats.udp_datagrams += 1
            assoc = self.clients.get(client)
            if assoc is None:
                assoc = self._associate(client)
                if assoc is None:
                    continue  # no endpoint: the datagram is dropped
            try:
                assoc.sock.send(data)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                continue  # Write failed: logged by kube-proxy, the association stays
            assoc.touch()

    def _associate(self, client: tuple[str, int]) -> _UdpAssoc | None:
        dial = Dial(self.balancer, parse_ip(client[0]))
        while (attempt := dial.next(self.server.loop.time())) is not None:
            ep = attempt[0]
            if not self.server.may_dial(ep[0]):
                dial.failed()
                continue
            try:
                assoc = _UdpAssoc(self, client, ep)
            except OSError:
                dial.failed()
                continue
            self.clients[client] = assoc
            self.server.stats.udp_associations += 1
            return assoc
        return None

    def close(self) -> None:
        for assoc in list(self.clients.values()):
            assoc.close()
        if self.sock.fileno() >= 0:
            self.server.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def _connected(sock: socket.socket) -> int:
    """0 if a non-blocking connect has completed, else EINPROGRESS."""
    try:
        sock.getpeername()
    except OSError:
        return errno.EINPROGRESS
    return 0


def loopback_only(ip: int) -> bool:
    return ip >> 24 == 127


@dataclass
class ProxyServer:
    """kube-proxy's userspace proxier on a real event loop."""

    listen_ip: str = "127.0.0.1"
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    udp_idle_timeout: float = 0.25
    udp_buffer: int = KUBE_PROXY_UDP_BUFFER
    half_close: bool = True
    pipe_size: int = PIPE_SIZE
    may_dial: Callable[[int], bool] = loopback_only
    port_for: Callable[[ServiceSpec], int] = lambda spec: 0  # 0: the kernel picks

    def __post_init__(self) -> None:
        self.lb = LoadBalancerRR(self.rng)
        self.stats = Stats()
        self.pipes = _PipePool(self.pipe_size, PIPE_POOL)
        self.conns: set[_TcpConn] = set()
        self.listeners: dict[ServicePortName, _TcpListener | _UdpListener] = {}
        self.specs: dict[ServicePortName, ServiceSpec] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._addresses: dict[Endpoint, tuple[str, int]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "call start() first"
        return self._loop

    async def start(self, specs: Iterable[ServiceSpec] = ()) -> None:
        self._loop = asyncio.get_running_loop()
        raise_fd_limit()
        self.apply(specs)

    def apply(self, specs: Iterable[ServiceSpec]) -> None:
        """Reconfigure: listeners for new or changed ports, none for removed
        ones (their connections go on), endpoints to the balancer."""
        wanted = {s.name: s for s in specs}
        for name in [n for n in self.listeners if n not in wanted or wanted[n].config != self.specs[n].config]:
            self.listeners.pop(name).close()
            del self.specs[name]
            if name not in wanted:
                self.lb.delete_service(name)
        for name, spec in sorted(wanted.items()):
            if name not in self.listeners:
                balancer = self.lb.new_service(name, spec.affinity, spec.sticky_seconds)
                self.listeners[name] = self._listen(spec, balancer)
            self.specs[name] = spec
            self.lb.update_endpoints(name, list(spec.endpoints))

    def _listen(self, spec: ServiceSpec, balancer: Balancer) -> _TcpListener | _UdpListener:
        kind = socket.SOCK_STREAM if spec.protocol == TCP else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        try:
            if spec.protocol == TCP:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_ip, self.port_for(spec)))
            sock.setblocking(False)
            if spec.protocol == TCP:
                sock.listen(4096)
                return _TcpListener(self, spec, sock, balancer)
            return _UdpListener(self, spec, sock, balancer)
        except BaseException:
            sock.close()
            raise

    def address(self, ip: int, port: int) -> tuple[str, int]:
        """(text, port) of an endpoint, cached: formatting costs more than a dial's syscall."""
        key = (ip, port)
        addr = self._addresses.get(key)
        if addr is None:
            if len(self._addresses) > 65536:
                self._addresses.clear()
            addr = self._addresses[key] = (int_to_ip(ip), port)
        return addr

    def ports(self) -> dict[ServicePortName, int]:
        """The local port serving each service port."""
        return {name: lis.sock.getsockname()[1] for name, lis in self.listeners.items()}

    def table(self) -> str:
        """Which local port serves which service (what the CLI prints)."""
        rows = [("SERVICE PORT", "PROTO", "LISTEN", "ENDPOINTS")]
        ports = self.ports()
        for name, spec in sorted(self.specs.items()):
            eps = ",".join(endpoint_text(e) for e in spec.endpoints) or "<none>"
            rows.append((str(name), proto_name(spec.protocol), f"{self.listen_ip}:{ports[name]}", eps))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "   " + row[3] + "\n"
                       for row in rows)  # fmt: skip

    async def close(self, grace: float = 5.0) -> None:
        """Graceful shutdown: stop accepting, let connections finish, abort the rest."""
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
        self.specs.clear()
        deadline = self.loop.time() + grace
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.conns):
            conn.abort()
        self.pipes.close()

    def info(self) -> dict[str, Any]:
        return dict(vars(self.stats))
