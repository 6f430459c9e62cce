"""Typed access to one mapping of a manifest, with field paths for errors.

Manifests are untrusted: any field may be missing, of the wrong type or
absurd. `Fields` wraps a mapping and its path (`spec.ports[0]`) and offers
typed getters that record a one-line `ValidationError` and return a safe
default instead of raising, so that one pass reports every problem in a
file, as `kubectl apply --dry-run=server` would.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from .errors import KubenetemError, ValidationError, Where

_NO_VALUE = object()


class Problems:
    """The errors found so far in one load."""

    def __init__(self) -> None:
        self.errors: list[KubenetemError] = []

    def add(self, error: KubenetemError) -> None:
        self.errors.append(error)

    def __bool__(self) -> bool:
        return bool(self.errors)


class Fields:
    __slots__ = ("data", "path", "problems", "where")

    def __init__(self, data: dict[str, Any], where: Where, problems: Problems, path: str = "") -> None:
        self.data = data
        self.where = where
        self.problems = problems
        self.path = path

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, message: str, key: str = "", value: Any = _NO_VALUE) -> None:
        path = self.sub(key) if key else self.path
        if value is _NO_VALUE:
            self.problems.add(ValidationError(message, self.where, path))
        else:
            self.problems.add(ValidationError(message, self.where, path, value))

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def text(self, key: str, default: str = "", required: bool = False) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error("Required value", key)
            return default
        if isinstance(value, (datetime.datetime, datetime.date)):
            return _timestamp(value)
        if not isinstance(value, str):
            self.error("must be a string", key, value)
            return default
        return value

    def number(self, key: str, default: int = 0, required: bool = False) -> int:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error("Required value", key)
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error("must be an integer", key, value)
            return default
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error("must be true or false", key, value)
            return default
        return value

    def int_or_str(self, key: str) -> int | str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.error("must be an integer or a string", key, value)
            return None
        return value

    def obj(self, key: str, required: bool = False) -> Fields | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error("Required value", key)
            return None
        if not isinstance(value, dict):
            self.error("must be a mapping", key, _short(value))
            return None
        return Fields(value, self.where, self.problems, self.sub(key))

    def items(self, key: str, required: bool = False) -> Iterator[Fields]:
        """The mappings of a list field, each with its own path."""
        for index, value in self._list(key, required):
            path = f"{self.sub(key)}[{index}]"
            if not isinstance(value, dict):
                self.problems.add(ValidationError("must be a mapping", self.where, path, _short(value)))
                continue
            yield Fields(value, self.where, self.problems, path)

    def strings(self, key: str) -> list[str]:
        out = []
        for index, value in self._list(key, False):
            if not isinstance(value, str):
                self.problems.add(
                    ValidationError("must be a string", self.where, f"{self.sub(key)}[{index}]", _short(value))
                )
                continue
            out.append(value)
        return out

    def _list(self, key: str, required: bool) -> Iterator[tuple[int, Any]]:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error("Required value", key)
            return
        if not isinstance(value, list):
            self.error("must be a list", key, _short(value))
            return
        yield from enumerate(value)

    def string_map(self, key: str) -> dict[str, str]:
        """A map[string]string such as labels, annotations or a selector."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("must be a mapping of strings", key, _short(value))
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.error("keys must be strings", key, k)
                continue
            if isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
                self.error("must be a string", f"{key}.{k}" if key else k, _short(v))
                continue
            if not isinstance(v, str):
                # YAML reads `version: 1` as a number; the API server would
                # reject it, and so do we, with the fix in the message.
                self.error("must be a string (quote it)", f"{key}.{k}", v)
                continue
            out[k] = v
        return out


def _timestamp(value: datetime.date) -> str:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()


def _short(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return value
