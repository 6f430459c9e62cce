"""Golden scheduler behaviour worked out by hand from net/netfilter/ipvs/ip_vs_*.c."""

from __future__ import annotations

import pytest

from netem.addr import parse_ip
from proxy_modes.ipvs.hashing import hash_32, hsiphash
from proxy_modes.ipvs.schedulers import (
    F_SCHED_FALLBACK,
    F_SCHED_PORT,
    MH_TAB_SIZE,
    SH_TAB_SIZE,
    Dest,
    make_scheduler,
)

A, B, C = parse_ip("10.180.0.1"), parse_ip("10.180.0.2"), parse_ip("10.180.0.3")
CLIENT = parse_ip("10.0.0.1")


def dests(*weights: int) -> list[Dest]:
    """Destinations in kernel list order (head first)."""
    return [Dest(parse_ip(f"10.180.0.{i + 1}"), 80, w) for i, w in enumerate(weights)]


def run(name: str, ds: list[Dest], n: int, flags: int = 0, src: int = CLIENT) -> list[str]:
    sched = make_scheduler(name, flags)
    sched.init(ds)
    out = []
    for i in range(n):
        d = sched.schedule(ds, src, 40000 + i, parse_ip("172.30.0.1"))
        out.append(d.text.split(":")[0][-1] if d else "-")
    return out


def test_hsiphash_matches_the_kernel_self_test_vectors() -> None:
    # lib/siphash_kunit.c, 64-bit: key 00..0f, input 00..(i-1).
    key = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
    expected = {0: 0x050FC4DC, 1: 0x7D57CA93, 4: 0x88D38328, 8: 0x8D299A8E, 16: 0x7D908B66, 63: 0xB7BBB3A8}
    for n, value in expected.items():
        assert hsiphash(bytes(range(n)), key) == value


def test_hash_32_is_the_golden_ratio_multiply() -> None:
    # 0x0a000001 * 0x61c88647 mod 2^32 = 0x27c88647 -> top 8 bits 0x27 = 39
    assert hash_32(0x0A000001, 8) == 39
    assert hash_32(parse_ip("203.0.113.5"), 8) == 185


def test_rr_walks_the_list_from_the_head_and_skips_weight_zero() -> None:
    assert run("rr", dests(1, 1, 1), 7) == list("1231231")
    assert run("rr", dests(1, 0, 1), 4) == list("1313")
    assert run("rr", dests(0, 0), 2) == ["-", "-"]


def test_rr_position_survives_add_and_delete() -> None:
    ds = dests(1, 1, 1)
    sched = make_scheduler("rr")
    sched.init(ds)
    assert sched.schedule(ds, CLIENT, 1, 0) is ds[0]
    assert sched.schedule(ds, CLIENT, 1, 0) is ds[1]
    # delete the current one: the position steps back, the next is the old third
    removed = ds.pop(1)
    sched.changed(ds, "del", 1)
    assert removed.addr == B
    assert sched.schedule(ds, CLIENT, 1, 0).addr == C
    # a new server goes to the head; the position keeps pointing at C
    ds.insert(0, Dest(parse_ip("10.180.0.9"), 80))
    sched.changed(ds, "add", 0)
    assert sched.schedule(ds, CLIENT, 1, 0).addr == parse_ip("10.180.0.9")


def test_wrr_over_weights_4_3_2() -> None:
    # di = gcd 1, mw = 4: passes cw=4 (A), 3 (A,B), 2 (A,B,C), 1 (A,B,C).
    seq = run("wrr", dests(4, 3, 2), 18)
    assert seq == list("112123123" * 2)


def test_wrr_with_gcd_steps_by_the_gcd() -> None:
    # weights 4 and 2: di = 2, mw = 4 - 1 = 3; cw 3 -> A, cw 1 -> A, B.
    assert run("wrr", dests(4, 2), 6) == list("112112")


def test_lc_picks_least_overhead_first_on_ties() -> None:
    ds = dests(1, 1, 1)
    assert run("lc", ds, 1) == ["1"]
    ds[0].active, ds[1].inactive = 1, 200  # 256 vs 200 vs 0
    assert run("lc", ds, 1) == ["3"]
    ds[2].inactive = 255
    assert run("lc", ds, 1) == ["2"]  # 200 < 255 < 256


def test_wlc_compares_overhead_over_weight_without_division() -> None:
    ds = dests(2, 1)
    ds[0].active = 1  # 256/2 = 128
    ds[1].inactive = 100  # 100/1: less
    assert run("wlc", ds, 1) == ["2"]
    ds[1].inactive = 128  # tie: the first stays
    assert run("wlc", ds, 1) == ["1"]


def test_sed_counts_the_incoming_job_and_only_active_connections() -> None:
    ds = dests(1, 3)
    ds[0].active, ds[1].active = 0, 2  # (0+1)/1 = 1 vs (2+1)/3 = 1: tie, first wins
    assert run("sed", ds, 1) == ["1"]
    ds[1].inactive = 1000  # ignored by sed
    ds[0].active = 1
    assert run("sed", ds, 1) == ["2"]


