"""netem options: our parser against the real tc (iproute2) and the kernel's netem_change().

The kernel test runs every case through the installed tc under strace (tc
parses and sends its request; this kernel then refuses the unknown qdisc) and
decodes what the kernel would have stored. Where tc refuses, we refuse.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import fields

import pytest
from kn_tc_wire import capture_many, dist_dir, kernel_state, require_real, tools_missing

from netem import distributions
from netem.errors import UsageError
from netem.netem_spec import CLG_4_STATES, CLG_GILB_ELL, INT_MAX, U32_MAX, NetemSpec, keyword, parse_netem, percent

# Every case tc accepts or refuses; for each, ours must do the same.
CASES = [
    "delay 100ms 10ms 25% loss 0.1% rate 5kbit 20 100 5",
    "delay 100ms",
    "delay 100.5us",
    "delay 5s",
    "delay 100",
    "delay 1ms 500us distribution normal",
    "delay 10ms 2ms distribution pareto",
    "delay 10ms 2ms distribution paretonormal loss 1% 25% ecn",
    "delay 1ms 1ms distribution nosuchtable",
    "delay 10ms distribution normal",
    "delay 1MS",
    "delay 1.5ms",
    "delay 1e3us",
    "delay 0x10ms",
    "delay 0.9us",
    "delay 1s 2s",
    "delay 274877906us",
    "delay 274877907us",
    "delay 3000s",
    "delay 100ns",
    "delay -1ms",
    "delay 1ms -1ms",
    "delay 10ms 1ms .5",
    "delay 1ms 2ms 3% 4%",
    "latency 10ms",
    "d 10ms",
    "loss state 1% 10% 2% 50% 0.5%",
    "loss state 1%",
    "loss state 10% 20% 30% 40%",
    "loss state 10% 20% 30% 40% 50% 60%",
    "loss gemodel 1% 10% 70% 0.1%",
    "loss gemodel 1%",
    "loss gemodel 10% 20% 30%",
    "loss gemodel 1% 2% 3% 4% 5%",
    "loss random 5% 20",
    "loss 10% ecn",
    "loss 0.5",
    "loss .5",
    "loss 150%",
    "loss 10%%",
    "loss 100%",
    "loss 0%",
    "loss 1e1%",
    "loss 0x10%",
    "loss -5%",
    "loss nan",
    "loss 5% .2",
    "loss 5% loss 6%",
    "loss 0% loss 5%",
    "loss bursty 5%",
    "drop 3%",
    "lo 5",
    "ecn",
    "reorder 25% 50% gap 5 delay 10ms",
    "delay 10ms reorder 5% 10% gap 0",
    "delay 10ms reorder 0% gap 5",
    "reorder 5%",
    "gap 5",
    "gap 3 reorder 50% delay 1ms",
    "reorder 50% gap 3 reorder 10% delay 1ms",
    "r 5% d 1ms",
    "rep 5%",
    "duplicate 1% 30% corrupt 0.5% 10% limit 50",
    "duplicate 5% 10%",
    "duplicate 5% 10% delay 1ms 1ms 50%",
    "dup 5%",
    "corrupt 5% 10% 15%",
    "c 5%",
    "limit 1k",
    "limit 1.5k",
    "limit 2kbit",
    "limit 5b",
    "limit 0",
    "limit 1m",
    "limit x",
    "limit -1",
    "limit 5000000000",
    "limit 0x10",
    "l 5",
    "rate 1gbit",
    "rate 100gbit",
    "rate 8Bps",
    "rate 1kbps",
    "rate 1KiBps",
    "rate 1000",
    "rate 1.5kbit",
    "rate 1e3kbit",
    "rate 5kbit -20 100 -5",
    "rate 5kbit 20 100",
    "rate 5kbit 20 -100",
    "rate 5kbit 0x10",
    "rate 1mbit 20 100 5 extra",
    "rate 10%",
    "rate 5furlongs",
    "ra 1mbit",
    "slot 1ms 10ms packets 5 bytes 1000",
    "slot 1000 2000",
    "slot 1ms",
    "slot 2ms 1ms",
    "slot 1ms p 3 b 1k",
    "slot 1ms b 1k p 3",
    "slot 1ms packets",
    "slot 1ms bytes 2kbit",
    "slot 1ms packets 0",
    "slot foo",
    "slot distribution normal 1ms 1ms packets 2",
    "slot distribution pareto 2ms 1ms",
    "slot distribution normal 1ms 0",
    "delay 10ms slot distribution pareto 2ms 1ms",
    "help",
    "",
]
# tc passes these, the kernel would then hold nonsense or refuse them
# (validate_slot: negative slot limit); we refuse them with a clear line.
STRICTER = ["rate -5kbit", "delay inf", "slot 1ms 2ms packets -3"]
# tc 6.1 predates `seed` (the kernel has TCA_NETEM_PRNG_SEED); we accept it.
NEWER = ["seed 42 delay 1ms"]


def spec_state(spec: NetemSpec) -> dict[str, object]:
    skip = {"dist_name", "slot_dist_name", "seed"}
    return {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in skip}


@pytest.fixture(scope="module")
def tc_results() -> Iterator[dict[str, bytes | None]]:
    reason = tools_missing()
    if reason and require_real():
        pytest.fail(f"KUBENETEM_REQUIRE_REAL=1 but {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)
    netns = f"kn-netem-{os.getpid()}-spec"
    os.system(f"ip netns add {netns}")
    try:
        with tempfile.TemporaryDirectory(prefix="kn-netem-") as workdir:
            cases = CASES + STRICTER + NEWER
            yield dict(zip(cases, capture_many(netns, cases, workdir), strict=True))
    finally:
        os.system(f"ip netns del {netns}")


@pytest.mark.kernel
@pytest.mark.parametrize("case", CASES)
def test_parse_agrees_with_tc(case: str, tc_results: dict[str, bytes | None]) -> None:
    sent = tc_results[case]
    if sent is None:
        with pytest.raises(UsageError):
            parse_netem(case)
        return
    assert spec_state(parse_netem(case)) == kernel_state(sent)


@pytest.mark.kernel
@pytest.mark.parametrize("case", STRICTER)
def test_we_refuse_what_tc_passes_to_nonsense(case: str, tc_results: dict[str, bytes | None]) -> None:
    assert tc_results[case] is not None  # tc let it through
    with pytest.raises(UsageError):
        parse_netem(case)


@pytest.mark.kernel
def test_seed_is_newer_than_this_tc(tc_results: dict[str, bytes | None]) -> None:
    assert tc_results[NEWER[0]] is None
    spec = parse_netem(NEWER[0])
    assert spec.seed == 42 and spec.latency == 1_000_000


@pytest.mark.kernel
def test_a_table_given_by_the_caller_is_what_tc_loads(tc_results: dict[str, bytes | None]) -> None:
    """`distribution experimental` reads the installed experimental.dist, as tc does."""
    directory = dist_dir()
    assert directory is not None
    with open(os.path.join(directory, "experimental.dist"), encoding="ascii") as handle:
        table = distributions.parse_dist_file(handle.read())
    reason = tools_missing()
    assert not reason
    netns = f"kn-netem-{os.getpid()}-exp"
    os.system(f"ip netns add {netns}")
    try:
        with tempfile.TemporaryDirectory(prefix="kn-netem-") as workdir:
            (sent,) = capture_many(netns, ["delay 1ms 1ms distribution experimental"], workdir)
    finally:
        os.system(f"ip netns del {netns}")
    assert sent is not None
    spec = parse_netem("delay 1ms 1ms distribution experimental", tables={"experimental": table})
    assert spec_state(spec) == kernel_state(sent)


# -- without the real tc: the documented values and the errors --


def test_the_issue_example() -> None:
    spec = parse_netem("delay 100ms 10ms 25% loss 0.1% rate 5kbit 20 100 5")
    assert (spec.latency, spec.jitter, spec.delay_corr) == (100_000_000, 10_000_000, 1 << 30)
    assert spec.loss == 4294967  # rint(0.001 * 0xFFFFFFFF)
    assert (spec.rate, spec.packet_overhead, spec.cell_size, spec.cell_overhead) == (625, 20, 100, 5)


def test_delay_goes_through_psched_ticks() -> None:
    # 100.5us -> 100us (get_time truncates) -> 1562.5 ticks -> 1562 -> x64 ns.
    assert parse_netem("delay 100.5us").latency == 1562 * 64 == 99968
    assert parse_netem("delay 1ms").latency == 1_000_000


def test_slot_times_are_nanoseconds() -> None:
    spec = parse_netem("slot 1000 2000 packets 0")
    assert (spec.slot_min, spec.slot_max, spec.slot_packets, spec.slot_bytes) == (1000, 2000, INT_MAX, INT_MAX)
    assert spec.slot_enabled


def test_loss_model_defaults() -> None:
    state = parse_netem("loss state 1%")
    assert state.loss_model == CLG_4_STATES
    assert state.clg == (percent(0.01), percent(0.99), 0, 0, U32_MAX)  # p13 p31 p32 p14 p23
    ge = parse_netem("loss gemodel 10% 20% 30%")
    assert ge.loss_model == CLG_GILB_ELL
    assert ge.clg == (percent(0.1), percent(0.2), U32_MAX - percent(0.3), 0, 0)  # the kernel keeps h


def test_duplicate_correlation_needs_another_correlation() -> None:
    assert parse_netem("duplicate 5% 10%").dup_corr == 0
    assert parse_netem("duplicate 5% 10% loss 1% 1%").dup_corr == percent(0.1)


def test_reorder_defaults_gap_one() -> None:
    spec = parse_netem("delay 10ms reorder 25%")
    assert (spec.gap, spec.reorder) == (1, percent(0.25))


def test_keyword_abbreviations_follow_tc_order() -> None:
    assert [keyword(w) for w in ("l", "lo", "la", "d", "di", "du", "dr", "r", "ra", "s", "se", "x")] == [
        "limit",
        "loss",
        "delay",
        "delay",
        "distribution",
        "duplicate",
        "loss",
        "reorder",
        "rate",
        "slot",
        "seed",
        None,
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("delay", "'delay' needs a TIME"),
        ("delay 10parsecs", "delay: unknown time unit"),
        ("loss 150%", "loss: a percentage must be between 0 and 100%"),
        ("loss bursty 5%", "unknown loss model"),
        ("bogus", "unknown option 'bogus'"),
        ("reorder 5%", "reorder needs a delay"),
        ("ecn", "ecn needs a loss model"),
        ("rate 1mbit 20 100 5 extra", "unknown option 'extra'"),
        ("delay 1ms 1ms distribution weird", "no distribution table named 'weird'"),
        ("rate -5kbit", "rate: must not be negative"),
    ],
)
def test_errors_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_netem(text, source="--link")
    line = str(caught.value)
    assert "\n" not in line and line.startswith("--link: ")
    assert message in line
