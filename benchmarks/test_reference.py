"""Reference points for reading the other benchmarks on a shared machine.

This project's VM changes speed by a third from one minute to the next, so
a decision's time means little alone. These measure, in the same run, what
no engine can do without: CPython's own step (a loop adding integers) and
the floor of any tracked packet (a flow's 5-tuple sliced from its packet and
looked up among 20,000). A decision benchmark reads best as a multiple of
them.
"""

from __future__ import annotations

import itertools
import random

import pytest

from netem.packet import ACK, TCP, Packet

FLOWS = 20_000


def count_to(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_python_step(benchmark: pytest.FixtureRequest) -> None:
    """1,000 iterations of `total += i`: `extra_info["ns_per_step"]`."""
    result = benchmark(count_to, 1000)  # type: ignore[operator]
    assert result == 999 * 1000 // 2
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["ns_per_step"] = round(stats.stats.median / 1000 * 1e9, 1)  # type: ignore[attr-defined]


def test_flow_lookup(benchmark: pytest.FixtureRequest) -> None:
    """What every packet of a tracked connection costs before any state is
    read: its 5-tuple sliced and found among 20,000 (ten per timed round, as
    the decision benchmarks time theirs)."""
    rng = random.Random(0)
    packets = [
        Packet(TCP, (10 << 24) | rng.randrange(1 << 20), 1024 + n, (172 << 24) | rng.randrange(1 << 16), 80, flags=ACK)
        for n in range(FLOWS)
    ]
    table = {p[:5]: p for p in packets}
    get = table.get
    cycle = itertools.cycle(packets)

    def step() -> Packet | None:
        return get(next(cycle)[:5])

    quick = benchmark.disabled  # type: ignore[attr-defined]
    found = (
        benchmark(step)  # type: ignore[operator]
        if quick
        else benchmark.pedantic(step, rounds=20_000, iterations=10, warmup_rounds=1_000)  # type: ignore[attr-defined]
    )
    assert found is not None
