"""The delay distribution tables netem draws from, computed as iproute2 computes them.

`tc qdisc ... netem delay 100ms 10ms distribution normal` loads
`/usr/lib/<arch>/tc/normal.dist` and hands it to the kernel as a table of
signed 16-bit values: the inverse cumulative distribution of a zero-mean,
unit-deviation variable scaled by NETEM_DIST_SCALE (8192). The kernel's
tabledist() picks `table[rnd % size]` and scales it by the jitter. The files
are generated at iproute2 build time by the small programs in iproute2's
netem/ directory (normal.c, pareto.c, paretonormal.c, maketable.c, taken from
NIST Net). We run the same arithmetic here instead of shipping the files: the
same floating-point loop (x accumulated in steps of .00005, not multiplied,
so the rounding of every step is reproduced), the same rint() (round half to
even, which is Python's round()), the same C integer truncation. The result
equals the installed tables entry for entry (tests compare them).

Other tables (`experimental`, made by maketable.c from a data file, or one
of your own) are read from their `.dist` text with `parse_dist_file()`.
"""

from __future__ import annotations

import math
from functools import cache

DIST_SCALE = 8192  # NETEM_DIST_SCALE in include/uapi/linux/pkt_sched.h
DIST_MAX = 16384  # NETEM_DIST_MAX: the kernel refuses longer tables
TABLESIZE = 16384  # normal.c / pareto.c: resolution of the CDF before decimation
SHRT_MIN, SHRT_MAX = -32768, 32767
PARETO_ALPHA = 3.0  # pareto.c: `static const double a=3.0`

NAMES = ("normal", "pareto", "paretonormal")


def _clamp16(value: int) -> int:
    return SHRT_MIN if value < SHRT_MIN else SHRT_MAX if value > SHRT_MAX else value


def _c_div(a: int, b: int) -> int:
    """C integer division: truncates toward zero (Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@cache
def _normal_inverse() -> tuple[float, ...]:
    """normal.c's table[]: for each CDF step i/16384, the last x that rounds to it.

    The loop variable is accumulated exactly as the C loop does
    (`for (x = -10.0; x < 10.05; x += .00005)`), so every x is the same double.
    """
    table = [0.0] * (TABLESIZE + 1)
    erf = math.erf
    root2 = math.sqrt(2.0)
    x = -10.0
    while x < 10.05:
        table[round(TABLESIZE * (0.5 + 0.5 * erf(x / root2)))] = x
        x += 0.00005
    return tuple(table)


def _pareto_value(i: int) -> int:
    """pareto.c's value for the CDF point i/65536 (shifted to mean 0, scaled)."""
    value = 1.0 / math.pow(i / 65536, 1.0 / PARETO_ALPHA)
    value -= 1.5
    value *= (4.0 / 3.0) * DIST_SCALE
    return round(min(value, 32767.0))


@cache
def normal() -> tuple[int, ...]:
    """normal.dist: 4096 entries (every 4th of 16384 CDF steps)."""
    inverse = _normal_inverse()
    return tuple(_clamp16(round(inverse[i] * DIST_SCALE)) for i in range(0, TABLESIZE, 4))


@cache
def pareto() -> tuple[int, ...]:
    """pareto.dist: alpha 3, i from 65536 down in steps of 16 (4096 entries)."""
    return tuple(_pareto_value(i) for i in range(65536, 0, -16))


@cache
def paretonormal() -> tuple[int, ...]:
    """paretonormal.dist: (normal + 3 * pareto) / 4 per entry, in C int arithmetic."""
    inverse = _normal_inverse()
    out = []
    for i in range(0, TABLESIZE, 4):
        norm = round(inverse[i] * DIST_SCALE)  # not clamped before the sum, as in the C
        par = _pareto_value(65536 - 4 * i)
        out.append(_clamp16(_c_div(norm + 3 * par, 4)))
    return tuple(out)


def table(name: str) -> tuple[int, ...]:
    """The table tc would load for `distribution NAME`; KeyError for others."""
    return {"normal": normal, "pareto": pareto, "paretonormal": paretonormal}[name]()


def parse_dist_file(text: str) -> tuple[int, ...]:
    """A `.dist` file as tc's get_distribution() reads it.

    Lines starting with `#` and empty lines are skipped; every other line is a
    run of integers (strtol with base 0: decimal, 0x hex, 0 octal), parsing
    stops at the first thing that is not one. More than NETEM_DIST_MAX values
    is an error, as is none at all.
    """
    values: list[int] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        for word in line.split():
            try:
                value = (
                    int(word, 16) if word.lower().startswith(("0x", "-0x")) else int(word, 8 if _octal(word) else 10)
                )
            except ValueError:
                break
            values.append(value)
    if not values:
        raise ValueError("no distribution data")
    if len(values) > DIST_MAX:
        raise ValueError(f"too much data ({len(values)} values, at most {DIST_MAX})")
    return tuple(((v + 32768) & 0xFFFF) - 32768 for v in values)  # stored as __s16


def _octal(word: str) -> bool:
    digits = word.lstrip("+-")
    return len(digits) > 1 and digits.startswith("0")
