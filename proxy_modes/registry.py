"""Mode names to their implementations, imported only when asked for.

The facade and the CLI find a mode here by the name kube-proxy uses
(`--proxy-mode` / KubeProxyConfiguration.mode). Each entry is the module and
class of the mode's engine; modes register by being listed, so an absent
mode is a clear error instead of an import failure.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from netem.errors import UsageError

from .base import ProxyMode

if TYPE_CHECKING:
    import random

MODES: dict[str, tuple[str, str]] = {
    # filled in as modes land: name -> (module, class)
    "iptables": ("proxy_modes.iptables.engine", "IptablesMode"),
    "ipvs": ("proxy_modes.ipvs.engine", "IpvsMode"),
    "nftables": ("proxy_modes.nftables.engine", "NftablesMode"),
    "userspace": ("proxy_modes.userspace.engine", "UserspaceMode"),
}


def available() -> list[str]:
    return list(MODES)


def create(name: str, rng: random.Random) -> ProxyMode:
    try:
        module_name, class_name = MODES[name]
    except KeyError:
        known = ", ".join(MODES) or "none yet"
        raise UsageError(f"unknown proxy mode {name!r} (available: {known})") from None
    module = importlib.import_module(module_name)
    mode: ProxyMode = getattr(module, class_name)(rng)
    return mode
