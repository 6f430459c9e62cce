"""`kubenetem get KIND -f FILE...`: what `kubectl get` would show once the
cluster settled (ClusterIPs and NodePorts allocated, pods scheduled,
EndpointSlices written by the controller)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

import yaml

from netem import serialize
from netem.cluster import Cluster

from .. import tables
from .common import add_files, load

KINDS = {
    # canonical name, then the aliases kubectl accepts
    "services": ("service", "svc"),
    "endpointslices": ("endpointslice",),
    "pods": ("pod", "po"),
    "nodes": ("node", "no"),
    "ingresses": ("ingress", "ing"),
}
ALIASES = {alias: kind for kind, more in KINDS.items() for alias in (kind, *more)}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("get", help="list objects as kubectl would, after the controllers ran")
    p.add_argument(
        "kind", choices=sorted(ALIASES), metavar="KIND", help="services | endpointslices | pods | nodes | ingresses"
    )
    add_files(p)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only this namespace (default: default)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cluster = load(args)
    kind = ALIASES[args.kind]
    items = tables.kinds(cluster)[kind]
    if kind != "nodes" and not args.all_namespaces:
        items = tables.filter_namespace(items, args.namespace or "default")
    if args.output in ("json", "yaml"):
        listed = serialize.list_object([_to_object(kind, item, cluster) for item in items])
        if args.output == "json":
            sys.stdout.write(json.dumps(listed, indent=4, sort_keys=True) + "\n")
        else:
            sys.stdout.write(yaml.safe_dump(listed, sort_keys=True, default_flow_style=False))
        return 0
    if not items:
        where = "" if args.all_namespaces or kind == "nodes" else f" in {args.namespace or 'default'} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    now = datetime.datetime.now(datetime.UTC)
    wide = args.output == "wide"
    all_ns = bool(args.all_namespaces)
    if kind == "services":
        rows = tables.service_rows(items, all_ns, wide, now)
    elif kind == "endpointslices":
        rows = tables.slice_rows(items, all_ns, wide, now)
    elif kind == "pods":
        rows = tables.pod_rows(items, all_ns, wide, now)
    elif kind == "nodes":
        rows = tables.node_rows(items, wide, now)
    else:
        rows = tables.ingress_rows(items, all_ns, wide, now)
    sys.stdout.write(tables.tabulate(rows))
    return 0


def _to_object(kind: str, item: Any, cluster: Cluster) -> dict[str, Any]:
    if kind == "services":
        return serialize.service_object(item)
    if kind == "endpointslices":
        return serialize.endpoint_slice_object(item)
    if kind == "pods":
        workloads = {w.meta.key: w for w in cluster.workloads}
        return serialize.pod_object(item, workloads)
    if kind == "nodes":
        return serialize.node_object(item)
    return serialize.raw_object(item)
