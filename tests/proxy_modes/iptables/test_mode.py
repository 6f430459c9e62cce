"""The iptables mode behind the shared protocol and the CLI: `rules`,
`trace` (text and JSON), `trace --iptables-save`, UDP conntrack cleanup."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from kn_iptables_views import ep, port, state, view

from kubenetem.cli import main
from netem.addr import parse_ip
from netem.packet import ACK, FIN, RST, SYN, TCP, UDP, Packet
from proxy_modes import registry
from proxy_modes.base import ProxyMode, Verdict
from proxy_modes.iptables.engine import IptablesMode
from proxy_modes.netfilter import syntax

EXAMPLES = str(Path(__file__).resolve().parents[3] / "examples")


def test_the_mode_is_registered_and_speaks_the_protocol() -> None:
    mode = registry.create("iptables", random.Random(0))
    assert isinstance(mode, ProxyMode) and mode.name == "iptables"


def test_rules_command_prints_a_loadable_node_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--mode", "iptables", "-f", EXAMPLES]) == 0
    out = capsys.readouterr().out
    tables = syntax.parse_save(out)
    assert "KUBE-SERVICES" in tables["nat"].chains
    assert out.startswith("*filter\n:INPUT ACCEPT [0:0]\n")
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in out
    assert main(["rules", "--mode", "iptables", "-f", EXAMPLES, "--format", "restore"]) == 0
    restore = capsys.readouterr().out
    assert restore.startswith("*filter\n:KUBE-SERVICES - [0:0]\n") and "PREROUTING" not in restore
    assert main(["rules", "--mode", "iptables", "-f", EXAMPLES, "--format", "save"]) == 0
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in capsys.readouterr().out


def test_rules_command_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--mode", "iptables", "-f", EXAMPLES, "--format", "yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown --format 'yaml'" in err


def test_trace_tells_the_story_and_every_reachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["trace", "--mode", "iptables", "-f", EXAMPLES, "--src", "10.244.1.9", "--dst", "10.101.110.4:80"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "nat KUBE-SERVICES rule 1 matched" in text and "a new connection could reach:" in text
    assert text.count("p=1/3 (0.3333)") == 3
    assert main([*args, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"mode", "packet", "verdict", "endpoints", "chosen", "masquerade", "cost", "steps"}
    assert doc["mode"] == "iptables" and doc["verdict"] == "DNAT" and doc["service"] == "dev/web:http"
    assert doc["packet"] == {"proto": "tcp", "src": "10.244.1.9", "sport": 40000, "dst": "10.101.110.4", "dport": 80}
    assert abs(sum(e["probability"] for e in doc["endpoints"]) - 1) < 1e-9
    assert doc["chosen"] in [{"ip": e["ip"], "port": e["port"]} for e in doc["endpoints"]]
    assert doc["masquerade"] is False and doc["cost"]["rules"] > 3 and doc["cost"]["lookups"] == 1
    assert any(s["kind"] == "rule" and s.get("chain") == "KUBE-SERVICES" for s in doc["steps"])


def test_a_packet_no_rule_touches_is_accepted_with_no_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["trace", "--mode", "iptables", "-f", EXAMPLES, "--src", "10.244.1.9", "--dst", "8.8.8.8:53", "-o", "json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "ACCEPT" and doc["endpoints"] == [] and doc["chosen"] is None


def test_trace_through_a_captured_iptables_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--mode", "iptables", "-f", EXAMPLES, "--format", "save"]) == 0
    dump = tmp_path / "node.save"
    dump.write_text(capsys.readouterr().out)
    args = ["trace", "--iptables-save", str(dump), "--local-ip", "192.168.0.2", "--src", "203.0.113.5"]
    assert main([*args, "--dst", "192.168.0.2:30080", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "DNAT" and doc["masquerade"] is True and len(doc["endpoints"]) == 3
    assert doc["service"] == "dev/web-nodeport:http"  # named from kube-proxy's comments
    assert main([*args, "--dst", "10.101.110.4:80", "--connections", "6"]) == 0
    assert "6 connections reached, in order:" in capsys.readouterr().out


def test_captures_that_cannot_be_traced_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "ipvs.save"
    dump.write_text(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n"
    )
    args = ["trace", "--iptables-save", str(dump), "--src", "1.2.3.4", "--dst", "5.6.7.8:80"]
    assert main([*args, "--local-ip", "192.168.0.2"]) == 2
    assert "ipvs.save: line 3: rule uses ipset 'KUBE-CLUSTER-IP'" in capsys.readouterr().err
    dump.write_text("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    assert main(args) == 2
    assert "--local-ip" in capsys.readouterr().err
    dump.write_text("*nat\n-A NOWHERE -j ACCEPT\nCOMMIT\n")
    assert main([*args, "--local-ip", "192.168.0.2"]) == 2
    assert "ipvs.save: line 2: chain 'NOWHERE' does not exist in table nat" in capsys.readouterr().err


def test_udp_entries_to_removed_endpoints_are_cleaned_but_tcp_ones_stay() -> None:
    udp = port("ns", "dns", "172.30.0.10", 53, "dns", "UDP")
    tcp = port("ns", "web", "172.30.0.11", 80, "web", "TCP")
    mode = IptablesMode(random.Random(3))
    mode.sync(view(state((udp, [ep("10.180.0.1", 53)]), (tcp, [ep("10.180.0.3", 80)]))))
    client = parse_ip("10.0.0.9")
    first_udp = mode.route(Packet(UDP, client, 5000, parse_ip("172.30.0.10"), 53), 0.0)
    first_tcp = mode.route(Packet(TCP, client, 5001, parse_ip("172.30.0.11"), 80), 0.0)
    assert first_udp.endpoint == (parse_ip("10.180.0.1"), 53) and first_tcp.endpoint == (parse_ip("10.180.0.3"), 80)
    mode.sync(view(state((udp, [ep("10.180.0.2", 53)]), (tcp, [ep("10.180.0.4", 80)]))))
    again_udp = mode.route(Packet(UDP, client, 5000, parse_ip("172.30.0.10"), 53), 1.0)
    again_tcp = mode.route(Packet(TCP, client, 5001, parse_ip("172.30.0.11"), 80, flags=0x02), 1.0)
    assert not again_udp.established and again_udp.endpoint == (parse_ip("10.180.0.2"), 53)
    assert again_tcp.established and again_tcp.endpoint == first_tcp.endpoint


def test_decisions_name_the_service_and_count_the_walk() -> None:
    svc = port("ns", "web", "172.30.0.11", 80, "web")
    mode = IptablesMode(random.Random(3))
    mode.sync(view(state((svc, [ep("10.180.0.3", 80), ep("10.180.0.4", 80)]))))
    d = mode.route(Packet(TCP, parse_ip("10.0.0.9"), 5001, parse_ip("172.30.0.11"), 80), 0.0)
    assert d.verdict == Verdict.DNAT and str(d.service) == "ns/web:web"
    trace = mode.trace(Packet(TCP, parse_ip("10.0.0.9"), 5002, parse_ip("172.30.0.11"), 80), 0.0)
    # Every rule the walk evaluated is in the story: those that matched and those passed over.
    matched = sum(1 for s in trace.steps if s.kind == "rule")
    passed = sum(s.detail.get("unmatched", 0) for s in trace.steps)
    assert trace.decision.rules == matched + passed > 5


@pytest.mark.parametrize("close", ["fin", "client rst"])
def test_a_syn_reopening_a_closed_connection_is_balanced_afresh(close: str) -> None:
    """nf_conntrack_tcp_packet: a SYN on a TIME_WAIT/CLOSE entry closed by a
    FIN, or reset by this side, kills it and is looked up again: a new
    connection, through the nat table, so an endpoint removed meanwhile is
    not reached (kept in place, the old DNAT would still send it there)."""
    svc = port("ns", "web", "172.30.0.11", 80, "web")
    mode = IptablesMode(random.Random(3))
    mode.sync(view(state((svc, [ep("10.180.0.3", 80)]))))
    client, vip = parse_ip("10.0.0.9"), parse_ip("172.30.0.11")

    def client_sends(flags: int, now: float) -> None:
        mode.route(Packet(TCP, client, 5001, vip, 80, flags=flags), now)

    def pod_sends(flags: int, now: float) -> None:
        mode.route(Packet(TCP, parse_ip("10.180.0.3"), 80, client, 5001, flags=flags), now)

    client_sends(SYN, 0.0)
    pod_sends(SYN | ACK, 0.1)
    client_sends(ACK, 0.2)
    if close == "fin":
        client_sends(FIN | ACK, 0.3)
        pod_sends(FIN | ACK, 0.4)
        client_sends(ACK, 0.5)
    else:
        client_sends(RST, 0.5)
    mode.sync(view(state((svc, [ep("10.180.0.4", 80)]))))
    again = mode.route(Packet(TCP, client, 5001, vip, 80, flags=SYN), 1.0)
    assert not again.established and again.endpoint == (parse_ip("10.180.0.4"), 80)


def test_a_packet_conntrack_finds_invalid_is_not_translated() -> None:
    """nf_conntrack_in drops an INVALID packet's conntrack reference: no NAT
    for it, `ctstate INVALID`, and KUBE-FORWARD drops it (an ACK before the
    SYN/ACK is invalid in SYN_SENT)."""
    svc = port("ns", "web", "172.30.0.11", 80, "web")
    mode = IptablesMode(random.Random(3))
    mode.sync(view(state((svc, [ep("10.180.0.3", 80)]))))
    client, vip = parse_ip("10.0.0.9"), parse_ip("172.30.0.11")
    assert mode.route(Packet(TCP, client, 5001, vip, 80, flags=SYN), 0.0).verdict is Verdict.DNAT
    early = mode.route(Packet(TCP, client, 5001, vip, 80, flags=ACK), 0.1)
    assert early.verdict is Verdict.DROP and early.endpoint is None and not early.established
    trace = mode.trace(Packet(TCP, client, 5001, vip, 80, flags=ACK), 0.2)
    assert any("INVALID" in s.text for s in trace.steps if s.kind == "conntrack")
