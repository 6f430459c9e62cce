"""Shared benchmark set-up.

`pytest benchmarks --benchmark-only` measures every size the issues name;
inside `make test` (`--benchmark-disable`) each benchmark body runs once on
the smallest size only, so the suites cannot rot and stay quick.
"""

from __future__ import annotations

import pytest

FULL_SIZES = (100, 1000, 10000, 30000)


def quick(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_disable", default=False))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A benchmark taking a `services` argument runs at every size, or only
    the smallest in a quick run."""
    if "services" in metafunc.fixturenames:
        sizes = FULL_SIZES[:1] if quick(metafunc.config) else FULL_SIZES
        metafunc.parametrize("services", sizes, ids=[f"{n}svc" for n in sizes], scope="module")
