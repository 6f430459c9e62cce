"""Link: the kernel's netem semantics, checked against results derived from sch_netem.c.

This kernel has no netem qdisc to compare with, so these tests hold the model
to what follows from the kernel's code and documentation: exact timings
(packet_time_ns), exact sequences (reorder with a gap, duplicate before loss),
and, by Monte Carlo against independently computed values, the effective
probabilities: the correlated loss (get_crandom's smoothing, whose stationary
distribution is a weighted sum of uniforms with an exact CDF), the stationary
loss of the 4-state and Gilbert-Elliott chains (solved exactly with
fractions), the reordered fraction with a gap (a renewal argument).
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from netem.link import CE, CORRUPTED, DUPLICATE, Link
from netem.netem_spec import NetemSpec, parse_netem
from netem.packet import Packet

MS = 1_000_000
S = 1_000_000_000
TWO32 = 1 << 32


def pkt(i: int, length: int = 1000) -> Packet:
    return Packet(17, i, 1000, 0x0A000002, 80, length=length)  # src numbers the packet


def link(text: str, seed: int = 1) -> Link:
    return Link.from_tc(text, random.Random(seed))


def send_all(lk: Link, times: list[int], length: int = 1000) -> list[tuple[int, int, int]]:
    """(delivery time, packet index, marks) for packets sent at `times`."""
    out = []
    for i, t in enumerate(times):
        out += [(when, p.src, marks) for when, p, marks in lk.send(pkt(i, length), t)]
    return out


def within(observed: float, expected: float, n: int, slack: float = 6.0) -> bool:
    """Monte Carlo agreement: `slack` binomial standard deviations (more for correlated draws)."""
    sigma = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
    return abs(observed - expected) <= slack * sigma


# -- exact timings --


def test_rate_with_overheads_and_cells_takes_1848_ms() -> None:
    """rate 5kbit = 625 B/s; (1000 + 20) B -> 11 cells of 100 -> 11 * (100 + 5) = 1155 B."""
    lk = link("rate 5kbit 20 100 5")
    assert lk.packet_time(1000) == 1_848_000_000
    assert send_all(lk, [0, 0]) == [(1_848_000_000, 0, 0), (3_696_000_000, 1, 0)]
    # Once the queue has drained, a packet starts from its own arrival.
    assert send_all(lk, [5 * S]) == [(5 * S + 1_848_000_000, 0, 0)]


@pytest.mark.parametrize(
    ("text", "length", "ns"),
    [
        ("rate 1mbit", 1500, 12 * MS),  # 1500 B at 125000 B/s
        ("rate 1mbit 24", 1476, 12 * MS),  # packet overhead
        ("rate 1mbit -24", 1524, 12 * MS),  # a negative overhead
        ("rate 1mbit 0 48 5", 100, 1_272_000),  # 3 ATM-like cells of 48 + 5 = 159 B
        ("rate 1mbit 0 48 5", 96, 848_000),  # exactly 2 cells, no remainder
        ("rate 8bit", 3, 3 * S),  # 1 B/s
    ],
)
def test_packet_time(text: str, length: int, ns: int) -> None:
    assert link(text).packet_time(length) == ns


def test_rate_serialises_behind_the_delay() -> None:
    """The last queued packet is the reference: back-to-back packets leave one packet-time apart."""
    lk = link("delay 100ms rate 1mbit")
    times = [t for t, _, _ in send_all(lk, [0, 0, 0, MS], length=1250)]  # 10 ms each
    assert times == [110 * MS, 120 * MS, 130 * MS, 140 * MS]


def test_jitter_alone_reorders_and_rate_does_not() -> None:
    sent = [i * MS for i in range(400)]
    jittered = sorted(send_all(link("delay 10ms 5ms", 7), sent))
    order = [i for _, i, _ in jittered]
    assert order != sorted(order)
    serialised = sorted(send_all(link("delay 10ms 5ms rate 100mbit", 7), sent))
    order = [i for _, i, _ in serialised]
    assert order == sorted(order)


def test_uniform_jitter_range_and_mean() -> None:
    lk = link("delay 100ms 10ms", 3)
    delays = [t - i * MS for t, i, _ in send_all(lk, [i * MS for i in range(20000)])]
    assert min(delays) >= 90 * MS and max(delays) < 110 * MS
    mean = sum(delays) / len(delays)
    assert abs(mean - 100 * MS) < 6 * (20 * MS / math.sqrt(12)) / math.sqrt(len(delays))


@pytest.mark.parametrize("name", ["normal", "pareto", "paretonormal"])
def test_table_jitter_has_the_tables_spread(name: str) -> None:
    """tabledist(): mu + sigma * t / 8192, with t drawn uniformly from the table."""
    from netem import distributions

    table = distributions.table(name)
    lk = link(f"delay 50ms 10ms distribution {name}", 5)
    delays = [t - i * MS for t, i, _ in send_all(lk, [i * MS for i in range(20000)])]
    expected = 50 * MS + 10 * MS * (sum(table) / len(table)) / 8192
    spread = 10 * MS * math.sqrt(sum(v * v for v in table) / len(table)) / 8192
    mean = sum(delays) / len(delays)
    assert abs(mean - expected) < 6 * spread / math.sqrt(len(delays))
    assert min(delays) >= 50 * MS + 10 * MS * min(table) // 8192 - 1


# -- sequences that follow from netem_enqueue's order of operations --


def test_duplicate_comes_before_loss() -> None:
    """duplicate 100% loss 100%: the loss only cancels the copy; every packet gets through once."""
    out = send_all(link("duplicate 100% loss 100%"), list(range(100)))
    assert [i for _, i, _ in out] == list(range(100))
    assert all(marks == 0 for _, _, marks in out)


def test_the_copy_meets_loss_on_its_own() -> None:
    """duplicate 100% loss 50%: 1 copy w.p. 0.5 + 0.25, 2 copies w.p. 0.25, never 0."""
    n = 40000
    out = send_all(link("duplicate 100% loss 50%", 11), list(range(n)))
    copies = [0] * n
    for _, i, _ in out:
        copies[i] += 1
    assert 0 not in copies
    two = copies.count(2) / n
    assert within(two, 0.25, n)
    assert sum(1 for _, _, m in out if m & DUPLICATE) == copies.count(2)


def test_limit_counts_the_queue_before_the_packet() -> None:
    lk = link("delay 1s limit 3")
    assert [i for _, i, _ in send_all(lk, [0, 0, 0, 0, 0])] == [0, 1, 2]
    assert lk.stats.overlimits == 2
    assert len(send_all(lk, [S])) == 1  # the three left at 1 s


def test_ecn_marks_instead_of_dropping() -> None:
    lk = link("loss 100% ecn")
    assert lk.send(pkt(0), 0, ect=True) == [(0, pkt(0), CE)]
    assert lk.send(pkt(1), 0) == []
    assert (lk.stats.marked, lk.stats.lost, lk.stats.drops) == (1, 1, 2)


def test_corrupt_marks_the_packet_and_the_copy_is_cloned_before() -> None:
    out = send_all(link("corrupt 100%"), [0])
    assert out == [(0, 0, CORRUPTED)]
    # The clone re-enters netem and meets `corrupt` on its own pass.
    both = send_all(link("duplicate 100% corrupt 100%"), [0])
    assert sorted(m for _, _, m in both) == [CORRUPTED, CORRUPTED | DUPLICATE]


def test_reorder_100_percent_with_gap_5_sends_every_fifth_at_once() -> None:
    """Kernel 6.x: `counter < gap - 1` packets are delayed, the next is a candidate."""
    lk = link("delay 10ms reorder 100% gap 5")
    out = send_all(lk, [i * MS for i in range(12)])
    immediate = [i for t, i, _ in out if t == i * MS]
    assert immediate == [4, 9]
    assert lk.stats.reordered == 2


def test_reorder_without_gap_is_a_coin_per_packet() -> None:
    n = 40000
    out = send_all(link("delay 10ms reorder 30%", 2), [i * 100_000 for i in range(n)])
    immediate = sum(1 for t, i, _ in out if t == i * 100_000) / n
    assert within(immediate, 0.3, n)


@pytest.mark.parametrize(("p", "gap"), [(0.25, 5), (0.5, 3), (0.1, 10)])
def test_reordered_fraction_with_a_gap(p: float, gap: int) -> None:
    """Renewal: gap-1 delayed packets, then Geometric(p) candidates -> p / (1 + (gap - 1) p)."""
    n = 60000
    out = send_all(link(f"delay 10ms reorder {p * 100}% gap {gap}", 4), [i * 100_000 for i in range(n)])
    immediate = sum(1 for t, i, _ in out if t == i * 100_000) / n
    assert within(immediate, p / (1 + (gap - 1) * p), n)


# -- correlation and the loss models --


def smoothed_cdf(x: Fraction, r: Fraction, terms: int) -> Fraction:
    """P(X <= x) for X = (1 - r) U + r X' (get_crandom's stationary value / 2^32).

    X is the sum of independent uniforms on [0, (1-r) r^k]; the CDF of a sum
    of uniforms on [0, a_k] is sum over subsets S of (-1)^|S| (x - sum_S a)^n /
    (n! prod a). The tail beyond `terms` is below r^terms and ignored.
    """
    widths = [(1 - r) * r**k for k in range(terms)]
    total = Fraction(0)
    for mask in range(1 << terms):
        chosen = [w for k, w in enumerate(widths) if mask >> k & 1]
        rest = x - sum(chosen, Fraction(0))
        if rest > 0:
            total += (-1) ** len(chosen) * rest**terms
    return total / (math.factorial(terms) * math.prod(widths))


def test_correlated_loss_is_far_below_the_nominal_rate() -> None:
    """loss 10% 25%: the kernel's smoothing leaves about 1.75% effective loss."""
    expected = float(smoothed_cdf(Fraction(1, 10), Fraction(1, 4), 12))
    assert 0.0174 < expected < 0.0176
    n = 200000
    lost = n - len(send_all(link("loss 10% 25%", 9), list(range(n))))
    assert within(lost / n, expected, n, slack=8.0)


