"""DESIGN.md's sans-IO rule: modules that decide import no I/O.

Every module under netem/, proxy_modes/ and ingress/ decides something
(parsing, rendering, routing, scheduling, link math) unless its file name
says it touches the system. Those deciding modules may not import socket,
subprocess, asyncio, time or random at run time: time comes in as `now`,
randomness as a caller-seeded `random.Random` (an annotation-only import under
`if TYPE_CHECKING:` is allowed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("netem", "proxy_modes", "ingress")
BANNED = {"socket", "subprocess", "asyncio", "time", "random"}
# Modules named for the system they touch (DESIGN.md "Sans-IO core, I/O at the edge").
IO_MODULES = {"kernel.py", "netns.py", "nginx_process.py", "server.py", "controller.py", "pcap.py"}


def deciding_modules() -> list[Path]:
    return sorted(path for pkg in PACKAGES for path in (REPO / pkg).rglob("*.py") if path.name not in IO_MODULES)


def runtime_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_there_are_deciding_modules() -> None:
    names = {p.relative_to(REPO).as_posix() for p in deciding_modules()}
    assert {"netem/conntrack.py", "proxy_modes/view.py", "netem/ipam.py"} <= names


@pytest.mark.parametrize("path", deciding_modules(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_deciding_module_imports_no_io(path: Path) -> None:
    banned = runtime_imports(ast.parse(path.read_text())) & BANNED
    assert not banned, f"{path.relative_to(REPO)} imports {sorted(banned)}; take `now`/an rng as a parameter"


def test_the_checker_catches_a_banned_import() -> None:
    tree = ast.parse("import os\nimport time\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random\n")
    assert runtime_imports(tree) & BANNED == {"time"}
