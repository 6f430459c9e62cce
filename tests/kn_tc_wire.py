"""The real tc as the reference for netem option parsing.

This kernel has no netem qdisc, but tc parses its options and sends the
netlink request before the kernel refuses the unknown kind. Running tc under
strace inside a network namespace we create captures that request; decoding
TCA_OPTIONS the way net/sched/sch_netem.c netem_change() does gives the
kernel state the options would produce, to compare with our NetemSpec.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
from typing import Any

U32_MAX = 0xFFFFFFFF
INT_MAX = 0x7FFFFFFF
# include/uapi/linux/pkt_sched.h TCA_NETEM_*
CORR, DELAY_DIST, REORDER, CORRUPT, LOSS, RATE, ECN, RATE64 = 1, 2, 3, 4, 5, 6, 7, 8
LATENCY64, JITTER64, SLOT, SLOT_DIST, PRNG_SEED = 10, 11, 12, 13, 14
NETEM_LOSS_GI, NETEM_LOSS_GE = 1, 2
_OPTIONS = re.compile(r'nla_type=TCA_OPTIONS\}, "((?:\\x[0-9a-f]{2})*)"')


def require_real() -> bool:
    return os.environ.get("KUBENETEM_REQUIRE_REAL") == "1"


def tools_missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in ("ip", "tc", "strace") if shutil.which(t) is None]
    return "missing tools: " + ", ".join(missing) if missing else ""


def dist_dir() -> str | None:
    """Where this machine's iproute2 keeps its .dist tables."""
    for path in ("/usr/lib/tc", *sorted(glob.glob("/usr/lib/*/tc")), "/usr/lib64/tc"):
        if os.path.exists(os.path.join(path, "normal.dist")):
            return path
    return None


def capture_many(netns: str, cases: list[str], workdir: str) -> list[bytes | None]:
    """tc's TCA_OPTIONS payload for each `netem CASE` (None where tc refused it).

    One `tc -force -batch` run under strace: every case is followed by a
    `qdisc show` whose RTM_GETQDISC request marks where the case ended.
    """
    batch = os.path.join(workdir, "netem.batch")
    trace = os.path.join(workdir, "netem.strace")
    with open(batch, "w", encoding="ascii") as out:
        for case in cases:
            out.write(f"qdisc add dev lo root netem {case}\nqdisc show dev lo\n")
    subprocess.run(
        [
            *("ip", "netns", "exec", netns, "strace", "-o", trace, "-e", "trace=sendmsg", "-xx", "-s", "65536"),
            *("tc", "-force", "-batch", batch),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    results: list[bytes | None] = []
    current: bytes | None = None
    with open(trace, encoding="ascii") as lines:
        for line in lines:
            if "RTM_GETQDISC" in line:
                results.append(current)
                current = None
            elif "RTM_NEWQDISC" in line:
                found = _OPTIONS.search(line)
                current = bytes.fromhex(found.group(1).replace("\\x", "")) if found else b""
    if len(results) != len(cases):
        raise AssertionError(f"tc batch ran {len(results)} of {len(cases)} cases")
    return results


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("<HH", data, offset)
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _table(raw: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(raw) // 2}h", raw)


def kernel_state(data: bytes) -> dict[str, Any]:
    """netem_change() on a fresh qdisc, for the fields NetemSpec keeps."""
    latency, limit, loss, gap, duplicate, jitter = struct.unpack_from("<6I", data)
    state: dict[str, Any] = {
        "limit": limit,
        "latency": latency << 6,  # PSCHED_TICKS2NS
        "jitter": jitter << 6,
        "loss": loss,
        "gap": gap,
        "duplicate": duplicate,
        "reorder": U32_MAX if gap else 0,  # "if gap is set, need to assume 100% probability"
        "delay_corr": 0,
        "loss_corr": 0,
        "dup_corr": 0,
        "reorder_corr": 0,
        "corrupt": 0,
        "corrupt_corr": 0,
        "loss_model": 0,
        "clg": (0, 0, 0, 0, 0),
        "ecn": False,
        "rate": 0,
        "packet_overhead": 0,
        "cell_size": 0,
        "cell_overhead": 0,
        "slot_min": 0,
        "slot_max": 0,
        "slot_packets": INT_MAX,
        "slot_bytes": INT_MAX,
        "slot_dist_delay": 0,
        "slot_dist_jitter": 0,
        "delay_dist": None,
        "slot_dist": None,
    }
    attrs = _attrs(data[24:])
    if CORR in attrs:
        state["delay_corr"], state["loss_corr"], state["dup_corr"] = struct.unpack("<3I", attrs[CORR])
    if REORDER in attrs:
        state["reorder"], state["reorder_corr"] = struct.unpack("<2I", attrs[REORDER])
    if CORRUPT in attrs:
        state["corrupt"], state["corrupt_corr"] = struct.unpack("<2I", attrs[CORRUPT])
    if LOSS in attrs:
        for kind, raw in _attrs(attrs[LOSS]).items():
            if kind == NETEM_LOSS_GI:
                state["loss_model"], state["clg"] = 1, struct.unpack("<5I", raw)
            elif kind == NETEM_LOSS_GE:
                state["loss_model"], state["clg"] = 2, (*struct.unpack("<4I", raw), 0)
    if RATE in attrs:
        rate, state["packet_overhead"], state["cell_size"], state["cell_overhead"] = struct.unpack("<IiIi", attrs[RATE])
        state["rate"] = rate
    if RATE64 in attrs:
        state["rate"] = max(state["rate"], struct.unpack("<Q", attrs[RATE64])[0])
    if ECN in attrs:
        state["ecn"] = bool(struct.unpack("<I", attrs[ECN])[0])
    if LATENCY64 in attrs:
        state["latency"] = struct.unpack("<q", attrs[LATENCY64])[0]
    if JITTER64 in attrs:
        state["jitter"] = struct.unpack("<q", attrs[JITTER64])[0]
    state["jitter"] = min(abs(state["jitter"]), INT_MAX)
    if SLOT in attrs:
        low, high, packets, size, dist_delay, dist_jitter = struct.unpack("<qqiiqq", attrs[SLOT])
        state.update(slot_min=low, slot_max=high, slot_dist_delay=dist_delay)
        state["slot_packets"] = packets or INT_MAX
        state["slot_bytes"] = size or INT_MAX
        state["slot_dist_jitter"] = min(abs(dist_jitter), INT_MAX)
    if DELAY_DIST in attrs:
        state["delay_dist"] = _table(attrs[DELAY_DIST])
    if SLOT_DIST in attrs:
        state["slot_dist"] = _table(attrs[SLOT_DIST])
    return state