def test_uncorrelated_loss_is_the_nominal_rate() -> None:
    n = 100000
    lost = n - len(send_all(link("loss 10%", 9), list(range(n))))
    assert within(lost / n, 0.1, n)


def test_full_correlation_repeats_the_first_draw() -> None:
    """rho = 0xFFFFFFFF: rho + 1 = 2^32, so every draw is the initial `last`."""
    lk = link("loss 50% 100%", 3)
    kept = len(send_all(lk, list(range(1000))))
    assert kept in (0, 1000)


def stationary(matrix: list[list[Fraction]]) -> list[Fraction]:
    """pi P = pi, sum pi = 1, solved exactly (Gauss-Jordan on fractions)."""
    n = len(matrix)
    rows = [[matrix[j][i] - (1 if i == j else 0) for j in range(n)] + [Fraction(0)] for i in range(n - 1)]
    rows.append([Fraction(1)] * n + [Fraction(1)])
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [rows[i][n] for i in range(n)]


def four_state_loss(spec: NetemSpec) -> float:
    """Stationary loss of loss_4state(): states TX_GAP, TX_BURST, LOST_GAP, LOST_BURST."""
    p13, p31, p32, p14, p23 = (Fraction(a, TWO32) for a in spec.clg)
    one = Fraction(1)
    matrix = [
        [one - p13 - p14, 0, p14, p13],
        [0, one - p23, 0, p23],
        [one, 0, 0, 0],
        [p31, p32, 0, one - p31 - p32],
    ]
    pi = stationary([[Fraction(v) for v in row] for row in matrix])
    return float(pi[2] + pi[3])


