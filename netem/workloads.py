"""Workload controllers and the scheduler, played deterministically.

Deployments, ReplicaSets, StatefulSets and DaemonSets become Pods named the
way their controllers name them: `<deployment>-<pod-template-hash>-<5 chars>`,
`<statefulset>-<ordinal>`, `<daemonset>-<5 chars>`. The suffix alphabet and
the encoding of the template hash are Kubernetes' own (rand.SafeEncodeString
over "bcdfghjklmnpqrstvwxz2456789"); the hashes are CRC-32s of the template's
canonical JSON and of the pod's place, where Kubernetes uses FNV-32a of a Go
dump and a random suffix, so names look real and are stable but do not equal
a real cluster's.

Scheduling stands in for kube-scheduler's spreading: a pod goes to the
eligible node (schedulable, Ready, taints tolerated, nodeSelector matched)
with the fewest pods, ties broken by node name.
"""

from __future__ import annotations

import heapq
import json
import zlib
from typing import Any

from .errors import KubenetemError, ValidationError
from .objects import LABEL_POD_TEMPLATE_HASH, Meta, Node, Pod, PodSpec, Toleration, Workload

ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
UNSCHEDULABLE_TOLERATION = Toleration("node.kubernetes.io/unschedulable", "Exists", "", "NoSchedule")


def safe_encode(text: str) -> str:
    """rand.SafeEncodeString: each character to the alphabet, by code point."""
    return "".join(ALPHANUMS[ord(ch) % len(ALPHANUMS)] for ch in text)


def template_hash(template: dict[str, Any]) -> str:
    """The pod-template-hash label: a 32-bit hash of the template, its decimal
    digits encoded with SafeEncodeString, as ComputeHash() does. (Kubernetes
    hashes with FNV-32a over a Go dump of the struct; we hash the canonical
    JSON with CRC-32, which is as stable and runs in C.)"""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)
    return safe_encode(str(zlib.crc32(canonical.encode())))


_ALPHABET_SIZE = len(ALPHANUMS)


