"""What of the IPVS mode exists here, checked against the real tools.

The kernel has no IPVS, but kube-proxy's IPVS mode also programs ipsets and
iptables rules that match them: `ipset restore` must accept our `ipset save`
text and save it back the same, `iptables-restore` must load our rules (with
the sets in place) in a network namespace of the test's own and
`iptables-save` print back what the engine holds, and the part of a packet's
walk before IPVS's hook must match the same rules in the kernel as in the
engine (rule counters, client and node namespaces of the test's own).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kn_iptables_lab import NODE_IP, load_view, manifest

from kubenetem.scenarios import synthetic_cluster
from netem.addr import int_to_ip, parse_cidr, parse_ip
from netem.netns import Topology
from netem.packet import SYN, TCP, Packet
from proxy_modes.base import Step
from proxy_modes.ipvs.engine import IpvsMode
from proxy_modes.netfilter.engine import V_DROP, V_REJECT
from proxy_modes.view import build_state, node_view

pytestmark = pytest.mark.kernel
_counter = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"ipvs-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def run_in(ns: str, *cmd: str, stdin: str = "") -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr}"
    return done.stdout


def synced() -> IpvsMode:
    cluster = synthetic_cluster(4, 3, nodes=2, node_ports=True, mode="ipvs")
    # give one service an externalIP, a LoadBalancer IP with source ranges, and policy Local
    key = next(iter(cluster.services))
    svc = cluster.services[key]
    cluster.services[key] = replace(
        svc,
        type="LoadBalancer",
        external_ips=[parse_ip("203.0.113.10")],
        lb_ingress_ips=[parse_ip("203.0.113.20")],
        lb_source_ranges=[parse_cidr("192.168.0.0/24")],
        external_traffic_policy="Local",
    )
    mode = IpvsMode(random.Random(0))
    mode.sync(node_view(cluster, build_state(cluster), "node-1"))
    return mode


def _normal(save: str) -> list[str]:
    """ipset save with the random initval dropped and entries in a stable order."""
    return sorted(line.split(" initval ")[0] for line in save.splitlines())


def test_ipset_restore_accepts_our_sets_and_saves_them_back(netns: str) -> None:
    text = synced().dump_with(show="ipsets")
    assert "add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.20,tcp:80,192.168.0.0/24" in text
    run_in(netns, "ipset", "restore", stdin=text)
    assert _normal(run_in(netns, "ipset", "save")) == _normal(text)


def test_iptables_restore_loads_the_rules_with_the_sets(netns: str) -> None:
    mode = synced()
    run_in(netns, "ipset", "restore", stdin=mode.dump_with(show="ipsets"))
    rules = mode.dump_with(show="iptables")
    run_in(netns, "iptables-restore", "--noflush", stdin=rules)
    saved = run_in(netns, "iptables-save")
    for line in rules.splitlines():
        # iptables-save may reorder match options; check the set matches survived
        if line.startswith("-A ") and "--match-set" in line:
            name = line.split("--match-set ")[1].split()[0]
            assert f"--match-set {name} " in saved
    assert saved.count("-A KUBE-SERVICES") == rules.count("-A KUBE-SERVICES")
    assert saved.count("-A KUBE-IPVS-FILTER") == rules.count("-A KUBE-IPVS-FILTER")


def _save_lines(text: str) -> dict[tuple[str, str], list[str]]:
    """Per (table, chain) its `-A` lines in order (counters stripped)."""
    out: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        body = line.split("] ", 1)[1] if line.startswith("[") else line
        if body.startswith("-A "):
            out.setdefault((table, body.split()[1]), []).append(body)
    return out


def test_iptables_save_prints_the_rules_the_engine_holds(netns: str) -> None:
    """The engine walks what the kernel holds: every rule, physdev included, in order."""
    mode = synced()
    assert mode.hooks is not None
    run_in(netns, "ipset", "restore", stdin=mode.dump_with(show="ipsets"))
    run_in(netns, "iptables-restore", "--noflush", stdin=mode.dump_with(show="iptables"))
    kernel = _save_lines(run_in(netns, "iptables-save"))
    engine = _save_lines(mode.hooks.nf.save())
    assert engine == kernel
    assert any("-m physdev ! --physdev-is-in" in line for lines in engine.values() for line in lines)


# Chains a packet walks before IPVS's hook (PREROUTING, then INPUT up to IPVS).
BEFORE_IPVS = {"PREROUTING", "KUBE-SERVICES", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "KUBE-LOAD-BALANCER", "INPUT"}
BEFORE_IPVS |= {"KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER"}


def _matched(saved: str) -> set[tuple[str, str, int]]:
    """(table, chain, 1-based rule) of every rule whose counter moved."""
    hits: set[tuple[str, str, int]] = set()
    seen: dict[tuple[str, str], int] = {}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line.startswith("[") and "] -A " in line:
            chain = line.split("] -A ", 1)[1].split()[0]
            n = seen[(table, chain)] = seen.get((table, chain), 0) + 1
            if not line.startswith("[0:") and chain in BEFORE_IPVS:
                hits.add((table, chain, n))
    return hits


def test_the_rules_before_ipvs_match_in_the_kernel_as_in_the_engine(tmp_path: Path) -> None:
    """No IPVS here, but everything before its hook runs for real: in a node
    namespace holding kube-proxy's ipsets and rules (the VIPs on lo, where
    kube-ipvs0 would hold them), each probe SYN from a client namespace moves
    exactly the counters of the rules the engine says matched, the SNAT mark
    is set exactly when the engine sets it, and what the rules drop or reject
    before IPVS is dropped (timeout) or rejected (refused) by the kernel."""
    view = load_view(tmp_path, manifest())
    mode = IpvsMode(random.Random(0))
    mode.sync(view)
    assert mode.state is not None and mode.hooks is not None
    probes = [  # (client, source, destination, port)
        ("podclient", "10.0.0.5", "172.30.0.10", 80),  # ClusterIP from the cluster CIDR: no mark
        ("outside", "203.0.113.200", "172.30.0.10", 80),  # from outside: marked
        ("podclient", "10.0.0.5", "172.30.0.10", 81),  # a port the VIP does not serve: KUBE-IPVS-FILTER REJECT
        ("outside", "203.0.113.200", "5.6.7.8", 80),  # LB with source ranges, outside them: DROP
        ("outside", "203.0.113.10", "5.6.7.8", 80),  # inside them
        ("outside", "203.0.113.200", "192.168.0.2", 30080),  # NodePort, policy Cluster
        ("outside", "203.0.113.200", "192.168.0.2", 30082),  # NodePort, policy Local
        ("outside", "203.0.113.200", "192.168.99.33", 80),  # externalIP (on kube-ipvs0): physdev, addrtype
    ]
    with Topology("kn-ipvs") as topo:
        node = topo.node([NODE_IP])
        for ip in mode.state.addresses:
            node.run(["ip", "addr", "add", f"{int_to_ip(ip)}/32", "dev", "lo"])
        hosts = {
            "outside": topo.leaf("outside", ["203.0.113.10", "203.0.113.200"], default_route=True),
            "podclient": topo.leaf("podclient", ["10.0.0.5"]),
        }
        node.run(["ipset", "restore"], input=mode.dump_with(show="ipsets"))
        node.run(["iptables-restore", "--noflush"], input=mode.dump_with(show="iptables"))
        for n, (host, src, dst, port) in enumerate(probes):
            for table in ("nat", "filter"):
                node.run(["iptables", "-t", table, "-Z"])
            reply = hosts[host].connect(dst, port, src=src, sport=42000 + n, timeout=0.5)
            kernel = _matched(node.run(["iptables-save", "-c"]))
            steps: list[Step] = []
            packet = Packet(TCP, parse_ip(src), 42000 + n, parse_ip(dst), port, False, "", SYN)
            verdict, st = mode.hooks.first(packet, 0.0, steps)
            engine = {
                (s.detail["table"], s.detail["chain"], s.detail["rule"])
                for s in steps
                if s.kind == "rule" and s.detail["chain"] in BEFORE_IPVS
            }
            where = f"{src} -> {dst}:{port}"
            assert kernel == engine, where
            marked = ("nat", "KUBE-MARK-MASQ", 1) in kernel
            assert marked == bool(st.mark & 0x4000), where
            if verdict == V_DROP:
                assert reply.status == "timeout", where
            elif verdict == V_REJECT:
                assert reply.status == "refused", where
            else:  # accepted towards IPVS (which this kernel lacks) or forwarded
                assert reply.status in ("refused", "timeout", "unreachable"), where
