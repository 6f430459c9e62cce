"""`kubenetem demo`: the tool's main job on the bundled example cluster.

It loads examples/ (a namespace with an nginx Deployment, the Service types
people use, two nodes, a KubeProxyConfiguration and an Ingress), shows what
the control plane made of it, traces a few packets through every proxy mode
this build has (one sentence each), renders the example Ingress to
nginx.conf and routes two requests through it, runs a scale sweep small
enough for a minute, prints the comparison and writes the report folder
(report.md, the charts, the JSON results, the nginx.conf).
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from netem.addr import parse_ip
from netem.cluster import Cluster
from netem.packet import TCP, Packet
from proxy_modes import registry
from proxy_modes.base import Trace, Verdict
from proxy_modes.view import ProxyState, build_state, node_view

from .. import bench, examples_dir, report, tables
from .common import load

# The sweep is most of the demo's minute. Its largest size costs the most in
# warm-up: the nftables mode explores every branch of each service's plan
# (about 11 ms a service with ClientIP affinity), so 2,000 rather than 3,000
# keeps the demo well inside 60 s on a 2-vCPU machine.
SWEEP_SIZES = (100, 1000, 2000)
SWEEP_FLOWS = 3000
OUTSIDE_CLIENT = "203.0.113.10"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the tool on the bundled example cluster and write a report")
    p.add_argument("--seed", type=int, default=1, help="seed for random choices (default 1)")
    p.add_argument("--report", default="kubenetem-report", help="report folder (default kubenetem-report)")
    p.add_argument("--no-sweep", action="store_true", help="skip the scale sweep")
    p.set_defaults(handler=run)


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    args.files = [str(examples_dir())]
    cluster = load(args)
    state = build_state(cluster)
    folder = Path(args.report)
    _say(f"== The example cluster ({examples_dir()})\n")
    now = datetime.datetime.now(datetime.UTC)
    sys.stdout.write(tables.tabulate(tables.service_rows(tables.kinds(cluster)["services"], True, False, now)))
    _say()
    sentences = _packet_stories(cluster, state, args.seed)
    nginx_lines = _ingress(args, folder)
    result = None
    if not args.no_sweep:
        _say(
            f"== Scale sweep: {', '.join(map(str, SWEEP_SIZES))} services x 10 endpoints, every mode, "
            "round robin and ClientIP affinity\n"
        )
        result = _sweep(args.seed)
        report.print_table(result)
    intro = _intro(sentences, nginx_lines)
    if result is not None:
        files = report.write_folder(result, folder, intro)
        _say(f"\nreport written: {', '.join(str(f) for f in files)} (and {folder / 'nginx.conf'})")
    _say(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0


def _packet_stories(cluster: Cluster, state: ProxyState, seed: int) -> list[str]:
    """A few packets through every mode, told in one sentence each."""
    web = state.entries[("dev", "web")].ports[0]
    nodeport = state.entries[("dev", "web-nodeport")].ports[0]
    sticky = state.entries[("dev", "web-sticky")].ports[0]
    node = cluster.node("worker-1")
    client = next(p for p in cluster.pods if p.spec.node_name == node.name and p.pod_ip is not None)
    assert client.pod_ip is not None and node.internal_ip is not None
    packets = [
        ("a pod on worker-1 to Service web", Packet(TCP, client.pod_ip, 40000, web.cluster_ip, web.port)),
        (
            "an outside client to NodePort 30080 on worker-1",
            Packet(TCP, parse_ip(OUTSIDE_CLIENT), 40001, node.internal_ip, nodeport.node_port),
        ),
        (
            "the same pod to web-sticky (ClientIP affinity), twice",
            Packet(TCP, client.pod_ip, 40002, sticky.cluster_ip, sticky.port),
        ),
    ]
    out: list[str] = []
    for name in registry.available():
        _say(f"== {name}")
        mode = registry.create(name, random.Random(seed))
        mode.sync(node_view(cluster, state, node.name))
        for what, packet in packets:
            trace = mode.trace(packet, 0.0)
            text = f"{name}: {what}: {_sentence(trace, proxied=name == 'userspace')}"
            if "twice" in what:
                again = mode.route(packet._replace(sport=40003), 1.0)
                same = again.endpoint == trace.decision.endpoint
                text += f"; the second connection {'goes to the same endpoint' if same else 'goes elsewhere'}"
            _say(text + ".")
            out.append(text + ".")
        _say()
    return out


def _sentence(trace: Trace, proxied: bool = False) -> str:
    d = trace.decision
    if d.verdict is not Verdict.DNAT:
        return {
            Verdict.ACCEPT: "accepted unchanged (no service rule matched)",
            Verdict.DROP: "dropped",
            Verdict.REJECT: "rejected",
        }[d.verdict]
    if proxied:
        # The kernel only redirects to kube-proxy's port; the proxy dials the
        # endpoint from the node, so the endpoint sees the node's address.
        text = f"redirected to kube-proxy, which connects to {d.endpoint_text()} from the node"
    else:
        text = f"DNAT to {d.endpoint_text()}"
        if d.masquerade:
            text += ", source masqueraded to the node"
    cost = []
    if d.rules:
        cost.append(f"{d.rules} rules evaluated")
    if d.lookups:
        cost.append(f"{d.lookups} lookups")
    if cost:
        text += f" ({', '.join(cost)})"
    if len(trace.endpoints) > 1:
        probs = sorted({round(float(r.probability), 4) for r in trace.endpoints})
        text += f"; {len(trace.endpoints)} endpoints were possible (p = {', '.join(map(str, probs))})"
    return text


def _ingress(args: argparse.Namespace, folder: Path) -> list[str]:
    from ingress.model import ControllerConfig, IngressModel
    from ingress.render import Renderer
    from ingress.router import Request, Router

    model = IngressModel.from_cluster(load(args), ControllerConfig())
    rendered = Renderer().render(model)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(rendered.text)
    router = Router(model, random.Random(args.seed))
    lines = [
        f"nginx.conf rendered from the example Ingress: {len(rendered.text.splitlines())} lines, "
        f"written to {folder / 'nginx.conf'}"
    ]
    for url in ("http://shop.example.com/cart", "https://shop.example.com/cart", "https://api.example.com/v1/items"):
        d = router.route(Request.from_url(url, {}, {}, OUTSIDE_CLIENT))
        target = d.redirect or (f"{d.service}:{d.port} -> {d.endpoint.text}" if d.endpoint else "-")
        lines.append(f"GET {url} -> {d.status} {target}")
    _say("== Ingress")
    for line in lines:
        _say(line)
    _say()
    return lines


def _sweep(seed: int) -> bench.Report:
    modes = registry.available()
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("sweep", total=len(SWEEP_SIZES) * 2 * (len(modes) + 1))
        return bench.sweep(
            modes,
            SWEEP_SIZES,
            10,
            [False, True],
            seed,
            flows=SWEEP_FLOWS,
            progress=lambda text: progress.update(task, description=text, advance=1),
        )


def _intro(sentences: list[str], nginx_lines: list[str]) -> str:
    text = "# kubenetem demo report\n\nThe bundled example cluster, traced through every proxy mode:\n\n"
    text += "".join(f"- {s}\n" for s in sentences)
    text += "\n## Ingress\n\n" + "".join(f"- {line}\n" for line in nginx_lines)
    return text
