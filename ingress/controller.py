"""The controller loop: inputs in, a checked nginx.conf swapped in, nginx reloaded.

Like ingress-nginx's syncIngress (internal/ingress/controller/controller.go)
and its reload path (nginx.go OnUpdate: write the config, `nginx -t`, then
reload), with what open-source nginx allows:

- inputs are manifest files (polled: a change is a new mtime or size) or
  objects handed in through `apply_objects`; a burst of changes is coalesced
  into one sync once the files have been quiet for `settle` seconds (as
  ingress-nginx's rate-limited sync queue coalesces events);
- only what changed is rebuilt: a changed Ingress rebuilds its hosts' servers,
  changed endpoints only their upstreams (the rendered servers stay
  byte-identical); nginx itself still needs a reload for new upstream
  servers, since it has no Lua balancer to take them live;
- the new config is tested with `nginx -t` on a temporary copy; only a config
  that passes replaces the live one, and a failing one leaves the last good
  config serving, with the reason in the result.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from netem.cluster import Cluster, load_cluster
from netem.errors import KubenetemError
from netem.objects import RawObject
from proxy_modes.view import ProxyState, build_state

from .model import ControllerConfig, IngressModel
from .nginx_process import NginxError, NginxProcess, check, default_certificate, write_tree
from .render import Rendered, Renderer, RenderOptions


@dataclass
class SyncResult:
    changed: bool = False  # the config text changed
    reloaded: bool = False
    hosts: set[str] = field(default_factory=set)  # servers rebuilt
    upstreams: set[str] = field(default_factory=set)  # upstreams rebuilt
    error: str = ""  # why the new config was refused (the old one keeps serving)
    problems: list[str] = field(default_factory=list)  # rejected Ingresses, warnings

    def summary(self) -> str:
        if self.error:
            return f"kept the last good config: {self.error}"
        if not self.changed:
            return "no change"
        what = f"{len(self.hosts)} servers, {len(self.upstreams)} upstreams rebuilt"
        return f"{'reloaded' if self.reloaded else 'rendered'} ({what})"


class Controller:
    def __init__(
        self,
        directory: Path,
        files: list[str] | None = None,
        options: RenderOptions | None = None,
        config: ControllerConfig | None = None,
        nginx: NginxProcess | None = None,
        address_of: Callable[[str], str] | None = None,
    ) -> None:
        self.directory = directory
        self.files = files or []
        self.renderer = Renderer(options or RenderOptions())
        self.model = IngressModel(config=config or ControllerConfig(), address_of=address_of)
        self.nginx = nginx
        self.running: Rendered | None = None
        self.reloads = 0
        self._bodies: dict[str, object] = {}
        self._context: tuple[object, ...] | None = None
        self._stamps: dict[str, tuple[float, int]] = {}

    # -- inputs ------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """Read the files and bring nginx up to date with them."""
        self._stamps = self._scan()
        try:
            cluster = load_cluster(self.files)
        except KubenetemError as exc:
            return SyncResult(error=f"inputs not loaded: {exc.line().splitlines()[0]}")
        return self.apply_cluster(cluster)

    def apply_cluster(self, cluster: Cluster) -> SyncResult:
        state = build_state(cluster)
        context = (
            [(r.meta.name, r.body) for r in cluster.ingress_classes],
            [(r.meta.namespace, r.meta.name, r.body) for r in cluster.secrets],
            {k: s.ports for k, s in cluster.services.items()},
        )
        result = SyncResult()
        if self._context != context or self.running is None:
            self._context = context
            self.model.load(cluster, state)
            self._bodies = {_key(r): r.body for r in cluster.ingresses}
            result.hosts = set(self.model.servers)
            result.upstreams = set(self.model.upstreams)
            return self._publish(result)
        raws = {_key(r): r for r in cluster.ingresses}
        changed = [r for k, r in raws.items() if self._bodies.get(k) != r.body]
        removed = [k for k in self._bodies if k not in raws]
        self._bodies = {k: r.body for k, r in raws.items()}
        return self.apply_objects(changed, removed, state)

    def apply_objects(
        self, changed: Iterable[RawObject] = (), removed: Iterable[str] = (), state: ProxyState | None = None
    ) -> SyncResult:
        """Objects handed in through the API: Ingresses changed or removed, new endpoints."""
        result = SyncResult()
        result.hosts = self.model.apply(changed, removed)
        if state is not None:
            result.upstreams = self.model.set_state(state)
        return self._publish(result)

    # -- output ------------------------------------------------------------------

    def _publish(self, result: SyncResult) -> SyncResult:
        result.problems = [e.line() for e in self.model.error_list()] + list(self.model.warnings)
        rendered = self.renderer.render(self.model, default_certificate())
        if self.running is not None and rendered.text == self.running.text and rendered.files == self.running.files:
            return result
        result.changed = True
        try:
            check(rendered)
        except NginxError as exc:
            result.error = exc.line()
            return result
        write_tree(self.directory, rendered)
        self.running = rendered
        if self.nginx is not None:
            if self.nginx.proc is None:
                self.nginx.start()
            else:
                self.nginx.reload()
                self.reloads += 1
            result.reloaded = True
        return result

    # -- the watch loop ----------------------------------------------------------

    def _scan(self) -> dict[str, tuple[float, int]]:
        stamps: dict[str, tuple[float, int]] = {}
        for f in self.files:
            paths = [os.path.join(f, n) for n in sorted(os.listdir(f))] if os.path.isdir(f) else [f]
            for p in paths:
                try:
                    st = os.stat(p)
                    stamps[p] = (st.st_mtime, st.st_size)
                except OSError:
                    stamps[p] = (0.0, -1)
        return stamps

    def run(
        self,
        stop: threading.Event,
        report: Callable[[SyncResult], None],
        interval: float = 0.1,
        settle: float = 0.3,
    ) -> None:
        """Sync now, then whenever the files changed and have been quiet for `settle` seconds."""
        report(self.sync())
        pending_since = 0.0
        while not stop.wait(interval):
            stamps = self._scan()
            if stamps != self._stamps:
                self._stamps = stamps
                pending_since = time.monotonic()
                continue
            if pending_since and time.monotonic() - pending_since >= settle:
                pending_since = 0.0
                report(self.sync())


def _key(raw: RawObject) -> str:
    return f"{raw.meta.namespace or 'default'}/{raw.meta.name}"
