"""Fixtures of the userspace tests (helpers live in userspace_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from userspace_cluster import service, write_cluster

from netem.cluster import Cluster


@pytest.fixture
def basic(tmp_path: Path) -> Cluster:
    """web: 3 endpoints; sticky: ClientIP 60 s; np: NodePort 30080 with an
    external IP; dns: UDP; empty: no endpoints."""
    return write_cluster(
        tmp_path,
        service("web", "172.30.0.10", ["10.180.0.1", "10.180.0.2", "10.180.0.3"]),
        service(
            "sticky",
            "172.30.0.11",
            ["10.180.0.4", "10.180.0.5"],
            extra="  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        ),
        service(
            "np",
            "172.30.0.12",
            ["10.180.0.6", "10.180.0.7"],
            extra="  type: NodePort\n  externalIPs: [203.0.113.50, 192.168.0.2]\n",
        ).replace("{name: p, port: 80, protocol: TCP}", "{name: p, port: 80, protocol: TCP, nodePort: 30080}"),
        service("dns", "172.30.0.53", ["10.180.0.8", "10.180.0.9"], port=53, target=53, proto="UDP"),
        service("empty", "172.30.0.13", []).split("---")[0],
    )
