"""The rendered `kube-proxy` table in the real kernel: it loads with this nft
(v1.0.6 here), partial-sync transactions apply on top of it, and what
`nft list ruleset` hands back means what we wrote: re-parsed by the engine it
gives the same table and routes every packet the same way.

Each test works in a network namespace of its own (no interfaces, no
addresses: rules are loaded and listed, never exercised by traffic here),
removed afterwards whatever happens.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest
from nft_helpers import EXTERNAL_CLIENT, NODE_IP, NODE_IP_ALT, Port, Svc, config, signature, view

from kubenetem.scenarios import synthetic_cluster
from netem.addr import parse_ip
from netem.errors import RulesetError
from netem.packet import TCP, UDP, Packet
from proxy_modes.nftables.engine import NftablesMode, load_table
from proxy_modes.nftables.kernel import Nft
from proxy_modes.nftables.rules import Syncer
from proxy_modes.nftables.ruleset import dump_commands
from proxy_modes.view import build_state, node_view

pytestmark = pytest.mark.kernel
_counter = itertools.count()


@pytest.fixture
def nft() -> Iterator[Nft]:
    name = f"knft-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        yield Nft(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


def rich() -> list[Svc]:
    """Every shape of rule kube-proxy writes (see test_engine.rich_services)."""
    return [
        Svc(
            "ns1",
            "svc1",
            "172.30.0.41",
            [Port("p80", 80, node_port=3001), Port("dns", 53, "UDP"), Port("sctp", 9, "SCTP")],
            endpoints=[(f"10.180.0.{n}", "", {"p80": 80, "dns": 53, "sctp": 9}) for n in (1, 2, 3)],
        ),
        Svc(
            "ns2",
            "lb",
            "172.30.0.42",
            [Port("p80", 80, node_port=3002)],
            type="LoadBalancer",
            lb_ips=["1.2.3.4", "5.6.7.9"],
            source_ranges=["203.0.113.0/25", "192.168.0.0/24"],
            affinity_seconds=100,
            endpoints=[("10.180.0.4", "test-node", {"p80": 8080}), ("10.180.0.5", "remote", {"p80": 8080})],
        ),
        Svc(
            "ns3",
            "local",
            "172.30.0.43",
            [Port("p80", 80, node_port=3004)],
            type="LoadBalancer",
            etp_local=True,
            lb_ips=["5.6.7.8"],
            external_ips=["192.168.99.50"],
            endpoints=[("10.180.0.6", "test-node", {"p80": 80}), ("10.180.0.7", "remote", {"p80": 80})],
        ),
        Svc(
            "ns4",
            "nolocal",
            "172.30.0.44",
            [Port("p80", 80, node_port=3005)],
            type="LoadBalancer",
            etp_local=True,
            itp_local=True,
            endpoints=[("10.180.0.8", "remote", {"p80": 80})],
        ),
        Svc("ns5", "empty", "172.30.0.45", [Port("p80", 80, node_port=3006)]),
    ]


def kernel_table(nft: Nft) -> object:
    return load_table(nft.list_ruleset(), "nft list ruleset")


def test_nft_version_is_the_one_we_target(nft: Nft) -> None:
    assert nft.version().startswith("nftables v1.")


@pytest.mark.parametrize(
    "cfg",
    [
        config(),
        config(masquerade_all=True, node_port_addresses=["0.0.0.0/0"]),
        config(detect_local_mode="InterfaceNamePrefix", detect_local_prefix="veth"),
    ],
    ids=["default", "masquerade-all-match-all", "interface-prefix"],
)
def test_rendered_table_loads_and_lists_back(nft: Nft, cfg: object) -> None:
    s = Syncer()
    text = s.sync(view(rich(), cfg)).text  # type: ignore[arg-type]
    nft.check(text)
    nft.load(text)
    assert signature(kernel_table(nft)) == signature(s.table)  # type: ignore[arg-type]


def test_example_cluster_loads(nft: Nft, examples: object) -> None:
    from netem.cluster import load_cluster

    cluster = load_cluster([str(examples)])
    m = NftablesMode(random.Random(0))
    text = m.sync(node_view(cluster, build_state(cluster))).text
    nft.load(text)
    assert signature(kernel_table(nft)) == signature(m.table)  # type: ignore[arg-type]


def test_kernel_listing_routes_like_our_table(nft: Nft) -> None:
    ours = NftablesMode(random.Random(7))
    ours.sync(view(rich()))
    nft.load(ours.dump())
    theirs = NftablesMode(random.Random(7))
    theirs.load_capture(nft.list_ruleset(), [parse_ip(ip) for ip in (NODE_IP, NODE_IP_ALT)], "kernel")
    rnd = random.Random(1)
    dsts = [
        ("172.30.0.41", 80),
        ("1.2.3.4", 80),
        (NODE_IP, 3002),
        ("5.6.7.8", 80),
        ("172.30.0.45", 80),
        ("172.30.0.99", 1),
    ]
    for n in range(500):
        src = rnd.choice(["10.0.0.2", EXTERNAL_CLIENT, "203.0.113.200", "10.180.0.4"])
        dst, port = rnd.choice(dsts)
        p = Packet(rnd.choice([TCP, UDP]), parse_ip(src), 2000 + n, parse_ip(dst), port)
        assert theirs.route(p, n * 0.1) == ours.route(p, n * 0.1)


def test_partial_sync_transactions_apply_in_the_kernel(nft: Nft) -> None:
    services = rich()
    s = Syncer()
    nft.load(s.sync(view(services)).text)
    steps = [
        services[0].endpoints.pop,  # an endpoint goes: its chain is flushed
        lambda: services.append(
            Svc("ns6", "new", "172.30.0.46", [Port("p", 80)], endpoints=[("10.180.1.1", "", {"p": 80})])
        ),
        lambda: setattr(services[1], "affinity_seconds", 0),  # affinity off: its sets are deleted
        lambda: services.pop(2),  # a service goes: its elements are deleted
        lambda: setattr(services[3], "endpoints", [("10.180.2.2", "", {"p80": 80})]),  # no endpoints -> some
        lambda: None,  # nothing changed: only the stale chains are deleted
        lambda: setattr(services[1], "affinity_seconds", 100),
        lambda: setattr(services[1], "affinity_seconds", 200),  # `add set` again: the new timeout
        # A ClusterIP passes from one Service to another in one sync: the map
        # element is deleted before it is added (the kernel refuses a second add).
        lambda: services.append(replace(services.pop(-1), ns="ns0", name="moved")),
        # Two Services share an externalIP and port; one goes, the other keeps it.
        lambda: services.extend(
            Svc(ns, ns, ip, [Port("p", 80)], external_ips=["192.168.99.7"], endpoints=[(ep, "", {"p": 80})])
            for ns, ip, ep in (("shared-a", "172.30.0.60", "10.180.3.1"), ("shared-b", "172.30.0.61", "10.180.3.2"))
        ),
        lambda: services.pop(-2),
    ]
    for step in steps:
        step()
        result = s.sync(view(services))
        assert result.partial
        if result.text:
            nft.load(result.text)
        assert signature(kernel_table(nft)) == signature(s.table)  # type: ignore[arg-type]
    # Apart from the chains flushed for the next sync to delete, the table is
    # the one a first sync of the same Services writes.
    fresh = Syncer()
    fresh.sync(view(services))
    ours = signature(s.table)
    ours["chains"] = {name: c for name, c in ours["chains"].items() if name in fresh.table.chains}  # type: ignore[attr-defined]
    assert ours == signature(fresh.table)
    # The node's configuration changes: a full sync over the loaded table.
    result = s.sync(view(services, config(masquerade_all=True, node_port_addresses=["0.0.0.0/0"])))
    assert not result.partial
    nft.load(result.text)
    assert signature(kernel_table(nft)) == signature(s.table)  # type: ignore[arg-type]
    services.pop()
    nft.load(s.sync(view(services, config(masquerade_all=True, node_port_addresses=["0.0.0.0/0"]))).text)
    assert signature(kernel_table(nft)) == signature(s.table)  # type: ignore[arg-type]


def test_affinity_entries_listed_by_the_kernel_are_read_back(nft: Nft) -> None:
    m = NftablesMode(random.Random(0))
    m.sync(view(rich()))
    nft.load(m.dump())
    aff = next(name for name in m.table.sets if name.startswith("affinity-"))
    nft.load(
        f"add element ip kube-proxy {aff} {{ 10.0.0.2 }}\nadd element ip kube-proxy {aff} {{ 10.0.0.3 timeout 20s }}\n"
    )
    table = load_table(nft.list_ruleset(), "kernel")
    members = table.sets[aff].members  # type: ignore[attr-defined]
    assert 90 < members[parse_ip("10.0.0.2")] <= 100  # expires within the set's 100 s timeout
    assert 10 < members[parse_ip("10.0.0.3")] <= 20


def test_kernel_rejects_what_nft_cannot_load(nft: Nft) -> None:
    with pytest.raises(RulesetError) as err:
        nft.load("add table ip t\nadd chain ip t c\nadd rule ip t c goto missing\n")
    assert "rejected" in str(err.value) and "\n" not in str(err.value)


def test_synthetic_cluster_loads(nft: Nft) -> None:
    # Small on purpose: nft -f grows steeply with the service count (benchmarks/test_nftables.py).
    cluster = synthetic_cluster(50, 3, nodes=3, affinity=True, node_ports=True)
    m = NftablesMode(random.Random(0))
    text = m.sync(node_view(cluster, build_state(cluster))).text
    seconds = nft.load(text)
    assert seconds > 0
    assert len(kernel_table(nft).chains) == len(m.table.chains)  # type: ignore[attr-defined]
    assert dump_commands(m.table) == text
