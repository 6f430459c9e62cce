"""The rendered `kube-proxy` table against kube-proxy's own expectations.

Expected lines restate pkg/proxy/nftables/proxier_test.go (`baseRules`,
TestOverallNFTablesRules, TestSyncProxyRulesRepeated). One deliberate
difference: that file's fake proxier sets the mark to "0x4000"; the real
NewProxier formats it with `%#08x`, giving 0x00004000, which is what we write.
Comparison ignores line order, as the test's sortNFTablesTransaction does.
"""

from __future__ import annotations

import random

import pytest
from nft_helpers import NODE_IP, Flows, Port, Svc, config, signature, view

from netem.addr import parse_cidr
from proxy_modes.nftables.engine import NftablesMode
from proxy_modes.nftables.rules import Syncer, endpoint_chain_base, hash_and_truncate, parse_chain_service
from proxy_modes.nftables.ruleset import Table, dump_commands, parse_nft
from proxy_modes.view import ServicePortName

P = "add rule ip kube-proxy"
E = "add element ip kube-proxy"
C = "add chain ip kube-proxy"

BASE = [
    'add table ip kube-proxy { comment "rules for kube-proxy" ; }',
    'add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }',
    'add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }',
    "add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ;"
    ' comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
    "add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ;"
    ' comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
    "add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ;"
    ' comment "vmap to drop or reject packets to services with no endpoints" ; }',
    "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ;"
    ' comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
    "add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ;"
    ' comment "NodePort traffic" ; }',
    f"{C} cluster-ips-check",
    f"{C} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}",
    f"{C} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}",
    f"{C} filter-forward {{ type filter hook forward priority 0 ; }}",
    f"{C} filter-input {{ type filter hook input priority 0 ; }}",
    f"{C} filter-output {{ type filter hook output priority 0 ; }}",
    f"{C} firewall-check",
    f"{C} mark-for-masquerade",
    f"{C} masquerading",
    f"{C} nat-output {{ type nat hook output priority -100 ; }}",
    f"{C} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
    f"{C} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
    f"{C} nodeport-endpoints-check",
    f'{C} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}',
    f"{C} services",
    f"{C} service-endpoints-check",
    f'{P} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
    f'{P} cluster-ips-check ip daddr {{ 172.30.0.0/16 }} drop comment "Drop traffic to unallocated ClusterIPs"',
    f"{P} filter-prerouting-pre-dnat ct state new jump firewall-check",
    f"{P} filter-forward ct state new jump service-endpoints-check",
    f"{P} filter-forward ct state new jump cluster-ips-check",
    f"{P} filter-input ct state new jump nodeport-endpoints-check",
    f"{P} filter-input ct state new jump service-endpoints-check",
    f"{P} filter-output ct state new jump service-endpoints-check",
    f"{P} filter-output-pre-dnat ct state new jump firewall-check",
    f"{P} filter-output ct state new jump cluster-ips-check",
    f"{P} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
    f"{P} mark-for-masquerade mark set mark or 0x00004000",
    f"{P} masquerading mark and 0x00004000 == 0 return",
    f"{P} masquerading mark set mark xor 0x00004000",
    f"{P} masquerading masquerade fully-random",
    f"{P} nat-output jump services",
    f"{P} nat-postrouting jump masquerading",
    f"{P} nat-prerouting jump services",
    f"{P} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
    f"{P} reject-chain reject",
    f"{P} services ip daddr . meta l4proto . th dport vmap @service-ips",
    f"{P} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    f"{E} nodeport-ips {{ 192.168.0.2 }}",
    f"{P} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
]
MASQ = "jump mark-for-masquerade"


def lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line and not line.startswith("#"))