@pytest.mark.parametrize(
    "text",
    ["loss state 5%", "loss state 1% 30% 10% 20% 0.5%", "loss state 10% 20% 30% 40% 5%"],
)
def test_four_state_stationary_loss(text: str) -> None:
    spec = parse_netem(text)
    expected = four_state_loss(spec)
    n = 200000
    lost = n - len(send_all(Link(spec, random.Random(8)), list(range(n))))
    assert within(lost / n, expected, n, slack=12.0)  # bursts: strongly correlated draws


def test_four_state_with_defaults_is_bernoulli() -> None:
    assert four_state_loss(parse_netem("loss state 5%")) == pytest.approx(0.05, abs=1e-9)


@pytest.mark.parametrize("text", ["loss gemodel 1%", "loss gemodel 5% 30% 60% 2%", "loss gemodel 20% 40% 10% 1%"])
def test_gilbert_elliott_stationary_loss(text: str) -> None:
    """pi_bad = p / (p + r); loss = pi_good (1-k) + pi_bad (1-h), the kernel's strict `> h`."""
    spec = parse_netem(text)
    p, r, h, k1, _ = spec.clg
    bad = Fraction(p, p + r)
    expected = float((1 - bad) * Fraction(k1, TWO32) + bad * Fraction(TWO32 - 1 - h, TWO32))
    n = 200000
    lost = n - len(send_all(Link(spec, random.Random(6)), list(range(n))))
    assert within(lost / n, expected, n, slack=12.0)


def test_four_state_thresholds_wrap_like_u32() -> None:
    """p13 + p14 > 100%: the C sum wraps, so only the p14 draw loses packets from TX_GAP."""
    spec = NetemSpec(loss_model=1, clg=(int(0.8 * TWO32), TWO32 - 1, 0, int(0.3 * TWO32), 0))
    n = 50000
    lost = n - len(send_all(Link(spec, random.Random(2)), list(range(n))))
    # From TX_GAP: isolated loss w.p. 0.3 (back next packet), burst w.p. (0.8+0.3-1)-0.3 < 0: never.
    assert within(lost / n, 0.3 / 1.3, n)


