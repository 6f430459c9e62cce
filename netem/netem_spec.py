"""`tc qdisc ... netem OPTIONS` parsed into the state the kernel's netem keeps.

A `NetemSpec` holds what `netem_change()` (net/sched/sch_netem.c) stores
after tc sent its netlink message: times in nanoseconds, probabilities as the
kernel's u32 fractions of 0xFFFFFFFF, the rate in bytes per second, the loss
model's transition thresholds, the delay table. `parse_netem()` reads the
words a user types after `netem` the way tc's q_netem.c (iproute2 6.1, the one
installed here) reads them, quirks included, because they decide what the
kernel gets:

- keywords may be abbreviated (tc's matches(): a prefix, tried in tc's order,
  so `l` is limit and `lo` is loss); an optional number must start with a digit
  (`loss 5% .2` is an error, `loss 0.5` is 0.5%);
- a percentage is `N` or `N%` (0 to 100), scaled by rint(p * 0xFFFFFFFF);
- `delay` and its jitter go through psched ticks (time -> whole microseconds
  -> ticks of 64 ns, each step truncating), so `delay 100.5us` is 99968 ns;
  slot times are exact nanoseconds (a bare number is ns there, us for delay);
- rates take tc's units (`kbit` = 1000 bit/s, `kbps` = 1000 *bytes*/s, `Kibit`,
  a bare number is bit/s) and are stored in bytes/s, truncated;
- the duplicate correlation is only sent when some other correlation is given
  (tc forgets to mark it present), so `duplicate 5% 10%` alone has none;
- `loss state P13` fills P31 = 1 - P13, P32 = 0, P23 = 100%, P14 = 0;
  `loss gemodel P` fills R = 1 - P, 1-H = 100%, 1-K = 0; the kernel keeps H
  (tc sends 1 - the user's `1-H`);
- `reorder` needs a delay and sets gap 1 when none is given; `gap` without
  `reorder`, `ecn` without loss and `distribution` without delay and jitter are
  errors, as in tc.
Where tc passes garbage the kernel turns into nonsense (a negative or infinite
time or rate) or the kernel then refuses (a negative slot limit), we refuse
with one clear line instead. `seed N` (newer tc; the kernel's
TCA_NETEM_PRNG_SEED) is accepted. Only `distribution` tables we can compute
(normal, pareto, paretonormal) or that the caller passes in are known.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import distributions
from .errors import UsageError

U32_MAX = 0xFFFFFFFF
INT_MAX = 0x7FFFFFFF
NS_PER_SEC = 1_000_000_000
# /proc/net/psched on every kernel since 2.6.x: 1000 ns per us, 64 ns per tick
# (PSCHED_SHIFT 6). tc computes tick_in_usec = 1000 / 64.
TICK_NS = 64
TICKS_PER_USEC = 1000 / TICK_NS

CLG_RANDOM, CLG_4_STATES, CLG_GILB_ELL = 0, 1, 2

USAGE = (
    "netem [limit PACKETS] [delay TIME [JITTER [CORRELATION]]] [distribution {normal|pareto|paretonormal}] "
    "[corrupt PERCENT [CORRELATION]] [duplicate PERCENT [CORRELATION]] [loss random PERCENT [CORRELATION]] "
    "[loss state P13 [P31 [P32 [P23 P14]]]] [loss gemodel PERCENT [R [1-H [1-K]]]] [ecn] "
    "[reorder PERCENT [CORRELATION] [gap DISTANCE]] [rate RATE [PACKETOVERHEAD] [CELLSIZE] [CELLOVERHEAD]] "
    "[slot MIN_DELAY [MAX_DELAY] [packets MAX_PACKETS] [bytes MAX_BYTES]] "
    "[slot distribution {normal|pareto|paretonormal} DELAY JITTER [packets MAX_PACKETS] [bytes MAX_BYTES]] "
    "[seed SEED]"
)


def percent(fraction: float) -> int:
    """tc's set_percent(): a fraction 0..1 as the kernel's u32 probability."""
    return round(fraction * U32_MAX)


def probability(value: int) -> float:
    """The kernel's u32 probability as a fraction 0..1."""
    return value / U32_MAX


