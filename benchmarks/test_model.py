"""The model and the proxy's view at cluster scale (issue 2's targets:
30,000 services x 10 endpoints built with every node's view in at most 3 s,
and loaded from YAML in at most 15 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubenetem.scenarios import manifests, synthetic_cluster
from netem.cluster import load_cluster
from proxy_modes.view import build_views

ENDPOINTS = 10


@pytest.mark.benchmark(group="model: build cluster + every node's view")
def test_build_model_and_views(benchmark, services: int) -> None:  # type: ignore[no-untyped-def]
    def build() -> int:
        cluster = synthetic_cluster(services=services, endpoints=ENDPOINTS, nodes=10)
        views = build_views(cluster)
        return sum(1 for _ in next(iter(views.values())).service_ports())

    rounds = 1 if services >= 10000 else 3
    count = benchmark.pedantic(build, rounds=rounds, iterations=1)
    assert count == services


@pytest.mark.benchmark(group="model: load from YAML")
def test_load_from_yaml(benchmark, services: int, tmp_path_factory: pytest.TempPathFactory) -> None:  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("yaml") / f"cluster-{services}.yaml"
    path.write_text(manifests(services, ENDPOINTS))

    def load() -> int:
        return len(load_cluster([str(path)]).pods)

    rounds = 1 if services >= 10000 else 3
    assert benchmark.pedantic(load, rounds=rounds, iterations=1) == services * ENDPOINTS
