"""The real `nft`, run inside a network namespace: load, check, list, delete.

Only this module of the mode touches the system. It runs `ip netns exec NS nft`
(the caller owns the namespace: tests create and remove their own), feeds
rulesets on stdin with `-f -`, and turns nft's complaints into one-line
`RulesetError`s. `load` reports how long the kernel took, for the benchmark
that compares `nft -f` with `iptables-restore` as the service count grows.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from netem.errors import RulesetError


class Nft:
    """`nft` in one network namespace ("" = the caller's own)."""

    def __init__(self, netns: str = "", timeout: float = 900.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def _cmd(self, args: list[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, "nft", *args]

    def run(self, args: list[str], text: str | None = None) -> str:
        try:
            done = subprocess.run(
                self._cmd(args),
                input=text,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RulesetError(f"nft {' '.join(args)} failed: {exc}") from None
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "Error" in line), done.stderr.strip())
            raise RulesetError(f"nft {' '.join(args)} rejected it: {first.strip()}")
        return done.stdout

    def load(self, text: str) -> float:
        """`nft -f -`: apply a ruleset or transaction; returns the seconds it took."""
        start = time.perf_counter()
        self.run(["-f", "-"], text)
        return time.perf_counter() - start

    def check(self, text: str) -> None:
        """`nft -c -f -`: would the kernel accept it (nothing is changed)."""
        self.run(["-c", "-f", "-"], text)

    def list_ruleset(self) -> str:
        return self.run(["list", "ruleset"])

    def flush_ruleset(self) -> None:
        self.run(["flush", "ruleset"])

    def version(self) -> str:
        return self.run(["--version"]).strip()


def available() -> bool:
    return shutil.which("nft") is not None and shutil.which("ip") is not None