def overall_services() -> list[Svc]:
    """TestOverallNFTablesRules' six services."""
    p80 = [Port("p80", 80)]
    return [
        Svc("ns1", "svc1", "172.30.0.41", p80, endpoints=[("10.180.0.1", "", {"p80": 80})]),
        Svc(
            "ns2",
            "svc2",
            "172.30.0.42",
            [Port("p80", 80, node_port=3001)],
            type="LoadBalancer",
            etp_local=True,
            lb_ips=["1.2.3.4"],
            external_ips=["192.168.99.22"],
            endpoints=[("10.180.0.2", "", {"p80": 80})],
        ),
        Svc(
            "ns3", "svc3", "172.30.0.43", [Port("p80", 80, node_port=3003)], endpoints=[("10.180.0.3", "", {"p80": 80})]
        ),
        Svc(
            "ns4",
            "svc4",
            "172.30.0.44",
            p80,
            external_ips=["192.168.99.33"],
            endpoints=[("10.180.0.4", "", {"p80": 80}), ("10.180.0.5", "test-node", {"p80": 80})],
        ),
        Svc(
            "ns5",
            "svc5",
            "172.30.0.45",
            [Port("p80", 80, node_port=3002)],
            type="LoadBalancer",
            lb_ips=["5.6.7.8"],
            source_ranges=[" 203.0.113.0/25"],
            affinity_seconds=10800,
            endpoints=[("10.180.0.3", "", {"p80": 80})],
        ),
        Svc("ns6", "svc6", "172.30.0.46", p80),
    ]


def expected_overall() -> list[str]:
    s1, e1 = "service-ULMVA6XW-ns1/svc1/tcp/p80", "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    s2, x2 = "service-42NFTM6N-ns2/svc2/tcp/p80", "external-42NFTM6N-ns2/svc2/tcp/p80"
    e2 = "endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"
    s3, x3 = "service-4AT6LBPK-ns3/svc3/tcp/p80", "external-4AT6LBPK-ns3/svc3/tcp/p80"
    e3 = "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80"
    s4, x4 = "service-LAUZTJTB-ns4/svc4/tcp/p80", "external-LAUZTJTB-ns4/svc4/tcp/p80"
    e4a = "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"
    e4b = "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
    s5, x5 = "service-HVFWP5L3-ns5/svc5/tcp/p80", "external-HVFWP5L3-ns5/svc5/tcp/p80"
    e5, a5 = "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80", "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    f5 = "firewall-HVFWP5L3-ns5/svc5/tcp/p80"

    def endpoint(chain: str, ip: str, affinity: str = "") -> list[str]:
        out = [f"{C} {chain}", f"{P} {chain} ip saddr {ip} {MASQ}"]
        if affinity:
            out.append(f"{P} {chain} update @{affinity} {{ ip saddr }}")
        return [*out, f"{P} {chain} meta l4proto tcp dnat to {ip}:80"]

    def service(chain: str, ip: str, *targets: str) -> list[str]:
        vmap = " , ".join(f"{n} : goto {t}" for n, t in enumerate(targets))
        return [
            f"{C} {chain}",
            f"{P} {chain} ip daddr {ip} ip saddr != 10.0.0.0/8 {MASQ}",
            f"{P} {chain} numgen random mod {len(targets)} vmap {{ {vmap} }}",
        ]

    def external_cluster(chain: str, svc: str) -> list[str]:
        return [f"{C} {chain}", f"{P} {chain} {MASQ}", f"{P} {chain} goto {svc}"]

    out = list(BASE)
    out += service(s1, "172.30.0.41", e1) + endpoint(e1, "10.180.0.1")
    out += [f"{E} cluster-ips {{ 172.30.0.41 }}", f"{E} service-ips {{ 172.30.0.41 . tcp . 80 : goto {s1} }}"]
    out += service(s2, "172.30.0.42", e2) + endpoint(e2, "10.180.0.2")
    out += [
        f"{C} {x2}",
        f'{P} {x2} ip saddr 10.0.0.0/8 goto {s2} comment "short-circuit pod traffic"',
        f'{P} {x2} fib saddr type local {MASQ} comment "masquerade local traffic"',
        f'{P} {x2} fib saddr type local goto {s2} comment "short-circuit local traffic"',
        f"{E} cluster-ips {{ 172.30.0.42 }}",
        f"{E} service-ips {{ 172.30.0.42 . tcp . 80 : goto {s2} }}",
        f"{E} service-ips {{ 192.168.99.22 . tcp . 80 : goto {x2} }}",
        f"{E} service-ips {{ 1.2.3.4 . tcp . 80 : goto {x2} }}",
        f"{E} service-nodeports {{ tcp . 3001 : goto {x2} }}",
        f'{E} no-endpoint-nodeports {{ tcp . 3001 comment "ns2/svc2:p80" : drop }}',
        f'{E} no-endpoint-services {{ 1.2.3.4 . tcp . 80 comment "ns2/svc2:p80" : drop }}',
        f'{E} no-endpoint-services {{ 192.168.99.22 . tcp . 80 comment "ns2/svc2:p80" : drop }}',
    ]
    out += service(s3, "172.30.0.43", e3) + external_cluster(x3, s3) + endpoint(e3, "10.180.0.3")
    out += [
        f"{E} cluster-ips {{ 172.30.0.43 }}",
        f"{E} service-ips {{ 172.30.0.43 . tcp . 80 : goto {s3} }}",
        f"{E} service-nodeports {{ tcp . 3003 : goto {x3} }}",
    ]
    out += service(s4, "172.30.0.44", e4a, e4b) + external_cluster(x4, s4)
    out += endpoint(e4b, "10.180.0.5") + endpoint(e4a, "10.180.0.4")
    out += [
        f"{E} cluster-ips {{ 172.30.0.44 }}",
        f"{E} service-ips {{ 172.30.0.44 . tcp . 80 : goto {s4} }}",
        f"{E} service-ips {{ 192.168.99.33 . tcp . 80 : goto {x4} }}",
    ]
    out += [
        f"add set ip kube-proxy {a5} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}",
        f"{C} {s5}",
        f"{P} {s5} ip daddr 172.30.0.45 ip saddr != 10.0.0.0/8 {MASQ}",
        f"{P} {s5} ip saddr @{a5} goto {e5}",
        f"{P} {s5} numgen random mod 1 vmap {{ 0 : goto {e5} }}",
        *external_cluster(x5, s5),
        *endpoint(e5, "10.180.0.3", a5),
        f"{C} {f5}",
        f"{P} {f5} ip saddr != {{ 203.0.113.0/25 }} drop",
        f"{E} cluster-ips {{ 172.30.0.45 }}",
        f"{E} service-ips {{ 172.30.0.45 . tcp . 80 : goto {s5} }}",
        f"{E} service-ips {{ 5.6.7.8 . tcp . 80 : goto {x5} }}",
        f"{E} service-nodeports {{ tcp . 3002 : goto {x5} }}",
        f"{E} firewall-ips {{ 5.6.7.8 . tcp . 80 : goto {f5} }}",
    ]
    out += [
        f"{E} cluster-ips {{ 172.30.0.46 }}",
        f'{E} no-endpoint-services {{ 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }}',
    ]
    return sorted(out)


