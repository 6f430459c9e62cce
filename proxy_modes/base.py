"""The one protocol every proxy mode implements, and what it answers.

A mode is built with the caller's seeded `random.Random`, `sync`s from a
`NodeView` into its native ruleset, and then answers, for a packet at time
`now`:

- `route()` -> `Decision`: the verdict (DNAT, ACCEPT, DROP, REJECT), the
  endpoint chosen, whether the packet is masqueraded, and the modeled cost
  (rules evaluated, hash lookups): what the kernel would pay, reported rather
  than paid. This is the hot path.
- `trace()` -> `Trace`: the same decision plus every step taken and, for
  random choices, every endpoint the packet could have reached with its exact
  probability. Its JSON shape is shared by all modes (see `Trace.to_json`).
- `dump()`: the ruleset in the real tool's format.

`trace()` changes state exactly as `route()` does (conntrack entries,
affinity, scheduler positions): tracing a packet is sending it.

Optional, by mode: `load_capture(text, local_ips, filename)` replaces `sync`
with a ruleset captured on a real node (`kubenetem trace --iptables-save`
etc.), `dump_with(show=, fmt=, stats=, rate=)` renders other views of the
state (`kubenetem rules --show ipsets`), `modeled_latency_us(decision)` turns a
decision's reported cost into the kernel's time through the mode's calibrated
cost model, `prepare(packet, now)` builds ahead whatever the mode would
build lazily for that destination (the benchmarks' warm-up), and
`share_with(peer)` lets a mode reuse what a mode of another node of the same
cluster already parsed or compiled (nodes program mostly the same rules).

Modes never import each other; what they share lives here and in `view`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from netem.addr import int_to_ip
from netem.packet import Packet, proto_name

from .view import NodeView, ServicePortName


class Verdict(StrEnum):
    DNAT = "DNAT"
    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"


@dataclass(slots=True)
class Decision:
    verdict: Verdict
    endpoint: tuple[int, int] | None = None  # (ip, port) after DNAT
    masquerade: bool = False
    rules: int = 0  # rules evaluated (iptables, nftables)
    lookups: int = 0  # hash/map lookups (IPVS, nftables sets, conntrack)
    service: ServicePortName | None = None
    established: bool = False  # followed an existing conntrack entry

    def endpoint_text(self) -> str:
        if self.endpoint is None:
            return "-"
        return f"{int_to_ip(self.endpoint[0])}:{self.endpoint[1]}"


@dataclass(slots=True)
class Step:
    """One thing the mode did: entered a chain, matched a rule, looked up a map."""

    kind: str  # "chain", "rule", "return", "lookup", "conntrack", "schedule", "nat", "verdict", "note"
    text: str  # a sentence a person can follow
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "text": self.text}
        out.update(self.detail)
        return out


@dataclass(slots=True)
class Reach:
    """An endpoint a new connection could reach, with its exact probability."""

    ip: int
    port: int
    probability: Fraction | float

    def to_json(self) -> dict[str, Any]:
        return {"ip": int_to_ip(self.ip), "port": self.port, "probability": float(self.probability)}


@dataclass(slots=True)
class Trace:
    mode: str
    packet: Packet
    decision: Decision
    endpoints: list[Reach] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    affinity: str | None = None  # e.g. "hit: 10.180.0.3:80 (recent list KUBE-SEP-...)"
    sequence: list[str] | None = None  # --connections N: endpoint per connection

    def to_json(self) -> dict[str, Any]:
        p, d = self.packet, self.decision
        out: dict[str, Any] = {
            "mode": self.mode,
            "packet": {
                "proto": proto_name(p.proto),
                "src": int_to_ip(p.src),
                "sport": p.sport,
                "dst": int_to_ip(p.dst),
                "dport": p.dport,
            },
            "verdict": str(d.verdict),
            "service": str(d.service) if d.service else None,
            "endpoints": [r.to_json() for r in self.endpoints],
            "chosen": None if d.endpoint is None else {"ip": int_to_ip(d.endpoint[0]), "port": d.endpoint[1]},
            "masquerade": d.masquerade,
            "affinity": self.affinity,
            "cost": {"rules": d.rules, "lookups": d.lookups},
            "steps": [s.to_json() for s in self.steps],
        }
        if self.sequence is not None:
            out["sequence"] = self.sequence
        return out

    def to_text(self) -> str:
        """The trace as a story: what happened, step by step, then the outcome."""
        p, d = self.packet, self.decision
        lines = [
            f"{self.mode}: {proto_name(p.proto)} {int_to_ip(p.src)}:{p.sport} -> {int_to_ip(p.dst)}:{p.dport}"
            + (" (sent by the node itself)" if p.local else "")
        ]
        lines += [f"  {n:>2}. {step.text}" for n, step in enumerate(self.steps, start=1)]
        outcome = {
            Verdict.DNAT: f"DNAT to {d.endpoint_text()}",
            Verdict.ACCEPT: "ACCEPT (not a service address: delivered or routed unchanged)",
            Verdict.DROP: "DROP (silently discarded: the client times out)",
            Verdict.REJECT: "REJECT (ICMP port unreachable: the client sees connection refused)",
        }[d.verdict]
        lines.append(f"  => {outcome}" + (", masqueraded to the node's address" if d.masquerade else ""))
        if self.affinity:
            lines.append(f"  session affinity: {self.affinity}")
        if self.endpoints:
            lines.append("  a new connection could reach:")
            lines += [f"    {int_to_ip(r.ip)}:{r.port}  p={probability_text(r.probability)}" for r in self.endpoints]
        lines.append(f"  cost: {d.rules} rules evaluated, {d.lookups} lookups")
        if self.sequence is not None:
            lines.append(f"  {len(self.sequence)} connections reached, in order: " + " ".join(self.sequence))
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Ruleset:
    """What a sync produced: the native text and how big it is."""

    text: str
    objects: int  # rules (iptables/nftables), virtual+real servers (IPVS), ...
    partial: bool = False  # only changed services were rewritten
    changed: int = 0  # services rewritten by this sync


@runtime_checkable
class ProxyMode(Protocol):
    name: str

    def sync(self, view: NodeView) -> Ruleset: ...

    def route(self, packet: Packet, now: float) -> Decision: ...

    def trace(self, packet: Packet, now: float) -> Trace: ...

    def dump(self) -> str: ...


def probability_text(p: Fraction | float) -> str:
    if isinstance(p, Fraction) and p.denominator != 1:
        return f"{p.numerator}/{p.denominator} ({float(p):.4f})"
    return f"{float(p):.4f}"
