"""Reading manifests: files, directories and stdin, YAML or JSON, Lists unrolled.

This is the I/O edge of the model: it turns paths into `Document`s (one
mapping each, with the file and document number it came from) and decides
nothing about their meaning. YAML goes through libyaml's C loader when
PyYAML has it (ten times faster on large clusters); JSON files are YAML too,
but a file that starts with `{` or `[` is read with the json module, which is
faster still. `kind: List` and the `*List` kinds kubectl prints
(`kubectl get -o yaml`) are unrolled into their items.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

from .errors import InputError, Where

try:
    _Base: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Base = yaml.SafeLoader

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _Loader(_Base):
    """libyaml's parser and composer with the safe constructor's semantics,
    two things faster: plain scalars' implicit tags are resolved once per
    distinct value (manifests repeat "TCP", "app", "80" endlessly), and the
    common tags (str, int, bool, null, map, seq) are built by `_fast` below.
    Anything else (floats, timestamps, merge keys, aliases, odd int forms)
    makes the whole document go through SafeConstructor, unchanged."""

    _tags: ClassVar[dict[tuple[str, bool], str]] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            key = (value, implicit[1])
            tag = self._tags.get(key)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(self._tags) < 100_000:
                    self._tags[key] = tag
            return tag
        return super().resolve(kind, value, implicit)


class _Fallback(Exception):
    pass


def _fast(node: Any, seen: set[int], bools: dict[str, bool]) -> Any:
    if id(node) in seen:
        raise _Fallback  # an alias: let SafeConstructor share the object
    seen.add(id(node))
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag == _MAP:
        out = {}
        for key_node, value_node in node.value:
            key = _fast(key_node, seen, bools)
            if isinstance(key, (dict, list)):
                raise _Fallback  # unhashable key: SafeConstructor reports it
            out[key] = _fast(value_node, seen, bools)
        return out
    if tag == _SEQ:
        return [_fast(item, seen, bools) for item in node.value]
    if tag == _INT:
        value = node.value
        if value.isdigit() and (value[0] != "0" or value == "0"):
            return int(value)
        raise _Fallback  # signs, 0x, YAML 1.1 octal and sexagesimal forms
    if tag == _BOOL:
        return bools[node.value.lower()]
    if tag == _NULL:
        return None
    raise _Fallback


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class Document:
    obj: dict[str, Any]
    where: Where


def read_paths(paths: Iterable[str], stdin_text: str | None = None) -> list[Document]:
    """Every document in the given files and directories (`-` is stdin)."""
    documents: list[Document] = []
    for path in paths:
        for name, text in _read_sources(path, stdin_text):
            documents.extend(parse_text(text, name))
    return documents


def _read_sources(path: str, stdin_text: str | None) -> Iterator[tuple[str, str]]:
    if path == "-":
        yield "<stdin>", stdin_text if stdin_text is not None else sys.stdin.read()
        return
    if os.path.isdir(path):
        found = False
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(MANIFEST_SUFFIXES):
                    found = True
                    yield from _read_sources(os.path.join(root, name), stdin_text)
        if not found:
            raise InputError(f"no .yaml, .yml or .json files in directory {path}")
        return
    try:
        with open(path, encoding="utf-8") as handle:
            yield path, handle.read()
    except FileNotFoundError:
        raise InputError("no such file or directory", Where(path)) from None
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", Where(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", Where(path)) from None


def parse_text(text: str, filename: str = "<input>") -> list[Document]:
    """Split a YAML or JSON text into documents, unrolling Lists."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        raw_docs = _load_json(text, filename)
    else:
        raw_docs = _load_yaml(text, filename)
    documents: list[Document] = []
    for number, obj in enumerate(raw_docs, start=1):
        if obj is None:
            continue  # an empty document ("---" twice) is allowed by kubectl
        where = Where(filename, number)
        if isinstance(obj, list):  # a JSON array of objects
            for index, item in enumerate(obj):
                documents.extend(_unroll(item, Where(filename, number, prefix=f"[{index}]")))
            continue
        documents.extend(_unroll(obj, where))
    return documents


def _load_json(text: str, filename: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", Where(filename)) from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", Where(filename)) from None


def _documents(text: str) -> list[Any]:
    loader = _Loader(text)
    try:
        docs = []
        bools = loader.bool_values
        while loader.check_node():
            node = loader.get_node()
            try:
                docs.append(_fast(node, set(), bools))
            except _Fallback:
                docs.append(loader.construct_document(node))
        return docs
    finally:
        loader.dispose()


def _load_yaml(text: str, filename: str) -> list[Any]:
    try:
        return _documents(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        position = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise InputError(f"invalid YAML{position}: {problem}", Where(filename)) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}".splitlines()[0], Where(filename)) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        # libyaml's constructors raise these for e.g. absurd timestamps or
        # recursive aliases; they are still bad input, not our bug.
        raise InputError(f"invalid YAML: {type(exc).__name__}", Where(filename)) from None


def _unroll(obj: Any, where: Where) -> list[Document]:
    if not isinstance(obj, dict):
        raise InputError(f"a document must be a mapping with apiVersion and kind, not a {_type_name(obj)}", where)
    kind = obj.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in obj:
        items = obj["items"]
        if items is None:
            return []
        if not isinstance(items, list):
            raise InputError(f"items must be a list, not a {_type_name(items)}", where, "items")
        out: list[Document] = []
        base = f"{where.prefix}.items" if where.prefix else "items"
        for index, item in enumerate(items):
            out.extend(_unroll(item, Where(where.file, where.document, prefix=f"{base}[{index}]")))
        return out
    return [Document(obj, where)]


def _type_name(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