def test_chain_names_are_kube_proxys() -> None:
    # Hashes from the golden rulesets of proxier_test.go.
    assert hash_and_truncate("ns1/svc1/tcp/p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    spn = ServicePortName("ns5", "svc5", "p80", "TCP")
    assert endpoint_chain_base(spn, "10.180.0.3:80") == "GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    assert hash_and_truncate("ns2/svc2/tcp/p8080__10.0.2.1/8080").startswith("7RVP4LUQ-")
    long = "x" * 300
    assert len(hash_and_truncate(long)) == 240 and hash_and_truncate(long).endswith("...")
    assert parse_chain_service("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80") == ServicePortName(
        "ns1", "svc1", "p80", "TCP"
    )
    assert parse_chain_service("services") is None


def test_overall_rules_match_kube_proxy() -> None:
    result = Syncer().sync(view(overall_services()))
    assert not result.partial
    assert lines(result.text) == expected_overall()


def test_base_rules_alone() -> None:
    assert lines(Syncer().sync(view([])).text) == sorted(BASE)


def test_dump_parses_back_to_the_same_table() -> None:
    s = Syncer()
    s.sync(view(overall_services()))
    again = parse_nft(dump_commands(s.table))[("ip", "kube-proxy")]
    assert signature(again) == signature(s.table)


def test_masquerade_all_and_no_local_detector() -> None:
    svc = [Svc("ns1", "svc1", "172.30.0.41", [Port("p80", 80)], endpoints=[("10.180.0.1", "", {"p80": 80})])]
    chain = "service-ULMVA6XW-ns1/svc1/tcp/p80"
    text = Syncer().sync(view(svc, config(masquerade_all=True))).text
    assert f"{P} {chain} ip daddr 172.30.0.41 tcp dport 80 {MASQ}" in text.splitlines()
    text = Syncer().sync(view(svc, config(cluster_cidrs=[]))).text
    assert not [line for line in text.splitlines() if line.startswith(f"{P} {chain} ip daddr")]
    text = Syncer().sync(view(svc, config(detect_local_mode="InterfaceNamePrefix", detect_local_prefix="veth"))).text
    assert f"{P} {chain} ip daddr 172.30.0.41 iifname != veth* {MASQ}" in text.splitlines()


def test_nodeport_addresses() -> None:
    # nftables mode defaults to `primary`: the node IP as a /32.
    text = Syncer().sync(view([], config(node_port_addresses=[]))).text
    assert f"{E} nodeport-ips {{ {NODE_IP} }}" in text.splitlines()
    # Two CIDRs: every node IP inside them.
    text = Syncer().sync(view([], config(node_port_addresses=["192.168.0.0/24", "192.168.1.0/24"]))).text
    assert {f"{E} nodeport-ips {{ 192.168.0.2 }}", f"{E} nodeport-ips {{ 192.168.1.2 }}"} <= set(text.splitlines())
    # 0.0.0.0/0: every local address, through fib, and no set at all.
    text = Syncer().sync(view([], config(node_port_addresses=["0.0.0.0/0"]))).text
    assert "nodeport-ips" not in text
    assert (
        f"{P} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
        in text.splitlines()
    )
    assert (
        f"{P} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
        in text.splitlines()
    )


def test_no_service_cidrs_no_drop_rule() -> None:
    text = Syncer().sync(view([], service_cidrs=())).text
    assert "Drop traffic to unallocated ClusterIPs" not in text
    text = Syncer().sync(view([], service_cidrs=(parse_cidr("172.30.0.0/16"), parse_cidr("10.96.0.0/12")))).text
    assert "ip daddr { 172.30.0.0/16, 10.96.0.0/12 } drop" in text


def test_internal_traffic_policy_local_without_local_endpoints_drops() -> None:
    svc = Svc(
        "ns1", "svc1", "172.30.0.41", [Port("p80", 80)], itp_local=True, endpoints=[("10.180.0.1", "", {"p80": 80})]
    )
    text = Syncer().sync(view([svc])).text
    assert f'{E} no-endpoint-services {{ 172.30.0.41 . tcp . 80 comment "ns1/svc1:p80" : drop }}' in text
    assert "service-ULMVA6XW" not in text  # no chains: nothing reachable from here


# --- partial sync (TestSyncProxyRulesRepeated) ---------------------------------


def two_services() -> list[Svc]:
    return [
        Svc("ns1", "svc1", "172.30.0.41", [Port("p80", 80)], endpoints=[("10.0.1.1", "", {"p80": 80})]),
        Svc("ns2", "svc2", "172.30.0.42", [Port("p8080", 8080)], endpoints=[("10.0.2.1", "", {"p8080": 8080})]),
    ]


def test_first_sync_matches_kube_proxy() -> None:
    text = Syncer().sync(view(two_services())).text
    got = lines(text)
    for line in (
        f"{P} service-MHHHYRWA-ns2/svc2/tcp/p8080 numgen random mod 1 vmap "
        "{ 0 : goto endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080 }",
        f"{P} endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 meta l4proto tcp dnat to 10.0.1.1:80",
        f"{E} service-ips {{ 172.30.0.42 . tcp . 8080 : goto service-MHHHYRWA-ns2/svc2/tcp/p8080 }}",
    ):
        assert line in got


def apply(text_before: str, transaction: str) -> dict[str, object]:
    tables = parse_nft(text_before)
    parse_nft(transaction, tables)
    return signature(tables[("ip", "kube-proxy")])


def test_partial_sync_rewrites_only_what_changed() -> None:
    services = two_services()
    s = Syncer()
    first = s.sync(view(services))
    before = first.text
    # Add a service: only its chains and elements are written.
    services.append(Svc("ns3", "svc3", "172.30.0.43", [Port("p80", 80)], endpoints=[("10.0.3.1", "", {"p80": 80})]))
    result = s.sync(view(services))
    assert result.partial and result.changed == 1
    assert "svc1" not in result.text and "svc2" not in result.text
    assert f"{E} service-ips {{ 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }}" in result.text
    after = apply(before, result.text)
    assert after == signature(s.table)
    assert after == signature(_full(services))


def _full(services: list[Svc]) -> Table:
    s = Syncer()
    s.sync(view(services))
    return s.table


def test_partial_sync_stale_chains_flushed_then_deleted() -> None:
    services = two_services()
    s = Syncer()
    state = s.sync(view(services)).text
    old_ep = "endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080"
    # svc2's endpoint moves: the old endpoint chain is flushed now ...
    services[1].endpoints = [("10.0.2.2", "", {"p8080": 8080})]
    step1 = s.sync(view(services))
    assert f"flush chain ip kube-proxy {old_ep}" in step1.text.splitlines()
    assert old_ep in s.table.chains and not s.table.chains[old_ep].rules
    tables = parse_nft(state)
    parse_nft(step1.text, tables)
    assert signature(tables[("ip", "kube-proxy")]) == signature(s.table)
    # ... and deleted by the next sync, even one with nothing else to do.
    step2 = s.sync(view(services))
    assert step2.text.splitlines() == [f"delete chain ip kube-proxy {old_ep}"]
    parse_nft(step2.text, tables)
    assert old_ep not in s.table.chains
    assert signature(tables[("ip", "kube-proxy")]) == signature(s.table)
    # Removing a service deletes its elements and flushes its chains.
    del services[0]
    step3 = s.sync(view(services))
    assert "delete element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 }" in step3.text.splitlines()
    assert "delete element ip kube-proxy cluster-ips { 172.30.0.41 }" in step3.text.splitlines()
    parse_nft(step3.text, tables)
    assert signature(tables[("ip", "kube-proxy")]) == signature(s.table)
    # The same as a full sync but for the flushed, not yet deleted, chains.
    full = _full(services)
    stale = {name for name in s.table.chains if name not in full.chains}
    assert stale and all(not s.table.chains[name].rules for name in stale)
    for name in stale:
        del s.table.chains[name]
    assert signature(s.table) == signature(full)


def test_node_change_forces_full_sync() -> None:
    s = Syncer()
    first = s.sync(view(two_services())).text
    changed = config(masquerade_all=True, node_port_addresses=["0.0.0.0/0"])
    again = s.sync(view(two_services(), changed))
    assert not again.partial
    lines = again.text.splitlines()
    # Everything flushed first, the set NodePorts no longer need deleted, then the whole table.
    assert "flush chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80" in lines
    assert "flush map ip kube-proxy service-ips" in lines and "delete set ip kube-proxy nodeport-ips" in lines
    assert lines.index("delete set ip kube-proxy nodeport-ips") < lines.index(
        'add table ip kube-proxy { comment "rules for kube-proxy" ; }'
    )
    assert apply(first, again.text) == signature(s.table)
    fresh = Syncer()
    fresh.sync(view(two_services(), changed))
    assert signature(s.table) == signature(fresh.table)


def test_affinity_state_survives_partial_sync() -> None:
    svc = Svc(
        "ns1",
        "svc1",
        "172.30.0.41",
        [Port("p80", 80)],
        affinity_seconds=60,
        endpoints=[("10.0.1.1", "", {"p80": 80}), ("10.0.1.2", "", {"p80": 80})],
    )
    m = NftablesMode(random.Random(3))
    m.sync(view([svc]))
    flows = Flows(m)
    first, _ = flows("10.0.0.9", "172.30.0.41", 80)
    assert first == "10.0.1.1:80, 10.0.1.2:80"
    sets = [s for s in m.table.sets.values() if s.dynamic]
    assert sum(len(s.members) for s in sets) == 1
    svc.endpoints.append(("10.0.1.3", "", {"p80": 80}))
    result = m.sync(view([svc]))
    assert result.partial
    assert sum(len(s.members) for s in m.table.sets.values() if s.dynamic) == 1


@pytest.mark.parametrize("services", [0, 1, 30])
def test_object_count_is_rule_count(services: int) -> None:
    svcs = [
        Svc("ns", f"s{i}", f"172.30.1.{i + 1}", [Port("p", 80)], endpoints=[("10.1.0.1", "", {"p": 80})])
        for i in range(services)
    ]
    s = Syncer()
    result = s.sync(view(svcs))
    m = NftablesMode(random.Random(0))
    assert m.sync(view(svcs)).objects == s.table.rule_count() == result.text.count("\nadd rule ")