@dataclass(frozen=True, slots=True)
class NetemSpec:
    """netem's configuration as the kernel holds it (struct netem_sched_data)."""

    limit: int = 1000
    latency: int = 0  # ns
    jitter: int = 0  # ns, at most INT_MAX (netem_change caps it for tabledist)
    delay_corr: int = 0
    dist_name: str = ""  # "" = uniform jitter (no table)
    delay_dist: tuple[int, ...] | None = field(default=None, repr=False)
    loss: int = 0
    loss_corr: int = 0
    loss_model: int = CLG_RANDOM
    # a1..a5 of struct clgstate: (p13, p31, p32, p14, p23) for the 4-state
    # model, (p, r, h, 1-k, 0) for Gilbert-Elliott.
    clg: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    ecn: bool = False
    duplicate: int = 0
    dup_corr: int = 0
    corrupt: int = 0
    corrupt_corr: int = 0
    reorder: int = 0
    reorder_corr: int = 0
    gap: int = 0
    rate: int = 0  # bytes per second; 0 = no rate
    packet_overhead: int = 0
    cell_size: int = 0
    cell_overhead: int = 0
    slot_min: int = 0  # ns
    slot_max: int = 0
    slot_packets: int = INT_MAX  # get_slot(): 0 means no limit
    slot_bytes: int = INT_MAX
    slot_dist_name: str = ""
    slot_dist: tuple[int, ...] | None = field(default=None, repr=False)
    slot_dist_delay: int = 0
    slot_dist_jitter: int = 0
    seed: int | None = None

    @property
    def slot_enabled(self) -> bool:
        """get_slot(): slots are on when any of min, max, dist jitter is set."""
        return bool(self.slot_min | self.slot_max | self.slot_dist_jitter)


def parse_netem(text: str, tables: Mapping[str, tuple[int, ...]] | None = None, source: str = "netem") -> NetemSpec:
    """The kernel state for `tc qdisc add ... netem TEXT`; UsageError otherwise.

    `tables` adds distribution tables by name (e.g. a `.dist` file read with
    `distributions.parse_dist_file`), next to the built-in ones.
    """
    return _Parser(text.split(), tables or {}, source).parse()


# -- the numbers tc reads -----------------------------------------------------

_DEC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?")
_SPECIAL = re.compile(r"[+-]?(?:inf(?:inity)?|nan)", re.IGNORECASE)


def strtod(word: str) -> tuple[float, str] | None:
    """C strtod() on a whole word: the number and the rest, None if no number."""
    for pattern in (_HEX, _SPECIAL, _DEC):
        m = pattern.match(word)
        if m:
            text = m.group(0)
            value = float.fromhex(text) if pattern is _HEX else float(text)
            return value, word[m.end() :]
    return None


def strtol(word: str) -> int | None:
    """C strtol(word, &end, 0) that must consume the whole word (get_u32/get_s32)."""
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", word)
    if not m:
        return None
    digits = m.group(2)
    base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") and len(digits) > 1 else 10
    value = int(digits, base)
    return -value if m.group(1) == "-" else value


_TIME_UNITS = {
    **dict.fromkeys(("s", "sec", "secs"), 1_000_000_000),
    **dict.fromkeys(("ms", "msec", "msecs"), 1_000_000),
    **dict.fromkeys(("us", "usec", "usecs"), 1_000),
}
_TIME64_UNITS = {**_TIME_UNITS, **dict.fromkeys(("ns", "nsec", "nsecs"), 1)}

# tc_util.c get_rate64(): suffix -> bits per second (compared case-insensitively).
_RATE_UNITS = {
    "bit": 1.0,
    "kibit": 1024.0,
    "kbit": 1000.0,
    "mibit": 1024.0**2,
    "mbit": 1e6,
    "gibit": 1024.0**3,
    "gbit": 1e9,
    "tibit": 1024.0**4,
    "tbit": 1e12,
    "bps": 8.0,
    "kibps": 8.0 * 1024,
    "kbps": 8000.0,
    "mibps": 8.0 * 1024**2,
    "mbps": 8e6,
    "gibps": 8.0 * 1024**3,
    "gbps": 8e9,
    "tibps": 8.0 * 1024**4,
    "tbps": 8e12,
}

