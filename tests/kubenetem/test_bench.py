"""The measurement core and `kubenetem bench` on a small cluster: numbers that
are right by construction (an even split for round robin, every connection
sticky with ClientIP affinity) and the outputs people read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubenetem import bench, report
from kubenetem.cli import main
from kubenetem.scenarios import synthetic_cluster
from kubenetem.stats import chi_square, percentile
from proxy_modes import registry


@pytest.mark.parametrize("mode", registry.available())
def test_established_packets_follow_their_connection(mode: str) -> None:
    """The timed established packets are real ones: the handshake was
    completed, so no mode sees them as new or as INVALID."""
    point = bench.measure(mode, synthetic_cluster(services=20, endpoints=3, nodes=2), affinity=False, flows=300)
    assert point.est_followed == 1.0


@pytest.mark.parametrize("mode", ["ipvs", "userspace"])
def test_round_robin_modes_split_evenly_and_stick(mode: str) -> None:
    cluster = synthetic_cluster(services=20, endpoints=5, nodes=2, affinity=False)
    point = bench.measure(mode, cluster, affinity=False, flows=500, seed=3)
    assert point.services == 20 and point.endpoints == 5 and point.flows == 500
    # Round robin over 5 endpoints: exactly even, so max/min 1 and p = 1.
    assert point.balance.max_min == 1.0 and point.balance.p_value == pytest.approx(1.0)
    assert set(point.balance.shares.values()) == {0.2}
    assert 0 < point.new_median_us <= point.new_p99_us and 0 < point.est_median_us <= point.est_p99_us
    assert point.sync_s > 0 and point.partial_sync_s > 0 and point.objects > 0 and point.memory_mb > 0
    sticky = bench.measure(
        mode, synthetic_cluster(services=20, endpoints=5, nodes=2, affinity=True), affinity=True, flows=500, seed=3
    )
    assert sticky.balance.sticky == 1.0


def test_chi_square_flags_an_uneven_split() -> None:
    _, p_even = chi_square([100, 100, 100, 100], [100.0] * 4)
    _, p_skewed = chi_square([160, 80, 80, 80], [100.0] * 4)
    assert p_even == 1.0 and p_skewed < 1e-6
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_bench_command_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "chart.png"
    status = main(
        [
            "bench",
            "--modes",
            "ipvs,userspace",
            "--services",
            "10,30",
            "--endpoints",
            "3",
            "--flows",
            "200",
            "--affinity",
            "none",
            "-o",
            "json",
            "--plot",
            str(chart),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    data = json.loads(out)
    assert data["machine"]["python"] and len(data["points"]) == 4
    assert sorted((p["mode"], p["services"]) for p in data["points"]) == [
        ("ipvs", 10),
        ("ipvs", 30),
        ("userspace", 10),
        ("userspace", 30),
    ]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--modes", "carrier-pigeon"]) == 2
    assert "unknown mode carrier-pigeon" in capsys.readouterr().err
    assert main(["bench", "--services", "10,x"]) == 2
    assert "--services: not a list of numbers" in capsys.readouterr().err


def test_report_folder(tmp_path: Path) -> None:
    result = bench.sweep(["userspace"], [10], 3, [False], seed=1, flows=200)
    files = report.write_folder(result, tmp_path / "out", intro="# test\n")
    assert [f.name for f in files] == ["report.md", "chart.png", "results.json"]
    text = files[0].read_text()
    assert "| userspace | 10 | none |" in text and "![time against services](chart.png)" in text
    assert json.loads(files[2].read_text())["points"][0]["mode"] == "userspace"


def test_chart_labels_minor_ticks_only_where_they_fit() -> None:
    within_a_decade = report._minor_labels(2.0, 9.0)
    assert [within_a_decade(y, 0) for y in (2, 3, 7)] == ["2", "3", "7"]
    two_decades = report._minor_labels(1.5, 40.0)
    assert [two_decades(y, 0) for y in (2, 3, 5, 20, 30, 50)] == ["2", "", "5", "20", "", "50"]
    wide = report._minor_labels(0.01, 10.0)
    assert wide(0.02, 0) == "" and wide(5, 0) == ""


@pytest.mark.kernel
def test_bench_real_kernel_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--real loads rules into the kernel and connects through them, for both
    iptables and nftables; nftables sizes above the cap are skipped, saying so."""
    chart = tmp_path / "chart.png"
    status = main(
        [
            "bench",
            "--modes",
            "iptables,nftables",
            "--services",
            "20,40",
            "--endpoints",
            "2",
            "--flows",
            "200",
            "--affinity",
            "none",
            "--real",
            "--real-nft-max",
            "20",
            "-o",
            "json",
            "--plot",
            str(chart),
        ]
    )
    assert status == 0
    real = json.loads(capsys.readouterr().out)["real"]
    assert sorted((p["mode"], p["services"]) for p in real["points"]) == [
        ("iptables", 20),
        ("iptables", 40),
        ("nftables", 20),
    ]
    assert all(p["load_s"] > 0 and 50 < p["connect_last_us"] < 1e6 for p in real["points"])
    assert "nftables skipped at 40 services" in real["notes"][0]
    assert chart.stat().st_size > 10_000
