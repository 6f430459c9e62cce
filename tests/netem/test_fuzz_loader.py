"""Fuzzing the loader: random text, random documents and mutated real
manifests. Whatever comes in, only a KubenetemError may come out."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netem.cluster import build_cluster
from netem.errors import KubenetemError
from netem.manifests import Document, parse_text, read_paths

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE_DOCS = [d.obj for d in read_paths([str(EXAMPLES)])]
KINDS = [
    "Service",
    "Pod",
    "Node",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "EndpointSlice",
    "Endpoints",
    "Namespace",
    "ServiceCIDR",
    "KubeProxyConfiguration",
    "Ingress",
    "Secret",
    "List",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["", "None", "TCP", "10.96.0.10", "http", "-1", "0x10", "a" * 300]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


def load(obj: Any) -> None:
    with contextlib.suppress(KubenetemError):
        build_cluster(parse_text(json.dumps(obj, default=str), "fuzz.json"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    with contextlib.suppress(KubenetemError):
        build_cluster(parse_text(text, "fuzz.yaml"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(KINDS),
    st.dictionaries(
        st.sampled_from(
            [
                "metadata",
                "spec",
                "status",
                "items",
                "data",
                "subsets",
                "endpoints",
                "ports",
                "addressType",
                "mode",
                "clusterCIDR",
                "iptables",
            ]
        ),
        values,
    ),
)
def test_random_documents_of_every_kind(kind: str, body: dict[str, Any]) -> None:
    load({"apiVersion": "v1", "kind": kind, **body})


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_manifests(data: st.DataObject) -> None:
    docs = copy.deepcopy(BASE_DOCS)
    for _ in range(data.draw(st.integers(1, 4))):
        mutable = [d for d in docs if _paths(d)[1:]]  # a mutation may have emptied a document
        if not mutable:
            break
        doc = data.draw(st.sampled_from(mutable))
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    with contextlib.suppress(KubenetemError):
        build_cluster([Document(d, parse_text(yaml.safe_dump(d), "m.yaml")[0].where) for d in docs])
