"""Ingress, IngressClass and TLS Secret manifests, validated and typed.

`parse_ingress` checks what the API server checks for networking.k8s.io/v1
(pkg/apis/networking/validation/validation.go: ValidateIngressSpec,
validateIngressRules, validateHTTPIngressPath, validateIngressBackend) and
then the controller's own rules (ingress-nginx's strict-validate-path-type,
internal/ingress/inspector/rules.go, and the annotation validators). Any
problem rejects that one Ingress with an error line naming it; the others
are still served.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

from netem import validation as v
from netem.errors import ValidationError
from netem.objects import RawObject

from .annotations import Settings, parse_settings

EXACT, PREFIX, IMPL = "Exact", "Prefix", "ImplementationSpecific"
PATH_TYPES = (EXACT, PREFIX, IMPL)
# validation.go: invalidPathSequences / invalidPathSuffixes (Exact and Prefix only).
_BAD_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
_BAD_SUFFIXES = ("/..", "/.")
# inspector/rules.go validPathType (strict-validate-path-type, default on since v1.12).
_STRICT_PATH = re.compile(r"^/[A-Za-z0-9._\-/]*\Z")
# validators.go IsValidRegex: what an ImplementationSpecific (possibly regex) path may hold.
_REGEX_PATH = re.compile(r"^[/\-._~a-zA-Z0-9:^$\[\](){}*+?|&=\\]*\Z")
_IP_LIKE = re.compile(r"[0-9]+(\.[0-9]+){3}\Z")  # ParseIPSloppy accepts what this matches
_IPV6_LIKE = re.compile(r"[0-9A-Fa-f:.]+\Z")
_REGEX_META = re.compile(r"[\^$\[\](){}*+?|\\]")


class BackendRef(NamedTuple):
    """An IngressBackend: a service port (number or name) or a resource."""

    service: str = ""
    port: int | str = 0
    resource: str = ""  # "Kind/name" for resource backends (not proxied; default backend answers)


class PathRule(NamedTuple):
    path: str
    path_type: str
    backend: BackendRef


class Rule(NamedTuple):
    host: str  # "" = every host (the default server)
    paths: tuple[PathRule, ...]


class TLS(NamedTuple):
    hosts: tuple[str, ...]
    secret: str


@dataclass(frozen=True, slots=True)
class Ingress:
    namespace: str
    name: str
    created: str  # creationTimestamp as given ("" when unset)
    class_name: str
    class_annotation: str | None
    default_backend: BackendRef | None
    rules: tuple[Rule, ...]
    tls: tuple[TLS, ...]
    settings: Settings
    order: tuple[str, str] = ("", "")  # sortIngressSlice key, see order_key()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class IngressClass:
    name: str
    controller: str
    default: bool


class _Errors:
    def __init__(self, raw: RawObject) -> None:
        self.where = raw.meta.where
        self.items: list[ValidationError] = []

    def add(self, message: str, path: str, value: Any = None) -> None:
        if value is None:
            self.items.append(ValidationError(message, self.where, path))
        else:
            self.items.append(ValidationError(message, self.where, path, value))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_ingress_class(raw: RawObject) -> IngressClass:
    spec = _dict(raw.body.get("spec"))
    flag = raw.meta.annotations.get("ingressclass.kubernetes.io/is-default-class", "")
    return IngressClass(raw.meta.name, str(spec.get("controller", "")), flag == "true")


def parse_tls_secret(raw: RawObject) -> tuple[str, str] | str:
    """(certificate PEM, key PEM), or why the Secret cannot serve TLS."""
    if raw.body.get("type", "Opaque") != "kubernetes.io/tls":
        return f"Secret type is {raw.body.get('type', 'Opaque')!r}, not kubernetes.io/tls"
    data, text = _dict(raw.body.get("data")), _dict(raw.body.get("stringData"))
    out = []
    for key, marker in (("tls.crt", "CERTIFICATE-----"), ("tls.key", "PRIVATE KEY-----")):
        if key in text:
            pem = str(text[key])
        elif key in data:
            try:
                pem = base64.b64decode(str(data[key]), validate=True).decode("ascii")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return f"data[{key}] is not base64 of a PEM text"
        else:
            return f"has no {key}"
        if "-----BEGIN " not in pem or marker not in pem:
            return f"{key} holds no PEM {marker.rstrip('-').lower()}"
        out.append(pem if pem.endswith("\n") else pem + "\n")
    return out[0], out[1]


def parse_ingress(raw: RawObject) -> tuple[Ingress | None, list[ValidationError]]:
    """The typed Ingress, or None and every reason it is rejected."""
    err = _Errors(raw)
    spec = _dict(raw.body.get("spec"))
    default = None
    if spec.get("defaultBackend") is not None:
        default = _backend(spec["defaultBackend"], "spec.defaultBackend", err)
    rules = tuple(_rule(r, f"spec.rules[{i}]", err) for i, r in enumerate(_list(spec.get("rules"))))
    if default is None and not rules:
        err.add("either `defaultBackend` or `rules` must be specified", "spec")
    tls = tuple(_tls(t, f"spec.tls[{i}]", err) for i, t in enumerate(_list(spec.get("tls"))))
    class_name = str(spec.get("ingressClassName") or "")
    if class_name and v.dns1123_subdomain(class_name):
        err.add(v.dns1123_subdomain(class_name), "spec.ingressClassName", class_name)
    settings, problems = parse_settings(raw.meta.annotations)
    for p in problems:
        err.add(str(p), p.path, p.value)
    if settings.use_regex:
        _check_regexes(rules, err)
    if err.items:
        return None, err.items
    namespace = raw.meta.namespace or "default"
    created = raw.meta.creation_timestamp or ""
    return (
        Ingress(
            namespace=namespace,
            name=raw.meta.name,
            created=created,
            class_name=class_name,
            class_annotation=raw.meta.annotations.get("kubernetes.io/ingress.class"),
            default_backend=default,
            rules=rules,
            tls=tls,
            settings=settings,
            order=order_key(created, f"{namespace}/{raw.meta.name}"),
        ),
        [],
    )


_INVERT = {c: 0x10FFFF - c for c in range(128)}


def order_key(created: str, key: str) -> tuple[str, str]:
    """store.go sortIngressSlice: oldest first; on equal creationTimestamps
    "namespace/name" descending (the second part sorts inverted)."""
    return (created, key.translate(_INVERT))


def _backend(obj: Any, path: str, err: _Errors) -> BackendRef:
    obj = _dict(obj)
    service, resource = obj.get("service"), obj.get("resource")
    if (service is None) == (resource is None):
        err.add("exactly one of `service` or `resource` must be specified", path)
        return BackendRef()
    if resource is not None:
        res = _dict(resource)
        kind, name = str(res.get("kind", "")), str(res.get("name", ""))
        if not kind or not name:
            err.add("a resource backend needs kind and name", f"{path}.resource")
        return BackendRef(resource=f"{kind}/{name}")
    svc = _dict(service)
    name = str(svc.get("name", ""))
    problem = v.dns1035_label(name) if name else "Required value"
    if problem:
        err.add(problem, f"{path}.service.name", name)
    port = _dict(svc.get("port"))
    number, pname = port.get("number"), port.get("name")
    if (number is None) == (pname is None or pname == ""):
        err.add("exactly one of port name or number must be specified", f"{path}.service.port")
        return BackendRef(service=name)
    if number is not None:
        if not isinstance(number, int) or isinstance(number, bool) or v.port_number(number):
            err.add("must be between 1 and 65535, inclusive", f"{path}.service.port.number", number)
        return BackendRef(service=name, port=number if isinstance(number, int) else 0)
    problem = v.port_name(str(pname))
    if problem:
        err.add(problem, f"{path}.service.port.name", pname)
    return BackendRef(service=name, port=str(pname))


def host_problem(host: str) -> str:
    """validateIngressRules / validateIngressTLS: a DNS name, a wildcard only as
    the whole first label, never an IP address (and so never a port)."""
    if _IP_LIKE.match(host) or (":" in host and _IPV6_LIKE.match(host)):
        return "must be a DNS name, not an IP address"
    if "*" in host:
        if not host.startswith("*.") or "*" in host[2:]:
            return "a wildcard '*' must be the whole first label (*.example.com)"
        problem = v.dns1123_subdomain(host[2:])
        return f"the part after '*.' {problem}" if problem else ""
    return v.dns1123_subdomain(host)


def _rule(obj: Any, path: str, err: _Errors) -> Rule:
    obj = _dict(obj)
    host = str(obj.get("host") or "")
    if host:
        problem = host_problem(host)
        if problem:
            err.add(problem, f"{path}.host", host)
    http = obj.get("http")
    paths: list[PathRule] = []
    if http is not None:
        items = _list(_dict(http).get("paths"))
        if not items:
            err.add("Required value: at least one path", f"{path}.http.paths")
        for i, p in enumerate(items):
            paths.append(_path(p, f"{path}.http.paths[{i}]", err))
    return Rule(host, tuple(paths))


def _path(obj: Any, path: str, err: _Errors) -> PathRule:
    obj = _dict(obj)
    text = obj.get("path", "")
    text = text if isinstance(text, str) else str(text)
    ptype = obj.get("pathType")
    backend = _backend(obj.get("backend"), f"{path}.backend", err)
    if ptype is None:
        err.add("Required value: pathType must be specified", f"{path}.pathType")
        return PathRule(text or "/", PREFIX, backend)
    if ptype not in PATH_TYPES:
        err.add(
            'Unsupported value: supported values: "Exact", "ImplementationSpecific", "Prefix"',
            f"{path}.pathType",
            ptype,
        )
        return PathRule(text or "/", PREFIX, backend)
    problem = path_problem(text, ptype)
    if problem:
        err.add(problem, f"{path}.path", text)
    return PathRule(text or "/", ptype, backend)


def path_problem(text: str, ptype: str) -> str:
    """The API server's path rules, then the controller's character allowlist."""
    if ptype in (EXACT, PREFIX):
        if not text.startswith("/"):
            return "must be an absolute path"
        for seq in _BAD_SEQUENCES:
            if seq in text:
                return f"must not contain '{seq}'"
        for suffix in _BAD_SUFFIXES:
            if text.endswith(suffix):
                return f"cannot end with '{suffix}'"
        if not _STRICT_PATH.match(text):
            return "may only contain letters, digits, '.', '_', '-' and '/' (strict-validate-path-type)"
        return ""
    if text and not text.startswith("/"):
        return "must be an absolute path"
    if not _REGEX_PATH.match(text):
        return "may only contain letters, digits, '/', '-', '.', '_', '~', ':' and regex characters ^$[](){}*+?|&=\\"
    return ""


def is_regex_like(path: str) -> bool:
    return bool(_REGEX_META.search(path))


def _check_regexes(rules: tuple[Rule, ...], err: _Errors) -> None:
    for i, rule in enumerate(rules):
        for j, p in enumerate(rule.paths):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "possible nested set": fine for PCRE
                    re.compile(p.path)
            except re.error as exc:
                err.add(f"is not a valid regular expression ({exc})", f"spec.rules[{i}].http.paths[{j}].path", p.path)


def _tls(obj: Any, path: str, err: _Errors) -> TLS:
    obj = _dict(obj)
    hosts = tuple(str(h) for h in _list(obj.get("hosts")))
    for i, host in enumerate(hosts):
        problem = host_problem(host)
        if problem:
            err.add(problem, f"{path}.hosts[{i}]", host)
    secret = str(obj.get("secretName") or "")
    if secret and v.dns1123_subdomain(secret):
        err.add(v.dns1123_subdomain(secret), f"{path}.secretName", secret)
    return TLS(hosts, secret)
