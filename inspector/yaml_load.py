"""YAML reading for every file a user writes: PyYAML's safe loader, refusing repeated keys and absurd nesting."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.error import MarkedYAMLError
from yaml.nodes import MappingNode, Node

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    """A mapping names one key twice; PyYAML alone would keep the last value without a word."""

    def __str__(self) -> str:
        # One line, for loaders that print `f"{path}: {exc}"`: PyYAML's own form quotes the document over several.
        return f"line {self.problem_mark.line + 1}: {self.problem}" if self.problem_mark else str(self.problem)


class TooDeepError(MarkedYAMLError):
    """The document nests deeper than the parser's recursion can follow."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, Node] = {}
        for key_node, _ in node.value:
            # `<<: *defaults` merges are overrides by design: several of them, or a key beside them, are not repeats.
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable: PyYAML's own construct_mapping says so, with its mark
            if earlier is not key_node:
                line, again = earlier.start_mark.line + 1, key_node.start_mark.line + 1
                where = f"lines {line} and {again}" if line != again else f"both on line {line}"
                raise DuplicateKeyError(None, None, f"{key!r} appears twice ({where}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, but a repeated mapping key or nesting too deep to read raises a `yaml.YAMLError` naming it."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        # PyYAML composes and constructs recursively: thousands of levels exhaust Python's stack.
        raise TooDeepError(problem="nested too deeply to read (no configuration needs more than a few levels)") from None
    finally:
        loader.dispose()


def problem_line(exc: yaml.YAMLError, path: object) -> str:
    """`path:line:column: problem` for a YAML error (`path:line: problem` for a repeated key, `path: problem` without a mark)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"{path}: {problem}"
    if isinstance(exc, DuplicateKeyError):
        return f"{path}:{mark.line + 1}: {problem}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}"
