"""kube-proxy's IPVS state from the view, and the real tools' output layouts."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from kubenetem.cli import main
from kubenetem.scenarios import synthetic_cluster
from netem.addr import parse_ip
from netem.cluster import load_cluster
from netem.packet import ACK, SYN, TCP, Packet
from proxy_modes.base import Verdict
from proxy_modes.ipvs.engine import IpvsMode
from proxy_modes.ipvs.formats import c_int_diff, glibc_msort, largenum
from proxy_modes.view import ServiceEntry, build_state, node_view
from tests.conftest import EXAMPLES


@pytest.fixture(scope="module")
def example_mode() -> IpvsMode:
    cluster = load_cluster([str(EXAMPLES)])
    mode = IpvsMode(random.Random(0))
    mode.sync(node_view(cluster, build_state(cluster), "worker-1"))
    return mode


def test_virtual_servers_per_clusterip_and_nodeport_per_node_ip(example_mode: IpvsMode) -> None:
    keys = {(proto, addr, port) for proto, addr, port in example_mode.services}
    assert (TCP, parse_ip("192.168.0.2"), 30080) in keys
    sticky = next(s for s in example_mode.services.values() if s.port == 8080)
    assert sticky.persistent and sticky.timeout == 10800
    assert all(d.weight == 1 for s in example_mode.services.values() for d in s.dests)


def test_ipvsadm_listing_layout(example_mode: IpvsMode) -> None:
    text = example_mode.dump()
    lines = text.splitlines()
    assert lines[0] == "IP Virtual Server version 1.2.1 (size=4096)"
    assert lines[1] == "Prot LocalAddress:Port Scheduler Flags"
    assert lines[2] == "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"
    # NodePort on 192.168.0.2 sorts before 10.x: libipvs subtracts into an int
    assert lines[3] == "TCP  192.168.0.2:30080 rr"
    assert lines[4] == "  -> 10.244.1.2:80                Masq    1      0          0         "
    assert any(line.endswith(" rr persistent 10800") for line in lines)


def test_ipvsadm_save_round_trips_through_load_capture(example_mode: IpvsMode) -> None:
    saved = example_mode.dump_with(fmt="save")
    assert saved.splitlines()[0] == "-A -t 192.168.0.2:30080 -s rr"
    assert "-a -t 192.168.0.2:30080 -r 10.244.1.2:80 -m -w 1" in saved.splitlines()
    again = IpvsMode(random.Random(0))
    again.load_capture(saved, [], "saved")
    assert again.dump() == example_mode.dump()
    assert again.dump_with(fmt="save") == saved


def test_stats_and_rate_columns() -> None:
    mode = IpvsMode(random.Random(0))
    mode.load_capture("-A -t 172.30.0.1:80 -s rr\n-a -t 172.30.0.1:80 -r 10.180.0.1:80 -m -w 1\n", [], "x")
    for i in range(3):
        mode.route(Packet(TCP, parse_ip("10.0.0.1"), 1000 + i, parse_ip("172.30.0.1"), 80, flags=SYN), 0.0)
    stats = mode.dump_with(stats=True).splitlines()
    assert stats[1] == "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"
    assert stats[2] == "  -> RemoteAddress:Port"
    assert stats[3] == "TCP  172.30.0.1:80                       3        3        0      180        0"
    assert stats[4] == "  -> 10.180.0.1:80                       3        3        0      180        0"
    rate = mode.dump_with(rate=True).splitlines()
    assert rate[1] == "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS"
    assert rate[4] == "  -> 10.180.0.1:80                       0        0        0        0        0"


def test_stats_count_every_packet_of_live_and_expired_connections() -> None:
    """An established connection's packets count on the connection and reach
    its server's stats for the listing, also after the connection expired."""
    mode = IpvsMode(random.Random(0))
    mode.load_capture("-A -t 172.30.0.1:80 -s rr\n-a -t 172.30.0.1:80 -r 10.180.0.1:80 -m -w 1\n", [], "x")
    first = Packet(TCP, parse_ip("10.0.0.1"), 1000, parse_ip("172.30.0.1"), 80, flags=SYN, length=60)
    mode.route(first, 0.0)
    for n in range(4):
        mode.route(first._replace(flags=ACK, length=100), 1.0 + n)
    line = "  -> 10.180.0.1:80                       1        5        0      460        0"
    assert mode.dump_with(stats=True).splitlines()[4] == line
    assert mode.dump_with(stats=True).splitlines()[4] == line  # listed twice, counted once
    mode.route(first._replace(sport=1001, length=60), 5.0)
    mode.route(first._replace(sport=1001, flags=ACK, length=40), 5.0)
    mode.tick(10_000.0)  # both expire
    assert not mode.conns
    assert (
        mode.dump_with(stats=True).splitlines()[4]
        == "  -> 10.180.0.1:80                       2        7        0      560        0"
    )


