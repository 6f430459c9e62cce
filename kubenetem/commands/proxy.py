"""`kubenetem proxy -f FILE... --listen 127.0.0.1`: run the userspace proxy for real.

One listener per service port on the listen address (the kernel picks the
ports, as kube-proxy's randomAllocator let it), the node's view of endpoints
behind each, and bytes copied for real. Only endpoints on loopback are dialled
unless `--dial-any` (a manifest's pod IPs are usually not reachable from here,
and this command must not send traffic elsewhere by surprise); the others fail
their dial like a refused endpoint, so the next one is tried. It prints which
local port serves which service, then runs until SIGINT/SIGTERM (graceful
shutdown) or `--duration`; SIGHUP re-reads the files and reconfigures without
dropping established connections.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys

from netem.addr import parse_ip
from netem.errors import UsageError
from proxy_modes.userspace.server import PIPE_SIZE, ProxyServer, ServiceSpec, specs_from_view
from proxy_modes.view import build_state, node_view

from .common import add_files, add_node, load


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="run kube-proxy's userspace proxy on this machine, for real")
    add_files(p)
    add_node(p)
    p.add_argument("--listen", default="127.0.0.1", metavar="IP", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--dial-any", action="store_true", help="dial every endpoint, not only loopback ones")
    p.add_argument(
        "--close-on-eof",
        action="store_true",
        help="close both sides at the first EOF, as kube-proxy v1.23 did (default: pass half-closes on)",
    )
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until a signal)")
    p.add_argument("--grace", type=float, default=5.0, metavar="S", help="shutdown grace period (default 5 s)")
    p.add_argument(
        "--pipe-size",
        type=int,
        default=PIPE_SIZE,
        metavar="BYTES",
        help=f"splice pipe per direction (default {PIPE_SIZE})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the endpoint shuffle (default 0)")
    p.set_defaults(handler=run)


def _specs(args: argparse.Namespace) -> list[ServiceSpec]:
    cluster = load(args)
    return specs_from_view(node_view(cluster, build_state(cluster), args.node))


def run(args: argparse.Namespace) -> int:
    try:
        parse_ip(args.listen)
    except ValueError:
        raise UsageError(f"--listen: not an IPv4 address: {args.listen!r}") from None
    if args.duration is not None and args.duration < 0:
        raise UsageError(f"--duration must not be negative (got {args.duration})")
    if not 4096 <= args.pipe_size <= 1 << 30:
        raise UsageError(f"--pipe-size must be between 4096 and 1 GiB (got {args.pipe_size})")
    specs = _specs(args)
    server = ProxyServer(
        listen_ip=args.listen,
        rng=random.Random(args.seed),
        half_close=not args.close_on_eof,
        pipe_size=args.pipe_size,
        may_dial=(lambda ip: True) if args.dial_any else (lambda ip: ip >> 24 == 127),
    )
    return asyncio.run(_serve(server, specs, args))


async def _serve(server: ProxyServer, specs: list[ServiceSpec], args: argparse.Namespace) -> int:
    try:
        await server.start(specs)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen}: {exc.strerror}") from None
    sys.stdout.write(server.table())
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(server, args))
    try:
        if args.duration is not None:
            await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    except TimeoutError:
        pass
    finally:
        await server.close(args.grace)
    s = server.stats
    print(
        f"kubenetem proxy: {s.accepted} connections accepted, {s.connected} dialled, {s.dial_failures} dials failed, "
        f"{s.closed_unserved} closed without an endpoint, {s.bytes_up} bytes up, {s.bytes_down} bytes down, "
        f"{s.udp_datagrams} datagrams",
        file=sys.stderr,
    )
    return 0


def _reload(server: ProxyServer, args: argparse.Namespace) -> None:
    try:
        server.apply(_specs(args))
    except Exception as exc:  # a bad edit must not kill a running proxy
        print(f"kubenetem proxy: reload failed, keeping the old configuration: {exc}", file=sys.stderr)
        return
    sys.stdout.write(server.table())
    sys.stdout.flush()
