"""What a dead pod's address does to a new connection, asked of the kernel.

The simulator models a deleted pod (its network namespace and veth gone) as
an address that swallows SYNs (the client times out), and a pod whose
process died but whose namespace lives as one that answers with a RST
(connection refused). Here the same situations are built with network
namespaces: a client namespace routed through a node namespace (bridge
`cni0`, forwarding on) to a pod namespace on the bridge, as a node forwards
a connection it DNATed to a pod. The kernel's answers must be the model's.

It also shows where the model stops: an address the node has never reached
(no neighbour entry) fails after the node's ARP probes go unanswered
(3 x 1 s) with ICMP host unreachable; the model, which deals with pods that
were serving (their neighbour entry still valid), does not model that.

Everything lives in namespaces of this test, removed also on failure.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netem.cluster import load_cluster
from netem.sim import NS, REFUSED, TIMEOUT, Sim, Target
from netem.topology import Topology

from .test_sim import VIP, FixedRouter, ip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_counter = itertools.count()

CONNECT = """
import errno, socket, sys, time
s = socket.socket()
s.settimeout(float(sys.argv[2]))
start = time.monotonic()
try:
    s.connect((sys.argv[1], 80))
    print("connected", 0)
except socket.timeout:
    print("timeout", time.monotonic() - start)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)), time.monotonic() - start)
"""


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def ok(*args: str) -> None:
    done = sh(*args)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"


@pytest.fixture
def net() -> Iterator[dict[str, str]]:
    n = next(_counter)
    names = {role: f"kn-sim-{os.getpid()}-{n}-{role}" for role in ("client", "node", "pod")}
    try:
        for ns in names.values():
            ok("ip", "netns", "add", ns)
            ok("ip", "-n", ns, "link", "set", "lo", "up")
        client, node, pod = names["client"], names["node"], names["pod"]
        ok("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # client <-> node: a routed link, as between a pod's node and another
        ok("ip", "-n", client, "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", node)
        ok("ip", "-n", client, "addr", "add", "192.168.77.2/24", "dev", "eth0")
        ok("ip", "-n", client, "link", "set", "eth0", "up")
        ok("ip", "-n", client, "route", "add", "default", "via", "192.168.77.1")
        ok("ip", "-n", node, "addr", "add", "192.168.77.1/24", "dev", "up0")
        ok("ip", "-n", node, "link", "set", "up0", "up")
        # node: the bridge with the pod's veth, as the CNI bridge plugin makes it
        ok("ip", "-n", node, "link", "add", "cni0", "type", "bridge")
        ok("ip", "-n", node, "addr", "add", "10.244.1.1/24", "dev", "cni0")
        ok("ip", "-n", node, "link", "set", "cni0", "up")
        ok("ip", "-n", node, "link", "add", "vethpod", "type", "veth", "peer", "name", "eth0", "netns", pod)
        ok("ip", "-n", node, "link", "set", "vethpod", "master", "cni0")
        ok("ip", "-n", node, "link", "set", "vethpod", "up")
        ok("ip", "-n", pod, "addr", "add", "10.244.1.2/24", "dev", "eth0")
        ok("ip", "-n", pod, "link", "set", "eth0", "up")
        ok("ip", "-n", pod, "route", "add", "default", "via", "10.244.1.1")
        yield names
    finally:
        for ns in names.values():
            sh("ip", "netns", "del", ns)


def connect(client_ns: str, address: str, timeout: float) -> tuple[str, float]:
    out = sh("ip", "netns", "exec", client_ns, "python3", "-c", CONNECT, address, str(timeout))
    assert out.returncode == 0, out.stderr
    what, seconds = out.stdout.split()
    return what, float(seconds)


def simulated(how: str) -> str:
    """The model's answer for the same situation: one connection to a pod that died before it."""
    topo = Topology.from_cluster(load_cluster([str(EXAMPLES)]))
    routers: dict[str, FixedRouter] = {}
    sim = Sim(topo, lambda n: routers.setdefault(n, FixedRouter((ip("10.244.1.2"), 80))), random.Random(1))
    target = sim.target_index(Target("test", 6, VIP, 80))
    sim.kill(ip("10.244.1.2"), how, at=0)
    sim.add_client(sim.add_client_pod("client", "worker-2"), [target], 1, NS, NS)
    sim.run()
    (record,) = sim.records
    return record[2]


@pytest.mark.kernel
def test_a_dead_pod_address_as_the_kernel_answers(net: dict[str, str]) -> None:
    client, pod = net["client"], net["pod"]
    # The pod's network lives but nothing listens (its process died): RST.
    what, _ = connect(client, "10.244.1.2", 2.0)
    assert what == "ECONNREFUSED"
    assert simulated(REFUSED) == REFUSED
    # The pod is deleted: its namespace and veth go. The node still has the
    # neighbour entry it just used, so the SYNs go out on the bridge and
    # nobody answers: no RST, no ICMP; the client's connect times out.
    ok("ip", "netns", "del", pod)
    what, seconds = connect(client, "10.244.1.2", 2.5)
    assert what == "timeout" and seconds >= 2.4
    assert simulated(TIMEOUT) == TIMEOUT


@pytest.mark.kernel
def test_an_address_never_reached_fails_after_the_arp_probes(net: dict[str, str]) -> None:
    # Not modelled (see the module docstring): no neighbour entry, three ARP
    # probes a second apart, then ICMP host unreachable aborts the connect.
    what, seconds = connect(net["client"], "10.244.1.9", 8.0)
    assert what == "EHOSTUNREACH"
    assert 2.5 <= seconds <= 6.0
