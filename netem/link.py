"""One direction of a link: the Linux netem qdisc as net/sched/sch_netem.c runs it.

A `Link` is netem as the root qdisc of the sending device, over a device that
is never busy. Its state is the kernel's: the correlated random generators
(`crndstate`), the loss model's Markov state, the reorder counter, the time
fifo of packets waiting for their `time_to_send`, the queue head where
reordered packets jump in, the slot budget. The arithmetic is the kernel's,
in integer nanoseconds, so results match what `tc qdisc ... netem` does
(except the random numbers themselves: the caller's seeded `random.Random`
replaces the kernel's prandom state; see netem/README.md):

- netem_enqueue() order: duplicate (the copy re-enters at the root, so it meets
  loss, corruption and the limit on its own but is never duplicated again),
  loss (random with get_crandom() correlation, 4-state GI, Gilbert-Elliott;
  with `ecn` an ECN-capable packet is marked CE instead of dropped), the clone,
  corrupt, the limit (the queue length before this packet), then either
  reorder (to the head of the queue, sent now, counter reset; only once
  `counter >= gap - 1`, kernel 6.x) or delay: tabledist() over the latency and
  jitter (uniform or a table), plus, with a rate, serialisation behind the
  last queued packet (packet_time_ns() with packet overhead and cells).
- netem_dequeue(): the reordered head first, then the time fifo in
  time_to_send order, gated by slots (get_slot_next()).
- get_crandom(): `(rnd * (2^32 - rho - 1) + last * (rho + 1)) >> 32`, the
  smoothing that shrinks the spread of the draws and so changes the effective
  probability of every correlated impairment. Reproduced, not fixed.

Two ways to drive it, both sans-IO (`now` is integer ns):

- `send(packet, now)`: returns the copies that will leave and when. Exact for
  every configuration without `slot` (a packet then leaves at its
  time_to_send, or now if that has passed). The simulator's fast path;
  on a `steady` link (a fixed delay, a limit, maybe a rate: one unmarked
  copy or none) `arrival(packet, now)` gives the same answer as one number.
- `enqueue(packet, now)` / `dequeue(now)` / `wakeup`: the qdisc interface.
  `enqueue` runs netem_enqueue and the dequeue that follows it in the kernel
  and returns what leaves at `now`; `wakeup` is when the watchdog fires next
  (None: nothing queued); call `dequeue(wakeup)` then. Needed for `slot`.

A delivery is `(time_ns, packet, marks)`; marks are CE, CORRUPTED (a bit
flipped: the receiver's checksum fails) and DUPLICATE (the clone).
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from typing import TYPE_CHECKING

from .netem_spec import CLG_4_STATES, CLG_RANDOM, NS_PER_SEC, NetemSpec, parse_netem

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping

    from .packet import Packet

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
DIST_SCALE = 8192

CE = 1  # ECN Congestion Experienced set instead of a drop (`ecn`)
CORRUPTED = 2  # one bit of the packet flipped (`corrupt`)
DUPLICATE = 4  # the copy made by `duplicate`

Delivery = tuple[int, "Packet", int]

# 4-state model states (sch_netem.c _4_state_model) and Gilbert-Elliott states.
TX_IN_GAP, TX_IN_BURST, LOST_IN_GAP, LOST_IN_BURST = 1, 2, 3, 4
GOOD, BAD = 1, 2


class LinkStats:
    """What `tc -s qdisc show` counts, split by cause."""

    __slots__ = (
        "_delivered",
        "at_enqueue",
        "corrupted",
        "duplicated",
        "lost",
        "marked",
        "overlimits",
        "packets",
        "reordered",
    )

    def __init__(self) -> None:
        self.packets = 0  # accepted into the queue (copies included)
        self._delivered = 0  # counted at dequeue (qdisc interface)
        self.at_enqueue = False  # send(): every accepted packet is scheduled at once
        self.lost = 0  # dropped by the loss model
        self.marked = 0  # CE-marked instead (kernel qstats count these as drops too)
        self.overlimits = 0  # dropped at the limit (the clone with its original)
        self.duplicated = 0
        self.corrupted = 0
        self.reordered = 0  # sent ahead of the queue (qstats.requeues)

    @property
    def delivered(self) -> int:
        return self.packets if self.at_enqueue else self._delivered

    @property
    def drops(self) -> int:
        """qstats.drops as the kernel counts it."""
        return self.lost + self.marked + self.overlimits


class Link:
    """netem on one device; see the module docstring for the two interfaces."""

    def __init__(self, spec: NetemSpec, rng: random.Random, now: int = 0) -> None:
        self.spec = spec
        # `seed N` gives the qdisc its own generator, as TCA_NETEM_PRNG_SEED does.
        self.rng = type(rng)(spec.seed) if spec.seed is not None else rng
        self._rand = self.rng.getrandbits
        self.stats = LinkStats()
        self.limit = spec.limit
        self.latency = spec.latency
        self.jitter = spec.jitter
        self.table = spec.delay_dist
        self.loss = spec.loss
        self.loss_model = spec.loss_model
        self.a1, self.a2, self.a3, self.a4, self.a5 = spec.clg
        self.ecn = spec.ecn
        self.duplicate = spec.duplicate
        self.corrupt = spec.corrupt
        self.reorder = spec.reorder
        self.gap = spec.gap
        self.rate = spec.rate
        self._overhead = spec.packet_overhead
        self._plain_rate = spec.cell_size == 0
        self.counter = 0
        self.clg_state = TX_IN_GAP  # == GOOD
        self._has_loss = spec.loss_model != CLG_RANDOM or spec.loss != 0
        # crndstate [last, rho + 1]; init_crandom() seeds `last` with a random u32.
        self._delay_cor = self._crandom_state(spec.delay_corr)
        self._loss_cor = self._crandom_state(spec.loss_corr)
        self._dup_cor = self._crandom_state(spec.dup_corr)
        self._reorder_cor = self._crandom_state(spec.reorder_corr)
        self._corrupt_cor = self._crandom_state(spec.corrupt_corr)
        # Slots (get_slot()): when on, the first slot opens now.
        self.slot = spec.slot_enabled
        self.slot_next = now if self.slot else 0
        self.packets_left = spec.slot_packets
        self.bytes_left = spec.slot_bytes
        # The queue. Exact mode: `_tfifo` heap of (time_to_send, seq, packet,
        # marks) and `_head` (sch->q, reordered packets, taken from the end).
        # Fast mode: `_due` heap of the time_to_send of packets still queued.
        self._tfifo: list[tuple[int, int, Packet, int]] = []
        self._head: list[tuple[int, Packet, int]] = []
        self._due: list[int] = []
        self._fifo: deque[int] = deque()  # fast mode, times that only grow
        self._seq = 0
        self._last: int | None = None  # the latest time_to_send still queued (rate)
        self._mode = "fast"  # until enqueue() is used
        self._out: list[Delivery] = []
        self.wakeup: int | None = None
        self.stats.at_enqueue = True
        self.send = self._pick_send()  # type: ignore[method-assign,assignment]
        # A steady link (see `arrival`) also answers with the time alone.
        self.steady = self.send == self._send_steady
        if not self.steady:
            self.arrival = self._arrival_refused  # type: ignore[method-assign]

    @classmethod
    def from_tc(
        cls,
        text: str,
        rng: random.Random,
        now: int = 0,
        tables: Mapping[str, tuple[int, ...]] | None = None,
    ) -> Link:
        """A link configured as `tc qdisc add dev X root netem TEXT` would be."""
        return cls(parse_netem(text, tables), rng, now)

    def _crandom_state(self, rho: int) -> list[int] | None:
        return [self._rand(32), rho + 1] if rho else None

    # -- the kernel's random helpers --

    def _crandom(self, state: list[int] | None) -> int:
        """get_crandom(): a u32, smoothed towards the previous one by rho."""
        value = self._rand(32)
        if state is None:
            return value
        rho = state[1]
        answer = (value * (0x100000000 - rho) + state[0] * rho) >> 32
        state[0] = answer
        return answer

    def _loss_event(self) -> bool:
        """loss_event(): the configured loss model says drop this packet."""
        model = self.loss_model
        if model == CLG_RANDOM:
            return self.loss != 0 and self.loss >= self._crandom(self._loss_cor)
        if model == CLG_4_STATES:
            return self._loss_4state()
        return self._loss_gilb_ell()

    def _loss_4state(self) -> bool:
        """loss_4state(): one draw, one transition; a loss when it enters a lost state.

        From TX_IN_GAP: p14 (a4) to an isolated loss, p13 (a1) to a burst loss;
        from a burst loss: p32 (a3) to TX_IN_BURST, p31 (a2) back to TX_IN_GAP;
        from TX_IN_BURST: p23 (a5) to a burst loss. The thresholds are u32 sums
        and wrap as in C (p13 + p14 above 100% wraps around).
        """
        rnd = self._rand(32)
        state = self.clg_state
        if state == TX_IN_GAP:
            if rnd < self.a4:
                self.clg_state = LOST_IN_GAP
                return True
            if rnd < (self.a1 + self.a4) & U32:
                self.clg_state = LOST_IN_BURST
                return True
            return False
        if state == TX_IN_BURST:
            if rnd < self.a5:
                self.clg_state = LOST_IN_BURST
                return True
            return False
        if state == LOST_IN_BURST:
            if rnd < self.a3:
                self.clg_state = TX_IN_BURST
            elif rnd < (self.a2 + self.a3) & U32:
                self.clg_state = TX_IN_GAP
            else:
                return True
            return False
        self.clg_state = TX_IN_GAP  # an isolated loss is always followed by a transmission
        return False

    def _loss_gilb_ell(self) -> bool:
        """loss_gilb_ell(): a transition draw, then a loss draw in the old state."""
        rand = self._rand
        if self.clg_state == GOOD:
            if rand(32) < self.a1:
                self.clg_state = BAD
            return rand(32) < self.a4
        if rand(32) < self.a2:
            self.clg_state = GOOD
        return rand(32) > self.a3

    def _tabledist(self, mu: int, sigma: int, state: list[int] | None, table: tuple[int, ...] | None) -> int:
        """tabledist(): mu +- sigma, uniform or scaled from the table."""
        if sigma == 0:
            return mu
        rnd = self._crandom(state)
        if table is None:
            return rnd % (2 * sigma) + mu - sigma
        t = table[rnd % len(table)]
        x = (sigma % DIST_SCALE) * t
        x = x + DIST_SCALE // 2 if x >= 0 else x - DIST_SCALE // 2
        q = x // DIST_SCALE if x >= 0 else -(-x // DIST_SCALE)  # C division truncates
        return q + (sigma // DIST_SCALE) * t + mu

    def packet_time(self, length: int) -> int:
        """packet_time_ns(): ns to serialise `length` bytes at the rate, with overheads.

        The arithmetic wraps where the kernel's u32/u64 does (cells are u32).
        """
        n = length + self._overhead
        if self._plain_rate and n >= 0:
            return n * NS_PER_SEC // self.rate
        n &= U64
        size = self.spec.cell_size
        if size:
            cells = (n & U32) // size
            if n > (cells * size) & U32:  # an extra cell for the remainder
                cells = (cells + 1) & U32
            n = (cells * ((size + self.spec.cell_overhead) & U32)) & U32
        return ((n * NS_PER_SEC) & U64) // self.rate

    # -- netem_enqueue --

    def _netem_enqueue(self, packet: Packet, now: int, ect: bool, qlen: int, marks: int = 0) -> bool:
        """netem_enqueue(); `marks` is DUPLICATE (and CE) for the clone's own
        pass. True when it wrote CE into the packet's header, which a clone
        shares with its original (skb_clone)."""
        count = 1
        if self.duplicate and not marks & DUPLICATE and self.duplicate >= self._crandom(self._dup_cor):
            count = 2
        if self._has_loss and self._loss_event():
            if self.ecn and ect:
                marks |= CE
                self.stats.marked += 1
            else:
                count -= 1
        if count == 0:
            self.stats.lost += 1
            return False
        clone_marks = (marks & CE) | DUPLICATE  # cloned before the original is corrupted
        if self.corrupt and self.corrupt >= self._crandom(self._corrupt_cor):
            marks |= CORRUPTED
            self.stats.corrupted += 1
        if qlen >= self.limit:
            self.stats.overlimits += 1  # the clone goes with it, uncounted (__qdisc_drop)
            return bool(marks & CE)
        if count > 1:
            # The clone re-enters at the root qdisc (netem) before this packet
            # is queued; CE-marked data is CE in the clone too, and the clone
            # marked CE marks this packet as well (INET_ECN_set_ce writes the
            # shared header in place), unless corruption unshared it.
            self.stats.duplicated += 1
            if self._netem_enqueue(packet, now, ect or bool(marks & CE), qlen, clone_marks) and not marks & CORRUPTED:
                marks |= CE
        self.stats.packets += 1
        if self.gap == 0 or self.counter < self.gap - 1 or self.reorder < self._crandom(self._reorder_cor):
            delay = self._tabledist(self.latency, self.jitter, self._delay_cor, self.table)
            if self.rate:
                last = self._last
                if last is not None:
                    # The last queued packet is the reference: its remaining
                    # time counts against this packet's delay.
                    delay = max(delay - (last - now), 0)
                    now_ref = last
                else:
                    now_ref = now
                send_at = now_ref + delay + self.packet_time(packet.length)
            else:
                send_at = now + delay
            self.counter += 1
            self._queue(send_at, packet, marks, now)
        else:
            self.counter = 0
            self.stats.reordered += 1
            self._queue_head(now, packet, marks)
        return bool(marks & CE)

    def _queue_length(self) -> int:
        if self._mode == "fast":
            return len(self._due) + len(self._fifo)
        return len(self._tfifo) + len(self._head)

    def _note_last(self, send_at: int) -> None:
        last = self._last
        if last is None or send_at > last:
            self._last = send_at

    def _queue(self, send_at: int, packet: Packet, marks: int, now: int) -> None:
        """tfifo_enqueue() (exact), or the delivery itself (fast).

        The kernel keeps a list for in-order arrivals and an rbtree for the
        rest, and takes the earlier of their heads (the list's on a tie); a
        heap ordered by (time, arrival) gives the same order, since a tree
        entry can never tie with a later list entry still queued.
        """
        self._note_last(send_at)
        if self._mode == "fast":
            if send_at > now:
                heappush(self._due, send_at)
                self._out.append((send_at, packet, marks))
            else:
                self._out.append((now, packet, marks))
            return
        self._seq += 1
        heappush(self._tfifo, (send_at, self._seq, packet, marks))

    def _queue_head(self, now: int, packet: Packet, marks: int) -> None:
        """__qdisc_enqueue_head(): sent at the next dequeue, ahead of everything."""
        self._note_last(now)
        if self._mode == "fast":
            self._out.append((now, packet, marks))
        else:
            self._head.append((now, packet, marks))

    # -- the fast interface --

    def send(self, packet: Packet, now: int, ect: bool = False) -> list[Delivery]:
        """Enqueue `packet` at `now`: the copies that leave, each with its time.

        `ect`: the packet is ECN-capable (ECT(0), ECT(1) or CE), so `ecn`
        marks it instead of dropping it. Each link binds the cheapest
        implementation for its configuration as `send` when it is made (all
        equal the qdisc walk; a differential test holds them together), so
        this method only documents them.
        """
        return self._pick_send()(packet, now, ect)

    def _pick_send(self) -> Callable[[Packet, int, bool], list[Delivery]]:
        spec = self.spec
        if self.slot:
            return self._send_refused
        if spec.duplicate or spec.corrupt or spec.gap:
            return self._send_general
        if spec.jitter or self._has_loss:
            return self._send_simple
        return self._send_steady

    def _send_refused(self, packet: Packet, now: int, ect: bool = False) -> list[Delivery]:
        if self._mode == "exact":
            raise RuntimeError("this link is driven with enqueue()/dequeue(); do not mix in send()")
        raise RuntimeError("a link with `slot` leaves packets at slot times: use enqueue()/dequeue()")

    def _send_general(self, packet: Packet, now: int, ect: bool = False) -> list[Delivery]:
        """Any configuration but slots: netem_enqueue() as written."""
        due = self._due
        while due and due[0] <= now:
            heappop(due)
        if not due:
            self._last = None
        out: list[Delivery] = []
        self._out = out
        self._netem_enqueue(packet, now, ect, len(due))
        return out

    def _send_steady(self, packet: Packet, now: int, ect: bool = False) -> list[Delivery]:
        """A fixed delay, a limit, maybe a rate: `arrival()` as a delivery list."""
        when = self.arrival(packet, now)
        return [] if when is None else [(when, packet, 0)]

    def arrival(self, packet: Packet, now: int) -> int | None:
        """A steady link's `send()` in one number: when the one copy leaves (None: the queue is full).

        Steady (`self.steady`): a fixed delay, a limit, maybe a rate, and
        nothing else: no random draw, so exactly one unmarked copy leaves, or
        none when the limit drops it. The simulation's links are mostly that
        ("delay 1ms"), and asking for the time alone spares it building and
        unpacking a delivery list per packet.

        time_to_send never decreases (a fixed latency, or a rate that queues
        each packet behind the last), so the queue is a FIFO of times whose
        tail is the latest one (the rate's `last`).
        """
        due = self._fifo
        while due and due[0] <= now:
            due.popleft()
        stats = self.stats
        if len(due) >= self.limit:
            stats.overlimits += 1
            return None
        delay = self.latency
        rate = self.rate
        if rate:
            n = packet.length + self._overhead
            serialise = n * NS_PER_SEC // rate if self._plain_rate and n >= 0 else self.packet_time(packet.length)
            if due:
                last = due[-1]
                send_at = last + max(delay - (last - now), 0) + serialise
            else:
                send_at = now + delay + serialise
        else:
            send_at = now + delay
        stats.packets += 1
        if send_at > now:
            due.append(send_at)
            return send_at
        return now

    def _arrival_refused(self, packet: Packet, now: int) -> int | None:
        raise RuntimeError("arrival() is for steady links driven with send(); use send() or enqueue()")

    def _send_simple(self, packet: Packet, now: int, ect: bool = False) -> list[Delivery]:
        """Jitter (uniform or a table, correlated or not), any loss model (+ecn), limit, rate."""
        due = self._due
        if due and due[0] <= now:
            while due and due[0] <= now:
                heappop(due)
            if not due:
                self._last = None
        elif not due:
            self._last = None
        stats = self.stats
        marks = 0
        if self.loss_model:
            lost = self._loss_event()
        else:
            loss = self.loss
            if loss:
                state = self._loss_cor
                lost = loss >= (self._rand(32) if state is None else self._crandom(state))
            else:
                lost = False
        if lost:
            if self.ecn and ect:
                marks = CE
                stats.marked += 1
            else:
                stats.lost += 1
                return []
        if len(due) >= self.limit:
            stats.overlimits += 1
            return []
        sigma = self.jitter
        if sigma:
            state = self._delay_cor
            rnd = self._rand(32) if state is None else self._crandom(state)
            table = self.table
            if table is None:
                delay = rnd % (2 * sigma) + self.latency - sigma
            else:
                t = table[rnd % len(table)]
                x = (sigma % DIST_SCALE) * t
                if x >= 0:
                    q = (x + DIST_SCALE // 2) // DIST_SCALE
                else:
                    q = -((DIST_SCALE // 2 - x) // DIST_SCALE)
                delay = q + (sigma // DIST_SCALE) * t + self.latency
        else:
            delay = self.latency
        rate = self.rate
        if rate:
            n = packet.length + self._overhead
            serialise = n * NS_PER_SEC // rate if self._plain_rate and n >= 0 else self.packet_time(packet.length)
            last = self._last
            if last is not None:
                send_at = last + max(delay - (last - now), 0) + serialise
            else:
                send_at = now + delay + serialise
        else:
            send_at = now + delay
        stats.packets += 1
        last = self._last
        if last is None or send_at > last:
            self._last = send_at
        if send_at > now:
            heappush(due, send_at)
            return [(send_at, packet, marks)]
        return [(now, packet, marks)]

    # -- the qdisc interface --

    def enqueue(self, packet: Packet, now: int, ect: bool = False) -> list[Delivery]:
        """netem_enqueue() and the qdisc run after it: what leaves by `now`.

        A watchdog due by `now` fires first, at its own time (for one at the
        same instant, that is one legal order of two simultaneous events).
        """
        if self._mode != "exact":
            self._start_exact()
        out: list[Delivery] = []
        self._catch_up(now, out)
        self._netem_enqueue(packet, now, ect, len(self._tfifo) + len(self._head))
        self._run(now, out)
        return out

    def _start_exact(self) -> None:
        stats = self.stats
        if stats.packets or stats.lost or stats.overlimits:  # every send() counts in one of these
            raise RuntimeError("this link is driven with send(); do not mix in enqueue()/dequeue()")
        self._mode = "exact"
        stats.at_enqueue = False
        self.send = self._send_refused  # type: ignore[method-assign]
        self.steady = False
        self.arrival = self._arrival_refused  # type: ignore[method-assign]

    def dequeue(self, now: int) -> list[Delivery]:
        """The watchdog fired: every packet that leaves by `now`, in order, with its time.

        A call before `wakeup` (a stale timer) does nothing, as in the kernel.
        """
        out: list[Delivery] = []
        self._catch_up(now, out)
        return out

    def _catch_up(self, now: int, out: list[Delivery]) -> None:
        """Fire every watchdog due by `now`, each at its own time (they only move forward)."""
        while self.wakeup is not None and self.wakeup <= now:
            self._run(self.wakeup, out)

    def _run(self, now: int, out: list[Delivery]) -> None:
        """qdisc_run(): netem_dequeue() until it returns nothing, then the watchdog."""
        head, tfifo = self._head, self._tfifo
        while True:
            if head:
                _, packet, marks = head.pop()
                out.append((now, packet, marks))
                self._forget(now)
                continue
            if not tfifo:
                self.wakeup = None
                self._last = None
                return
            send_at = tfifo[0][0]
            # The kernel tests slot_next != 0 (a ktime, never 0 once on); we
            # test the flag, since our clock may start at 0.
            if self.slot and self.slot_next < send_at:
                self._get_slot_next(now)
            if send_at > now or self.slot_next > now:
                self.wakeup = max(send_at, self.slot_next)
                return
            _, _, packet, marks = heappop(tfifo)
            if self.slot:
                self.packets_left -= 1
                self.bytes_left -= packet.length
                if self.packets_left <= 0 or self.bytes_left <= 0:
                    self._get_slot_next(now)
            out.append((now, packet, marks))
            self._forget(send_at)

    def _forget(self, send_at: int) -> None:
        """A packet left: keep `_last` the latest time_to_send still queued."""
        self.stats._delivered += 1
        if not self._tfifo and not self._head:
            self._last = None
        elif self._last is not None and send_at >= self._last:
            times = [t for t, *_ in self._tfifo] + [t for t, _, _ in self._head]
            self._last = max(times)

    def _get_slot_next(self, now: int) -> None:
        """get_slot_next(): open the next slot and refill its budget."""
        spec = self.spec
        if spec.slot_dist is None:
            delay = spec.slot_min + (((spec.slot_max - spec.slot_min) * self._rand(32)) >> 32)
        else:
            delay = self._tabledist(spec.slot_dist_delay, spec.slot_dist_jitter, None, spec.slot_dist)
        self.slot_next = now + delay
        self.packets_left = spec.slot_packets
        self.bytes_left = spec.slot_bytes

    def queued(self) -> int:
        """Packets in the queue (sch->q.qlen)."""
        return self._queue_length()
