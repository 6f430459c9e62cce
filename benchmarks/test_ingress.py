"""Speed of the Ingress controller (issue 6 targets):

- render 10,000 Ingresses (one host each, 5 paths) from the loaded cluster
  to nginx.conf: at most 2 s, and faster than `nginx -t` on the same file
  (both measured here, in the same run: group "ingress-render");
- re-render after one Ingress changes: at most 20 ms;
- one routing decision with 10,000 hosts: at most 2 us median.

Under `--benchmark-disable` (make test) the same code runs once on a small
cluster so that it stays a quick test.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingress.model import IngressModel
from ingress.nginx_process import check_file, default_certificate, write_tree
from ingress.render import Rendered, Renderer
from ingress.router import Request, Router
from ingress.scenarios import ingress, raw, synthetic
from kubenetem.scenarios import synthetic_cluster
from netem.cluster import Cluster


@dataclass
class Setup:
    count: int
    cluster: Cluster
    enabled: bool


@pytest.fixture(scope="module")
def setup(pytestconfig: pytest.Config) -> Setup:
    enabled = not pytestconfig.getoption("benchmark_disable")
    count = 10_000 if enabled else 300
    cluster = synthetic_cluster(services=1000 if enabled else 50, endpoints=3, nodes=10)
    return Setup(count, synthetic(cluster, count, paths=5), enabled)


def _render(cluster: Cluster) -> Rendered:
    return Renderer().render(IngressModel.from_cluster(cluster), default_certificate())


@pytest.fixture(scope="module")
def rendered(setup: Setup) -> Rendered:
    return _render(setup.cluster)


@pytest.mark.benchmark(group="ingress-render")
def test_render_10000_ingresses(benchmark: pytest.FixtureRequest, setup: Setup) -> None:
    """Parse, validate and merge every Ingress, then render nginx.conf."""
    out = benchmark.pedantic(_render, args=(setup.cluster,), rounds=3 if setup.enabled else 1, iterations=1)  # type: ignore[attr-defined]
    assert out.text.count("    server {") == setup.count + 1


@pytest.mark.nginx
@pytest.mark.benchmark(group="ingress-render")
def test_nginx_t_on_the_same_file(benchmark: pytest.FixtureRequest, rendered: Rendered) -> None:
    with tempfile.TemporaryDirectory(prefix="kn-bench-") as tmp:
        conf = write_tree(Path(tmp), rendered)
        benchmark.pedantic(check_file, args=(conf, Path(tmp)), rounds=1, iterations=1)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def warm(setup: Setup) -> tuple[IngressModel, Renderer]:
    model = IngressModel.from_cluster(setup.cluster)
    renderer = Renderer()
    renderer.render(model)
    return model, renderer


@pytest.mark.benchmark(group="ingress-rerender")
def test_rerender_after_one_ingress_changes(
    benchmark: pytest.FixtureRequest, warm: tuple[IngressModel, Renderer]
) -> None:
    model, renderer = warm
    ing = model.ingresses[next(k for k in model.ingresses if k.endswith("/app-7"))]
    svc = ing.rules[0].paths[0].backend.service
    paths = [[("/", "Prefix", svc, 80), (f"/v{i}", "Prefix", svc, 80)] for i in range(2)]
    versions = itertools.cycle(
        raw(ingress("app-7", [("app-7.example.com", p)], namespace=ing.namespace)) for p in paths
    )

    def change() -> str:
        model.apply(changed=[next(versions)])
        return renderer.render(model).text

    text = benchmark(change)  # type: ignore[operator]
    assert '"/v0/"' in text or '"/v1/"' in text


@pytest.fixture(scope="module")
def router(setup: Setup) -> Iterator[tuple[Router, list[Request]]]:
    rng = random.Random(6)
    model = IngressModel.from_cluster(setup.cluster)
    requests = [
        Request.from_url(f"http://app-{rng.randrange(setup.count)}.example.com/p{rng.randrange(5)}/x/{i}")
        for i in range(1000)
    ]
    yield Router(model, rng), requests


@pytest.mark.benchmark(group="ingress-route")
def test_route_decision_with_10000_hosts(
    benchmark: pytest.FixtureRequest, router: tuple[Router, list[Request]], setup: Setup
) -> None:
    """Requests built beforehand, each to a random host and path: the time
    includes taking the next one from the cycle (tens of ns), and is mostly
    the memory a decision for a host not seen lately has to fetch."""
    r, requests = router
    cycle = itertools.cycle(requests)
    benchmark.extra_info.update(  # type: ignore[attr-defined]
        hosts=setup.count, requests=len(requests), distinct_hosts=len({q.host for q in requests})
    )
    decision = benchmark(lambda: r.route(next(cycle)))  # type: ignore[operator]
    assert decision.status == 200 and decision.endpoint is not None


@pytest.mark.benchmark(group="ingress-route")
def test_route_decision_one_host_hot(benchmark: pytest.FixtureRequest, router: tuple[Router, list[Request]]) -> None:
    """The same request again and again: the decision's own cost, its data in cache."""
    r, requests = router
    decision = benchmark(r.route, requests[0])  # type: ignore[operator]
    assert decision.status == 200
