"""YAML with line numbers: the loaded data plus the 1-based line of every key and item.

``load_marked(path)`` composes the document (``yaml.SafeLoader``'s node graph keeps each node's
start mark), constructs it with the safe constructor, and records ``path tuple -> line`` for every
mapping key and sequence item, so validation errors can name ``spec.yaml:17``.

    doc = load_marked("configs/envs/banking.yaml")
    doc.data["operations"]["get_account"]          # plain dicts / lists / scalars
    doc.line(("operations", "get_account", "params"))   # 23 (the deepest known prefix)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

from toolrl_jax.errors import DataError

__all__ = ["MarkedYaml", "load_marked", "loads_marked"]

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class MarkedYaml:
    """A loaded YAML document and the line of each of its paths.

    Attributes:
      data: the document (dicts, lists, scalars; dates as ``datetime.date``).
      lines: path (tuple of keys / list indices) -> 1-based line of that key or item.
      source: the file name, for messages.
    """

    data: Any
    lines: dict[Path, int]
    source: str

    def line(self, path: Path) -> int:
        """Line of ``path``, else of its deepest recorded prefix (1 if nothing matches)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def where(self, path: Path) -> str:
        """``file:line`` of ``path``."""
        return f"{self.source}:{self.line(path)}"


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines.setdefault(path + (key,), key_node.start_mark.line + 1)
            _walk(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(path + (i,), item.start_mark.line + 1)
            _walk(item, path + (i,), lines)


def loads_marked(text: str, source: str = "<string>") -> MarkedYaml:
    """Parses YAML ``text``; a syntax error is a DataError naming ``source:line``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise DataError(f"{source}:{line}: invalid YAML ({e.problem or e.context}); "
                        "fix the indentation / quoting at that line") from None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {(): 1}
    if node is not None:
        _walk(node, (), lines)
    return MarkedYaml(data=data, lines=lines, source=source)


def load_marked(path: str | os.PathLike) -> MarkedYaml:
    """Reads and parses a YAML file (see :func:`loads_marked`)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"cannot read spec {os.fspath(path)!r}: {e.strerror}; check the path") from None
    return loads_marked(text, os.fspath(path))
