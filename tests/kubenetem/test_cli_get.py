"""`kubenetem get` and `validate`: kubectl's layout, the API server's objects,
and one line plus exit 2 for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubenetem.cli import main
from kubenetem.tables import human_duration, tabulate

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_endpointslices_yaml_is_what_the_controller_writes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "get", "endpointslices", "-n", "dev", "-o", "yaml", "-f", EXAMPLES)
    assert status == 0
    listed = yaml.safe_load(out)
    assert listed["kind"] == "List" and listed["apiVersion"] == "v1"
    by_service = {s["metadata"]["labels"]["kubernetes.io/service-name"]: s for s in listed["items"]}
    assert set(by_service) == {"web", "web-nodeport", "web-sticky", "web-headless"}  # not the ExternalName one
    web = by_service["web"]
    assert web["apiVersion"] == "discovery.k8s.io/v1" and web["addressType"] == "IPv4"
    assert web["metadata"]["name"].startswith("web-") and web["metadata"]["generateName"] == "web-"
    assert web["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert web["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert web["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]
    assert len(web["endpoints"]) == 3
    for endpoint in web["endpoints"]:
        assert endpoint["conditions"] == {"ready": True, "serving": True, "terminating": False}
        assert endpoint["nodeName"] in ("worker-1", "worker-2")
        assert endpoint["zone"] == {"worker-1": "zone-a", "worker-2": "zone-b"}[endpoint["nodeName"]]
        assert endpoint["targetRef"]["kind"] == "Pod" and endpoint["addresses"][0].startswith("10.244.")
    assert by_service["web-headless"]["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_services_json_has_defaults_and_allocations(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "get", "svc", "-n", "dev", "-o", "json", "-f", EXAMPLES)
    assert status == 0 and out.startswith('{\n    "apiVersion": "v1",\n    "items": [')
    items = {s["metadata"]["name"]: s for s in json.loads(out)["items"]}
    web = items["web"]["spec"]
    assert web["clusterIP"] == web["clusterIPs"][0] and web["clusterIP"].startswith("10.")
    assert web["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
    assert web["sessionAffinity"] == "None" and web["internalTrafficPolicy"] == "Cluster"
    assert web["ipFamilies"] == ["IPv4"] and web["type"] == "ClusterIP"
    nodeport = items["web-nodeport"]["spec"]
    assert nodeport["ports"][0]["nodePort"] == 30080 and nodeport["externalTrafficPolicy"] == "Cluster"
    assert items["web-sticky"]["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert items["web-headless"]["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in items["billing-db"]["spec"]


def test_service_table_lines_up_like_kubectl(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "get", "services", "-A", "-f", EXAMPLES)
    lines = out.splitlines()
    assert status == 0
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]

    def starts(line: str) -> list[int]:
        return [i for i in range(len(line)) if line[i] != " " and (i == 0 or line[i - 1] == " ")]

    columns = starts(lines[0])
    rows = {line.split()[1]: line for line in lines[1:]}
    for line in lines[1:]:
        assert starts(line) == columns  # every cell starts under its header
    assert rows["billing-db"].split()[2:6] == ["ExternalName", "<none>", "db.billing.example.com", "<none>"]
    assert rows["web-nodeport"].split()[5] == "80:30080/TCP"
    assert rows["web-headless"].split()[3] == "None"


def test_tabwriter_layout() -> None:
    # Go's tabwriter with kubectl's settings: cell width + 3, at least 10.
    assert tabulate([["NAME", "AGE"], ["a-very-long-name", "5d"]]) == (
        "NAME" + " " * 15 + "AGE\n" + "a-very-long-name" + " " * 3 + "5d\n"
    )
    assert tabulate([["A", "B"], ["x", "y"]]) == "A" + " " * 9 + "B\nx" + " " * 9 + "y\n"
    assert [human_duration(s) for s in (5, 119, 150, 3600 * 5 + 60, 86400 * 3 + 3600, 86400 * 400)] == [
        "5s",
        "119s",
        "2m30s",
        "5h1m",
        "3d1h",
        "400d",
    ]


def test_pods_nodes_ingresses(capsys: pytest.CaptureFixture[str]) -> None:
    _, pods, _ = run(capsys, "get", "pods", "-n", "dev", "-o", "wide", "-f", EXAMPLES)
    assert len(pods.splitlines()) == 4 and "Running" in pods and "worker-" in pods
    _, nodes, _ = run(capsys, "get", "nodes", "-f", EXAMPLES)
    assert nodes.splitlines()[1].split()[:2] == ["worker-1", "Ready"] and "v1.31.2" in nodes
    _, ing, _ = run(capsys, "get", "ingress", "-n", "dev", "-f", EXAMPLES)
    assert ing.splitlines()[1].split()[:5] == ["web", "nginx", "shop.example.com,api.example.com", "80,", "443"]
    status, empty, err = run(capsys, "get", "pods", "-n", "nowhere", "-f", EXAMPLES)
    assert status == 0 and empty == "" and "No resources found in nowhere namespace." in err


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 0}]\n")
    status, out, err = run(capsys, "get", "services", "-f", str(bad))
    assert status == 2 and out == ""
    assert (
        err == f"{bad}: document 1 (Service default/web): spec.ports[0].port: "
        "must be between 1 and 65535, inclusive (got 0)\n"
    )
    status, _, err = run(capsys, "validate", "-f", str(tmp_path / "nope.yaml"))
    assert status == 2 and err.strip().endswith("no such file or directory") and "Traceback" not in err


def test_validate_lists_every_problem_and_ignored_kinds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "many.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: A}\nspec: {type: X, ports: [{port: 99999}]}\n"
    )
    status, _, err = run(capsys, "validate", "-f", str(bad))
    assert status == 2 and len(err.splitlines()) == 3
    status, _, err = run(capsys, "validate", "-f", EXAMPLES)
    assert status == 0 and "ok: 5 services, 3 pods, 2 nodes" in err
    good = tmp_path / "good.yaml"
    good.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    status, _, err = run(capsys, "validate", "-f", str(good))
    assert status == 0 and "ignored kinds the data plane does not use: ConfigMap (1)" in err


def test_console_script_reads_stdin() -> None:
    exe = shutil.which("kubenetem", path=str(Path(sys.executable).parent)) or shutil.which("kubenetem")
    assert exe is not None, "the kubenetem console script is not installed"
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n"
    result = subprocess.run(
        [exe, "get", "svc", "-f", "-", "-o", "yaml"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["items"][0]["metadata"]["name"] == "a"
