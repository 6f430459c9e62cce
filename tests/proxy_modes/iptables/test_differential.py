"""The fast engine (compiled chains, indexes, cached filter walks) against a
literal rule-by-rule walk, on random rulesets and random packet sequences:
same verdict, endpoint, masquerade, rules counted, lookups, service, same
random draws and `recent` lists afterwards. `trace()` must agree too (it
walks with the interpreter and explores the random branches first, without
drawing)."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netem.addr import parse_ip
from netem.packet import ACK, FIN, PSH, RST, SYN, TCP, UDP, Packet
from proxy_modes.netfilter import syntax
from proxy_modes.netfilter.engine import Netfilter

ADDRS = ["10.0.0.1", "10.0.0.2", "10.180.0.1", "10.180.0.2", "172.30.0.1", "172.30.0.2", "192.168.0.2", "203.0.113.9"]
NETS = ["10.0.0.0/8", "172.30.0.0/16", "10.180.0.0/24", "0.0.0.0/0", "203.0.113.0/25"]
PORTS = [53, 80, 443, 8080]
NODE_IP = "192.168.0.2"


def _addr_opt(draw: Any, flag: str) -> str:
    inv = "! " if draw(st.booleans()) and draw(st.booleans()) else ""
    value = draw(st.sampled_from(ADDRS + NETS))
    return f"{inv}{flag} {value}"


@st.composite
def matches(draw: Any, ip_part: bool = True) -> str:
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append(_addr_opt(draw, "-s"))
    if ip_part and draw(st.booleans()):
        parts.append(_addr_opt(draw, "-d"))
    proto = draw(st.sampled_from(["", "tcp", "udp"])) if ip_part else ""
    if proto:
        parts.append(f"-p {proto}")
        if draw(st.booleans()):
            inv = "! " if draw(st.booleans()) else ""
            lo = draw(st.sampled_from(PORTS))
            port = f"{lo}:{lo + draw(st.sampled_from([0, 10, 400]))}" if draw(st.booleans()) else str(lo)
            parts.append(f"-m {proto} {inv}--dport {port}")
        if draw(st.booleans()) and draw(st.booleans()):
            ports = ",".join(str(p) for p in draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3)))
            parts.append(f"-m multiport --dports {ports}")
    extra = draw(st.lists(st.sampled_from(["mark", "ct", "addr", "stat", "nth", "recent", "comment"]), max_size=2))
    for kind in extra:
        if kind == "mark":
            parts.append(
                f"-m mark {'! ' if draw(st.booleans()) else ''}--mark 0x{draw(st.sampled_from([1, 2, 0x4000])):x}"
            )
        elif kind == "ct":
            states = draw(st.sampled_from(["NEW", "ESTABLISHED", "RELATED,ESTABLISHED", "INVALID", "DNAT", "NEW,SNAT"]))
            parts.append(f"-m conntrack {'! ' if draw(st.booleans()) else ''}--ctstate {states}")
        elif kind == "addr":
            side = draw(st.sampled_from(["--src-type", "--dst-type"]))
            parts.append(
                f"-m addrtype {'! ' if draw(st.booleans()) else ''}{side} {draw(st.sampled_from(['LOCAL', 'UNICAST']))}"
            )
        elif kind == "stat":
            p = draw(st.sampled_from(["0.5000000000", "0.3333333333", "0.1", "1.0", "0.0"]))
            parts.append(f"-m statistic --mode random {'! ' if draw(st.booleans()) else ''}--probability {p}")
        elif kind == "nth":
            every = draw(st.integers(1, 4))
            parts.append(f"-m statistic --mode nth --every {every} --packet {draw(st.integers(0, every - 1))}")
        elif kind == "recent":
            name = draw(st.sampled_from(["A", "B"]))
            cmd = draw(st.sampled_from(["--set", "--rcheck", "--update", "--remove", "--rcheck --seconds 5 --reap"]))
            if cmd in ("--rcheck", "--update") and draw(st.booleans()):
                cmd += f" --seconds {draw(st.integers(1, 20))}"
                if draw(st.booleans()):
                    cmd += f" --hitcount {draw(st.integers(1, 3))}"
            side = " --rdest" if draw(st.booleans()) and draw(st.booleans()) else ""
            parts.append(f"-m recent --name {name} {cmd}{side}")
        elif kind == "comment":
            parts.append('-m comment --comment "a rule"')
    return " ".join(parts)


@st.composite
def rulesets(draw: Any) -> str:
    """A filter and a nat table; user chains only jump to later user chains (no loops)."""
    n_filter = draw(st.integers(1, 4))
    n_pre = draw(st.integers(1, 3))
    n_post = draw(st.integers(0, 2))
    lines = ["*filter", ":INPUT ACCEPT [0:0]", f":FORWARD {draw(st.sampled_from(['ACCEPT', 'DROP']))} [0:0]"]
    lines.append(":OUTPUT ACCEPT [0:0]")
    filt = [f"F{i}" for i in range(n_filter)]
    lines += [f":{c} - [0:0]" for c in filt]
    for chain in ["INPUT", "FORWARD", "OUTPUT", *filt]:
        later = filt[filt.index(chain) + 1 :] if chain in filt else filt
        lines += _rules(draw, chain, later, ["ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "LOG", ""])
    lines += ["COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines.append(":POSTROUTING ACCEPT [0:0]")
    pre = [f"P{i}" for i in range(n_pre)]
    post = [f"Q{i}" for i in range(n_post)]
    lines += [f":{c} - [0:0]" for c in pre + post]
    for chain in ["PREROUTING", "OUTPUT", *pre]:
        later = pre[pre.index(chain) + 1 :] if chain in pre else pre
        lines += _rules(draw, chain, later, ["DNAT", "DNAT", "ACCEPT", "RETURN", "MARK", "REDIRECT", ""])
    for chain in ["POSTROUTING", *post]:
        later = post[post.index(chain) + 1 :] if chain in post else post
        lines += _rules(draw, chain, later, ["MASQUERADE", "SNAT", "ACCEPT", "RETURN", "MARK", ""])
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _rules(draw: Any, chain: str, jumpable: list[str], targets: list[str]) -> list[str]:
    out = []
    # Some chains are long, with exact destinations, so the index is used.
    count = draw(st.sampled_from([0, 1, 3, 6, 20]))
    for _ in range(count):
        if count == 20 and draw(st.booleans()):
            exact = f"-d {draw(st.sampled_from(ADDRS))} -p tcp -m tcp --dport {draw(st.sampled_from(PORTS))}"
            spec = f"{exact} {draw(matches(ip_part=False))}"
        else:
            spec = draw(matches())
        choices = targets + [f"J:{c}" for c in jumpable] + [f"G:{c}" for c in jumpable]
        target = draw(st.sampled_from(choices))
        out.append(f"-A {chain} {spec} {_target(draw, target)}".rstrip())
    return out


def _target(draw: Any, target: str) -> str:
    if target.startswith("J:"):
        return f"-j {target[2:]}"
    if target.startswith("G:"):
        return f"-g {target[2:]}"
    if target == "DNAT":
        endpoint = draw(st.sampled_from(["10.180.0.1", "10.180.0.2"]))
        return f"-j DNAT --to-destination {endpoint}:{draw(st.sampled_from(PORTS))}"
    if target == "SNAT":
        return "-j SNAT --to-source 192.168.0.9"
    if target == "MARK":
        return f"-j MARK --{draw(st.sampled_from(['or', 'xor', 'set']))}-mark 0x{draw(st.sampled_from([1, 0x4000])):x}"
    if target == "REDIRECT":
        return "-j REDIRECT --to-ports 15001"
    if target == "LOG":
        return '-j LOG --log-prefix "seen "'
    return f"-j {target}" if target else ""


# Later packets of a flow from its first side: a SYN retransmitted, the ACK
# class (bare or with data), the end of it.
SAME_SIDE_FLAGS = [SYN, ACK, ACK, PSH | ACK, FIN | ACK, RST]


@st.composite
def packets(draw: Any) -> list[tuple[Packet, float]]:
    out: list[tuple[Packet, float]] = []
    now = 0.0
    flows: list[Packet] = []
    for _ in range(draw(st.integers(1, 25))):
        now += draw(st.sampled_from([0.0, 0.5, 3.0, 30.0]))
        if flows and draw(st.booleans()):
            old = draw(st.sampled_from(flows))
            if draw(st.booleans()):  # the same direction again (SYN retransmit, ACK, UDP)
                out.append((old._replace(flags=draw(st.sampled_from(SAME_SIDE_FLAGS))), now))
            else:  # something from the other side
                flags = draw(st.sampled_from([SYN | ACK, SYN | ACK, ACK, PSH | ACK, FIN | ACK]))
                out.append((Packet(old.proto, old.dst, old.dport, old.src, old.sport, flags=flags), now))
            continue
        pkt = Packet(
            draw(st.sampled_from([TCP, UDP])),
            parse_ip(draw(st.sampled_from(ADDRS))),
            draw(st.sampled_from([1000, 1001, 40000])),
            parse_ip(draw(st.sampled_from(ADDRS))),
            draw(st.sampled_from(PORTS)),
            local=draw(st.booleans()) and draw(st.booleans()),
            flags=draw(st.sampled_from([SYN, SYN, ACK])),
        )
        flows.append(pkt)
        out.append((pkt, now))
    return out


def _engines(text: str) -> list[Netfilter]:
    # Parsed separately: nth counters live in the rules and must not be shared.
    local = [parse_ip(NODE_IP)]
    return [
        Netfilter(syntax.parse_save(text), local, rng=random.Random(7), literal=True),
        Netfilter(syntax.parse_save(text), local, rng=random.Random(7)),
        Netfilter(syntax.parse_save(text), local, rng=random.Random(7)),
    ]


def _summary(d: Any) -> tuple[Any, ...]:
    return (d.verdict, d.endpoint, d.masquerade, d.rules, d.lookups, d.established)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rulesets(), packets())
def test_fast_engine_and_trace_agree_with_a_literal_walk(text: str, sequence: list[tuple[Packet, float]]) -> None:
    literal, fast, traced = _engines(text)
    for packet, now in sequence:
        want = literal.route(packet, now)
        assert _summary(fast.route(packet, now)) == _summary(want), (packet, now)
        assert _summary(traced.trace(packet, now).decision) == _summary(want), (packet, now)
    assert fast.rng.getstate() == literal.rng.getstate() == traced.rng.getstate()  # type: ignore[union-attr]
    # route()'s inlined conntrack update leaves the table as trace()'s full one does.
    assert fast.conntrack.dump(now) == literal.conntrack.dump(now) == traced.conntrack.dump(now)
    for engine in (fast, traced):
        assert _recent(engine) == _recent(literal)


def _recent(nf: Netfilter) -> dict[str, list[tuple[int, list[float]]]]:
    return {name: [(addr, e.stamps) for addr, e in table.items()] for name, table in nf.recent.items()}


def test_the_generator_makes_rulesets_that_load_and_use_every_path() -> None:
    """A guard for the property above: long indexed chains, jumps and random matches do occur."""
    seen = {"indexed": 0, "jump": 0, "random": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rulesets())
    def probe(text: str) -> None:
        tables = syntax.parse_save(text)
        chains = [c for t in tables.values() for c in t.chains.values()]
        seen["indexed"] += any(len(c.rules) >= 16 for c in chains)
        seen["jump"] += " -j P" in text or " -j F" in text
        seen["random"] += "--mode random" in text

    probe()
    assert all(seen.values()), seen
