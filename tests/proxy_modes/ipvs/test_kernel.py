"""What of the IPVS mode exists here, checked against the real tools.

The kernel has no IPVS, but kube-proxy's IPVS mode also programs ipsets and
iptables rules that match them: `ipset restore` must accept our `ipset save`
text and save it back the same, and `iptables-restore` must load our rules
(with the sets in place) in a network namespace of the test's own.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kubenetem.scenarios import synthetic_cluster
from netem.addr import parse_cidr, parse_ip
from proxy_modes.ipvs.engine import IpvsMode
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
