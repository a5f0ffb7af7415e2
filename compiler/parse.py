"""Stage 1: YAML text -> a tree of located nodes (value, line, column, YAML path).

PyYAML's composer keeps marks on every node; we turn its graph into frozen `Node`s so later stages
can report `FILE:LINE:COL` for any value. Three YAML habits could turn a guardrail file into a
weaker policy, so they are handled here:

- duplicate mapping keys (PyYAML silently keeps the last one) are errors;
- YAML 1.1 integers that are not plain decimals (`1:30` is 90 in base 60, `010` is octal 8,
  `0x1F` is 31) stay the text that was written, so a number field rejects them with a hint;
- tags other than YAML's own (`!custom 1`) are errors.

Anchors, aliases and merge keys (`<<: *defaults`) work as in YAML; keys written in the mapping
itself win over merged ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import yaml

from compiler.diagnostics import Diagnostic
from compiler.errors import PolicyError

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Node:
    """One YAML value with where it was written. Mappings keep key order."""

    value: Scalar | tuple[Node, ...] | tuple[tuple[Node, Node], ...]
    kind: str  # "scalar" | "sequence" | "mapping"
    line: int  # 1-based
    col: int  # 1-based
    path: str
    file: str = field(compare=False)

    # --- mapping helpers -------------------------------------------------------------------
    def items(self) -> Iterator[tuple[Node, Node]]:
        """(key node, value node) pairs of a mapping."""
        assert self.kind == "mapping"
        yield from self.value  # type: ignore[misc]

    def get(self, key: str) -> Node | None:
        if self.kind != "mapping":
            return None
        for k, v in self.items():
            if k.value == key:
                return v
        return None

    def keys(self) -> list[str]:
        return [str(k.value) for k, _ in self.items()] if self.kind == "mapping" else []

    def elements(self) -> tuple[Node, ...]:
        assert self.kind == "sequence"
        return self.value  # type: ignore[return-value]

    def to_python(self) -> object:
        """Plain Python value (dicts, lists, scalars) without locations."""
        if self.kind == "mapping":
            return {str(k.value): v.to_python() for k, v in self.items()}
        if self.kind == "sequence":
            return [n.to_python() for n in self.elements()]
        return self.value

    def diag(self, message: str, hint: str | None = None) -> Diagnostic:
        return Diagnostic(self.file, self.line, self.col, self.path, message, hint)


def describe(node: Node) -> str:
    """What a value is, for "must be X, got Y" messages: `the string 'two'`, `a list`..."""
    if node.kind == "mapping":
        return "a mapping"
    if node.kind == "sequence":
        return "a list"
    value = node.value
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return f"the string '{value}'"


def _child_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


class _ScalarResolver(yaml.SafeLoader):
    """SafeLoader whose only job here is turning a ScalarNode into int/float/bool/None/str."""


_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_DECIMAL_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")


class _TagError(Exception):
    """A node carries a tag hexarch.yaml does not take."""


def _scalar(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Scalar:
    if (node.tag == _INT_TAG and not _DECIMAL_INT.match(node.value)) or (
        node.tag == _FLOAT_TAG and ":" in node.value
    ):
        return str(node.value)
    try:
        value = loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise _TagError(node.tag) from exc
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # Timestamps, binary...: keep the text the user wrote; validation decides what it may be.
    return str(node.value)


def _merged_mappings(node: yaml.Node) -> list[yaml.MappingNode] | None:
    """The mappings a `<<` key merges: one mapping, or a list of them (earlier ones win)."""
    if isinstance(node, yaml.MappingNode):
        return [node]
    if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in node.value):
        return list(node.value)
    return None


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, path: str, file: str, errors: list[Diagnostic]
) -> Node:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.ScalarNode):
        try:
            return Node(_scalar(loader, node), "scalar", line, col, path, file)
        except _TagError:
            errors.append(Diagnostic(file, line, col, path, *_tag_problem(node.tag)))
            return Node(str(node.value), "scalar", line, col, path, file)
    if node.tag not in (_MAP_TAG, _SEQ_TAG):
        errors.append(Diagnostic(file, line, col, path, *_tag_problem(node.tag)))
    if isinstance(node, yaml.SequenceNode):
        items = tuple(
            _convert(loader, child, _child_path(path, i), file, errors) for i, child in enumerate(node.value)
        )
        return Node(items, "sequence", line, col, path, file)
    if isinstance(node, yaml.MappingNode):
        pairs: list[tuple[Node, Node]] = []
        seen: dict[str, Node] = {}
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = _merged_mappings(value_node)
                if sources is None:
                    mark = key_node.start_mark
                    errors.append(
                        Diagnostic(
                            file,
                            mark.line + 1,
                            mark.column + 1,
                            path,
                            "'<<' must merge a mapping or a list of mappings",
                            "write '<<: *name' where '&name' marks a mapping",
                        )
                    )
                for source in sources or ():
                    merged.extend(_convert(loader, source, path, file, errors).items())
                continue
            key = _convert(loader, key_node, path, file, errors)
            if key.kind != "scalar":
                errors.append(key.diag("mapping keys must be plain strings"))
                continue
            name = str(key.value)
            if name in seen:
                first = seen[name]
                errors.append(key.diag(f"duplicate key '{name}'", f"first given at line {first.line}"))
                continue
            seen[name] = key
            pairs.append((key, _convert(loader, value_node, _child_path(path, name), file, errors)))
        for key, value in merged:
            if str(key.value) not in seen:
                seen[str(key.value)] = key
                pairs.append((key, value))
        return Node(tuple(pairs), "mapping", line, col, path, file)
    raise PolicyError([Diagnostic(file, line, col, path, f"unsupported YAML node {type(node).__name__}")])


def _tag_problem(tag: str) -> tuple[str, str]:
    """(message, hint) for a tag hexarch.yaml does not take."""
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    hint = "hexarch.yaml takes plain strings, numbers, booleans, lists and mappings: remove the tag"
    return f"unsupported YAML tag '{shown}'", hint


def parse_text(text: str, file: str) -> Node:
    """Parse YAML text into located nodes. Raises PolicyError with every syntax/duplicate problem."""
    loader = _ScalarResolver(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError(
            [Diagnostic(file, line, col, "", f"malformed YAML: {problem}", "check indentation and quoting")]
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([Diagnostic(file, 1, 1, "", f"malformed YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    if root is None:
        raise PolicyError([Diagnostic(file, 1, 1, "", "the policy file is empty", "start with 'policies:'")])
    errors: list[Diagnostic] = []
    tree = _convert(_ScalarResolver(""), root, "", file, errors)
    if errors:
        raise PolicyError(errors)
    return tree


def parse_file(path: str) -> Node:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise PolicyError([Diagnostic(path, 1, 1, "", f"cannot read policy file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError([Diagnostic(path, 1, 1, "", "policy file is not UTF-8 text")]) from exc
    return parse_text(text, path)
