"""Engines that parse through one RuleCache (the nodes of one simulated
cluster) write each per-destination function once, and never take another
engine's function when the chains it copied in differ."""

from __future__ import annotations

import random

from netem.addr import int_to_ip, parse_ip
from netem.packet import TCP, Packet
from proxy_modes.netfilter import compile as nf_compile
from proxy_modes.netfilter import syntax
from proxy_modes.netfilter.engine import Netfilter
from proxy_modes.netfilter.syntax import RuleCache

SERVICES = 40  # too long to copy into PREROUTING: KUBE-SERVICES runs through its index


def ruleset(moved: int | None = None) -> str:
    """A KUBE-SERVICES of SERVICES ClusterIPs, each to one endpoint; service
    `moved` (if any) sends its endpoint to 10.2.0.x instead."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
    for n in range(SERVICES):
        lines += [f":KUBE-SVC-{n} - [0:0]", f":KUBE-SEP-{n} - [0:0]"]
    lines.append("-A PREROUTING -j KUBE-SERVICES")
    for n in range(SERVICES):
        net = "10.2.0" if n == moved else "10.1.0"
        lines += [
            f"-A KUBE-SERVICES -d 10.96.0.{n}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{n}",
            f"-A KUBE-SVC-{n} -j KUBE-SEP-{n}",
            f"-A KUBE-SEP-{n} -p tcp -m tcp -j DNAT --to-destination {net}.{n}:8080",
        ]
    return "\n".join([*lines, "COMMIT", ""])


def engine(text: str, cache: RuleCache) -> Netfilter:
    return Netfilter(syntax.restore(None, text, cache=cache), [parse_ip("192.168.0.2")], rng=random.Random(0))


def to_service(n: int, sport: int) -> Packet:
    return Packet(TCP, parse_ip("10.244.1.5"), sport, parse_ip(f"10.96.0.{n}"), 80)


def test_a_second_node_binds_the_functions_the_first_wrote() -> None:
    cache = RuleCache()
    first, second = engine(ruleset(), cache), engine(ruleset(), cache)
    before = len(nf_compile._SOURCES)
    first.route(to_service(3, 1000), 1.0)
    written = len(nf_compile._SOURCES)
    assert written > before  # the first node wrote service 3's function (and its chain's catch-all one)
    decision = second.route(to_service(3, 1000), 1.0)
    assert len(nf_compile._SOURCES) == written  # nothing new written for the same rules
    assert decision.endpoint == (parse_ip("10.1.0.3"), 8080)


def test_a_node_whose_copied_in_chain_differs_gets_its_own_function() -> None:
    cache = RuleCache()
    first, other = engine(ruleset(), cache), engine(ruleset(moved=3), cache)
    # The KUBE-SERVICES rules are the same objects in both (same text, one cache) ...
    assert first.tables["nat"].chains["KUBE-SERVICES"].rules[3] is other.tables["nat"].chains["KUBE-SERVICES"].rules[3]
    assert first.route(to_service(3, 1000), 1.0).endpoint == (parse_ip("10.1.0.3"), 8080)
    # ... but the endpoint chain copied into the function is not.
    moved = other.route(to_service(3, 1000), 1.0)
    assert moved.endpoint is not None and int_to_ip(moved.endpoint[0]) == "10.2.0.3"
    assert moved.rules == first.route(to_service(3, 1001), 1.0).rules