def test_largenum_and_the_wrapped_comparator() -> None:
    assert largenum(99_999_999) == " 99999999"
    assert largenum(123_456_789) == "  123456K"
    assert c_int_diff(parse_ip("192.168.0.2"), parse_ip("10.96.0.1")) < 0
    assert c_int_diff(parse_ip("10.96.0.2"), parse_ip("10.96.0.1")) == 1
    assert glibc_msort([3, 1, 2], lambda a, b: a - b) == [1, 2, 3]


def test_sched_flags_in_listing_and_save() -> None:
    mode = IpvsMode(random.Random(0))
    mode.load_capture(
        "-A -t 172.30.0.1:80 -s mh -b mh-port\n-A -u 172.30.0.1:53 -s sh -b sh-fallback,sh-port\n", [], "x"
    )
    listing = mode.dump()
    assert "TCP  172.30.0.1:80 mh (mh-port)\n" in listing
    assert "UDP  172.30.0.1:53 sh (sh-fallback,sh-port)\n" in listing
    assert "-A -t 172.30.0.1:80 -s mh -b mh-port\n" in mode.dump_with(fmt="save")


def test_ipsets_and_addresses(example_mode: IpvsMode) -> None:
    sets = example_mode.dump_with(show="ipsets")
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\nadd KUBE-NODE-PORT-TCP 30080\n" in sets
    assert "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval " in sets
    assert "add KUBE-LOOP-BACK 10.244.1.2,tcp:80,10.244.1.2" in sets  # worker-1's own pods
    addrs = example_mode.dump_with(show="addresses").splitlines()
    assert addrs[0].endswith(": kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default qlen 1000")
    assert addrs[2].startswith("    inet ") and addrs[2].endswith("/32 scope global kube-ipvs0")
    rules = example_mode.dump_with(show="iptables")
    assert (
        '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose"' in rules
    )
    assert "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in rules
    assert "-A KUBE-NODE-PORT -p tcp -m comment" in rules


def test_mh_scheduler_gets_the_port_flag_from_kube_proxy() -> None:
    cluster = synthetic_cluster(3, 2, nodes=2, mode="ipvs")
    cluster.proxy_config.ipvs_scheduler = "mh"
    mode = IpvsMode(random.Random(0))
    mode.sync(node_view(cluster, build_state(cluster), "node-1"))
    assert " mh (mh-port)" in mode.dump()


def test_graceful_termination_tcp_goes_to_weight_zero_until_drained() -> None:
    cluster = synthetic_cluster(1, 3, nodes=1, mode="ipvs")
    state = build_state(cluster)
    view = node_view(cluster, state, "node-1")
    mode = IpvsMode(random.Random(0))
    mode.sync(view)
    svc = next(iter(mode.services.values()))
    client = parse_ip("10.9.0.1")
    first = mode.route(Packet(TCP, client, 1000, svc.addr, 80, flags=SYN), 0.0)
    mode.route(Packet(TCP, client, 1000, svc.addr, 80, flags=ACK), 0.1)
    # remove the endpoint that connection went to
    ((name, entry),) = state.entries.items()
    ((spn, eps),) = entry.endpoints.items()
    kept = tuple(ep for ep in eps if (ep.ip, ep.port) != first.endpoint)
    new_state = state.with_entry(name, ServiceEntry(entry.ports, {spn: kept}))
    mode.sync(view.with_state(new_state))
    d = svc.dest_index[first.endpoint]  # type: ignore[index]
    assert d.weight == 0 and len(svc.dests) == 3
    assert "Masq    0      1          0" in mode.dump()
    again = mode.route(Packet(TCP, client, 1000, svc.addr, 80, flags=ACK), 1.0)
    assert again.endpoint == first.endpoint  # the live connection keeps its server
    assert all(
        mode.route(Packet(TCP, client, p, svc.addr, 80, flags=SYN), 2.0).endpoint != first.endpoint for p in range(5)
    )
    mode.tick(500.0)  # the connection is still established (900 s)
    assert len(svc.dests) == 3
    mode.tick(1000.0)  # drained: kube-proxy deletes it at its next check
    assert first.endpoint not in svc.dest_index and len(svc.dests) == 2


