"""Round-trip edits of the operator's config file: a change from the API or WebUI is written
into the file's own text, keeping its comments, key order, flow-style lists and the values it
spells its own way (`ports: [4000, 5000]`, explicit defaults such as `scheduler: wlc`).

The change is the difference between two validated Configs, the one the text holds and the new
one, walked over full dumps (every field, defaults included) so that only fields whose value
changed are touched: services and real servers are matched by label (one renamed in place keeps
its position), changed fields are rewritten in place, added entries are appended in the layout
`dump_text` uses, removed ones deleted. ruamel.yaml keeps everything else as it was read.

Pure: text in, text out. The caller validates the result and checks it holds the new Config
(YAML anchors shared by two services, say, could make an edit land in both places).
"""

from __future__ import annotations

import io
import itertools
import re
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import ScalarString, SingleQuotedScalarString

from pacslb import config as c
from pacslb.core.validate import dump_data, flow_style

# Lists whose items are matched by their `label`, not by position.
LABELLED = frozenset({"virtual_services", "real_servers"})
WIDTH = 4096  # never fold a long line the operator wrote on one
_MISSING: Any = object()
# pacslb reads configs with PyYAML (YAML 1.1): its resolver says which plain words it would not
# read back as text (`On`, `yes`, `No` are booleans there; ruamel.yaml writes YAML 1.2).
_YAML_1_1 = pyyaml.resolver.Resolver()
_TEXT = "tag:yaml.org,2002:str"


class EditError(ValueError):
    """The text cannot be edited in place (not YAML, or not laid out as its Config says)."""