# tc_util.c get_size(): suffix -> bytes.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "kbit": 1024 // 8,
    "mbit": 1024**2 // 8,
    "gbit": 1024**3 // 8,
}


def _finite(value: float) -> bool:
    return not (math.isinf(value) or math.isnan(value))


# tc's option keywords in the order netem_parse_opt() tries them (matches():
# the word is a prefix of the keyword).
_KEYWORDS = (
    ("limit", "limit"),
    ("latency", "delay"),
    ("delay", "delay"),
    ("loss", "loss"),
    ("drop", "loss"),
    ("ecn", "ecn"),
    ("reorder", "reorder"),
    ("corrupt", "corrupt"),
    ("gap", "gap"),
    ("duplicate", "duplicate"),
    ("distribution", "distribution"),
    ("rate", "rate"),
    ("slot", "slot"),
    ("seed", "seed"),
)


def keyword(word: str) -> str | None:
    """The option a (possibly abbreviated) word names, as tc's matches() decides."""
    if not word:
        return None
    for name, option in _KEYWORDS:
        if name.startswith(word):
            return option
    return None


class _Parser:
    """netem_parse_opt() over a list of words, building the kernel state."""

    def __init__(self, words: list[str], tables: Mapping[str, tuple[int, ...]], source: str) -> None:
        self.words = words
        self.i = 0
        self.tables = tables
        self.source = source
        self.f: dict[str, object] = {}
        self.latency_ticks = 0
        self.jitter_ticks = 0
        self.corr_present = False
        self.reorder_present = False
        self.loss_model = CLG_RANDOM
        self.dup_corr = 0

    # -- errors and words --

    def fail(self, message: str, word: str | None = None) -> UsageError:
        if word is None:
            return UsageError(message, path=self.source)
        return UsageError(message, path=self.source, value=word)

    def take(self, what: str) -> str:
        """NEXT_ARG(): the next word, or an error naming what was expected."""
        self.i += 1
        if self.i >= len(self.words):
            raise self.fail(f"{self.words[self.i - 1]!r} needs {what}")
        return self.words[self.i]

    def next_is_number(self, signed: bool = False) -> bool:
        """NEXT_IS_NUMBER(): the next word starts with a digit (or '-', if signed)."""
        if self.i + 1 >= len(self.words):
            return False
        first = self.words[self.i + 1][0]
        return first.isdigit() or (signed and first == "-")

    # -- values --

    def percent(self, word: str, what: str) -> int:
        return percent(self.fraction(word, what))

    def fraction(self, word: str, what: str) -> float:
        """parse_percent(): `N` or `N%`, 0..100."""
        parsed = strtod(word)
        if parsed is None or parsed[1] not in ("", "%") or not _finite(parsed[0]):
            raise self.fail(f"{what}: not a percentage", word)
        value = parsed[0] / 100.0
        if not 0.0 <= value <= 1.0:
            raise self.fail(f"{what}: a percentage must be between 0 and 100%", word)
        return value

    def ticks(self, word: str, what: str) -> int:
        """get_ticks(): get_time() to whole microseconds, then psched ticks."""
        parsed = strtod(word)
        if parsed is None or not _finite(parsed[0]):
            raise self.fail(f"{what}: not a time (e.g. 100ms, 10us, 1.5s)", word)
        value, unit = parsed
        if unit:
            scale = _TIME_UNITS.get(unit.lower())
            if scale is None:
                raise self.fail(f"{what}: unknown time unit (s, ms, us; a bare number is us)", word)
            value *= scale / 1000
        if value < 0:
            raise self.fail(f"{what}: a time must not be negative", word)
        usec = int(value)
        if usec * TICKS_PER_USEC > U32_MAX:
            raise self.fail(f"{what}: too large (at most {int(U32_MAX / TICKS_PER_USEC)}us)", word)
        return int(usec * TICKS_PER_USEC)

    def time64(self, word: str, what: str) -> int:
        """get_time64(): nanoseconds (a bare number is ns)."""
        parsed = strtod(word)
        if parsed is None or not _finite(parsed[0]):
            raise self.fail(f"{what}: not a time (e.g. 100ms, 10us, 1.5s)", word)
        value, unit = parsed
        if unit:
            scale = _TIME64_UNITS.get(unit.lower())
            if scale is None:
                raise self.fail(f"{what}: unknown time unit (s, ms, us, ns; a bare number is ns)", word)
            value *= scale
        if value < 0:
            raise self.fail(f"{what}: a time must not be negative", word)
        if value >= 2**63:
            raise self.fail(f"{what}: too large", word)
        return int(value)

    def size(self, word: str, what: str) -> int:
        """get_size(): bytes (or a packet count for limit) with k/m/g suffixes."""
        parsed = strtod(word)
        if parsed is None or not _finite(parsed[0]):
            raise self.fail(f"{what}: not a number", word)
        value, unit = parsed
        scale = _SIZE_UNITS.get(unit.lower())
        if scale is None:
            raise self.fail(f"{what}: unknown unit (b, k, m, g, kbit, mbit, gbit)", word)
        value *= scale
        if not 0 <= value <= U32_MAX:
            raise self.fail(f"{what}: out of range (0 to {U32_MAX})", word)
        return int(value)

    def rate(self, word: str) -> int:
        """get_rate64(): bytes per second from bit/s or B/s units."""
        if "%" in word:
            raise self.fail("rate: a percentage of the device speed needs a device; give bit/s", word)
        parsed = strtod(word)
        if parsed is None or not _finite(parsed[0]):
            raise self.fail("rate: not a rate (e.g. 5kbit, 100mbit, 1gbit)", word)
        value, unit = parsed
        if unit:
            scale = _RATE_UNITS.get(unit.lower())
            if scale is None:
                raise self.fail("rate: unknown unit (bit, kbit, mbit, gbit, tbit, Kibit..., bps, kbps...)", word)
            value *= scale
        if value < 0:
            raise self.fail("rate: must not be negative", word)
        if value / 8 >= 2**64:
            raise self.fail("rate: too large", word)
        return int(value / 8)

    def integer(self, word: str, what: str, low: int, high: int) -> int:
        value = strtol(word)
        if value is None:
            raise self.fail(f"{what}: not an integer", word)
        if not low <= value <= high:
            raise self.fail(f"{what}: out of range ({low} to {high})", word)
        return value

    def table(self, name: str) -> tuple[int, ...]:
        if name in self.tables:
            return self.tables[name]
        if name in distributions.NAMES:
            return distributions.table(name)
        known = ", ".join(sorted({*distributions.NAMES, *self.tables}))
        raise self.fail(f"no distribution table named {name!r} (known: {known})")

    # -- the options --

    def parse(self) -> NetemSpec:
        handlers: dict[str, Callable[[], None]] = {
            "limit": self.opt_limit,
            "delay": self.opt_delay,
            "loss": self.opt_loss,
            "ecn": self.opt_ecn,
            "reorder": self.opt_reorder,
            "corrupt": self.opt_corrupt,
            "gap": self.opt_gap,
            "duplicate": self.opt_duplicate,
            "distribution": self.opt_distribution,
            "rate": self.opt_rate,
            "slot": self.opt_slot,
            "seed": self.opt_seed,
        }
        while self.i < len(self.words):
            word = self.words[self.i]
            if word == "help":
                raise self.fail(f"usage: {USAGE}")
            option = keyword(word)
            if option is None:
                raise self.fail(f"unknown option {word!r}; usage: {USAGE}")
            handlers[option]()
            self.i += 1
        return self.finish()

    def opt_limit(self) -> None:
        self.f["limit"] = self.size(self.take("a packet count"), "limit")

    def opt_delay(self) -> None:
        self.latency_ticks = self.ticks(self.take("a TIME"), "delay")
        if self.next_is_number():
            self.jitter_ticks = self.ticks(self.take("a JITTER"), "delay jitter")
            if self.next_is_number():
                self.corr_present = True
                self.f["delay_corr"] = self.percent(self.take("a CORRELATION"), "delay correlation")

    def opt_loss(self) -> None:
        if self.f.get("loss", 0) or self.loss_model != CLG_RANDOM:
            raise self.fail("loss given twice")
        word = self.take("random PERCENT, state P13... or gemodel P...")
        if word[0].isdigit():  # the old syntax: `loss 1%` is `loss random 1%`
            self.i -= 1
            word = "random"
        if word == "random":
            self.f["loss"] = self.percent(self.take("a PERCENT"), "loss")
            if self.next_is_number():
                self.corr_present = True
                self.f["loss_corr"] = self.percent(self.take("a CORRELATION"), "loss correlation")
        elif word == "state":
            self.loss_state()
        elif word == "gemodel":
            self.loss_gemodel()
        else:
            raise self.fail("unknown loss model (random, state, gemodel)", word)

    def optional_percents(self, names: tuple[str, ...]) -> list[int | None]:
        """Up to len(names) more percentages, each only if the next word is a number."""
        out: list[int | None] = []
        for name in names:
            if not self.next_is_number():
                out.append(None)
                continue
            out.append(self.percent(self.take(name), f"loss {name}"))
        return out

    def loss_state(self) -> None:
        """`loss state P13 [P31 [P32 [P23 [P14]]]]`: the GI 4-state model."""
        p13 = self.fraction(self.take("P13"), "loss p13")
        p31, p32, p23, p14 = self.optional_percents(("p31", "p32", "p23", "p14"))
        self.loss_model = CLG_4_STATES
        self.f["clg"] = (
            percent(p13),
            percent(1.0 - p13) if p31 is None else p31,
            0 if p32 is None else p32,
            0 if p14 is None else p14,
            U32_MAX if p23 is None else p23,
        )

    def loss_gemodel(self) -> None:
        """`loss gemodel P [R [1-H [1-K]]]`: Gilbert-Elliott; the kernel keeps H."""
        p = self.fraction(self.take("P"), "loss gemodel p")
        r, one_minus_h, one_minus_k = self.optional_percents(("r", "1-h", "1-k"))
        self.loss_model = CLG_GILB_ELL
        self.f["clg"] = (
            percent(p),
            percent(1.0 - p) if r is None else r,
            0 if one_minus_h is None else U32_MAX - one_minus_h,
            0 if one_minus_k is None else one_minus_k,
            0,
        )

    def opt_ecn(self) -> None:
        self.f["ecn"] = True

    def opt_reorder(self) -> None:
        self.reorder_present = True
        self.f["reorder"] = self.percent(self.take("a PERCENT"), "reorder")
        if self.next_is_number():
            self.corr_present = True
            self.f["reorder_corr"] = self.percent(self.take("a CORRELATION"), "reorder correlation")

    def opt_corrupt(self) -> None:
        self.f["corrupt"] = self.percent(self.take("a PERCENT"), "corrupt")
        if self.next_is_number():
            self.corr_present = True
            self.f["corrupt_corr"] = self.percent(self.take("a CORRELATION"), "corrupt correlation")

    def opt_gap(self) -> None:
        self.f["gap"] = self.integer(self.take("a DISTANCE"), "gap", 0, U32_MAX)

    def opt_duplicate(self) -> None:
        self.f["duplicate"] = self.percent(self.take("a PERCENT"), "duplicate")
        if self.next_is_number():
            # tc reads it but does not mark the correlation attribute present.
            self.dup_corr = self.percent(self.take("a CORRELATION"), "duplicate correlation")

    def opt_distribution(self) -> None:
        name = self.take("a distribution name")
        self.f["delay_dist"] = self.table(name)
        self.f["dist_name"] = name

    def opt_rate(self) -> None:
        self.f["rate"] = self.rate(self.take("a RATE"))
        if self.next_is_number(signed=True):
            self.f["packet_overhead"] = self.integer(
                self.take("PACKETOVERHEAD"), "rate packetoverhead", -INT_MAX - 1, INT_MAX
            )
        if self.next_is_number():
            self.f["cell_size"] = self.integer(self.take("CELLSIZE"), "rate cellsize", 0, U32_MAX)
        if self.next_is_number(signed=True):
            self.f["cell_overhead"] = self.integer(
                self.take("CELLOVERHEAD"), "rate celloverhead", -INT_MAX - 1, INT_MAX
            )

    def opt_slot(self) -> None:
        if self.next_is_number():
            low = self.time64(self.take("MIN_DELAY"), "slot min_delay")
            high = low
            if self.next_is_number():
                high = self.time64(self.take("MAX_DELAY"), "slot max_delay")
                if high < low:
                    raise self.fail("slot: max_delay is below min_delay", self.words[self.i])
            self.f["slot_min"], self.f["slot_max"] = low, high
        else:
            word = self.take("MIN_DELAY or distribution")
            if word != "distribution":
                raise self.fail("unknown slot parameter (a time, or distribution)", word)
            name = self.take("a distribution name")
            self.f["slot_dist"], self.f["slot_dist_name"] = self.table(name), name
            self.f["slot_dist_delay"] = self.time64(self.take("DELAY"), "slot delay")
            jitter = self.time64(self.take("JITTER"), "slot jitter")
            if jitter <= 0:
                raise self.fail("slot jitter: must be positive", self.words[self.i])
            self.f["slot_dist_jitter"] = min(jitter, INT_MAX)
        self.slot_limits()

    def slot_limits(self) -> None:
        """`[packets N] [bytes N]`, in this order (tc looks for packets first)."""
        for name in ("packets", "bytes"):
            if self.i + 1 < len(self.words) and self.words[self.i + 1] and name.startswith(self.words[self.i + 1]):
                self.i += 1
                word = self.take(f"a {name} count")
                if name == "packets":
                    value = self.integer(word, "slot packets", -INT_MAX - 1, INT_MAX)
                else:
                    value = self.size(word, "slot bytes")
                    value = value - 2**32 if value > INT_MAX else value  # tc stores it as int
                if value < 0:  # validate_slot(): "negative slot limit"
                    raise self.fail(f"slot {name}: must not be negative", word)
                self.f[f"slot_{name}"] = value or INT_MAX  # get_slot(): 0 is no limit

    def opt_seed(self) -> None:
        self.f["seed"] = self.integer(self.take("a SEED"), "seed", 0, 2**64 - 1)

    def finish(self) -> NetemSpec:
        """tc's checks after the loop, and netem_change()'s view of the result."""
        if self.f.get("reorder", 0):
            if self.latency_ticks == 0:
                raise self.fail("reorder needs a delay (reordering is not possible without one)")
            if not self.f.get("gap", 0):
                self.f["gap"] = 1
        elif self.f.get("gap", 0):
            raise self.fail("gap given without a reorder probability")
        if self.f.get("ecn") and not self.f.get("loss", 0) and self.loss_model == CLG_RANDOM:
            raise self.fail("ecn needs a loss model")
        if "delay_dist" in self.f and (self.latency_ticks == 0 or self.jitter_ticks == 0):
            raise self.fail("distribution needs a delay and a jitter")
        if self.corr_present:
            self.f["dup_corr"] = self.dup_corr
        if self.f.get("gap", 0) and not self.reorder_present:
            self.f["reorder"] = U32_MAX  # netem_change(): a gap alone means 100%
        self.f["latency"] = self.latency_ticks * TICK_NS
        self.f["jitter"] = min(self.jitter_ticks * TICK_NS, INT_MAX)
        self.f["loss_model"] = self.loss_model
        return NetemSpec(**self.f)  # type: ignore[arg-type]