# -- slots --


def test_slots_release_packets_in_bursts() -> None:
    """slot 10ms: a packet due after the slot start redraws it from the dequeue time."""
    lk = link("slot 10ms")
    seen: list[tuple[int, int]] = []
    for i, t in enumerate([0, MS, 2 * MS, 12 * MS]):
        while lk.wakeup is not None and lk.wakeup <= t:
            seen += [(when, p.src) for when, p, _ in lk.dequeue(lk.wakeup)]
        seen += [(when, p.src) for when, p, _ in lk.enqueue(pkt(i), t)]
    while lk.wakeup is not None:
        seen += [(when, p.src) for when, p, _ in lk.dequeue(lk.wakeup)]
    assert seen == [(0, 0), (11 * MS, 1), (11 * MS, 2), (22 * MS, 3)]


def test_slot_packet_budget() -> None:
    lk = link("slot 10ms packets 2")
    out = []
    for i in range(5):
        out += lk.enqueue(pkt(i), 0)
    while lk.wakeup is not None:
        out += lk.dequeue(lk.wakeup)
    assert [t for t, _, _ in out] == [0, 0, 10 * MS, 10 * MS, 20 * MS]


def test_send_refuses_slots() -> None:
    with pytest.raises(RuntimeError):
        link("slot 1ms").send(pkt(0), 0)


def test_a_stale_timer_does_nothing() -> None:
    lk = link("delay 10ms")
    lk.enqueue(pkt(0), 0)
    assert lk.dequeue(5 * MS) == []
    assert lk.wakeup == 10 * MS
    assert [t for t, _, _ in lk.dequeue(10 * MS)] == [10 * MS]
    assert lk.wakeup is None


# -- the fast path equals the qdisc interface --

CONFIGS = [
    "",
    "delay 10ms",
    "delay 1ms limit 7",
    "delay 1ms rate 5mbit 20 64 4 limit 10",
    "delay 1ms rate 100mbit",
    "rate 20mbit -10",
    "delay 10ms 5ms",
    "delay 10ms 5ms 30% distribution normal",
    "delay 5ms 10ms distribution pareto",  # jitter above latency: negative delays leave at once
    "delay 10ms reorder 25% 50% gap 3 duplicate 10% loss 5% 20%",
    "delay 2ms 1ms rate 1mbit 20 64 4 limit 20",
    "delay 20ms 19ms rate 10mbit reorder 10% duplicate 20% corrupt 3% limit 15",
    "loss state 5% 30% 10% 20% 1% ecn delay 1ms",
    "loss gemodel 5% 20% 50% 1% delay 3ms 2ms limit 5",
]


@pytest.mark.parametrize("window", [3 * MS, 300 * MS], ids=["dense", "sparse"])
@pytest.mark.parametrize("text", CONFIGS)
def test_send_equals_enqueue_and_dequeue(text: str, window: int) -> None:
    """Each fast implementation (steady, simple, general) against the qdisc walk."""
    arrivals = random.Random(text).choices(range(0, window, 1000), k=1500)
    times = sorted(arrivals)
    fast = link(text, 21)
    fast_out = []
    for i, t in enumerate(times):
        fast_out += [(w, p.src, m) for w, p, m in fast.send(pkt(i), t, ect=i % 2 == 0)]
    exact = link(text, 21)
    exact_out = []
    for i, t in enumerate(times):
        while exact.wakeup is not None and exact.wakeup < t:
            exact_out += [(w, p.src, m) for w, p, m in exact.dequeue(exact.wakeup)]
        exact_out += [(w, p.src, m) for w, p, m in exact.enqueue(pkt(i), t, ect=i % 2 == 0)]
    while exact.wakeup is not None:
        exact_out += [(w, p.src, m) for w, p, m in exact.dequeue(exact.wakeup)]
    assert sorted(fast_out) == sorted(exact_out)
    assert [w for w, _, _ in exact_out] == sorted(w for w, _, _ in exact_out)
    assert fast.stats.drops == exact.stats.drops and fast.stats.delivered == exact.stats.delivered


def test_seed_gives_the_link_its_own_generator() -> None:
    a = send_all(Link.from_tc("delay 10ms 5ms seed 7", random.Random(1)), list(range(50)))
    b = send_all(Link.from_tc("delay 10ms 5ms seed 7", random.Random(2)), list(range(50)))
    c = send_all(Link.from_tc("delay 10ms 5ms", random.Random(2)), list(range(50)))
    assert a == b != c