def test_graceful_termination_udp_deletes_at_once() -> None:
    cluster = synthetic_cluster(1, 2, nodes=1, udp=True, mode="ipvs")
    state = build_state(cluster)
    view = node_view(cluster, state, "node-1")
    mode = IpvsMode(random.Random(0))
    mode.sync(view)
    svc = next(iter(mode.services.values()))
    first = mode.route(Packet(17, parse_ip("10.9.0.1"), 1000, svc.addr, 80, flags=0), 0.0)
    ((name, entry),) = state.entries.items()
    ((spn, eps),) = entry.endpoints.items()
    kept = tuple(ep for ep in eps if (ep.ip, ep.port) != first.endpoint)
    mode.sync(view.with_state(state.with_entry(name, ServiceEntry(entry.ports, {spn: kept}))))
    assert first.endpoint not in svc.dest_index
    # Kernel 5.9+ (expire_nodest_conn=1): the deletion flushes the flow's
    # connection, so its next datagram is scheduled afresh, not dropped.
    assert not mode.conns
    again = mode.route(Packet(17, parse_ip("10.9.0.1"), 1000, svc.addr, 80, flags=0), 1.0)
    assert again.verdict is Verdict.DNAT and again.endpoint == (kept[0].ip, kept[0].port)


def test_external_traffic_policy_local_falls_back_to_cluster_endpoints() -> None:
    cluster = synthetic_cluster(1, 2, nodes=3, node_ports=True, mode="ipvs")
    svc = next(iter(cluster.services.values()))
    cluster.services[(svc.meta.namespace, svc.meta.name)] = replace(svc, external_traffic_policy="Local")
    state = build_state(cluster)
    mode = IpvsMode(random.Random(0))
    mode.sync(node_view(cluster, state, "node-3"))  # pods are on node-1 and node-2
    nodeport = next(s for s in mode.services.values() if s.kind == "NodePort")
    assert len(nodeport.dests) == 2  # no local endpoint: the Cluster ones (kubernetes#97081)
    mode1 = IpvsMode(random.Random(0))
    mode1.sync(node_view(cluster, state, "node-1"))
    nodeport1 = next(s for s in mode1.services.values() if s.kind == "NodePort")
    assert len(nodeport1.dests) == 1
    assert "KUBE-NODE-PORT-LOCAL-TCP" in mode1.dump_with(show="iptables")


def test_cli_rules_and_trace(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["rules", "--mode", "ipvs", "-f", str(EXAMPLES), "--format", "save"]) == 0
    saved = capsys.readouterr().out
    assert saved.startswith("-A -t 192.168.0.2:30080 -s rr\n")
    assert main(["rules", "--mode", "ipvs", "-f", str(EXAMPLES), "--show", "nonsense"]) == 2
    assert "unknown --show" in capsys.readouterr().err
    from pathlib import Path

    dump = Path(str(tmp_path)) / "save.txt"
    dump.write_text(saved)
    args = ["trace", "--ipvsadm-save", str(dump), "--src", "10.0.0.1", "--dst", "192.168.0.2:30080"]
    assert main([*args, "--connections", "4", "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "ipvs" and out["verdict"] == "DNAT"
    # restored in file order, each at the head: the last -a is scheduled first
    assert out["sequence"] == ["10.244.2.2:80", "10.244.1.3:80", "10.244.1.2:80", "10.244.2.2:80"]
    dump.write_text("-A -t nonsense -s rr\n")
    assert main(args) == 2
    assert "save.txt:1" in capsys.readouterr().err
