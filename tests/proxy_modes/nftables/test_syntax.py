"""The nft language both ways: kube-proxy's spelling and `nft list ruleset`'s."""

from __future__ import annotations

import pytest

from proxy_modes.nftables.ruleset import Rule, format_priority, format_time, list_ruleset, parse_nft
from proxy_modes.nftables.syntax import SyntaxProblem, parse_duration, tokenize

# (as knftables writes it, as `nft list ruleset` prints it back) - the second
# column is what nft 1.0.6 printed for the first in tests/kernel.
SPELLINGS = [
    ("mark set mark or 0x4000", "meta mark set meta mark | 0x00004000"),
    ("mark and 0x4000 == 0 return", "meta mark & 0x00004000 == 0x00000000 return"),
    ("mark set mark xor 0x4000", "meta mark set meta mark ^ 0x00004000"),
    ('ip daddr { 172.30.0.0/16 } drop comment "x"', 'ip daddr 172.30.0.0/16 drop comment "x"'),
    ("ip saddr != { 203.0.113.0/25 } drop", "ip saddr != 203.0.113.0/25 drop"),
    (
        "ip saddr != { 192.168.0.0/24 , 203.0.113.0/25 , 1.2.3.4 } drop",
        "ip saddr != { 1.2.3.4, 192.168.0.0/24, 203.0.113.0/25 } drop",
    ),
    (
        "numgen random mod 2 vmap { 0 : goto a/b__1.2.3.4/80 , 1 : goto c }",
        "numgen random mod 2 vmap { 0 : goto a/b__1.2.3.4/80, 1 : goto c }",
    ),
    ("update @aff { ip saddr }", "update @aff { ip saddr }"),
    ("ip daddr 172.30.0.41 tcp dport 80 jump x", "ip daddr 172.30.0.41 tcp dport 80 jump x"),
    ("ip daddr . meta l4proto . th dport vmap @service-ips", "ip daddr . meta l4proto . th dport vmap @service-ips"),
    ("meta l4proto sctp dnat to 10.180.0.1:53", "meta l4proto sctp dnat to 10.180.0.1:53"),
    ("ip daddr 1.2.3.4 counter packets 4 bytes 240 reject", "ip daddr 1.2.3.4 reject"),
    ("ct state established,related accept", "ct state { established, related } accept"),
]


@pytest.mark.parametrize(("ours", "theirs"), SPELLINGS)
def test_both_spellings_mean_the_same(ours: str, theirs: str) -> None:
    a, b = Rule(ours), Rule(theirs)
    if "counter" in ours:
        assert [type(e).__name__ for e in a.exprs] == ["Cmp", "NoOp", "Reject"]
        return
    assert a.canonical() == b.canonical()
    assert a.exprs == b.exprs


def test_canonical_is_nfts_spelling() -> None:
    assert Rule("mark set mark or 0x4000").canonical() == "meta mark set meta mark | 0x00004000"
    assert Rule('ip saddr 10.0.0.0/8 goto x comment "short-circuit pod traffic"').canonical() == (
        'ip saddr 10.0.0.0/8 goto x comment "short-circuit pod traffic"'
    )


def test_errors_name_the_line() -> None:
    rule = (
        parse_nft("add table ip t\nadd chain ip t c\nadd rule ip t c ip daddr 1.2.3.4 frobnicate\n")[("ip", "t")]
        .chains["c"]
        .rules[0]
    )
    with pytest.raises(SyntaxProblem) as err:
        _ = rule.exprs
    assert err.value.line == 3 and "frobnicate" in str(err.value)
    with pytest.raises(SyntaxProblem) as err:
        parse_nft("add table ip t\n\nadd rule ip t nochain accept\n")
    assert err.value.line == 3 and "no such chain" in str(err.value)
    rule = (
        parse_nft("add table ip t\nadd chain ip t c\nadd rule ip t c ip daddr 300.1.1.1 drop\n")[("ip", "t")]
        .chains["c"]
        .rules[0]
    )
    with pytest.raises(SyntaxProblem):
        _ = rule.exprs
    with pytest.raises(SyntaxProblem):
        tokenize('add rule "unterminated\n')
    with pytest.raises(SyntaxProblem):
        parse_nft("delete element ip t s { 1.2.3.4 }\n")


def test_durations() -> None:
    assert parse_duration("10800s") == 10800
    assert parse_duration("3h") == 10800
    assert parse_duration("2h59m59s996ms") == pytest.approx(10799.996)
    assert format_time(10800) == "3h"
    assert format_time(100) == "1m40s"
    with pytest.raises(SyntaxProblem):
        parse_duration("3 hours")


def test_priority_names_as_nft_prints_them() -> None:
    assert format_priority("prerouting", -110) == "dstnat - 10"
    assert format_priority("output", -110) == "-110"
    assert format_priority("output", -100) == "-100"
    assert format_priority("postrouting", 100) == "srcnat"
    assert format_priority("input", 0) == "filter"