def test_delay_correlation_is_undone_by_the_modulo() -> None:
    """tabledist() takes the smoothed u32 modulo 2*jitter: the smoothing is lost.

    With 90% correlation, successive delays are still (nearly) uncorrelated
    and keep the full uniform spread, as in the kernel.
    """
    lk = link("delay 100ms 10ms 90%", 5)
    delays = [t - i * MS for t, i, _ in send_all(lk, [i * MS for i in range(50000)])]
    mean = sum(delays) / len(delays)
    var = sum((d - mean) ** 2 for d in delays) / len(delays)
    lag1 = sum((a - mean) * (b - mean) for a, b in itertools.pairwise(delays)) / (len(delays) - 1) / var
    assert abs(lag1) < 0.03
    assert abs(math.sqrt(var) - 20 * MS / math.sqrt(12)) < 0.02 * 20 * MS / math.sqrt(12)


def test_a_late_call_fires_each_missed_watchdog_at_its_time() -> None:
    lk = link("delay 10ms")
    assert lk.enqueue(pkt(0), 0) == []
    assert lk.enqueue(pkt(1), 4 * MS) == []
    # Nobody called dequeue at 10 ms and 14 ms: the next call delivers them with those times.
    assert [(t, p.src) for t, p, _ in lk.enqueue(pkt(2), 25 * MS)] == [(10 * MS, 0), (14 * MS, 1)]
    assert lk.wakeup == 35 * MS


def test_one_interface_per_link() -> None:
    fast = link("delay 1ms")
    fast.send(pkt(0), 0)
    with pytest.raises(RuntimeError, match="driven with send"):
        fast.enqueue(pkt(1), 0)
    exact = link("delay 1ms")
    exact.enqueue(pkt(0), 0)
    with pytest.raises(RuntimeError, match="driven with enqueue"):
        exact.send(pkt(1), 0)


def test_a_clone_marked_ce_marks_its_original_too() -> None:
    """netem_enqueue: the duplicate is an skb_clone sharing the original's
    data, and INET_ECN_set_ce writes the IP header in place: when the clone's
    own loss draw marks it CE, the original leaves CE as well, unless
    corruption unshared it first."""
    lk = Link.from_tc("delay 1ms duplicate 100% loss 50% corrupt 30% ecn", random.Random(1))
    pairs = 0
    for i in range(300):
        out = lk.send(pkt(i), i * 10**7, ect=True)
        clones = [m for _, _, m in out if m & DUPLICATE]
        originals = [m for _, _, m in out if not m & DUPLICATE]
        if clones and originals and clones[0] & CE:
            pairs += 1
            assert originals[0] & CE or originals[0] & CORRUPTED
    assert pairs > 20


@pytest.mark.parametrize(
    "text", ["delay 1ms", "delay 1ms limit 7", "delay 1ms rate 5mbit 20 64 4 limit 10", "", "rate 20mbit -10"]
)
def test_a_steady_links_arrival_is_its_send(text: str) -> None:
    """arrival() (the simulation's fast path) gives the one copy's time that
    send() gives, None where send() gives nothing (the limit), and counts alike;
    also with sends out of time order, as the simulation makes them."""
    times = random.Random(text).choices(range(0, 3 * MS, 1000), k=1500)
    times[::7] = sorted(times[::7])  # mostly unordered, partly ordered
    by_send, by_arrival = link(text), link(text)
    assert by_send.steady and by_arrival.steady
    for i, t in enumerate(times):
        sent = [(when, marks) for when, _, marks in by_send.send(pkt(i), t)]
        when = by_arrival.arrival(pkt(i), t)
        assert sent == ([] if when is None else [(when, 0)])
    assert by_arrival.stats.overlimits == by_send.stats.overlimits
    assert by_arrival.stats.packets == by_send.stats.packets
    if "limit" in text:
        assert by_send.stats.overlimits > 0  # the limit was reached: both sides of arrival() ran


@pytest.mark.parametrize("text", ["delay 1ms 1ms", "delay 1ms loss 1%", "delay 1ms duplicate 1%", "slot 1ms 2ms"])
def test_only_steady_links_answer_arrival(text: str) -> None:
    lk = link(text)
    assert not lk.steady
    with pytest.raises(RuntimeError, match="steady"):
        lk.arrival(pkt(0), 0)


def test_a_link_driven_with_enqueue_is_no_longer_steady() -> None:
    lk = link("delay 1ms")
    lk.enqueue(pkt(0), 0)
    assert not lk.steady
    with pytest.raises(RuntimeError, match="steady"):
        lk.arrival(pkt(1), 0)
