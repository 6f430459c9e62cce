# ruff: noqa: E501  (rules are data; their lines stay whole)
"""The match and target semantics, one kernel behaviour per test (xt_recent.c,
xt_statistic.c, xt_addrtype.c, xt_conntrack.c, xt_mark.c, multiport, MARK,
the hook order and the nat-only-for-new-connections rule)."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from netem.addr import parse_ip
from netem.errors import RulesetError
from netem.packet import ACK, SYN, TCP, UDP, Packet
from proxy_modes.base import Verdict
from proxy_modes.netfilter import xt
from proxy_modes.netfilter.engine import Netfilter, SimpleSet

NODE = parse_ip("192.168.0.2")


def nat(rules: str, pre: str = "", extra_chains: str = "") -> str:
    return (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        f"{extra_chains}{pre}{rules}COMMIT\n"
    )


def engine(text: str, seed: int = 1, **kw: object) -> Netfilter:
    return Netfilter.from_save(text, [NODE], rng=random.Random(seed), **kw)  # type: ignore[arg-type]


def pkt(src: str, dst: str, dport: int = 80, sport: int = 1000, proto: int = TCP, **kw: object) -> Packet:
    return Packet(proto, parse_ip(src), sport, parse_ip(dst), dport, **kw)  # type: ignore[arg-type]


DNAT_SET = "-j DNAT --to-destination 10.180.0.1:80"


def test_recent_set_then_rcheck_within_seconds_then_expired() -> None:
    text = nat(
        "-A PREROUTING -d 172.30.0.1 -m recent --name S --rcheck --seconds 10 --reap -j DNAT --to-destination 10.180.0.9:80\n"
        "-A PREROUTING -d 172.30.0.1 -m recent --name S --set -j DNAT --to-destination 10.180.0.1:80\n"
    )
    nf = engine(text)
    assert nf.route(pkt("10.0.0.1", "172.30.0.1", sport=1), 0.0).endpoint == (parse_ip("10.180.0.1"), 80)
    # Seen 5 s ago: the check matches.
    assert nf.route(pkt("10.0.0.1", "172.30.0.1", sport=2), 5.0).endpoint == (parse_ip("10.180.0.9"), 80)
    # A different client was never set.
    assert nf.route(pkt("10.0.0.2", "172.30.0.1", sport=3), 5.0).endpoint == (parse_ip("10.180.0.1"), 80)
    # 10.0.0.2's --set just now refreshed it; 10.0.0.1's stamp (0.0) is 11 s old at 11.0: no match,
    # and --reap removes the oldest entry (10.0.0.1's) from the list.
    assert nf.route(pkt("10.0.0.1", "172.30.0.1", sport=4), 11.0).endpoint == (parse_ip("10.180.0.1"), 80)


def test_recent_reap_only_drops_the_oldest_entry_when_it_is_stale() -> None:
    """recent_entry_reap looks at the LRU head only."""
    text = nat(
        "-A PREROUTING -s 10.0.0.0/8 -m recent --name R --set\n"
        "-A PREROUTING -d 172.30.0.9 -m recent --name R --rcheck --seconds 5 --reap -j ACCEPT\n"
    )
    nf = engine(text)
    nf.route(pkt("10.0.0.1", "172.30.0.1", sport=1), 0.0)
    nf.route(pkt("10.0.0.2", "172.30.0.1", sport=2), 1.0)
    assert list(nf.recent["R"]) == [parse_ip("10.0.0.1"), parse_ip("10.0.0.2")]
    nf.route(pkt("192.168.5.5", "172.30.0.9", sport=3), 6.5)  # not in the list: no check, no reap
    assert len(nf.recent["R"]) == 2
    nf.route(pkt("10.0.0.2", "172.30.0.9", sport=4), 6.5)  # 10.0.0.2 refreshed by --set first, then checked
    # The head (10.0.0.1, seen at 0.0) is older than 6.5 - 5: reaped; 10.0.0.2 stays.
    assert list(nf.recent["R"]) == [parse_ip("10.0.0.2")]


def test_recent_update_refreshes_only_when_it_matches_and_remove_deletes() -> None:
    text = nat(
        "-A PREROUTING -d 172.30.0.1 -m recent --name U --set -j ACCEPT\n"
        "-A PREROUTING -d 172.30.0.2 -m recent --name U --update --seconds 3 -j ACCEPT\n"
        "-A PREROUTING -d 172.30.0.3 -m recent --name U --remove -j ACCEPT\n"
    )
    nf = engine(text)
    nf.route(pkt("10.0.0.1", "172.30.0.1", sport=1), 0.0)
    nf.route(pkt("10.0.0.1", "172.30.0.2", sport=2), 2.0)  # within 3 s: matches, stamp added
    assert nf.recent["U"][parse_ip("10.0.0.1")].stamps == [0.0, 2.0]
    nf.route(pkt("10.0.0.1", "172.30.0.2", sport=3), 9.0)  # 7 s after the last stamp: no match, no update
    assert nf.recent["U"][parse_ip("10.0.0.1")].stamps == [0.0, 2.0]
    nf.route(pkt("10.0.0.1", "172.30.0.3", sport=4), 9.0)
    assert parse_ip("10.0.0.1") not in nf.recent["U"]


def test_recent_hitcount_and_list_capacity() -> None:
    text = nat(
        "-A PREROUTING -d 172.30.0.2 -m recent --name H --rcheck --hitcount 3 -j DNAT --to-destination 10.180.0.2:80\n"
        "-A PREROUTING -m recent --name H --set\n"
    )
    nf = engine(text)
    for n in range(2):
        nf.route(pkt("10.0.0.1", "172.30.0.1", sport=n + 1), float(n))
    assert nf.route(pkt("10.0.0.1", "172.30.0.2", sport=9), 2.0).endpoint is None  # two hits so far
    nf.route(pkt("10.0.0.1", "172.30.0.1", sport=10), 3.0)
    assert nf.route(pkt("10.0.0.1", "172.30.0.2", sport=11), 4.0).endpoint == (parse_ip("10.180.0.2"), 80)
    for n in range(xt.IP_LIST_TOT + 5):  # ip_list_tot: the oldest addresses are evicted
        nf.route(pkt(f"10.1.{n // 250}.{n % 250 + 1}", "172.30.0.1", sport=100 + n), 10.0)
    assert len(nf.recent["H"]) == xt.IP_LIST_TOT and parse_ip("10.0.0.1") not in nf.recent["H"]


def test_statistic_random_uses_the_kernel_threshold_and_the_callers_rng() -> None:
    text = nat("-A PREROUTING -m statistic --mode random --probability 0.25 " + DNAT_SET + "\n")
    rng = random.Random(42)
    expected = [(rng.getrandbits(32) & 0x7FFFFFFF) < 0x20000000 for _ in range(200)]
    nf = engine(text, seed=42)
    got = [nf.route(pkt("10.0.0.1", "172.30.0.1", sport=n + 1), 0.0).endpoint is not None for n in range(200)]
    assert got == expected and 20 < sum(got) < 80
    assert xt.quantize_probability(0.3333333333) == 715827883  # = 0.33333333349 * 2**31, as iptables-save prints
    stat = xt.Statistic("random", threshold=xt.quantize_probability(0.3333333333))
    assert stat.probability == Fraction(1, 3)


def test_statistic_nth_counts_every_evaluation() -> None:
    """--every 3 --packet 1: the counter starts at every-1-packet and the rule
    matches when it wraps to 0 (libxt_statistic.c / xt_statistic.c)."""
    text = nat("-A PREROUTING -m statistic --mode nth --every 3 --packet 1 " + DNAT_SET + "\n")
    nf = engine(text)
    hits = [nf.route(pkt("10.0.0.1", "172.30.0.1", sport=n + 1), 0.0).endpoint is not None for n in range(9)]
    assert hits == [False, True, False, False, True, False, False, True, False]


def test_addrtype_local_covers_node_addresses_and_loopback() -> None:
    local = engine(nat("-A PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport 30080 " + DNAT_SET + "\n"))
    assert local.route(pkt("203.0.113.1", "192.168.0.2", 30080), 0.0).verdict == Verdict.DNAT
    assert (
        local.route(pkt("203.0.113.1", "127.0.0.1", 30080, local=True), 0.0).verdict == Verdict.ACCEPT
    )  # OUTPUT: no rule
    assert local.route(pkt("203.0.113.1", "10.9.9.9", 30080), 0.0).verdict == Verdict.ACCEPT
    assert xt.address_type(0, local.is_local) == 3  # 0.0.0.0/8: BROADCAST
    assert xt.address_type(parse_ip("224.0.0.1"), local.is_local) == 5
    assert xt.address_type(parse_ip("127.0.0.53"), local.is_local) == 2


def test_nat_is_consulted_only_for_the_first_packet() -> None:
    text = nat("-A PREROUTING -d 172.30.0.1 -p tcp -m statistic --mode nth --every 2 " + DNAT_SET + "\n")
    nf = engine(text)
    first = nf.route(pkt("10.0.0.1", "172.30.0.1"), 0.0)
    assert first.verdict == Verdict.DNAT and not first.established
    # The nth counter would now say "no", but later packets follow the entry.
    reply = Packet(TCP, parse_ip("10.180.0.1"), 80, parse_ip("10.0.0.1"), 1000, flags=SYN | ACK)
    assert nf.route(reply, 0.1).established
    later = nf.route(pkt("10.0.0.1", "172.30.0.1", flags=ACK), 0.2)
    assert later.established and later.endpoint == first.endpoint


def test_mark_forms_and_masquerade_in_postrouting() -> None:
    text = nat(
        "-A PREROUTING -j MARK --set-mark 0x10\n"
        "-A PREROUTING -j MARK --or-mark 0x4000\n"
        "-A PREROUTING -j MARK --xor-mark 0x10\n"
        "-A POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        "-A POSTROUTING -m mark --mark 0x4000 -j MASQUERADE\n"
    )
    d = engine(text).route(pkt("10.0.0.1", "10.180.0.5"), 0.0)
    assert d.masquerade and d.verdict == Verdict.ACCEPT and d.rules == 5


def test_filter_sees_the_dnat_state_and_rejects_or_drops() -> None:
    text = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A FORWARD -m conntrack --ctstate DNAT -d 10.180.0.1 -j REJECT\n"
        "-A FORWARD -d 10.180.0.7 -j DROP\nCOMMIT\n" + nat("-A PREROUTING -d 172.30.0.1 " + DNAT_SET + "\n")
    )
    nf = engine(text)
    assert nf.route(pkt("10.0.0.1", "172.30.0.1"), 0.0).verdict == Verdict.REJECT
    assert nf.route(pkt("10.0.0.1", "10.180.0.1"), 0.0).verdict == Verdict.ACCEPT  # not DNATed
    assert nf.route(pkt("10.0.0.1", "10.180.0.7"), 0.0).verdict == Verdict.DROP


def test_goto_returns_to_the_last_jump_and_builtin_policy_applies() -> None:
    text = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n"
        "-A FORWARD -j A\n-A FORWARD -d 10.0.0.9 -j ACCEPT\n"
        "-A A -g B\n-A A -j ACCEPT\n"  # never reached: -g does not come back here
        "-A B -d 10.0.0.8 -j ACCEPT\nCOMMIT\n"
    )
    nf = engine(text)
    assert nf.route(pkt("10.0.0.1", "10.0.0.8"), 0.0).verdict == Verdict.ACCEPT
    assert nf.route(pkt("10.0.0.1", "10.0.0.9", sport=2), 0.0).verdict == Verdict.ACCEPT  # back in FORWARD
    d = nf.route(pkt("10.0.0.1", "10.0.0.7", sport=3), 0.0)
    assert d.verdict == Verdict.DROP and d.rules == 4  # FORWARD 1, A 1, B 1, FORWARD 2: then the policy


def test_multiport_and_port_ranges_and_negation() -> None:
    text = nat(
        "-A PREROUTING -p tcp -m multiport --dports 80,8000:8010 ! -d 10.0.0.0/8 " + DNAT_SET + "\n"
        "-A PREROUTING -p udp ! --dport 53 -j DNAT --to-destination 10.180.0.2:9\n"
    )
    nf = engine(text)
    assert nf.route(pkt("1.1.1.1", "172.30.0.1", 8005), 0.0).verdict == Verdict.DNAT
    assert nf.route(pkt("1.1.1.1", "10.1.0.1", 8005, sport=2), 0.0).verdict == Verdict.ACCEPT
    assert nf.route(pkt("1.1.1.1", "172.30.0.1", 53, proto=UDP), 0.0).verdict == Verdict.ACCEPT
    assert nf.route(pkt("1.1.1.1", "172.30.0.1", 54, proto=UDP), 0.0).endpoint == (parse_ip("10.180.0.2"), 9)


def test_ipsets_are_given_by_the_caller() -> None:
    text = nat(
        "-A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n"
        "-A PREROUTING -m set ! --match-set KUBE-LOOP-BACK dst,dst,src " + DNAT_SET + "\n"
    )
    sets = {
        "KUBE-CLUSTER-IP": SimpleSet(("ip", "port"), [(parse_ip("172.30.0.1"), (TCP, 80))]),
        "KUBE-LOOP-BACK": SimpleSet(("ip", "port", "ip"), []),
    }
    nf = engine(text, ipsets=sets)
    hit = nf.route(pkt("10.0.0.1", "172.30.0.1"), 0.0)
    assert hit.verdict == Verdict.ACCEPT and hit.lookups == 2  # conntrack + one set
    miss = nf.route(pkt("10.0.0.1", "172.30.0.2", sport=2), 0.0)
    assert miss.verdict == Verdict.DNAT and miss.lookups == 3
    nets = SimpleSet(("net",), [((parse_ip("10.0.0.0"), 8),)])
    assert nets.test((parse_ip("10.2.3.4"),)) and not nets.test((parse_ip("11.0.0.1"),))


def test_locally_sent_packets_take_output_and_redirect_to_loopback() -> None:
    text = nat("-A OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 15001\n")
    d = engine(text).route(pkt("192.168.0.2", "172.30.0.1", local=True), 0.0)
    assert d.endpoint == (parse_ip("127.0.0.1"), 15001)
    from_outside = engine(nat("-A PREROUTING -p tcp -j REDIRECT --to-ports 15001\n")).route(
        pkt("1.2.3.4", "5.6.7.8"), 0.0
    )
    assert from_outside.endpoint == (NODE, 15001)


def test_a_tcp_segment_that_cannot_open_a_connection_skips_nat() -> None:
    nf = engine(nat("-A PREROUTING " + DNAT_SET + "\n"))
    d = nf.route(pkt("10.0.0.1", "172.30.0.1", flags=ACK | SYN | 0x04), 0.0)  # RST: INVALID
    assert d.verdict == Verdict.ACCEPT and d.endpoint is None and len(nf.conntrack) == 0


def test_random_draws_need_an_rng() -> None:
    nf = Netfilter.from_save(nat("-A PREROUTING -m statistic --mode random --probability 0.5 -j ACCEPT\n"), [NODE])
    with pytest.raises(RuntimeError, match="rng"):
        nf.route(pkt("10.0.0.1", "172.30.0.1"), 0.0)


def test_sctp_services_are_walked_like_tcp_ones() -> None:
    """SCTP is rendered and walked (the kernel here has no SCTP sockets, so it is not sent)."""
    from kn_iptables_views import ep, port, state, view

    from proxy_modes.iptables.engine import IptablesMode

    svc = port("ns", "sig", "172.30.0.40", 3868, "diameter", "SCTP")
    mode = IptablesMode(random.Random(0))
    mode.sync(view(state((svc, [ep("10.180.0.40", 3868)]))))
    assert mode.last is not None and "-m sctp -p sctp -d 172.30.0.40 --dport 3868" in mode.last.full
    d = mode.route(Packet(132, parse_ip("10.0.0.1"), 5000, parse_ip("172.30.0.40"), 3868), 0.0)
    assert d.verdict == Verdict.DNAT and d.endpoint == (parse_ip("10.180.0.40"), 3868)
    assert mode.route(Packet(TCP, parse_ip("10.0.0.1"), 5000, parse_ip("172.30.0.40"), 3868), 0.0).endpoint is None


def test_physdev_without_bridge_info_matches_only_inverted_options() -> None:
    """xt_physdev.c physdev_mt: no packet here is bridged, so a rule matches
    exactly when every physdev option it gives is inverted; iptables-save's
    order (libxt_physdev) is kept."""
    rules = (
        "-A PREROUTING -m physdev --physdev-is-in -j DNAT --to-destination 10.180.0.9:80\n"
        "-A PREROUTING -m physdev ! --physdev-is-in --physdev-in eth0 -j DNAT --to-destination 10.180.0.8:80\n"
        "-A PREROUTING -m physdev ! --physdev-is-in ! --physdev-out veth1 -j DNAT --to-destination 10.180.0.1:80\n"
    )
    nf = engine(nat(rules))
    d = nf.route(pkt("10.0.0.5", "172.30.0.1", flags=SYN), 0.0)
    assert d.endpoint == (parse_ip("10.180.0.1"), 80) and d.rules == 3
    assert "-m physdev ! --physdev-is-in ! --physdev-out veth1 -j DNAT" in nf.save()
    with pytest.raises(RulesetError, match="physdev"):
        engine(nat("-A PREROUTING -m physdev -j ACCEPT\n"))
