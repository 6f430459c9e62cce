"""Shared test set-up: the `kernel` and `nginx` markers and what they need.

A test marked `kernel` needs root, network namespaces and the netfilter
tools; one marked `nginx` needs the nginx binary. Where they are missing the
test skips with the reason, unless KUBENETEM_REQUIRE_REAL=1 (CI), where it
fails instead: a skipped real-component test must never pass for green.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
KERNEL_TOOLS = ("ip", "iptables", "iptables-restore", "iptables-save", "nft", "conntrack")
NGINX_TOOLS = ("nginx",)


def require_real() -> bool:
    return os.environ.get("KUBENETEM_REQUIRE_REAL") == "1"


@cache
def kernel_missing() -> str:
    if os.geteuid() != 0:
        return "kernel tests need root"
    missing = [t for t in KERNEL_TOOLS if shutil.which(t) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    probe = f"kn-probe-{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    if made.returncode != 0:
        return "cannot create a network namespace: " + made.stderr.decode().strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return ""


@cache
def nginx_missing() -> str:
    missing = [t for t in NGINX_TOOLS if shutil.which(t) is None]
    return "missing tools: " + ", ".join(missing) if missing else ""


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, check in (("kernel", kernel_missing), ("nginx", nginx_missing)):
        if item.get_closest_marker(marker) is None:
            continue
        reason = check()
        if reason and require_real():
            pytest.fail(f"KUBENETEM_REQUIRE_REAL=1 but {reason}", pytrace=False)
        if reason:
            pytest.skip(reason)


@pytest.fixture
def examples() -> Path:
    return EXAMPLES
