"""Ingress manifests built in Python, for tests, benchmarks and demos.

`ingress(...)` writes one networking.k8s.io/v1 Ingress as a manifest dict;
`service(...)` a selector-less Service with an EndpointSlice holding the
given pod IPs (so a test decides every endpoint); `cluster(docs)` runs them
through the same loader as files; `synthetic(n, paths)` adds n one-host
Ingresses to a synthetic cluster for the benchmarks.
"""

from __future__ import annotations

from typing import Any

from netem.cluster import Cluster, build_cluster
from netem.errors import Where
from netem.manifests import Document
from netem.objects import Meta, RawObject

PathSpec = tuple[str, str, str, int | str]  # (path, pathType, service, port)


def ingress(
    name: str,
    rules: list[tuple[str, list[PathSpec]]],
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
    tls: list[tuple[list[str], str]] | None = None,
    default_backend: tuple[str, int | str] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    class_name: str | None = "nginx",
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if class_name is not None:
        spec["ingressClassName"] = class_name
    if default_backend is not None:
        spec["defaultBackend"] = _backend(*default_backend)
    if rules:
        spec["rules"] = [
            ({"host": host} if host else {})
            | {"http": {"paths": [{"path": p, "pathType": t, "backend": _backend(s, port)} for p, t, s, port in paths]}}
            for host, paths in rules
        ]
    if tls:
        spec["tls"] = [{"hosts": hosts, "secretName": secret} for hosts, secret in tls]
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": created}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def _backend(service: str, port: int | str) -> dict[str, Any]:
    return {"service": {"name": service, "port": {"number": port} if isinstance(port, int) else {"name": port}}}


def ingress_class(
    name: str = "nginx", default: bool = True, controller: str = "k8s.io/ingress-nginx"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if default:
        meta["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": meta,
        "spec": {"controller": controller},
    }


def service(
    name: str, ips: list[str], port: int = 80, target: int = 8080, namespace: str = "default"
) -> list[dict[str, Any]]:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target}]},
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": namespace, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": target, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }
    return [svc, eps] if ips else [svc]


def tls_secret(name: str, crt: str, key: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": crt, "tls.key": key},
    }


def cluster(docs: list[dict[str, Any]], filename: str = "<test>") -> Cluster:
    return build_cluster([Document(d, Where(file=filename, document=i + 1)) for i, d in enumerate(docs)])


def raw(doc: dict[str, Any]) -> RawObject:
    """A manifest dict as the loader's RawObject (no YAML round trip)."""
    m = doc["metadata"]
    meta = Meta(
        name=m["name"],
        namespace=m.get("namespace", ""),
        annotations=dict(m.get("annotations", {})),
        creation_timestamp=m.get("creationTimestamp"),
        where=Where(kind=doc["kind"], namespace=m.get("namespace", ""), name=m["name"]),
    )
    return RawObject(doc["kind"], doc["apiVersion"], meta, doc)


def synthetic(base: Cluster, count: int, paths: int = 5, services: list[tuple[str, str]] | None = None) -> Cluster:
    """`count` Ingresses, one host each (app-N.example.com), `paths` Prefix
    paths each, spread over the cluster's Services (port 80); an IngressClass."""
    pool = services or sorted(base.services)
    base.ingress_classes.append(raw(ingress_class()))
    for i in range(count):
        ns, _ = pool[i % len(pool)]
        same_ns = [s for s in pool if s[0] == ns] or pool
        path_specs: list[PathSpec] = [
            (f"/p{j}" if j else "/", "Prefix", same_ns[(i + j) % len(same_ns)][1], 80) for j in range(paths)
        ]
        doc = ingress(f"app-{i}", [(f"app-{i}.example.com", path_specs)], namespace=ns)
        base.ingresses.append(raw(doc))
    return base
