"""The API server's name, label and port rules, as small predicates.

Restated from k8s.io/apimachinery/pkg/util/validation (IsDNS1123Label,
IsDNS1123Subdomain, IsDNS1035Label, IsQualifiedName, IsValidLabelValue,
IsValidPortName) so that we reject what a real cluster rejects. Each
function returns an error message or "" when the value is valid.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_PORT_NAME = re.compile(r"[-a-z0-9]+\Z")
_HAS_LETTER = re.compile(r"[a-z]")

PROTOCOLS = ("TCP", "UDP", "SCTP")


def dns1123_label(value: str) -> str:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return (
            "must be a lowercase RFC 1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return ""


def dns1035_label(value: str) -> str:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1035_LABEL.match(value):
        return (
            "must be a DNS-1035 label (lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit)"
        )
    return ""


def dns1123_subdomain(value: str) -> str:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return (
            "must be a lowercase RFC 1123 subdomain (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return ""


def label_key(value: str) -> str:
    """IsQualifiedName: an optional DNS subdomain prefix and '/', then a name."""
    prefix, sep, name = value.rpartition("/")
    if sep:
        if not prefix:
            return "prefix part must be non-empty"
        problem = dns1123_subdomain(prefix)
        if problem:
            return f"prefix part {problem}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return ""


def label_value(value: str) -> str:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if value and not _QUALIFIED_NAME.match(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return ""


def port_name(value: str) -> str:
    """IsValidPortName: an IANA_SVC_NAME (RFC 6335 section 5.1)."""
    if len(value) > 15:
        return "must be no more than 15 characters"
    if not _PORT_NAME.match(value):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if value.startswith("-") or value.endswith("-"):
        return "must not begin or end with a hyphen"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if not _HAS_LETTER.search(value):
        return "must contain at least one letter (a-z)"
    return ""


def port_number(value: int) -> str:
    return "" if 1 <= value <= 65535 else "must be between 1 and 65535, inclusive"


def protocol(value: str) -> str:
    return "" if value in PROTOCOLS else 'supported values: "SCTP", "TCP", "UDP"'
