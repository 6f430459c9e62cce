"""The real proxy on loopback: bytes, half-close, faults, load, resources.

Backends are asyncio servers on 127.0.0.1 in the test's own event loop; the
proxy dials them for real. Every test runs a whole scenario inside one
`asyncio.run`, so file descriptors can be counted before and after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from netem.addr import parse_ip
from netem.packet import TCP, UDP
from proxy_modes.userspace.engine import DIAL_TIMEOUTS
from proxy_modes.userspace.server import ProxyServer, ServiceSpec
from proxy_modes.view import ServicePortName

LO = parse_ip("127.0.0.1")
SPN = ServicePortName("ns", "svc", "p", "TCP")
USPN = ServicePortName("ns", "dns", "p", "UDP")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def spec(ports: list[int], name: ServicePortName = SPN, proto: int = TCP, affinity: bool = False) -> ServiceSpec:
    return ServiceSpec(name, proto, tuple((LO, p) for p in ports), affinity, 0, 80)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def tagged(tag: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tag)
        await writer.drain()
        await echo(reader, writer)

    return handler


async def backend(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=2048)
    return server, server.sockets[0].getsockname()[1]


async def proxy(specs: list[ServiceSpec], **kw: object) -> tuple[ProxyServer, int]:
    px = ProxyServer(**kw)  # type: ignore[arg-type]
    await px.start(specs)
    return px, px.ports()[specs[0].name]


async def roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return data


async def answer_or_closed(port: int, payload: bytes = b"ping") -> bytes:
    """The answer; b"" when the proxy closed the connection (a FIN, or a RST
    because it closed with our request unread, as kube-proxy's Close did)."""
    try:
        return await roundtrip(port, payload)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    except OSError as exc:  # ENOTCONN: reset before our EOF went out
        if exc.errno == errno.ENOTCONN:
            return b""
        raise


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def run(coro: Awaitable[None]) -> None:
    """Run a scenario and check it left no file descriptor behind."""
    gc.collect()
    before = fd_count()
    asyncio.run(coro)  # type: ignore[arg-type]
    gc.collect()
    assert fd_count() == before, "file descriptors leaked"


# --- bytes and half-close --------------------------------------------------------


def test_bytes_cross_both_ways_and_half_close_passes_on() -> None:
    async def scenario() -> None:
        bk, port = await backend(echo)
        px, pport = await proxy([spec([port])])
        payload = os.urandom(3 * 1024 * 1024 + 17)
        assert await roundtrip(pport, payload) == payload
        assert px.stats.bytes_up == px.stats.bytes_down == len(payload)
        await px.close()
        bk.close()
        await bk.wait_closed()

    run(scenario())


def test_backend_half_close_leaves_the_client_sending() -> None:
    """The backend says its piece and shuts down writing; the client still
    sends afterwards and the backend receives it."""
    got: list[bytes] = []

    async def speaker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        got.append(await reader.read())
        writer.close()

    async def scenario() -> None:
        bk, port = await backend(speaker)
        px, pport = await proxy([spec([port])])
        reader, writer = await asyncio.open_connection("127.0.0.1", pport)
        assert await reader.read() == b"hello"  # EOF seen, connection still half open
        writer.write(b"after your EOF")
        writer.write_eof()
        await asyncio.sleep(0.1)
        writer.close()
        await px.close()
        bk.close()
        await bk.wait_closed()

    run(scenario())
    assert got == [b"after your EOF"]


@pytest.mark.parametrize("half_close", [True, False])
def test_late_reply_after_client_eof(half_close: bool) -> None:
    """kube-proxy v1.23 closed both sockets at the first EOF, losing a reply
    sent after the client's half-close; by default we pass the half-close on."""

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        await asyncio.sleep(0.05)
        with contextlib.suppress(ConnectionError):
            writer.write(b"late:" + request)
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        bk, port = await backend(late)
        px, pport = await proxy([spec([port])], half_close=half_close)
        answer = await answer_or_closed(pport, b"q")
        assert answer == (b"late:q" if half_close else b"")
        await asyncio.sleep(0.1)  # the backend's handler finishes
        await px.close()
        bk.close()
        await bk.wait_closed()

    run(scenario())


# --- faults ----------------------------------------------------------------------


def test_killed_backend_costs_no_client_connection() -> None:
    async def scenario() -> None:
        servers = [await backend(tagged(b"%d" % i)) for i in range(3)]
        px, pport = await proxy([spec([p for _, p in servers])])
        seen = set()
        for n in range(30):
            if n == 10:
                servers[1][0].close()  # killed: its port now refuses
                await servers[1][0].wait_closed()
            answer = await roundtrip(pport, b"x")
            assert answer[1:] == b"x", f"connection {n} failed: {answer!r}"
            if n >= 10:
                seen.add(answer[:1])
        assert seen == {b"0", b"2"}
        assert px.stats.dial_failures >= 5 and px.stats.closed_unserved == 0
        await px.close()
        for s, _ in (servers[0], servers[2]):
            s.close()
            await s.wait_closed()

    run(scenario())


def test_all_backends_refusing_closes_the_client_at_once() -> None:
    async def scenario() -> None:
        bk, port = await backend(echo)
        bk.close()
        await bk.wait_closed()
        px, pport = await proxy([spec([port])])
        start = time.monotonic()
        assert await answer_or_closed(pport) == b""
        assert time.monotonic() - start < 0.2
        assert px.stats.dial_failures == len(DIAL_TIMEOUTS) and px.stats.closed_unserved == 1
        await px.close()

    run(scenario())


def test_unanswered_dials_close_the_client_after_every_timeout() -> None:
    """A listener that never accepts, its backlog full: SYNs are dropped, so
    each dial runs into its timeout (250 ms + 500 ms + 1 s + 2 s)."""

    async def scenario() -> None:
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        fillers = []
        for _ in range(4):  # fill the accept queue (backlog 0 still admits one)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(hole.getsockname())
            fillers.append(s)
        await asyncio.sleep(0.05)
        px, pport = await proxy([spec([hole.getsockname()[1]])])
        start = time.monotonic()
        assert await answer_or_closed(pport) == b""
        waited = time.monotonic() - start
        assert sum(DIAL_TIMEOUTS) - 0.05 <= waited < sum(DIAL_TIMEOUTS) + 1.0
        assert px.stats.dial_failures == 4
        await px.close()
        for s in [*fillers, hole]:
            s.close()

    run(scenario())


# --- load and resources ------------------------------------------------------------


def test_thousand_concurrent_connections() -> None:
    async def scenario() -> None:
        servers = [await backend(echo) for _ in range(2)]
        px, pport = await proxy([spec([p for _, p in servers])])
        opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", pport) for _ in range(1000)))
        await until(lambda: px.stats.active == 1000)  # all open at once
        for n, (_, writer) in enumerate(opened):
            writer.write(b"%04d" % n * 256)
            writer.write_eof()
        answers = await asyncio.gather(*(reader.read() for reader, _ in opened))
        assert answers == [b"%04d" % n * 256 for n in range(1000)]
        for _, writer in opened:
            writer.close()
        await until(lambda: px.stats.active == 0)
        assert px.stats.connected == 1000
        await px.close()
        for s, _ in servers:
            s.close()
            await s.wait_closed()

    run(scenario())


def test_slow_reader_holds_one_pipe_and_no_python_memory() -> None:
    """The backend pushes 64 MiB at a client that does not read for a while:
    the proxy stops reading once its pipe is full, the backend stalls, and
    nothing grows in the proxy's memory; then every byte arrives."""
    total = 64 * 1024 * 1024
    sent = [0]

    async def pusher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"z" * 65536
        while sent[0] < total:
            writer.write(block)
            await writer.drain()
            sent[0] += len(block)
        writer.close()

    async def scenario() -> None:
        bk, port = await backend(pusher)
        px, pport = await proxy([spec([port])])
        rss0 = rss_kib()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", pport))
        sock.setblocking(False)
        await asyncio.sleep(1.0)  # not reading
        stalled = sent[0]
        assert stalled < total // 2, "the backend was never held back"
        conn = next(iter(px.conns))
        assert conn.down is not None and conn.down.buffered <= px.pipes.capacity
        reader, writer = await asyncio.open_connection(sock=sock)
        received = 0
        while chunk := await reader.read(1 << 20):
            received += len(chunk)
        assert received == total
        assert rss_kib() - rss0 < 16 * 1024  # well under one copy of the data
        writer.close()
        await px.close()
        bk.close()
        await bk.wait_closed()

    run(scenario())


# --- reconfiguration and shutdown ---------------------------------------------------


def test_reconfigure_keeps_established_connections() -> None:
    async def scenario() -> None:
        (a, pa), (b, pb) = await backend(tagged(b"A")), await backend(tagged(b"B"))
        px, pport = await proxy([spec([pa])])
        reader, writer = await asyncio.open_connection("127.0.0.1", pport)
        assert await reader.readexactly(1) == b"A"
        px.apply([spec([pb])])  # endpoints replaced
        assert (await roundtrip(pport, b"n"))[:1] == b"B"
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        px.apply([])  # service removed: the listener goes, the connection stays
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", pport)
        writer.write(b"and now")
        writer.write_eof()
        assert await reader.read() == b"and now"
        writer.close()
        await px.close()
        for s in (a, b):
            s.close()
            await s.wait_closed()

    run(scenario())


def test_graceful_close_waits_then_aborts() -> None:
    async def scenario() -> None:
        bk, port = await backend(echo)
        px, pport = await proxy([spec([port])])
        reader, writer = await asyncio.open_connection("127.0.0.1", pport)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        start = time.monotonic()
        await px.close(grace=0.3)  # the client never finishes: aborted after the grace
        assert 0.25 <= time.monotonic() - start < 1.0
        assert await reader.read() == b"" and not px.conns
        writer.close()
        bk.close()
        await bk.wait_closed()

    run(scenario())


# --- UDP ------------------------------------------------------------------------------


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.tag + data, addr)


