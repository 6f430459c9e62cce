"""The ingress-nginx annotations we honour, parsed into typed `Settings`.

Each annotation has a validator restated from ingress-nginx
(internal/ingress/annotations/parser/validators.go and the per-annotation
parsers under internal/ingress/annotations/): a value that fails is an error
naming the annotation, and the Ingress is left out, as the admission webhook
would refuse it. The validators are deliberately allowlists: nothing that
could close a string, a directive or a block (quotes, `;`, braces, newlines,
`#`) can pass, which is what the configuration-injection CVEs exploited
(CVE-2021-25742 snippets, CVE-2023-5043/5044 annotation and
permanent-redirect injection, CVE-2025-1974 directives reaching `nginx -t`
through the admission webhook). Snippet annotations are refused outright:
this controller has no raw-nginx escape hatch at all (ingress-nginx's
`allow-snippet-annotations: false`, its default since v1.9).

Where open-source nginx cannot do what ingress-nginx's Lua does, the mapping
is documented on the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from netem.addr import Cidr, parse_cidr

PREFIX = "nginx.ingress.kubernetes.io/"

# validators.go: alphaNumericChars and the regexes built from it. Go's `$`
# ends the text; Python's `$` also matches before a final newline, so `\Z`.
_ALNUM = r"\-\.\_\~a-zA-Z0-9\/:"
REGEX_PATH_WITH_CAPTURE = re.compile(r"^/?[" + _ALNUM + r"\/\$]*\Z")
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)\Z")  # SizeRegex minus `b`: ngx_parse_offset knows only k, m, g
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+\Z")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_]+\Z")  # must also be an nginx variable suffix ($cookie_NAME)
_EXTENDED_CHARS = re.compile(r"^[/" + _ALNUM + r", ]*\Z")
_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # strconv.ParseBool
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

# Variables the router can evaluate; upstream-hash-by and rewrite-target may use them.
VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z_][A-Za-z0-9_]*)|([1-9]))")
SIMPLE_VARIABLES = frozenset({"remote_addr", "request_uri", "uri", "host", "scheme", "args", "request_method"})
VARIABLE_PREFIXES = ("http_", "cookie_", "arg_")

LOAD_BALANCE = ("round_robin", "ewma")
KNOWN = frozenset(
    {
        "rewrite-target",
        "use-regex",
        "ssl-redirect",
        "force-ssl-redirect",
        "app-root",
        "affinity",
        "session-cookie-name",
        "session-cookie-path",
        "upstream-hash-by",
        "load-balance",
        "canary",
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-cookie",
        "canary-weight",
        "canary-weight-total",
        "proxy-body-size",
        "allowlist-source-range",
        "whitelist-source-range",
        "denylist-source-range",
    }
)


@dataclass(frozen=True, slots=True)
class Canary:
    """annotations/canary: how traffic is shifted to this (alternative) backend."""

    header: str = ""
    header_value: str = ""
    cookie: str = ""
    weight: int = 0
    weight_total: int = 100


@dataclass(frozen=True, slots=True)
class Settings:
    """The parsed annotations of one Ingress (defaults as ingress-nginx's)."""

    rewrite_target: str = ""
    use_regex: bool = False
    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    app_root: str = ""
    affinity_cookie: str = ""  # the cookie name when affinity=cookie, else ""
    cookie_path: str = ""
    hash_by: str = ""
    # ewma (latency-weighted, Lua) is rendered as nginx's least_conn: the
    # closest open-source method; with no request in flight it picks exactly
    # as round robin does (ngx_http_upstream_least_conn_module.c).
    load_balance: str = "round_robin"
    canary: Canary | None = None
    body_size: str = ""  # "" = the controller default (proxy-body-size 1m)
    allow: tuple[Cidr, ...] = ()
    deny: tuple[Cidr, ...] = ()


_DEFAULT = Settings()


class AnnotationError(ValueError):
    """One annotation with a value we refuse; `path` names it."""

    def __init__(self, name: str, message: str, value: Any) -> None:
        super().__init__(message)
        self.path = f"metadata.annotations[{PREFIX}{name}]"
        self.value = value


def parse_settings(annotations: dict[str, str]) -> tuple[Settings, list[AnnotationError]]:
    """Settings from an Ingress's annotations; every bad value is reported."""
    ours = {k[len(PREFIX) :]: v for k, v in annotations.items() if k.startswith(PREFIX)}
    if not ours:
        return _DEFAULT, []
    errors: list[AnnotationError] = []
    values: dict[str, Any] = {}
    for name in sorted(ours):
        value = ours[name]
        try:
            _parse_one(name, value, values)
        except AnnotationError as exc:
            errors.append(exc)
    try:
        canary = _canary(ours, values)
    except AnnotationError as exc:
        errors.append(exc)
        canary = None
    if values.pop("affinity", "") != "cookie":
        values.pop("affinity_cookie", None)
    elif "affinity_cookie" not in values:
        values["affinity_cookie"] = "INGRESSCOOKIE"  # sessionaffinity.go defaultAffinityCookieName
    for key in ("canary", "canary_header", "canary_header_value", "canary_cookie", "canary_weight", "weight_total"):
        values.pop(key, None)
    if "allow_alias" in values:
        values.setdefault("allow", values["allow_alias"])
        del values["allow_alias"]
    return Settings(canary=canary, **values), errors


def _parse_one(name: str, value: str, out: dict[str, Any]) -> None:
    if name.endswith("-snippet"):
        raise AnnotationError(name, "snippet annotations are not supported: they inject raw nginx configuration", value)
    if name not in KNOWN:
        return  # ingress-nginx has many more; unknown ones have no effect here
    if value == "":
        return  # parser.checkAnnotation: empty values are not validated and keep the default
    key = name.replace("-", "_")
    if name in ("use-regex", "ssl-redirect", "force-ssl-redirect", "canary"):
        out[key] = _bool(name, value)
    elif name == "rewrite-target":
        out[key] = _rewrite_target(name, value)
    elif name == "app-root":
        out[key] = _app_root(name, value)
    elif name == "affinity":
        if value != "cookie":
            raise AnnotationError(name, 'the only affinity type is "cookie"', value)
        out["affinity"] = value
    elif name == "session-cookie-name":
        out["affinity_cookie"] = _match(name, value, _COOKIE_NAME, "must be letters, digits and '_'")
    elif name == "session-cookie-path":
        out["cookie_path"] = _match(name, value, REGEX_PATH_WITH_CAPTURE, "must be a path", no_dollar=True)
    elif name == "upstream-hash-by":
        out["hash_by"] = _hash_by(name, value)
    elif name == "load-balance":
        if value.strip().lower() not in LOAD_BALANCE:
            raise AnnotationError(name, f"must be one of {', '.join(LOAD_BALANCE)}", value)
        out[key] = value.strip().lower()
    elif name == "canary-by-header":
        out["canary_header"] = _match(name, value, _HEADER_NAME, "must be a header name")
    elif name == "canary-by-header-value":
        out["canary_header_value"] = _match(name, value, _EXTENDED_CHARS, "has characters outside [A-Za-z0-9-._~/:, ]")
    elif name == "canary-by-cookie":
        out["canary_cookie"] = _match(name, value, _COOKIE_NAME, "must be letters, digits and '_'")
    elif name in ("canary-weight", "canary-weight-total"):
        out["canary_weight" if name == "canary-weight" else "weight_total"] = _int(name, value)
    elif name == "proxy-body-size":
        out["body_size"] = _size(name, value)
    elif name in ("allowlist-source-range", "whitelist-source-range", "denylist-source-range"):
        cidrs = _cidrs(name, value)
        # ipallowlist.go: whitelist-source-range is the deprecated alias, read only when allowlist is unset
        out["deny" if name.startswith("deny") else ("allow" if name.startswith("allow") else "allow_alias")] = cidrs


def _canary(ours: dict[str, str], values: dict[str, Any]) -> Canary | None:
    if not values.get("canary"):
        return None
    total = values.get("weight_total", 100)
    weight = values.get("canary_weight", 0)
    if total <= 0:
        raise AnnotationError("canary-weight-total", "must be a positive integer", ours.get("canary-weight-total"))
    if not 0 <= weight <= total:
        raise AnnotationError("canary-weight", f"must be between 0 and canary-weight-total ({total})", weight)
    return Canary(
        header=values.get("canary_header", ""),
        header_value=values.get("canary_header_value", ""),
        cookie=values.get("canary_cookie", ""),
        weight=weight,
        weight_total=total,
    )


def _bool(name: str, value: str) -> bool:
    if value in _BOOL_TRUE:
        return True
    if value in _BOOL_FALSE:
        return False
    raise AnnotationError(name, "must be a boolean", value)


def _int(name: str, value: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,9}", value):
        raise AnnotationError(name, "must be an integer", value)
    return int(value)


def _match(name: str, value: str, pattern: re.Pattern[str], message: str, no_dollar: bool = False) -> str:
    if not pattern.match(value) or (no_dollar and "$" in value):
        raise AnnotationError(name, message, value)
    return value


def _size(name: str, value: str) -> str:
    if not _SIZE.match(value):
        raise AnnotationError(name, "must be a size nginx understands (digits and an optional k, m or g)", value)
    return value


def size_bytes(text: str) -> int:
    """ngx_parse_offset: k = 1024, m = 1024^2, g = 1024^3."""
    m = _SIZE.match(text)
    assert m is not None
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(m.group(1)) * scale


def _cidrs(name: str, value: str) -> tuple[Cidr, ...]:
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(parse_cidr(part if "/" in part else part + "/32"))
        except ValueError:
            raise AnnotationError(name, "must be comma-separated IPv4 addresses or CIDRs", value) from None
    if not out:
        raise AnnotationError(name, "must list at least one address or CIDR", value)
    return tuple(out)


def _variables_ok(text: str, captures: bool) -> str:
    """ "" if every `$` in text starts a variable the router can evaluate."""
    pos = 0
    while True:
        i = text.find("$", pos)
        if i < 0:
            return ""
        m = VARIABLE.match(text, i)
        if m is None:
            return "a '$' must start an nginx variable"
        name = m.group(1) or m.group(2)
        if m.group(3) and not captures:
            return "regex captures ($1..$9) are only meaningful in rewrite-target"
        if name and name not in SIMPLE_VARIABLES and not name.startswith(VARIABLE_PREFIXES):
            return f"unsupported variable ${name}"
        pos = m.end()


def _rewrite_target(name: str, value: str) -> str:
    if not REGEX_PATH_WITH_CAPTURE.match(value):
        raise AnnotationError(name, "must be a path with optional $1..$9 captures", value)
    problem = _variables_ok(value, captures=True)
    if problem:
        raise AnnotationError(name, problem, value)
    return value


def _app_root(name: str, value: str) -> str:
    # rewrite.go: app-root must be a path starting with "/" (no scheme, no variables).
    if not value.startswith("/") or "$" in value or not REGEX_PATH_WITH_CAPTURE.match(value):
        raise AnnotationError(name, 'must be a path starting with "/"', value)
    return value


def _hash_by(name: str, value: str) -> str:
    # validators.go NGINXVariable: ^[A-Za-z0-9\-\_\$\{\}]*$
    if not re.fullmatch(r"[A-Za-z0-9\-\_\$\{\}]+", value):
        raise AnnotationError(name, "must be nginx variables and letters, digits, '-', '_'", value)
    problem = _variables_ok(value, captures=False)
    if problem:
        raise AnnotationError(name, problem, value)
    return value
