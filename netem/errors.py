"""The one exception hierarchy of kubenetem, and where a problem was found.

Every error a user can cause is a `KubenetemError` whose `str()` is one line a
person can act on: `FILE: document N (Kind ns/name): field.path: what is wrong
(got VALUE)`. The CLI prints that line and exits with status 2; nothing else
may escape to the user as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Where:
    """The place in the input an object came from."""

    file: str = ""
    document: int = 0  # 1-based; 0 when unknown (objects built in Python)
    kind: str = ""
    namespace: str = ""
    name: str = ""
    prefix: str = ""  # field path of the object inside its document, e.g. "items[3]"

    def describe(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        label = ""
        if self.document:
            label = f"document {self.document}"
        if self.kind or self.name:
            ident = f"{self.namespace}/{self.name}" if self.namespace else self.name
            obj = f"{self.kind} {ident}".strip()
            label = f"{label} ({obj})" if label else obj
        if label:
            parts.append(label)
        return ": ".join(parts)

    def field(self, path: str) -> str:
        if self.prefix and path:
            return f"{self.prefix}.{path}"
        return path or self.prefix

    def named(self, kind: str, namespace: str, name: str) -> Where:
        return replace(self, kind=kind, namespace=namespace, name=name)


def show_value(value: Any, limit: int = 60) -> str:
    """A short, one-line rendering of an offending value."""
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MISSING = object()


class KubenetemError(Exception):
    """Base of every error the user can cause. `str()` is a single line."""

    def __init__(
        self,
        message: str,
        where: Where | None = None,
        path: str = "",
        value: Any = _MISSING,
    ) -> None:
        self.message = message
        self.where = where or Where()
        self.path = path
        self.value = value
        super().__init__(self.line())

    def line(self) -> str:
        parts = []
        head = self.where.describe()
        if head:
            parts.append(head)
        field = self.where.field(self.path)
        if field:
            parts.append(field)
        text = self.message
        if self.value is not _MISSING:
            text += f" (got {show_value(self.value)})"
        parts.append(text)
        return ": ".join(parts)


class InputError(KubenetemError):
    """A file that cannot be read or parsed as YAML/JSON."""


class ValidationError(KubenetemError):
    """An object the API server (or kube-proxy, or the controller) would reject."""


class AllocationError(KubenetemError):
    """A range ran out or an address is taken twice (ClusterIPs, NodePorts, pod IPs)."""


class RulesetError(KubenetemError):
    """A ruleset text (iptables-save, nft, ipvsadm) that cannot be understood."""


class UsageError(KubenetemError):
    """A command-line request that cannot be served."""


class ValidationErrors(KubenetemError):
    """Several problems found at once; each is its own line."""

    def __init__(self, errors: list[KubenetemError]) -> None:
        self.errors = errors
        super().__init__(errors[0].message if errors else "no errors", errors[0].where if errors else None)

    def line(self) -> str:
        return "\n".join(e.line() for e in getattr(self, "errors", []))
