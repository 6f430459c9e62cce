"""Partial syncs: after any sequence of service and endpoint changes, the
rules built up by partial restores (`iptables-restore --noflush` of only the
changed services' chains) are exactly the rules of a full render; and a
partial restore really leaves the other services' chains out."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kn_iptables_views import ep, port, state, view

from proxy_modes.iptables import rules
from proxy_modes.iptables.engine import IptablesMode
from proxy_modes.netfilter import syntax
from proxy_modes.view import ProxyState, ServiceEntry

NAMES = [f"svc{i}" for i in range(6)]


def _entry(name: str, draw: Any) -> tuple[tuple[str, str], ServiceEntry]:
    i = NAMES.index(name)
    kind = draw(st.sampled_from(["cluster", "nodeport", "lb-local", "affinity", "itp-local", "udp", "extip"]))
    kw: dict[str, Any] = {}
    protocol = "TCP"
    if kind == "nodeport":
        kw["node_port"] = 30000 + i
    elif kind == "lb-local":
        kw.update(
            node_port=31000 + i,
            lb_vips=[f"5.6.7.{i + 1}"],
            external_policy_local=True,
            health_check_node_port=32000 + i,
        )
        if draw(st.booleans()):
            kw["lb_source_ranges"] = ["203.0.113.0/25"]
    elif kind == "affinity":
        kw.update(session_affinity=True, sticky_seconds=draw(st.sampled_from([10, 10800])))
    elif kind == "itp-local":
        kw["internal_policy_local"] = True
    elif kind == "udp":
        protocol = "UDP"
    elif kind == "extip":
        kw["external_ips"] = [f"192.168.99.{i + 1}"]
    info = port("ns", name, f"172.30.0.{i + 10}", protocol=protocol, **kw)
    count = draw(st.integers(0, 4))
    eps = []
    for j in range(count):
        node = draw(st.sampled_from(["test-node", "other", ""]))
        terminating = draw(st.booleans()) and draw(st.booleans())
        eps.append(ep(f"10.180.{i}.{j + 1}", node=node, ready=not terminating, serving=True, terminating=terminating))
    one = state((info, eps))
    return info.name.service, one.entries[info.name.service]


@st.composite
def histories(draw: Any) -> list[ProxyState]:
    current = ProxyState({})
    out = []
    for _ in range(draw(st.integers(1, 8))):
        name = draw(st.sampled_from(NAMES))
        key = ("ns", name)
        if key in current.entries and draw(st.booleans()) and draw(st.booleans()):
            current = current.with_entry(key, None)
        else:
            key, entry = _entry(name, draw)
            current = current.with_entry(key, entry)
        out.append(current)
    return out


def _full_tables(st_: ProxyState) -> str:
    rendered = rules.Renderer().sync(view(st_))
    tables = syntax.restore(None, rules.node_text(rendered.full))
    return syntax.save(tables)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_partial_restores_always_add_up_to_a_full_render(history: list[ProxyState]) -> None:
    mode = IptablesMode(random.Random(0))
    for current in history:
        mode.sync(view(current))
        assert syntax.save(mode.tables) == _full_tables(current)


def test_a_partial_sync_writes_only_the_changed_service() -> None:
    a = (port("ns", "a", "172.30.0.1"), [ep("10.180.0.1"), ep("10.180.0.2")])
    b = (port("ns", "b", "172.30.0.2"), [ep("10.180.1.1")])
    mode = IptablesMode(random.Random(0))
    first = mode.sync(view(state(a, b)))
    assert not first.partial
    before = state(a, b)
    changed = before.with_entry(("ns", "b"), state((b[0], [ep("10.180.1.1"), ep("10.180.1.2")])).entries[("ns", "b")])
    second = mode.sync(view(changed))
    assert second.partial and second.changed == 1
    svc_a = rules.service_chain("ns/a:p80", "tcp")
    svc_b = rules.service_chain("ns/b:p80", "tcp")
    assert f":{svc_b} - [0:0]" in second.text and f":{svc_a} - [0:0]" not in second.text
    # ...but KUBE-SERVICES is rewritten whole, so it still jumps to a's chain.
    assert f"-j {svc_a}" in second.text
    assert syntax.save(mode.tables) == _full_tables(changed)


def test_removed_endpoint_chains_are_deleted() -> None:
    a = port("ns", "a", "172.30.0.1")
    mode = IptablesMode(random.Random(0))
    mode.sync(view(state((a, [ep("10.180.0.1"), ep("10.180.0.2")]))))
    gone = rules.endpoint_chain("ns/a:p80", "tcp", "10.180.0.2:80")
    assert gone in mode.tables["nat"].chains
    ruleset = mode.sync(view(state((a, [ep("10.180.0.1")]))))
    assert f"-X {gone}" in ruleset.text and f":{gone} - [0:0]" in ruleset.text
    assert gone not in mode.tables["nat"].chains


def test_a_partial_sync_after_a_later_full_sync_builds_on_the_new_table() -> None:
    """A full sync that is not the first (here masqueradeAll changes) is
    applied with --noflush; the partial sync after it must start from that
    table, not from the top-level rules kept before it (service b got an
    endpoint in the full sync and must not be REJECTed afterwards)."""
    a, b, c = port("ns", "a", "172.30.0.1"), port("ns", "b", "172.30.0.2"), port("ns", "c", "172.30.0.3")
    steps = [
        (state((a, [ep("10.180.0.1")]), (b, []), (c, [])), False),
        (state((a, [ep("10.180.0.1")]), (b, []), (c, [ep("10.180.2.1")])), False),  # partial
        (state((a, [ep("10.180.0.1")]), (b, [ep("10.180.1.1")]), (c, [ep("10.180.2.1")])), True),  # full
        (state((a, [ep("10.180.0.2")]), (b, [ep("10.180.1.1")]), (c, [ep("10.180.2.1")])), True),  # partial
    ]
    mode = IptablesMode(random.Random(0))
    for current, masquerade_all in steps:
        mode.sync(view(current, masquerade_all=masquerade_all))
        expected = syntax.save(
            syntax.restore(
                None, rules.node_text(rules.Renderer().sync(view(current, masquerade_all=masquerade_all)).full)
            )
        )
        assert syntax.save(mode.tables) == expected


def test_crossing_the_large_cluster_threshold_is_a_partial_sync() -> None:
    """largeClusterMode is recomputed on every sync but does not force a full
    one: the service that grew past 1000 endpoints is written without
    comments, an unchanged one keeps its commented chains."""
    a, c = port("ns", "a", "172.30.0.1"), port("ns", "c", "172.30.0.3")
    big = [ep(f"10.181.{i // 250}.{i % 250 + 1}") for i in range(1001)]
    mode = IptablesMode(random.Random(0))
    mode.sync(view(state((a, [ep("10.180.0.1")]), (c, [ep("10.180.2.1")]))))
    result = mode.sync(view(state((a, [ep("10.180.0.1")]), (c, big))))
    assert result.partial
    saved = syntax.save(mode.tables)
    assert '-m comment --comment "ns/a:p80 -> 10.180.0.1:80"' in saved
    assert "ns/c:p80 -> 10.181." not in saved