def edit_text(text: str, old: c.Config, new: c.Config) -> str:
    """`text`, which holds `old`, changed so that it holds `new`."""
    yaml = _round_trip(text)
    try:
        doc = yaml.load(text)
    except YAMLError as exc:
        raise EditError(f"not YAML: {exc}") from None
    if not isinstance(doc, CommentedMap):
        raise EditError("the text is not a mapping of settings")
    _edit_map(doc, old.model_dump(mode="json"), new.model_dump(mode="json"), dump_data(new))
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _round_trip(text: str) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = WIDTH
    mapping, sequence, offset = guess_indents(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    yaml.explicit_start = text.lstrip().startswith("---")
    return yaml


_KEY_ONLY = re.compile(r"^( *)[^\s#-][^#]*:\s*(#.*)?$")  # `key:` opening a nested block


def guess_indents(text: str) -> tuple[int, int, int]:
    """The file's block indentation as ruamel.yaml counts it: (mapping indent, sequence indent,
    dash offset). `dump_text` writes (2, 4, 2): `virtual_services:` / `  - label: ...`."""
    mapping = sequence = offset = None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for line, following in itertools.pairwise(lines):
        opened = _KEY_ONLY.match(line)
        if opened is None:
            continue
        outer = len(opened.group(1))
        inner = len(following) - len(following.lstrip(" "))
        if inner < outer or (inner == outer and not following.lstrip().startswith("-")):
            continue
        body = following.lstrip(" ")
        if body.startswith("- ") and sequence is None:
            offset = inner - outer
            sequence = offset + len(body) - len(body[1:].lstrip(" "))
        elif not body.startswith("-") and mapping is None and inner > outer:
            mapping = inner - outer
        if mapping is not None and sequence is not None:
            break
    return mapping or 2, sequence or 4, offset if offset is not None else 2


def _edit_map(node: CommentedMap, old: dict[str, Any], new: dict[str, Any], minimal: Any) -> None:
    order = list(new)
    for key in [*old, *(k for k in new if k not in old)]:
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before == after:
            continue
        written = minimal.get(key, _MISSING) if isinstance(minimal, dict) else _MISSING
        if after is _MISSING:  # a setting the new kind of check/persistence does not have
            node.pop(key, None)
        elif key not in node:  # the file left it at its default
            if written is not _MISSING:
                node.insert(_position(node, key, order), key, _new_node(written))
        else:
            current = node[key]
            if isinstance(current, CommentedMap) and isinstance(before, dict):
                _edit_map(current, before, after, written if written is not _MISSING else {})
            elif key in LABELLED and isinstance(current, CommentedSeq):
                _edit_labelled(current, before, after, written if written is not _MISSING else [])
            elif written is _MISSING and after is None:
                del node[key]  # back to "not set"
            else:  # the default written out, as the operator spelled the old value
                node[key] = _like(current, after if written is _MISSING else written)


def _position(node: CommentedMap, key: str, order: list[str]) -> int:
    """Where `key` goes among the file's keys: before the first that the models put after it."""
    later = set(order[order.index(key) + 1 :]) if key in order else set()
    for i, existing in enumerate(node):
        if existing in later:
            return i
    return len(node)


def _label(item: Any) -> Any:
    return item.get("label") if isinstance(item, dict) else None


def _edit_labelled(seq: CommentedSeq, old: list[Any], new: list[Any], minimal: list[Any]) -> None:
    """Items matched by label; one whose label changed at the same place is renamed in place."""
    if len(seq) != len(old):
        raise EditError("the file's list does not hold the running config's entries")
    old_labels = [_label(item) for item in old]
    new_labels = {_label(item) for item in new}
    nodes = list(seq)
    kept: set[int] = set()
    wanted: list[Any] = []
    for j, item in enumerate(new):
        label = _label(item)
        if label in old_labels:
            i = old_labels.index(label)
        elif j < len(old) and old_labels[j] not in new_labels and j not in kept:
            i = j  # renamed
        else:
            written = minimal[j] if j < len(minimal) else item
            wanted.append(_new_node(written, like=nodes[-1] if nodes else None))
            continue
        kept.add(i)
        target = nodes[i]
        if isinstance(target, CommentedMap) and isinstance(item, dict):
            written = minimal[j] if j < len(minimal) else {}
            _edit_map(target, old[i], item, written)
        elif old[i] != item:
            target = _new_node(minimal[j] if j < len(minimal) else item)
        wanted.append(target)
    for i in sorted(set(range(len(old))) - kept, reverse=True):
        _delete(seq, i)
    if [id(n) for n in seq] == [id(n) for n in wanted[: len(seq)]]:
        seq.extend(wanted[len(seq) :])
    else:  # reordered (never by the API or WebUI): comments between items may move
        seq.clear()
        seq.extend(wanted)


def _delete(seq: CommentedSeq, i: int) -> None:
    """Delete item `i`, keeping the comment lines that introduce the item after it: ruamel.yaml
    stores them with the item before (after its end-of-line comment, or at the end of its
    last nested list), so they would go with it."""
    lines = _following_comments(seq, i)
    del seq[i]
    if not lines or i >= len(seq):
        return
    own = (seq.ca.items.get(i) or [None, None])[1] or []  # the next item's own comment lines
    column = min(col for col, _ in lines)
    seq.yaml_set_comment_before_after_key(i, before="\n".join(t for _, t in lines), indent=column)
    seq.ca.items[i][1].extend(own)


def _following_comments(node: Any, key: Any) -> list[tuple[int, str]]:
    """The whole-line comments stored with `node[key]` (column, text without "# ")."""
    found: list[tuple[int, str]] = []
    entry = node.ca.items.get(key) if hasattr(node, "ca") else None
    slot = 0 if isinstance(node, CommentedSeq) else 2  # where the end-of-line comment sits
    if entry and entry[slot] is not None:
        for line in str(entry[slot].value).split("\n")[1:]:  # [0]: the item's own line
            if line.strip().startswith("#"):
                found.append((len(line) - len(line.lstrip()), line.strip()[1:].strip()))
    value = node[key]
    if isinstance(value, CommentedSeq | CommentedMap) and len(value):
        last = len(value) - 1 if isinstance(value, CommentedSeq) else list(value)[-1]
        found += _following_comments(value, last)
        for token in getattr(value.ca, "end", None) or []:
            for line in str(token.value).splitlines():
                if line.strip().startswith("#"):
                    found.append((token.column, line.strip()[1:].strip()))
    return found


def _plain(value: Any) -> Any:
    """Whole-number floats as the operator writes them (`interval: 5`, not `5.0`); text that
    YAML 1.1 would read as something else quoted (`label: 'On'`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if (
        isinstance(value, str)
        and not isinstance(value, ScalarString)
        and _YAML_1_1.resolve(pyyaml.ScalarNode, value, (True, False)) != _TEXT  # type: ignore[no-untyped-call]
    ):
        return SingleQuotedScalarString(value)
    return value


def _new_node(value: Any, like: Any = None) -> Any:
    """Plain data as YAML nodes laid out as `dump_text` does (short lists and mappings of plain
    values on one line), or in the style of `like`, a sibling entry."""
    if isinstance(value, dict):
        node = CommentedMap((k, _new_node(v)) for k, v in value.items())
        flow = flow_style(value)
        if isinstance(like, CommentedMap):
            flow = flow and bool(like.fa.flow_style())
        if flow:
            node.fa.set_flow_style()
        return node
    if isinstance(value, list):
        seq = CommentedSeq(_new_node(v) for v in value)
        if flow_style(value):
            seq.fa.set_flow_style()
        return seq
    return _plain(value)


def _like(current: Any, value: Any) -> Any:
    """`value` written the way the file wrote the value it replaces: the same quotes, the same
    flow or block style, ports as text when they were text (`"8000-8010"`)."""
    if isinstance(value, str) and isinstance(current, ScalarString):
        return type(current)(value)
    if isinstance(current, str) and isinstance(value, list) and all(type(v) is int for v in value):
        text = _runs(value)
        return type(current)(text) if isinstance(current, ScalarString) else text
    node = _new_node(value)
    if isinstance(node, CommentedSeq | CommentedMap) and isinstance(
        current, CommentedSeq | CommentedMap
    ):
        if current.fa.flow_style():
            node.fa.set_flow_style()
        else:
            node.fa.set_block_style()
    return node


def _runs(ports: list[int]) -> str:
    """[4000, 5000, 8000, 8001, 8002] -> "4000,5000,8000-8002" (the text form the file used)."""
    parts: list[str] = []
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == ports[j] + 1:
            j += 1
        parts.append(str(ports[i]) if j - i < 2 else f"{ports[i]}-{ports[j]}")
        if 0 < j - i < 2:
            parts.extend(str(p) for p in ports[i + 1 : j + 1])
        i = j + 1
    return ",".join(parts)
