"""The wheel carries templates/ and examples/, and an installed copy finds
them (not only a checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_installed_wheel_finds_templates_and_examples(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("kubenetem-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_templates = {
        p.relative_to(REPO / "templates").as_posix() for p in (REPO / "templates").rglob("*") if p.is_file()
    }
    assert shipped_templates and {f"ingress/templates/{n}" for n in shipped_templates} <= names
    assert {f"kubenetem/examples/{p.name}" for p in (REPO / "examples").glob("*.yaml")} <= names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = "import ingress, kubenetem; print(ingress.templates_dir()); print(kubenetem.examples_dir())"
    # Only the unpacked wheel on the path (plus the venv's dependencies), not the checkout.
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    templates, examples = result.stdout.split()
    assert Path(templates) == target / "ingress" / "templates"
    assert Path(examples) == target / "kubenetem" / "examples"
