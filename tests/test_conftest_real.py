"""The real-component markers must fail, not skip, when CI requires them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, env_value: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_missing_tool.py"
    test.write_text(
        textwrap.dedent("""
        import pytest
        import conftest

        conftest.NGINX_TOOLS = ("definitely-not-a-real-binary",)
        conftest.nginx_missing.cache_clear()

        @pytest.mark.nginx
        def test_uses_nginx():
            assert True
    """)
    )
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "KUBENETEM_REQUIRE_REAL": env_value}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", str(test)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_missing_tool_skips_normally(tmp_path: Path) -> None:
    result = _run(tmp_path, "0")
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


def test_missing_tool_fails_when_required(tmp_path: Path) -> None:
    result = _run(tmp_path, "1")
    assert result.returncode == 1, result.stdout
    assert "KUBENETEM_REQUIRE_REAL=1 but missing tools: definitely-not-a-real-binary" in result.stdout
