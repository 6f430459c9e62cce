"""Reading manifests: YAML and JSON, Lists, directories, stdin, and the one
error line for input that is not a manifest at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from netem.errors import InputError
from netem.manifests import parse_text, read_paths

SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}


def test_multi_document_yaml_with_empty_documents() -> None:
    docs = parse_text("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: X\n", "f.yaml")
    assert [d.obj["kind"] for d in docs] == ["Namespace", "X"]
    # A leading --- opens document 1; the empty document 2 is skipped but counted.
    assert [d.where.document for d in docs] == [1, 3]


def test_kind_list_and_kubectl_output_are_unrolled() -> None:
    kubectl = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [SVC, dict(SVC, metadata={"name": "b"})],
        "metadata": {"resourceVersion": ""},
    }
    docs = parse_text(yaml.safe_dump(kubectl), "get.yaml")
    assert [d.obj["metadata"]["name"] for d in docs] == ["a", "b"]
    assert docs[1].where.prefix == "items[1]"
    typed_list = {"apiVersion": "v1", "kind": "ServiceList", "items": [SVC]}
    assert len(parse_text(json.dumps(typed_list), "get.json")) == 1


def test_json_array_of_objects() -> None:
    docs = parse_text(json.dumps([SVC, SVC]), "x.json")
    assert len(docs) == 2 and docs[1].where.prefix == "[1]"


def test_yaml_semantics_are_the_safe_loaders() -> None:
    # The fast construction path must give exactly what yaml.safe_load gives.
    text = "a: &x {k: 1}\nb: *x\nc: 0x1F\nd: 012\ne: 1:30\nf: 2024-01-01T00:00:00Z\ng: 1.5\nh: yes\ni: ~\n"
    text += "j: -5\nk: [1, '2', true, 0]\n<<: {m: 1}\nl: '80'\n"
    docs = parse_text("kind: X\n" + text)
    assert docs[0].obj == yaml.safe_load("kind: X\n" + text)
    assert docs[0].obj["l"] == "80" and docs[0].obj["k"] == [1, "2", True, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [\n", "invalid YAML at line 2 column 1"),
        ("{bad json", "invalid JSON at line 1"),
        ("- 1\n- 2\n", "a document must be a mapping with apiVersion and kind, not a number"),
        ("just text\n", "a document must be a mapping with apiVersion and kind, not a string"),
        ("kind: List\nitems: 3\n", "items must be a list"),
        ("? [a]\n: 1\n", "invalid YAML"),
    ],
)
def test_bad_input_is_one_line(text: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_text(text, "bad.yaml")
    line = err.value.line()
    assert line.startswith("bad.yaml") and message in line and "\n" not in line


def test_directories_stdin_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(SVC))
    (tmp_path / "sub" / "a.json").write_text(json.dumps(SVC))
    (tmp_path / "notes.txt").write_text("ignored")
    docs = read_paths([str(tmp_path), "-"], stdin_text=yaml.safe_dump(SVC))
    assert [Path(d.where.file).name for d in docs] == ["b.yaml", "a.json", "<stdin>"]
    with pytest.raises(InputError, match="no such file or directory"):
        read_paths([str(tmp_path / "missing.yaml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.yaml, \.yml or \.json files"):
        read_paths([str(tmp_path / "empty")])