def name_suffix(seed: str) -> str:
    """Five characters of the generateName alphabet, derived from a seed
    (27**5 < 2**32, so one CRC-32 gives all five)."""
    value = zlib.crc32(seed.encode())
    a, b, c, d, e = (value // _ALPHABET_SIZE**i % _ALPHABET_SIZE for i in range(5))
    return ALPHANUMS[a] + ALPHANUMS[b] + ALPHANUMS[c] + ALPHANUMS[d] + ALPHANUMS[e]


def generate_name(base: str, seed: str) -> str:
    """names.SimpleNameGenerator: the base cut to 58 characters, then 5 more."""
    return base[:58] + name_suffix(seed)


def expand_workloads(
    workloads: list[Workload], nodes: list[Node], taken: set[tuple[str, str]], counts: dict[str, int]
) -> list[Pod]:
    """The pods the workload controllers create, scheduled onto nodes
    (`counts`: pods per node so far, updated)."""
    pods: list[Pod] = []
    for workload in sorted(workloads, key=lambda w: (w.meta.namespace, w.meta.name, w.kind)):
        if workload.kind == "DaemonSet":
            made = _daemonset_pods(workload, nodes, taken)
        else:
            made = _replica_pods(workload, taken)
            schedule(made, nodes, counts, workload.template)
        for pod in made:
            if pod.spec.node_name in counts and workload.kind == "DaemonSet":
                counts[pod.spec.node_name] += 1
        pods.extend(made)
    return pods


def _replica_pods(w: Workload, taken: set[tuple[str, str]]) -> list[Pod]:
    ns, name = w.meta.namespace, w.meta.name
    pods = []
    labels = dict(w.template_meta.labels)
    owner_kind, owner_name = w.kind, name
    if w.kind == "Deployment":
        pod_hash = template_hash(w.template_raw)
        labels[LABEL_POD_TEMPLATE_HASH] = pod_hash
        owner_kind, owner_name = "ReplicaSet", f"{name}-{pod_hash}"
    for index in range(w.replicas):
        if w.kind == "StatefulSet":
            pod_name = f"{name}-{index}"
            pod_labels = dict(labels)
            pod_labels["statefulset.kubernetes.io/pod-name"] = pod_name
            pod_labels["apps.kubernetes.io/pod-index"] = str(index)
        else:
            pod_name = _unique(ns, f"{owner_name}-", f"{ns}/{owner_name}/{index}", taken)
            pod_labels = labels
        spec = _pod_spec(w.template)
        if w.kind == "StatefulSet":
            spec.hostname = pod_name
            spec.subdomain = w.service_name
        taken.add((ns, pod_name))
        pods.append(_pod(w, pod_name, pod_labels, spec, (owner_kind, owner_name)))
    return pods


def _daemonset_pods(w: Workload, nodes: list[Node], taken: set[tuple[str, str]]) -> list[Pod]:
    ns, name = w.meta.namespace, w.meta.name
    tolerations = (*w.template.tolerations, UNSCHEDULABLE_TOLERATION)
    pods = []
    for node in nodes:
        if not eligible(node, w.template.node_selector, tolerations, ignore_unschedulable=True):
            continue
        pod_name = _unique(ns, f"{name}-", f"{ns}/{name}/{node.name}", taken)
        taken.add((ns, pod_name))
        spec = _pod_spec(w.template)
        spec.node_name = node.name
        pods.append(_pod(w, pod_name, dict(w.template_meta.labels), spec, ("DaemonSet", name)))
    return pods


def _unique(namespace: str, base: str, seed: str, taken: set[tuple[str, str]]) -> str:
    attempt = 0
    while True:
        candidate = generate_name(base, f"{seed}#{attempt}" if attempt else seed)
        if (namespace, candidate) not in taken:
            return candidate
        attempt += 1


def _pod_spec(t: PodSpec) -> PodSpec:
    """A pod's own copy of its template's spec (it gets its own nodeName)."""
    return PodSpec(
        t.ports,
        t.node_name,
        t.node_selector,
        t.tolerations,
        t.host_network,
        t.hostname,
        t.subdomain,
        t.restart_policy,
        t.containers,
    )


def _pod(w: Workload, name: str, labels: dict[str, str], spec: PodSpec, owner: tuple[str, str]) -> Pod:
    # Labels and annotations dicts are shared with the template: nothing
    # downstream mutates them.
    meta = Meta(name, w.meta.namespace, labels, w.template_meta.annotations, where=w.meta.where)
    return Pod(meta=meta, spec=spec, owner=owner)


def eligible(
    node: Node, node_selector: dict[str, str], tolerations: tuple[Toleration, ...], ignore_unschedulable: bool = False
) -> bool:
    if node.unschedulable and not ignore_unschedulable:
        return False
    if not node.ready:
        return False
    labels = node.meta.labels
    for key, value in node_selector.items():
        if labels.get(key) != value:
            return False
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not any(t.tolerates(taint) for t in tolerations):
            return False
    return True


def schedule(pods: list[Pod], nodes: list[Node], counts: dict[str, int], template: PodSpec | None = None) -> None:
    """Bind pods without a nodeName to the least-loaded eligible node."""
    pending = [p for p in pods if not p.spec.node_name]
    for p in pods:
        if p.spec.node_name in counts:
            counts[p.spec.node_name] += 1
    if not pending:
        return
    if template is not None:
        # All replicas of a workload share one template: one heap serves them.
        candidates = [n.name for n in nodes if eligible(n, template.node_selector, template.tolerations)]
        heap = [(counts[name], name) for name in candidates]
        heapq.heapify(heap)
        for pod in pending:
            if not heap:
                return
            count, name = heapq.heappop(heap)
            pod.spec.node_name = name
            counts[name] = count + 1
            heapq.heappush(heap, (count + 1, name))
        return
    for pod in pending:
        options = [n.name for n in nodes if eligible(n, pod.spec.node_selector, pod.spec.tolerations)]
        if options:
            best = min(options, key=lambda name: (counts[name], name))
            pod.spec.node_name = best
            counts[best] += 1


def check_node_names(pods: list[Pod], nodes: dict[str, Node]) -> list[KubenetemError]:
    errors: list[KubenetemError] = []
    for pod in pods:
        if pod.spec.node_name and pod.spec.node_name not in nodes and pod.raw is not None:
            errors.append(ValidationError("node not found", pod.meta.where, "spec.nodeName", pod.spec.node_name))
    return errors
