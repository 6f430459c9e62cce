"""A small reading of nginx.conf syntax (ngx_conf_file.c ngx_conf_read_token):
words, "quoted" and 'quoted' strings with backslash escapes, `#` comments,
`;` ending a directive, `{` `}` around blocks. Tests use it to see the
structure nginx would see, e.g. that no Ingress value opened a directive."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None
    children: list[Directive] = field(default_factory=list)


def tokens(text: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            out.append(c)
            i += 1
        else:
            word = []
            while i < n and not text[i].isspace() and text[i] not in ";{}":
                if text[i] in "\"'":
                    quote, i = text[i], i + 1
                    while text[i] != quote:
                        if text[i] == "\\" and text[i + 1] in "\"'\\":
                            i += 1
                        word.append(text[i])
                        i += 1
                    i += 1
                else:
                    word.append(text[i])
                    i += 1
            out.append("".join(word))
    return out


def parse(text: str) -> list[Directive]:
    toks = tokens(text)
    pos = 0

    def block() -> list[Directive]:
        nonlocal pos
        items: list[Directive] = []
        words: list[str] = []
        while pos < len(toks):
            t = toks[pos]
            pos += 1
            if t == ";":
                items.append(Directive(words[0], words[1:]))
                words = []
            elif t == "{":
                items.append(Directive(words[0], words[1:], block()))
                words = []
            elif t == "}":
                assert not words, f"unterminated directive {words}"
                return items
            else:
                words.append(t)
        assert not words, f"unterminated directive {words}"
        return items

    return block()


TABLES = ("map", "split_clients")  # blocks of `key value;` entries, not directives


def walk(items: list[Directive]) -> list[Directive]:
    """Every directive, not descending into map/split_clients tables (whose
    entries must each be exactly `key value;`)."""
    out = []
    for d in items:
        out.append(d)
        if d.block and d.name in TABLES:
            assert all(len(e.args) == 1 and e.block is None for e in d.block), d
        elif d.block:
            out += walk(d.block)
    return out
