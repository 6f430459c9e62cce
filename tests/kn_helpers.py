"""Small builders for tests: a cluster from YAML text, without files."""

from __future__ import annotations

import textwrap

from netem.cluster import Cluster, build_cluster
from netem.errors import ValidationErrors
from netem.manifests import parse_text


def cluster_of(text: str, filename: str = "test.yaml") -> Cluster:
    return build_cluster(parse_text(textwrap.dedent(text), filename))


def errors_of(text: str, filename: str = "test.yaml") -> list[str]:
    try:
        cluster_of(text, filename)
    except ValidationErrors as exc:
        return [e.line() for e in exc.errors]
    return []