def test_nq_takes_an_idle_server_at_once() -> None:
    ds = dests(5, 1, 1)
    ds[0].active, ds[1].active = 1, 0
    assert run("nq", ds, 1) == ["2"]


def test_overloaded_servers_are_skipped_and_thresholds_set_the_flag() -> None:
    d = Dest(A, 80, 1, u_threshold=2)
    d.bound(False, False)
    assert not d.overloaded
    d.bound(False, False)
    assert d.overloaded
    d.unbound(False, False)  # 1 * 4 < 2 * 3: below 3/4 of the upper threshold
    assert not d.overloaded
    ds = [d, Dest(B, 80)]
    d.overloaded = True
    assert run("rr", ds, 2) == ["2", "2"]


def test_fo_and_ovf() -> None:
    ds = dests(1, 3, 2)
    assert run("fo", ds, 2) == ["2", "2"]
    ds[1].active = 4  # more active than its weight 3: ovf moves on to weight 2
    assert run("ovf", ds, 1) == ["3"]


def test_sh_fills_buckets_by_weight_and_hashes_the_source() -> None:
    ds = dests(2, 1)
    sched = make_scheduler("sh")
    sched.init(ds)
    owners = [b.addr for b in sched.buckets]  # type: ignore[attr-defined]
    assert owners[:6] == [A, A, B, A, A, B]
    assert len(owners) == SH_TAB_SIZE
    # 10.0.0.1 hashes to bucket 39 (see test_hash_32); 39 = 13*3 -> A.
    assert sched.schedule(ds, CLIENT, 1234, 0) is ds[0]
    assert sched.explain(ds, CLIENT, 1234, 0)["bucket"] == 39


def test_sh_port_flag_hashes_the_source_port_and_fallback_skips_unusable() -> None:
    ds = dests(1, 1)
    sched = make_scheduler("sh", F_SCHED_PORT)
    sched.init(ds)
    buckets = {sched.explain(ds, CLIENT, p, 0)["bucket"] for p in range(1000, 1010)}
    assert len(buckets) > 1
    plain = make_scheduler("sh")
    plain.init(ds)
    target = plain.schedule(ds, CLIENT, 0, 0)
    assert target is not None
    target.weight = 0
    assert plain.schedule(ds, CLIENT, 0, 0) is None
    fallback = make_scheduler("sh", F_SCHED_FALLBACK)
    fallback.init(ds)
    other = fallback.schedule(ds, CLIENT, 0, 0)
    assert other is not None and other is not target


def test_dh_hashes_the_destination() -> None:
    ds = dests(1, 1, 1)
    sched = make_scheduler("dh")
    sched.init(ds)
    dst = parse_ip("172.30.0.1")
    first = sched.schedule(ds, CLIENT, 1, dst)
    assert all(sched.schedule(ds, parse_ip(f"10.0.0.{i}"), i, dst) is first for i in range(2, 20))
    assert first is ds[hash_32(dst, 8) % 3]


def test_mh_fills_the_4093_slots_evenly_and_is_stable() -> None:
    ds = dests(1, 1, 1)
    sched = make_scheduler("mh")
    sched.init(ds)
    lookup = sched.lookup  # type: ignore[attr-defined]
    assert len(lookup) == MH_TAB_SIZE == 4093
    counts = [sum(1 for d in lookup if d is x) for x in ds]
    assert sum(counts) == 4093 and max(counts) - min(counts) <= 1
    # removing one server only moves that server's slots (Maglev's promise,
    # nearly: a few collisions move too)
    before = {i: d.addr for i, d in enumerate(lookup)}
    gone = ds.pop(2)
    sched.changed(ds, "del", 2)
    after = sched.lookup  # type: ignore[attr-defined]
    moved = sum(1 for i, d in enumerate(after) if before[i] != gone.addr and d.addr != before[i])
    assert moved < 4093 // 10


def test_mh_weights_give_proportional_slots() -> None:
    ds = dests(3, 1)
    sched = make_scheduler("mh")
    sched.init(ds)
    heavy = sum(1 for d in sched.lookup if d is ds[0])  # type: ignore[attr-defined]
    assert heavy == pytest.approx(4093 * 3 / 4, abs=2)


def test_quiesced_server_keeps_its_mh_slots_but_takes_no_connection() -> None:
    ds = dests(1, 1)
    sched = make_scheduler("mh")
    sched.init(ds)
    chosen = sched.schedule(ds, CLIENT, 0, 0)
    assert chosen is not None
    chosen.weight = 0  # kube-proxy's graceful termination; last_weight stays 1
    sched.changed(ds, "upd", ds.index(chosen))
    assert sched.schedule(ds, CLIENT, 0, 0) is None
    assert sum(1 for d in sched.lookup if d is chosen) > 0  # type: ignore[attr-defined]
