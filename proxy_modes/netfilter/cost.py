"""What a decision would cost the real kernel: a base cost plus a cost per rule.

The engine reports how many rules the kernel evaluates for a packet
(`Decision.rules`); this model turns that count into microseconds, and a
ruleset's size into `iptables-restore` seconds. Both are straight lines
fitted (least squares) to measurements of this machine's kernel, made with
the namespace harness (`python -m proxy_modes.iptables.kernel calibrate`:
N one-endpoint services, connect latency to the last one's ClusterIP, and
the time to load the ruleset), per backend (nf_tables through iptables-nft,
and iptables-legacy). The measured points are kept next to the fit so a
reader can see how straight the line is.

Other code (benchmarks, the demo) imports `DEFAULT` or `CALIBRATED[backend]`
and calls `latency_us(rules)` / `restore_s(rules)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """One measurement: N services, the rules a connection to the last one
    walks, its median connect latency, and the time to load the ruleset."""

    services: int
    rules: int
    connect_us: float
    restore_s: float
    ruleset_rules: int


@dataclass(frozen=True)
class CostModel:
    backend: str
    base_us: float  # connect latency when (almost) no rules are walked
    per_rule_ns: float  # each rule evaluated on the way
    restore_base_s: float
    restore_per_rule_us: float
    points: tuple[Point, ...] = ()

    def latency_us(self, rules: int) -> float:
        """Modeled latency of a new connection whose first packet walks `rules` rules."""
        return self.base_us + rules * self.per_rule_ns / 1000.0

    def walk_us(self, rules: int) -> float:
        """The part of that latency spent in the rules."""
        return rules * self.per_rule_ns / 1000.0

    def restore_s(self, rules: int) -> float:
        """Modeled time for iptables-restore to load a ruleset of `rules` rules
        (the measured time grows a little faster than linearly, so the fitted
        line starts below zero: small rulesets read as 0)."""
        return max(0.0, self.restore_base_s + rules * self.restore_per_rule_us / 1e6)


def line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    n = len(xs)
    if n < 2:
        raise ValueError("need at least two points to fit a line")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("the points need different x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def fit(backend: str, points: Iterable[Point]) -> CostModel:
    pts = tuple(points)
    base, per_rule_us = line([float(p.rules) for p in pts], [p.connect_us for p in pts])
    r_base, r_per_rule_s = line([float(p.ruleset_rules) for p in pts], [p.restore_s for p in pts])
    return CostModel(backend, base, per_rule_us * 1000.0, r_base, r_per_rule_s * 1e6, pts)


# Measured on this machine (the kernel the tests run on, a quiet moment of a
# 2-vCPU VM), see the module docstring: per point, the connect latency the
# harness sees (its Python client included) to the first and to the last of
# N services, and the time to load the N-service ruleset.
NFT_POINTS = (
    Point(services=1000, rules=15, connect_us=236.3, restore_s=0.184, ruleset_rules=5010),
    Point(services=1000, rules=1014, connect_us=264.6, restore_s=0.184, ruleset_rules=5010),
    Point(services=10000, rules=15, connect_us=245.3, restore_s=1.553, ruleset_rules=50010),
    Point(services=10000, rules=10014, connect_us=488.5, restore_s=1.553, ruleset_rules=50010),
    Point(services=30000, rules=15, connect_us=260.6, restore_s=5.644, ruleset_rules=150010),
    Point(services=30000, rules=30014, connect_us=757.7, restore_s=5.644, ruleset_rules=150010),
)
# fit: base 256.9 us + 17.32 ns/rule; restore -0.150 s + 38.20 us/rule
LEGACY_POINTS = (
    Point(services=1000, rules=15, connect_us=195.2, restore_s=0.037, ruleset_rules=5010),
    Point(services=1000, rules=1014, connect_us=199.7, restore_s=0.037, ruleset_rules=5010),
    Point(services=10000, rules=15, connect_us=187.0, restore_s=0.446, ruleset_rules=50010),
    Point(services=10000, rules=10014, connect_us=261.1, restore_s=0.446, ruleset_rules=50010),
    Point(services=30000, rules=15, connect_us=185.0, restore_s=2.504, ruleset_rules=150010),
    Point(services=30000, rules=30014, connect_us=379.9, restore_s=2.504, ruleset_rules=150010),
)
# fit: base 191.1 us + 6.36 ns/rule; restore -0.208 s + 17.61 us/rule
CALIBRATED = {"nft": fit("nft", NFT_POINTS), "legacy": fit("legacy", LEGACY_POINTS)}
DEFAULT = CALIBRATED["nft"]  # iptables-nft: what `iptables` is on current distributions (and here)
