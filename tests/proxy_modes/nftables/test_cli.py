"""`kubenetem rules --mode nftables`, `trace --mode nftables` and
`trace --nft-ruleset FILE --local-ip IP`: the mode through the shared commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubenetem.cli import main
from proxy_modes.nftables.ruleset import parse_nft

EXAMPLES = str(Path(__file__).resolve().parents[3] / "examples")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_rules_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "rules", "--mode", "nftables", "-f", EXAMPLES)
    assert status == 0
    assert out.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')
    table = parse_nft(out)[("ip", "kube-proxy")]
    # web (3 endpoints), web-nodeport (3, NodePort 30080), web-sticky (3, ClientIP).
    assert sum(1 for name in table.chains if name.startswith("endpoint-")) == 9
    assert sum(1 for name in table.sets if name.startswith("affinity-")) == 3
    assert len(table.sets["service-nodeports"].verdicts) == 1


def test_rules_show_ruleset_and_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, _ = run(capsys, "rules", "--mode", "nftables", "-f", EXAMPLES, "--show", "ruleset")
    assert status == 0 and out.startswith("table ip kube-proxy {\n\tcomment")
    target = tmp_path / "rules.nft"
    status, out, _ = run(capsys, "rules", "--mode", "nftables", "-f", EXAMPLES, "-o", str(target))
    assert status == 0 and out == "" and target.read_text().startswith("add table ip kube-proxy")
    status, _, err = run(capsys, "rules", "--mode", "nftables", "-f", EXAMPLES, "--show", "ipsets")
    assert status == 2 and "unknown --show 'ipsets'" in err


def test_trace_from_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "trace", "--mode", "nftables", "-f", EXAMPLES, "--src", "203.0.113.9", "--dst", "192.168.0.2:30080"
    )
    assert status == 0
    assert out.startswith("nftables: tcp 203.0.113.9:40000 -> 192.168.0.2:30080\n")
    assert "tcp . 30080 in @service-nodeports: goto external-" in out
    assert "masquerade fully-random" in out and "p=1/3" in out


def test_trace_json_and_connections(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys,
        "trace",
        "--mode",
        "nftables",
        "-f",
        EXAMPLES,
        "--src",
        "10.244.1.9",
        "--dst",
        "192.168.0.2:30080",
        "--connections",
        "12",
        "-o",
        "json",
        "--seed",
        "3",
    )
    assert status == 0
    data = json.loads(out)
    assert data["mode"] == "nftables" and data["verdict"] == "DNAT"
    assert data["service"] == "dev/web-nodeport:http"
    assert sorted(e["probability"] for e in data["endpoints"]) == pytest.approx([1 / 3] * 3)
    assert len(data["sequence"]) == 12 and len(set(data["sequence"])) > 1
    assert data["sequence"][0] == f"{data['chosen']['ip']}:{data['chosen']['port']}"
    assert data["cost"]["rules"] > 0 and data["cost"]["lookups"] > 0
    # Seeded: the same sequence again.
    status, again, _ = run(
        capsys,
        "trace",
        "--mode",
        "nftables",
        "-f",
        EXAMPLES,
        "--src",
        "10.244.1.9",
        "--dst",
        "192.168.0.2:30080",
        "--connections",
        "12",
        "-o",
        "json",
        "--seed",
        "3",
    )
    assert json.loads(again)["sequence"] == data["sequence"]


def test_trace_a_captured_ruleset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, listing, _ = run(capsys, "rules", "--mode", "nftables", "-f", EXAMPLES, "--show", "ruleset")
    capture = tmp_path / "node.nft"
    capture.write_text(listing)
    argv = ["trace", "--nft-ruleset", str(capture), "--local-ip", "192.168.0.2", "--src", "203.0.113.9"]
    status, out, _ = run(capsys, *argv, "--dst", "192.168.0.2:30080")
    assert status == 0 and "DNAT to 10.244." in out
    # NodePorts answer on @nodeport-ips (the node IP in the capture), not on other local addresses.
    status, out, _ = run(capsys, *argv, "--dst", "127.0.0.1:30080")
    assert status == 0 and "=> ACCEPT" in out
    # A ClusterIP port that does not exist is rejected; an unallocated ClusterIP dropped.
    status, out, _ = run(capsys, *argv, "--dst", "10.96.0.77:80")
    assert status == 0 and "=> DROP" in out
    _, listed, _ = run(capsys, "get", "services", "-n", "dev", "-f", EXAMPLES, "-o", "json")
    cluster_ip = next(s["spec"]["clusterIP"] for s in json.loads(listed)["items"] if s["metadata"]["name"] == "web")
    status, out, _ = run(capsys, *argv, "--dst", f"{cluster_ip}:81")
    assert status == 0 and "=> REJECT" in out


def test_bad_capture_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    capture = tmp_path / "bad.nft"
    capture.write_text("table ip kube-proxy {\n\tchain c {\n\t\tip daddr 1.2.3.4 wobble\n\t}\n}\n")
    status, out, err = run(capsys, "trace", "--nft-ruleset", str(capture), "--src", "1.1.1.1", "--dst", "1.2.3.4:80")
    assert status == 2 and out == ""
    assert err.strip().count("\n") == 0 and "bad.nft" in err and "line 3" in err and "wobble" in err
    status, _, err = run(
        capsys, "trace", "--nft-ruleset", str(tmp_path / "missing.nft"), "--src", "1.1.1.1", "--dst", "1.2.3.4:80"
    )
    assert status == 2 and "cannot read" in err
