"""The API server's validation, message for message, and one line each."""

from __future__ import annotations

import pytest
from kn_helpers import errors_of

from netem import validation as v


def svc(spec: str, name: str = "web", extra_meta: str = "") -> str:
    return f"""
    apiVersion: v1
    kind: Service
    metadata:
      name: {name}
      namespace: dev{extra_meta}
    spec:
{spec}
    """


def only(errors: list[str]) -> str:
    assert len(errors) == 1, errors
    return errors[0]


def test_error_line_format() -> None:
    line = only(errors_of(svc("      ports:\n      - port: 70000")))
    assert line == (
        "test.yaml: document 1 (Service dev/web): spec.ports[0].port: "
        "must be between 1 and 65535, inclusive (got 70000)"
    )


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ("      ports:\n      - port: 80\n        protocol: ICMP", "spec.ports[0].protocol", "supported values"),
        ("      ports:\n      - port: 80\n      - {name: b, port: 81}", "spec.ports[0].name", "Required value"),
        ("      ports:\n      - {name: a, port: 80}\n      - {name: a, port: 81}", "spec.ports[1].name", "Duplicate"),
        ("      ports:\n      - {port: 80, targetPort: http--x}", "spec.ports[0].targetPort", "consecutive hyphens"),
        ("      ports:\n      - {port: 80, targetPort: 99999}", "spec.ports[0].targetPort", "between 1 and 65535"),
        ("      ports:\n      - {port: 80, nodePort: 30001}", "spec.ports[0].nodePort", "may not be used"),
        ("      type: Foo\n      ports:\n      - port: 80", "spec.type", "supported values"),
        ("      clusterIP: 10.96.0.300\n      ports:\n      - port: 80", "spec.clusterIP", "valid IP"),
        ("      clusterIP: 1.2.3.4\n      ports:\n      - port: 80", "spec.clusterIP", "not in the valid range"),
        ("      sessionAffinity: Sticky\n      ports:\n      - port: 80", "spec.sessionAffinity", "ClientIP"),
        (
            "      sessionAffinity: ClientIP\n      sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n"
            "      ports:\n      - port: 80",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "less than 86400",
        ),
        (
            "      externalTrafficPolicy: Local\n      ports:\n      - port: 80",
            "spec.externalTrafficPolicy",
            "externally-accessible",
        ),
        ("      selector: {app: 'a b'}\n      ports:\n      - port: 80", "spec.selector.app", "alphanumeric"),
        ("      ports: []", "spec.ports", "Required value"),
        ("      type: ExternalName\n      externalName: Bad_Host", "spec.externalName", "RFC 1123"),
        ("      ports:\n      - port: '80'", "spec.ports[0].port", "must be an integer"),
    ],
)
def test_service_validation(spec: str, path: str, message: str) -> None:
    line = only(errors_of(svc(spec)))
    assert f": {path}: " in line and message in line, line


def test_service_names_are_dns1035_labels() -> None:
    assert "must be a DNS-1035 label" in only(errors_of(svc("      ports:\n      - port: 80", name="1web")))
    assert errors_of(svc("      ports:\n      - port: 80", name="web-1")) == []


def test_node_ports_range_and_uniqueness() -> None:
    spec = "      type: NodePort\n      ports:\n      - {port: 80, nodePort: %d}"
    assert "30000-32767" in only(errors_of(svc(spec % 29999)))
    both = svc(spec % 30080) + "---" + svc(spec % 30080, name="web2")
    assert "provided port is already allocated (got 30080)" in only(errors_of(both))
    tcp_udp = "      type: NodePort\n      ports:\n      - {name: a, port: 53, nodePort: 30053}\n"
    tcp_udp += "      - {name: b, port: 53, protocol: UDP, nodePort: 30053}"
    assert errors_of(svc(tcp_udp)) == []  # one NodePort for TCP and UDP of one Service is allowed


def test_every_problem_is_reported() -> None:
    spec = "      type: Foo\n      ports:\n      - port: 0\n        protocol: X"
    assert len(errors_of(svc(spec, name="Bad_Name"))) == 4


def test_duplicates_kinds_and_versions() -> None:
    text = svc("      ports:\n      - port: 80") + "---" + svc("      ports:\n      - port: 81")
    assert "duplicate object: Service dev/web is also defined in test.yaml: document 1" in only(errors_of(text))
    old = "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\n"
    assert 'no kind "Deployment" is served in version "extensions/v1beta1"' in only(errors_of(old))
    assert "(Deployment default/old)" in only(errors_of(old))
    assert "kind: Required value" in only(errors_of("apiVersion: v1\nmetadata: {name: x}\n"))


def test_deployment_selector_must_match_template() -> None:
    text = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: other}}
        spec:
          containers: [{name: c, image: i, ports: [{containerPort: 80, name: TooLongPortName16}]}]
    """
    errs = errors_of(text)
    assert any("spec.template.metadata.labels: `selector` does not match template `labels`" in e for e in errs)
    assert any("spec.template.spec.containers[0].ports[0].name: must be no more than 15 characters" in e for e in errs)


def test_label_values_must_be_strings() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {version: 1}\n"
    assert "metadata.labels.version: must be a string (quote it) (got 1)" in only(errors_of(text))


def test_kube_proxy_configuration() -> None:
    text = """
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    kind: KubeProxyConfiguration
    mode: magic
    clusterCIDR: 10.0.0.1/8
    iptables: {masqueradeBit: 40, syncPeriod: 5 minutes}
    ipvs: {scheduler: fastest}
    """
    errs = errors_of(text)
    assert len(errs) == 5
    assert any("mode: supported values" in e for e in errs)
    assert any("clusterCIDR: host bits set" in e for e in errs)
    assert any("iptables.masqueradeBit: must be within the range [0, 31] (got 40)" in e for e in errs)
    assert any("iptables.syncPeriod: must be a duration" in e for e in errs)
    assert any("ipvs.scheduler: unknown IPVS scheduler" in e for e in errs)


@pytest.mark.parametrize(
    ("fn", "good", "bad"),
    [
        (v.dns1123_label, ["a", "a-1", "1a"], ["A", "-a", "a-", "a.b", "a" * 64]),
        (v.dns1035_label, ["a", "a-1"], ["1a", "A", "a-"]),
        (v.dns1123_subdomain, ["a.b-c.d", "a"], ["a..b", ".a", "A.b"]),
        (v.port_name, ["http", "h2", "a-b"], ["80", "a--b", "-a", "http-alt-long-name", "HTTP"]),
        (v.label_key, ["app", "app.kubernetes.io/name", "a_b.c"], ["/a", "a/", "-a", "a/b/c"]),
        (v.label_value, ["", "v1.0", "a_b"], ["-a", "a b", "x" * 64]),
    ],
)
def test_name_rules(fn, good, bad) -> None:  # type: ignore[no-untyped-def]
    assert all(fn(g) == "" for g in good), [g for g in good if fn(g)]
    assert all(fn(b) != "" for b in bad), [b for b in bad if not fn(b)]
