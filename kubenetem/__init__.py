"""kubenetem: the facade people use — an emulated cluster from manifests.

from kubenetem import Emulator
emu = Emulator.from_files(["examples/"])
view = emu.view("worker-1")          # kube-proxy's view on that node
mode = emu.mode("iptables", node="worker-1", seed=1)
decision = mode.route(emu.packet("tcp", "10.244.1.5", 40000, "10.96.0.10", 80), now=0.0)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from netem.cluster import Cluster, load_cluster
from netem.packet import Packet, make_packet
from proxy_modes import registry
from proxy_modes.base import ProxyMode
from proxy_modes.view import NodeView, ProxyState, build_state, node_view

__all__ = ["Emulator", "examples_dir"]


def examples_dir() -> Path:
    """The bundled example cluster: kubenetem/examples in an installed wheel,
    the top-level examples/ in a checkout."""
    packaged = Path(__file__).resolve().parent / "examples"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "examples"


@dataclass
class Emulator:
    cluster: Cluster
    state: ProxyState = field(init=False)

    def __post_init__(self) -> None:
        self.state = build_state(self.cluster)

    @classmethod
    def from_files(cls, paths: list[str]) -> Emulator:
        return cls(load_cluster(paths))

    def view(self, node: str | None = None) -> NodeView:
        return node_view(self.cluster, self.state, node)

    def mode(self, name: str | None = None, node: str | None = None, seed: int | None = None) -> ProxyMode:
        """A proxy mode synced to a node's view (the configured mode by default)."""
        mode = registry.create(name or self.cluster.proxy_config.mode, random.Random(seed))
        mode.sync(self.view(node))
        return mode

    @staticmethod
    def packet(proto: str, src: str, sport: int, dst: str, dport: int, local: bool = False) -> Packet:
        return make_packet(proto, src, sport, dst, dport, local)
