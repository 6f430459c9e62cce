"""The delay tables: computed here as iproute2's generators compute them, equal to the installed files."""

from __future__ import annotations

import os

import pytest
from kn_tc_wire import dist_dir, require_real

from netem import distributions


@pytest.fixture(scope="module")
def installed() -> str:
    directory = dist_dir()
    if directory is None:
        reason = "iproute2's tc distribution tables (normal.dist ...) are not installed"
        if require_real():
            pytest.fail(f"KUBENETEM_REQUIRE_REAL=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return directory


@pytest.mark.parametrize("name", distributions.NAMES)
def test_table_equals_the_installed_file(name: str, installed: str) -> None:
    with open(os.path.join(installed, f"{name}.dist"), encoding="ascii") as handle:
        expected = distributions.parse_dist_file(handle.read())
    assert distributions.table(name) == expected
    assert len(expected) == 4096


def test_normal_table_is_a_unit_normal_scaled_by_8192() -> None:
    table = distributions.normal()
    mean = sum(table) / len(table)
    deviation = (sum(v * v for v in table) / len(table) - mean * mean) ** 0.5
    assert abs(mean) < 8 and abs(deviation / 8192 - 1) < 0.01
    assert table[0] == -32768 and table == tuple(sorted(table))


def test_pareto_is_shifted_to_mean_zero_and_capped() -> None:
    table = distributions.pareto()
    assert table[0] == round((1.0 - 1.5) * 4 / 3 * 8192)  # i = 65536: the CDF's start
    assert max(table) == 32767 and table == tuple(sorted(table))


def test_parse_dist_file_reads_like_tc() -> None:
    text = "# a comment\n\n 1 -2 0x10\n010 -32769 32768 x 5\n"
    # strtol base 0: 0x10 = 16, 010 = 8; stops at 'x'; stored as __s16 (wraps).
    assert distributions.parse_dist_file(text) == (1, -2, 16, 8, 32767, -32768)
    with pytest.raises(ValueError, match="no distribution data"):
        distributions.parse_dist_file("# only a comment\n")
    with pytest.raises(ValueError, match="too much data"):
        distributions.parse_dist_file(" ".join(["1"] * 16385))
