"""The Ingress controller: model, L7 router, nginx.conf renderer and the
nginx process that serves it."""

from __future__ import annotations

from pathlib import Path


def templates_dir() -> Path:
    """Where the Jinja2 templates are: inside an installed wheel they ship as
    ingress/templates; in a checkout they are the top-level templates/."""
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"