async def udp_backend(tag: bytes) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _UdpEcho(tag), local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]  # type: ignore[return-value]


async def udp_ask(sock: socket.socket, port: int, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    sock.sendto(data, ("127.0.0.1", port))
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), 1.0)


def test_udp_association_idle_timeout_and_refused_backend() -> None:
    async def scenario() -> None:
        (ta, pa), (tb, pb) = await udp_backend(b"A"), await udp_backend(b"B")
        px, pport = await proxy([spec([pa, pb], USPN, UDP)], udp_idle_timeout=0.2)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        first = (await udp_ask(client, pport, b"1"))[:1]
        assert await udp_ask(client, pport, b"2") == first + b"2"  # same association
        await asyncio.sleep(0.4)  # idle past the timeout: association gone
        assert len(px.listeners[USPN].clients) == 0  # type: ignore[union-attr]
        second = (await udp_ask(client, pport, b"3"))[:1]
        assert {first, second} == {b"A", b"B"}  # the next endpoint round robin
        big = os.urandom(6000)
        assert len(await udp_ask(client, pport, big)) == 4096  # kube-proxy's 4 KiB buffer
        # The backend in use dies: ICMP port unreachable ends the association,
        # and the next datagram is dialled to the other endpoint.
        (tb if second == b"B" else ta).close()
        client.sendto(b"lost", ("127.0.0.1", pport))
        await asyncio.sleep(0.1)
        assert (await udp_ask(client, pport, b"4")) == first + b"4"
        client.close()
        await px.close()
        (ta if second == b"B" else tb).close()

    run(scenario())


def test_non_loopback_endpoints_are_not_dialled_by_default() -> None:
    async def scenario() -> None:
        bk, port = await backend(tagged(b"L"))
        far = ServiceSpec(SPN, TCP, ((parse_ip("10.180.0.1"), port), (LO, port)))
        px, pport = await proxy([far])
        for _ in range(3):
            assert (await roundtrip(pport, b"."))[:1] == b"L"
        assert px.stats.dial_failures >= 1
        await px.close()
        bk.close()
        await bk.wait_closed()

    run(scenario())
