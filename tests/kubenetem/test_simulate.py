"""`kubenetem simulate` with every registered proxy mode on the example cluster.

The example cluster: Deployment dev/web with three pods, two on worker-1
(10.244.1.2, .3) and one on worker-2 (10.244.2.2); clients are pods on the
workers (round robin from worker-1). What must hold for every mode, and what
differs by mode when a pod dies (the point of the simulation):

- iptables/nftables (conntrack keeps the DNAT): new connections DNATed to
  the dead pod in [kill, kill + propagation) time out, 127 s later;
- IPVS: the same connections are rescheduled when their SYN is retransmitted
  after the sync (weight 0 + conn_reuse_mode/expire_nodest_conn): retried,
  not failed;
- userspace: the proxy's dial fails and it dials the next endpoint: nothing
  fails, the connections of the window are re-dialled.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from kubenetem.cli import main
from kubenetem.simulation import Kill, Rollout, Scale, SimConfig, kernel_cost_model, percentiles, simulate
from netem.addr import int_to_ip, parse_ip
from netem.cluster import Cluster, load_cluster
from netem.sim import MS, NS, OK, REFUSED, TIMEOUT
from proxy_modes import registry

from ..conftest import EXAMPLES, require_real

MODES = registry.available()
WEB_PODS = {parse_ip(a) for a in ("10.244.1.2", "10.244.1.3", "10.244.2.2")}
REMOTE_POD = parse_ip("10.244.2.2")


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return load_cluster([str(EXAMPLES)])


def pod_at(cluster: Cluster, ip: int) -> str:
    (pod,) = [p for p in cluster.pods if p.pod_ip == ip]
    return f"{pod.meta.namespace}/{pod.meta.name}"


def hops_to(ep_ip: int, client: int = parse_ip("10.244.1.254")) -> int:
    """Links from a client to an endpoint: its veth, [its node's eth0,] the pod's veth."""
    return 2 if int_to_ip(ep_ip).split(".")[2] == int_to_ip(client).split(".")[2] else 3


@pytest.mark.parametrize("mode", MODES)
def test_latency_is_hops_times_delay(cluster: Cluster, mode: str) -> None:
    config = SimConfig(mode=mode, clients=1, connections=30, duration=3.0, link="delay 10ms", services=["dev/web"])
    report = simulate(cluster, config)
    records = report.sim.records
    assert len(records) == 30 and all(r[2] == OK for r in records)
    assert {r[4][0] for r in records if r[4]} == WEB_PODS  # every endpoint was used
    for start, end, _, _, ep, handshake, _, _, _ in records:
        assert ep is not None
        hops = hops_to(ep[0])
        if mode == "userspace":
            # The node's proxy accepts the connection itself (client veth, both
            # ways), then dials the endpoint once the client's ACK is in.
            assert handshake == 20 * MS
            leg2 = 2 * (hops - 1) * 10 * MS
            assert end - start == 40 * MS + 2 * leg2
        elif kernel_cost_model(mode) is None:
            assert handshake == 2 * hops * 10 * MS
            assert end - start == 4 * hops * 10 * MS
        else:  # + the modeled kernel time of the packets routed on the way (a few rules here)
            assert 0 < handshake - 2 * hops * 10 * MS < MS
            assert 0 < end - start - 4 * hops * 10 * MS < MS


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_pod_fails_connections_only_in_the_propagation_window(cluster: Cluster, mode: str) -> None:
    victim = pod_at(cluster, REMOTE_POD)
    config = SimConfig(
        mode=mode,
        clients=20,
        connections=40,
        duration=10.0,
        link="delay 10ms",
        services=["dev/web"],
        events=[Kill(victim, 5.0)],
    )
    report = simulate(cluster, config)
    records = report.sim.records
    assert len(records) == 800

    def in_window(r: tuple[int, ...]) -> bool:
        # new connections the nodes still send to the dead pod: from the kill
        # to the sync (1 s later), give or take the packets in flight
        return 5 * NS - 100 * MS <= r[0] < 6 * NS + 100 * MS

    # A connection the pod had accepted just before it died hangs until TCP
    # gives up (tcp_retries2): the same in every mode.
    in_flight = [r for r in records if r[2] != OK and r[0] < 5 * NS]
    assert all(r[0] >= 5 * NS - 100 * MS and r[2] in (TIMEOUT, "reset") for r in in_flight)
    failed = [r for r in records if r[2] != OK and r[0] >= 5 * NS]
    retried = [r for r in records if r[2] == OK and (r[6] or r[7])]
    assert all(in_window(r) for r in failed + retried)
    # Once every node synced, nobody is sent to the dead pod.
    assert not [r for r in records if r[4] and r[4][0] == REMOTE_POD and r[0] >= 6 * NS + 100 * MS]
    assert [r for r in records if r[4] and r[4][0] == REMOTE_POD and r[0] < 5 * NS]  # it served before
    if mode == "userspace":
        assert not failed
        assert retried and all(r[7] >= 1 for r in retried)  # the proxy dialled another endpoint
        assert all(r[4] != (REMOTE_POD, 80) for r in retried)
        assert all(r[1] - r[0] >= 250 * MS for r in retried)  # the first dial timed out (250 ms)
    elif mode == "ipvs":
        assert not failed
        # Rescheduled by a retransmitted SYN: the first one after the sync finds the
        # quiesced server's connection with conntrack's old entry and is dropped as
        # the connection expires (ip_vs_core.c old_ct); the next is scheduled afresh.
        assert retried and all(r[6] >= 2 and r[4] != (REMOTE_POD, 80) for r in retried)
        assert all(r[1] - r[0] >= 3 * NS for r in retried)
    else:
        assert failed and all(r[2] == TIMEOUT and r[1] - r[0] == 127 * NS for r in failed)
        assert all(r[4] == (REMOTE_POD, 80) for r in failed)
    assert report.data["events"][0]["synced_at_s"] == 6.0


@pytest.mark.parametrize("mode", MODES)
def test_a_pod_whose_process_died_refuses_until_the_sync(cluster: Cluster, mode: str) -> None:
    victim = pod_at(cluster, REMOTE_POD)
    config = SimConfig(
        mode=mode,
        clients=20,
        connections=20,
        duration=10.0,
        link="delay 10ms",
        services=["dev/web"],
        events=[Kill(victim, 5.0, REFUSED)],
    )
    records = simulate(cluster, config).sim.records
    # Started just before: reset by the dead process's RST (or refused, if the SYN came late).
    in_flight = [r for r in records if r[2] != OK and r[0] < 5 * NS]
    assert all(r[0] >= 5 * NS - 150 * MS and r[2] in ("reset", REFUSED) for r in in_flight)
    failed = [r for r in records if r[2] != OK and r[0] >= 5 * NS]
    assert all(r[0] < 6 * NS + 100 * MS for r in failed)
    if mode == "userspace":
        assert not failed  # a refused dial costs nothing: the next endpoint at once
        assert [r for r in records if r[7]]
    else:
        # The kernel modes DNAT to the pod until the sync: its RST refuses at once.
        assert failed and {r[2] for r in failed} == {REFUSED}
        # one RTT (+ the modeled kernel time of the SYN, where a mode has a model)
        assert all(0 <= r[1] - r[0] - 2 * hops_to(REMOTE_POD, r[8]) * 10 * MS < MS for r in failed)


@pytest.mark.parametrize("mode", MODES)
def test_shares_follow_the_balancing(cluster: Cluster, mode: str) -> None:
    config = SimConfig(mode=mode, clients=40, connections=30, duration=10.0, services=["dev/web"], seed=3)
    report = simulate(cluster, config)
    counts = Counter(r[4] for r in report.sim.records)
    assert {ep[0] for ep in counts if ep} == WEB_PODS
    n = sum(counts.values())
    expected = n / 3
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 13.82  # uniform at p = 0.001 with 2 degrees of freedom
    if mode in ("ipvs", "userspace"):
        # Round robin on each of the two nodes: at most one apart per node.
        assert max(counts.values()) - min(counts.values()) <= 2
    (svc,) = report.data["services"]
    assert svc["service"] == "dev/web:http"
    assert math.isclose(sum(ep["share"] for ep in svc["endpoints"]), 1.0)


@pytest.mark.parametrize("mode", MODES)
def test_client_ip_affinity_sticks(cluster: Cluster, mode: str) -> None:
    config = SimConfig(mode=mode, clients=12, connections=10, duration=5.0, services=["dev/web-sticky"])
    records = simulate(cluster, config).sim.records
    by_client: dict[int, set[object]] = {}
    for r in records:
        by_client.setdefault(r[8], set()).add(r[4])
    assert len(by_client) == 12
    assert all(len(eps) == 1 for eps in by_client.values())
    assert len({next(iter(eps)) for eps in by_client.values()}) > 1  # but not everyone to one pod


@pytest.mark.parametrize("mode", MODES)
def test_scale_up_and_down(cluster: Cluster, mode: str) -> None:
    config = SimConfig(
        mode=mode,
        clients=20,
        connections=40,
        duration=12.0,
        link="delay 1ms",
        services=["dev/web"],
        events=[Scale("dev/web", 6, 3.0), Scale("dev/web", 2, 8.0)],
    )
    report = simulate(cluster, config)
    records = report.sim.records
    assert all(r[2] == OK for r in records)  # terminating pods serve through their grace period
    new = {r[4][0] for r in records if r[4] and r[4][0] not in WEB_PODS}
    assert len(new) == 3
    assert all(r[0] >= 4 * NS for r in records if r[4] and r[4][0] in new)  # only after the sync
    late = {r[4][0] for r in records if r[0] >= 9 * NS + 50 * MS}
    assert len(late) == 2  # four terminated at 8 s, out of the nodes' views at 9 s
    kinds = [e["event"] for e in report.data["events"]]
    assert sum(k.startswith("terminate") for k in kinds) == 4
    assert sum("ready on" in k for k in kinds) == 3


@pytest.mark.parametrize("mode", MODES)
def test_rollout_replaces_every_pod_without_failures(cluster: Cluster, mode: str) -> None:
    config = SimConfig(
        mode=mode,
        clients=20,
        connections=50,
        duration=12.0,
        link="delay 1ms",
        services=["dev/web"],
        events=[Rollout("dev/web", 2.0)],
    )
    records = simulate(cluster, config).sim.records
    assert all(r[2] == OK for r in records)
    # Three steps of one pod (maxSurge 25% of 3, rounded up) at 2, 4, 6 s; synced 1 s later.
    late = {r[4][0] for r in records if r[0] >= 7 * NS + 50 * MS}
    assert len(late) == 3 and not late & WEB_PODS


def test_udp_service(cluster: Cluster) -> None:
    # ExternalName and headless services carry no traffic; an unknown one is refused up front.
    with pytest.raises(Exception, match="no service ports"):
        simulate(cluster, SimConfig(mode=MODES[0], services=["dev/billing-db"]))


def test_outside_clients_reach_nodeports(cluster: Cluster) -> None:
    for mode in MODES:
        config = SimConfig(mode=mode, clients=4, connections=20, duration=2.0, link="delay 10ms", outside=True)
        report = simulate(cluster, config)
        records = report.sim.records
        assert len(records) == 80 and all(r[2] == OK for r in records)
        assert {report.sim.targets[r[3]].name for r in records} == {"dev/web-nodeport:http"}
        assert all(int_to_ip(r[8]).startswith("203.0.113.") for r in records)


def test_percentiles_are_nearest_rank() -> None:
    values = [v * MS for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([7 * MS]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7.0}
    assert percentiles([]) == {}


# --- the command ---------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["simulate", "-f", str(EXAMPLES), *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_json(capsys: pytest.CaptureFixture[str], cluster: Cluster) -> None:
    victim = pod_at(cluster, REMOTE_POD)
    status, out, _ = run_cli(
        capsys,
        "--mode",
        "ipvs",
        "--clients",
        "4",
        "--connections",
        "10",
        "--link",
        "delay 5ms",
        "--kill",
        f"pod/{victim}@2s",
        "--service",
        "dev/web",
        "-o",
        "json",
    )
    assert status == 0
    data = json.loads(out)
    assert data["mode"] == "ipvs"
    assert data["connections"]["total"] == 40
    assert data["connections"]["succeeded"] + data["connections"]["failed"] == 40
    # 2 or 3 links each way, + the modeled kernel time of the rules IPVS's packets walk (well under 1 ms)
    assert any(0 < data["latency_ms"]["connect"]["p50"] - ms < 1 for ms in (20.0, 30.0))
    assert data["kernel_cost"]["model"] == "ipvs" and data["kernel_cost"]["total_ms"] > 0
    assert data["events"][0]["event"].startswith(f"kill pod/{victim}")
    assert sum(row["started"] for row in data["timeline"]) == 40


def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--mode", "userspace", "--clients", "2", "--connections", "3")
    assert status == 0
    assert out.startswith("mode userspace: 2 clients x 3 connections")
    assert "latency connect" in out and "dev/web:http (tcp)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kill", "pod/nope@5s"], "no pod named 'nope'"),
        (["--kill", "web@5s"], "want pod/NAME@TIME"),
        (["--kill", "pod/x@soon"], "not a time"),
        (["--link", "delay banana"], "delay"),
        (["--mode", "bogus"], "unknown proxy mode 'bogus'"),
        (["--scale", "deployment/nope=3@1s"], "no single Deployment named 'nope'"),
        (["--clients", "0"], "--clients"),
        (["--service", "dev/none"], "no service ports"),
    ],
)
def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    status, out, err = run_cli(capsys, "--mode", MODES[0], *args)
    assert status == 2
    assert out == ""
    assert message in err and len(err.strip().splitlines()) == 1


# --- pcap, read back by tshark ---------------------------------------------------------


def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        if require_real():
            pytest.fail("KUBENETEM_REQUIRE_REAL=1 but tshark is missing (Debian package tshark)", pytrace=False)
        pytest.skip("tshark is missing")
    return path


def test_pcap_opens_in_tshark(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    binary = tshark()
    pcap = tmp_path / "sim.pcap"
    status, _, _ = run_cli(
        capsys,
        "--mode",
        "ipvs",
        "--clients",
        "1",
        "--connections",
        "2",
        "--link",
        "delay 10ms",
        "--service",
        "dev/web",
        "--pcap",
        str(pcap),
    )
    assert status == 0
    fields = ["frame.time_relative", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags.str", "tcp.len"]
    out = subprocess.run(
        [binary, "-r", str(pcap), "-T", "fields", *(x for f in fields for x in ("-e", f)), "-E", "separator=|"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = [line.split("|") for line in out.splitlines()]
    # Two connections, every packet captured on each link it crossed.
    assert len(rows) >= 2 * 8 * 2
    client, vip = rows[0][1], "10.101.110.4"
    syns = [r for r in rows if "S" in r[5] and "A" not in r[5].replace("·", "")]
    assert syns[0][1:3] == [client, vip] and syns[0][4] == "80"  # as the client sent it
    assert syns[1][1] == client and syns[1][2] in {int_to_ip(ip) for ip in WEB_PODS}  # after the DNAT
    data = [r for r in rows if r[6] not in ("", "0")]
    assert {r[6] for r in data} == {"100", "1000"}  # the request and the response payloads
    assert float(rows[1][0]) == pytest.approx(0.010, abs=1e-6)  # the first hop's delay, to the ns
    analysis = subprocess.run(
        [binary, "-r", str(pcap), "-Y", "tcp.analysis.flags && !tcp.analysis.window_update"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert analysis == ""  # consistent sequence numbers: nothing tshark would flag


def test_pcap_marks_the_retransmitted_syn(capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Cluster) -> None:
    binary = tshark()
    pcap = tmp_path / "kill.pcap"
    victim = pod_at(cluster, REMOTE_POD)
    status, _, _ = run_cli(
        capsys,
        "--mode",
        MODES[0],
        "--clients",
        "4",
        "--connections",
        "10",
        "--service",
        "dev/web",
        "--kill",
        f"pod/{victim}@0s",
        "--propagation",
        "10s",
        "--pcap",
        str(pcap),
    )
    assert status == 0
    out = subprocess.run(
        [
            binary,
            "-r",
            str(pcap),
            "-Y",
            "tcp.analysis.retransmission && tcp.flags.syn == 1",
            "-T",
            "fields",
            "-e",
            "ip.dst",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip()  # tshark sees the SYNs sent again to the dead pod (or the service)


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
@pytest.mark.parametrize(
    "link", ["delay 5ms loss 10%", "delay 5ms 3ms loss 10% duplicate 5%"], ids=["steady", "jitter"]
)
@pytest.mark.parametrize("mode", MODES)
def test_no_connection_is_left_hanging(mode: str, link: str, udp: bool) -> None:
    """Lossy links, a pod killed, a proxy in between: every connection ends, recorded once."""
    from kubenetem.scenarios import synthetic_cluster

    cluster = synthetic_cluster(services=3, endpoints=3, nodes=3, udp=udp)
    config = SimConfig(mode=mode, clients=6, connections=15, duration=6.0, link=link, events=[Kill("ns0/svc0-0", 2.0)])
    report = simulate(cluster, config)
    assert len(report.sim.records) == 6 * 15
    assert not report.sim.heap
    ok = sum(r[2] == OK for r in report.sim.records)
    assert ok >= 6 * 15 * (0.3 if udp else 0.9)  # UDP loses ~47% over 6 lossy links; TCP retransmits


def test_a_scale_after_a_rollout_adds_pods_of_the_new_replicaset(cluster: Cluster) -> None:
    config = SimConfig(
        mode=MODES[0],
        clients=4,
        connections=10,
        duration=12.0,
        services=["dev/web"],
        events=[Rollout("web", 1.0), Scale("web", 5, 8.0)],
    )
    events = [e["event"] for e in simulate(cluster, config).data["events"]]
    made = [e.split()[0].removeprefix("pod/dev/") for e in events if "ready on" in e]
    assert len(made) == 3 + 2
    replicasets = {name.rsplit("-", 1)[0] for name in made}
    assert len(replicasets) == 1 and replicasets != {"web-79ffbd7fbd"}
