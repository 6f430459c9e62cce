"""`kubenetem routes`: a node's table as `ip route` prints it, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubenetem.cli import main

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")


def test_routes_of_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "-f", EXAMPLES, "--node", "worker-2"]) == 0
    assert capsys.readouterr().out == (
        "default via 192.168.0.1 dev eth0 \n"
        "10.244.1.0/24 via 192.168.0.2 dev eth0 \n"
        "10.244.2.0/24 dev cni0 proto kernel scope link src 10.244.2.1 \n"
        "192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.3 \n"
    )


def test_local_table_and_route_get(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "-f", EXAMPLES, "--table", "local"]) == 0
    assert "local 192.168.0.2 dev eth0 proto kernel scope host src 192.168.0.2 \n" in capsys.readouterr().out
    assert main(["routes", "-f", EXAMPLES, "--get", "10.244.2.9"]) == 0
    assert capsys.readouterr().out == "10.244.2.9 via 192.168.0.3 dev eth0 src 192.168.0.2 uid 0 \n    cache \n"


def test_output_file(tmp_path: Path) -> None:
    out = tmp_path / "routes.txt"
    assert main(["routes", "-f", EXAMPLES, "-o", str(out)]) == 0
    assert out.read_text().startswith("default via 192.168.0.1 dev eth0 \n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", "worker-9"], "no node named 'worker-9' (nodes: worker-1, worker-2)"),
        (["--get", "10.244.2"], "--get: not an IPv4 address (got '10.244.2')"),
        (["--no-default-route", "--get", "8.8.8.8"], "8.8.8.8: RTNETLINK answers: Network is unreachable"),
        (["--node-prefix", "40"], "--node-prefix: a prefix length between 8 and 32 (got 40)"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "-f", EXAMPLES, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == message + "\n"


def test_trace_shows_the_hops_to_the_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    """After the mode's DNAT, the node's routes carry the packet to the chosen pod."""
    import json

    args = ["trace", "-f", EXAMPLES, "--mode", "ipvs", "--node", "worker-1", "--src", "203.0.113.7"]
    assert main([*args, "--dst", "192.168.0.2:30080", "--hops", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    endpoint = data["chosen"]["ip"]
    hops = data["hops"]
    assert hops[-1]["to"].startswith("pod:dev/web-") and hops[-1]["next_hop"] == endpoint
    assert hops[0]["node"] == "worker-1"
    if len(hops) == 2:  # the endpoint lives on worker-2: via its node IP first
        assert hops[0] == {
            "node": "worker-1",
            "table": "main",
            "route": "10.244.2.0/24 via 192.168.0.3 dev eth0",
            "next_hop": "192.168.0.3",
            "to": "node:worker-2",
        }
    assert main([*args, "--dst", "192.168.0.2:30080", "--hops"]) == 0
    text = capsys.readouterr().out
    assert "\nhops:\n  worker-1: " in text


def test_trace_hops_need_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "ipvs.txt"
    dump.write_text("")
    args = ["trace", "--ipvsadm-save", str(dump), "--src", "10.0.0.1", "--dst", "10.0.0.2:80", "--hops"]
    assert main(args) == 2
    assert "--hops needs the cluster's manifests" in capsys.readouterr().err
