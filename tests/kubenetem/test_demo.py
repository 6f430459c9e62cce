"""`kubenetem demo`: every mode tells its packets, the Ingress is rendered and
routed, and the sweep writes a report folder (sizes cut down for the test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubenetem.cli import main
from kubenetem.commands import demo
from proxy_modes import registry


def test_demo_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "SWEEP_SIZES", (10, 20))
    monkeypatch.setattr(demo, "SWEEP_FLOWS", 200)
    folder = tmp_path / "report"
    assert main(["demo", "--report", str(folder)]) == 0
    out = capsys.readouterr().out
    for mode in registry.available():
        lines = [line for line in out.splitlines() if line.startswith(f"{mode}: ")]
        assert len(lines) == 3, (mode, lines)
        assert "goes to the same endpoint" in lines[2]  # ClientIP affinity holds in every mode
    assert "GET http://shop.example.com/cart -> 308 https://shop.example.com/cart" in out
    assert "GET https://shop.example.com/cart -> 200 dev/web-sticky:8080 -> 10.244." in out
    assert {p.name for p in folder.iterdir()} == {"report.md", "chart.png", "results.json", "nginx.conf"}
    points = json.loads((folder / "results.json").read_text())["points"]
    assert len(points) == 2 * 2 * len(registry.available())
    assert "server_name shop.example.com" in (folder / "nginx.conf").read_text()
