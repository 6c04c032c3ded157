"""Config problems in an operator's words.

Three jobs, all pure: pydantic's error types turned into sentences that say what is wanted
("must start with / and contain no spaces", "must be 0 or more"), a problem's machine path
turned into the labels an operator wrote (`McK-Radiology_Web › McK-Radiology_Srv1 › port`),
and the line of the YAML file the problem came from (PyYAML's node marks).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from pacslb import config as c
from pacslb.errors import Problem

ARROW = " › "


def _pattern(model: type[BaseModel], field: str) -> str:
    """The regular expression a model's field is declared with (kept in step with config.py)."""
    for meta in model.model_fields[field].metadata:
        if getattr(meta, "pattern", None):
            return str(meta.pattern)
    raise LookupError(f"{model.__name__}.{field} has no pattern")


# A field's pattern -> what it asks for, in words. A pattern missing here is worded from the
# field's description, so a new field is never shown as a bare regular expression.
_PATTERN_WORDS = {
    c.LABEL_PATTERN: (
        "must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (no spaces)"
    ),
    _pattern(c.HttpCheck, "path"): (
        "must start with / and contain no spaces (visible ASCII only; write a space as %20)"
    ),
    _pattern(c.HttpCheck, "host"): (
        "must be a host name or address: letters, digits, '.', '-', ':' and brackets only"
    ),
    _pattern(c.WebUI, "listen"): "must be address:port, such as 0.0.0.0:9443 or [::]:9443",
}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choices(expected: str) -> list[str]:
    """pydantic's "'wlc', 'wrr' or 'sh'" -> ['wlc', 'wrr', 'sh']."""
    return re.findall(r"'([^']*)'", expected)


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice, or ""."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _got(error: dict[str, Any]) -> str:
    value = error.get("input")
    if isinstance(value, dict | list) or error["type"] == "missing":
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def plain(error: dict[str, Any], description: str | None = None) -> str:
    """One pydantic error -> a sentence saying what is wanted (and what was written)."""
    kind = str(error["type"])
    ctx = error.get("ctx") or {}
    got = _got(error)
    if kind == "missing":
        return "required setting is missing"
    if kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(str(ctx.get("pattern")))
        if words is None:
            words = f"must be {description}" if description else "is not written as expected"
        return words + got
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()))
        sentence = {
            "greater_than_equal": f"must be {_number(bound)} or more",
            "greater_than": f"must be more than {_number(bound)}",
            "less_than_equal": f"must be {_number(bound)} or less",
            "less_than": f"must be less than {_number(bound)}",
        }[kind]
        return sentence + got
    if kind in ("literal_error", "enum"):
        options = _choices(str(ctx.get("expected", "")))
        hint = did_you_mean(error.get("input"), options)
        return f"must be one of {', '.join(options)}{got}{hint}"
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return _length(kind, ctx) + got
    simple = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be text",
        "list_type": "must be a list, such as [4000, 5000]",
        "dict_type": "must be a group of settings (name: value), not a single value",
        "model_type": "must be a group of settings (name: value), not a single value",
        "model_attributes_type": "must be a group of settings (name: value), not a single value",
        "ip_v4_address": "must be an IPv4 or IPv6 address",
        "ip_v6_address": "must be an IPv4 or IPv6 address",
        "path_type": "must be a file path",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind] + got
    message = str(error.get("msg", kind)).removeprefix("Value error, ")
    if kind == "value_error":
        return message  # our own validators already speak plainly
    for theirs, ours in (("Input should be", "must be"), ("String should", "must")):
        message = message.replace(theirs, ours)
    return message + got


def _length(kind: str, ctx: dict[str, Any]) -> str:
    if kind.startswith("string"):
        least, most = ctx.get("min_length"), ctx.get("max_length")
        if kind == "string_too_short":
            return "must not be empty" if least == 1 else f"must be at least {least} characters"
        return f"must be at most {most} characters"
    if kind == "too_short":
        least = ctx.get("min_length")
        return f"needs at least {least} entr{'y' if least == 1 else 'ies'}"
    most = ctx.get("max_length")
    return f"takes at most {most} entr{'y' if most == 1 else 'ies'}"


# --- where: labels and lines ---------------------------------------------------------------


def format_path(loc: Sequence[int | str]) -> str:
    """('virtual_services', 2, 'real_servers', 0) -> virtual_services[2].real_servers[0]"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def split_path(path: str) -> list[str | int]:
    """'virtual_services[2].real_servers[0].port' -> ['virtual_services', 2, 'real_servers', 0,
    'port'] (format_path's inverse)."""
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    return parts


_Counts = dict[int, Counter[Any]]  # id(list) -> how often each label occurs in it


def _label(items: Any, noun: str, index: int, counts: _Counts) -> tuple[Any, str]:
    """The entry at `index` of a list and its name: its label, its position when it has no
    usable label (counted from 1, as a person counts), both when the label is used twice.
    `counts` keeps each list's label counts across calls: a huge config with many problems
    must not cost a pass over the list per problem."""
    if not isinstance(items, list) or not 0 <= index < len(items):
        return {}, f"{noun} {index + 1}"
    item = items[index]
    label = item.get("label") if isinstance(item, dict) else None
    if not (isinstance(label, str) and label.strip() and len(label) <= 64):
        return item, f"{noun} {index + 1}"
    if id(items) not in counts:
        counts[id(items)] = Counter(i.get("label") for i in items if isinstance(i, dict))
    same = counts[id(items)][label]
    return item, label if same == 1 else f"{label} ({noun} {index + 1})"


def labelled(parts: Sequence[str | int], data: Any, counts: _Counts | None = None) -> str:
    """A path named by the labels in `data`: the service, then the real server, then the rest
    (`McK-Radiology_Web › McK-Radiology_Srv1 › port`); node settings keep their dotted path."""
    if len(parts) < 2 or parts[0] != "virtual_services" or not isinstance(parts[1], int):
        return format_path(parts)
    services = data.get("virtual_services") if isinstance(data, dict) else None
    counts = {} if counts is None else counts
    service, name = _label(services, "virtual service", parts[1], counts)
    names = [name]
    rest = list(parts[2:])
    if len(rest) >= 2 and rest[0] == "real_servers" and isinstance(rest[1], int):
        servers = service.get("real_servers") if isinstance(service, dict) else None
        names.append(_label(servers, "real server", rest[1], counts)[1])
        rest = rest[2:]
    tail = format_path(rest)
    return ARROW.join([*names, tail] if tail else names)


def line_of(parts: Sequence[str | int], node: yaml.Node | None) -> int | None:
    """The 1-based line of the deepest part of `parts` found in the YAML node tree: the key's
    line for a setting, the item's for a list entry, the enclosing block's for a missing one."""
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            match = next(
                (
                    (key, value)
                    for key, value in node.value
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part)
                ),
                None,
            )
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def located(problems: Iterable[Problem], data: Any, node: yaml.Node | None) -> list[Problem]:
    """Problems with `where` (labels) and, when the config came from YAML text, `line`."""
    out = []
    counts: _Counts = {}
    for p in problems:
        if not p.path or p.where:
            out.append(p)
            continue
        parts = split_path(p.path)
        line = line_of(parts, node) if node is not None else p.line
        out.append(Problem(p.path, p.message, labelled(parts, data, counts), line))
    return out