LISTED = """table ip kube-proxy {
	comment "rules for kube-proxy"
	set cluster-ips {
		type ipv4_addr
		comment "Active ClusterIPs"
		elements = { 172.30.0.41, 172.30.0.42,
			CONTINUED172.30.0.43 }
	}

	set aff {
		type ipv4_addr
		size 65535
		flags dynamic,timeout
		timeout 3h
		elements = { 10.0.0.2 expires 2h59m59s996ms, 10.0.0.3 timeout 1m40s expires 1m39s996ms }
	}

	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "x"
		elements = { 172.30.0.42 . udp . 53 : goto b,
			CONTINUED172.30.0.41 . tcp . 80 comment "ns/a:p" : goto a }
	}

	chain a {
	}

	chain b {
		comment "helper"
		reject
	}

	chain filter-prerouting-pre-dnat {
		type filter hook prerouting priority dstnat - 10; policy accept;
		ct state new jump a
	}
}
""".replace("CONTINUED", " " * 5)  # nft's continuation indent: three tabs and five spaces


def test_reads_nft_list_ruleset() -> None:
    t = parse_nft(LISTED)[("ip", "kube-proxy")]
    assert t.comment == "rules for kube-proxy"
    assert set(t.sets["cluster-ips"].members) == {0xAC1E0029, 0xAC1E002A, 0xAC1E002B}
    aff = t.sets["aff"]
    assert aff.timeout == 10800 and aff.dynamic and aff.size == 65535
    assert aff.members[0x0A000002] == pytest.approx(10799.996)
    assert aff.members[0x0A000003] == pytest.approx(99.996)
    svc = t.sets["service-ips"]
    assert svc.verdicts[(0xAC1E0029, 6, 80)] == ("goto", "a")
    assert svc.comments[(0xAC1E0029, 6, 80)] == "ns/a:p"
    assert t.chains["b"].comment == "helper" and [r.canonical() for r in t.chains["b"].rules] == ["reject"]
    base = t.chains["filter-prerouting-pre-dnat"].base
    assert base is not None and (base.type, base.hook, base.priority) == ("filter", "prerouting", -110)


def test_list_ruleset_round_trip() -> None:
    t = parse_nft(LISTED)[("ip", "kube-proxy")]
    text = list_ruleset(t)
    again = parse_nft(text)[("ip", "kube-proxy")]
    assert list_ruleset(again) == text
    assert "priority dstnat - 10; policy accept;" in text
    assert "elements = { 172.30.0.41, 172.30.0.42,\n\t\t\t     172.30.0.43 }" in text


def test_commands_apply_in_order() -> None:
    tables = parse_nft(
        "add table ip t\nadd chain ip t c\nadd rule ip t c accept\nadd set ip t s { type ipv4_addr ; }\n"
        "add element ip t s { 1.2.3.4 }\nadd element ip t s { 1.2.3.5 }\n"
        "insert rule ip t c drop\n"
    )
    t = tables[("ip", "t")]
    assert [r.body for r in t.chains["c"].rules] == ["drop", "accept"]
    parse_nft("flush chain ip t c\ndelete element ip t s { 1.2.3.4 }\n", tables)
    assert not t.chains["c"].rules and list(t.sets["s"].members) == [0x01020305]
    parse_nft("delete set ip t s\ndelete chain ip t c\n", tables)
    assert not t.sets and not t.chains
    parse_nft("delete table ip t\n", tables)
    assert not tables


def test_fast_reader_gives_the_general_parsers_ir() -> None:
    """Per-service rules are read by one regular expression each when a cold
    destination is first routed; on every rule of rendered tables (all
    shapes, `--masquerade-all` too) that reading equals the general parser's."""
    from nft_helpers import config, rich_services, view

    from proxy_modes.nftables.rules import Syncer
    from proxy_modes.nftables.syntax import parse_rule, parse_rule_fast

    covered = 0
    for cfg in (config(), config(masquerade_all=True)):
        s = Syncer()
        s.sync(view(rich_services(), cfg))
        for name, chain in s.table.chains.items():
            for rule in chain.rules:
                fast = parse_rule_fast(rule.body)
                general, _ = parse_rule(tokenize(rule.body))
                if fast is not None:
                    assert fast == general, rule.body
                    covered += 1
                elif "/" in name:
                    # Only the rarer shapes take the general way: the short-circuits
                    # (fib, comments) and source ranges.
                    assert "fib" in rule.body or rule.comment or "{" in rule.body, rule.body
    assert covered > 50
    assert parse_rule_fast("ip saddr 10.0.0.0/8 goto x") == parse_rule(tokenize("ip saddr 10.0.0.0/8 goto x"))[0]
    for bad in ("ip saddr 999.0.0.1 goto x", "ip saddr 10.0.0.0/40 goto x"):
        with pytest.raises(SyntaxProblem):
            parse_rule_fast(bad)
        with pytest.raises(SyntaxProblem):
            parse_rule(tokenize(bad))
