"""The cost model: a fitted line, read from rule counts."""

from __future__ import annotations

import pytest

from proxy_modes.netfilter import cost


def test_fit_recovers_a_line() -> None:
    points = [cost.Point(n, n + 15, 200.0 + 0.02 * (n + 15), 0.01 + 5e-5 * 5 * n, 5 * n) for n in (100, 1000, 10000)]
    model = cost.fit("nft", points)
    assert model.base_us == pytest.approx(200.0) and model.per_rule_ns == pytest.approx(20.0)
    assert model.restore_base_s == pytest.approx(0.01) and model.restore_per_rule_us == pytest.approx(50.0)
    assert model.latency_us(30000) == pytest.approx(200.0 + 600.0)
    assert model.walk_us(1000) == pytest.approx(20.0)


def test_a_line_needs_two_different_points() -> None:
    with pytest.raises(ValueError, match="at least two"):
        cost.line([1.0], [2.0])
    with pytest.raises(ValueError, match="different x"):
        cost.line([1.0, 1.0], [2.0, 3.0])


def test_the_calibrated_models_grow_with_the_rules_walked() -> None:
    for model in cost.CALIBRATED.values():
        assert model.per_rule_ns > 0 and model.restore_per_rule_us > 0
        assert model.latency_us(30000) > model.latency_us(100) > 0
        assert len(model.points) >= 4
