"""The one YAML reader of every file dnas reads (recipes, ``--set`` values, spaces, arch
files, a run's ``config.yaml``).

It is PyYAML's safe loader with four refusals, each a one-line error naming the file,
the line and the key:

- a key given twice in one mapping (PyYAML would keep the last silently);
- a float that is not finite (``.inf``, ``.nan``, ``1.0e+999``): no recipe, space or
  arch value means infinity;
- aliases that expand to more than :data:`MAX_ALIAS_NODES` nodes in all, or an alias
  inside its own anchor (an "alias bomb": a few lines that expand to billions of
  values when printed or walked);
- nesting deeper than :data:`MAX_DEPTH` (no file dnas reads goes beyond 6 levels).

Every limit is checked while the file is composed, before any Python object is built.
"""
from __future__ import annotations

import math
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent

from dnas.errors import DnasError, brief

MAX_ALIAS_NODES = 5000
MAX_DEPTH = 32
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(DnasError):
    """A YAML document refused by :func:`load_yaml` (the message names file, line and key)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the refusals of the module docstring."""

    def __init__(self, stream, source: str, lines: bool = True) -> None:
        super().__init__(stream)
        self.source, self.lines = source, lines
        self.path: list[str] = []  # the keys / indices leading to the node being composed
        self.open_anchors: set[str] = set()
        self.alias_nodes = 0
        self.sizes: dict[int, int] = {}  # id(node) -> nodes in its expansion

    # -- messages ---------------------------------------------------------------------
    def refuse(self, mark, what: str) -> YamlRefused:
        where = self.source
        if mark is not None and self.lines:
            where += f": line {mark.line + 1}"
        return YamlRefused(f"{where}{self.key_part()}: {what}")

    def key_part(self) -> str:
        """``": key 'stages[0].expansion'"`` for the node being composed (bounded)."""
        if not self.path:
            return ""
        key = "".join(self.path).lstrip(".")
        return f": key {key if len(key) <= 120 else '...' + key[-117:]!r}"

    # -- composition --------------------------------------------------------------------
    def compose_node(self, parent, index):
        label = self._label(index)
        if label is not None:
            self.path.append(label)
        if len(self.path) > MAX_DEPTH:
            raise self.refuse(self.peek_event().start_mark, f"nested deeper than {MAX_DEPTH} levels")
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            if event.anchor in self.open_anchors:
                raise self.refuse(event.start_mark, f"alias *{brief(event.anchor).strip(chr(39))} inside its own "
                                                    "anchor (a recursive value; dnas reads only finite trees)")
            node = super().compose_node(parent, index)
            self.alias_nodes += self._size(node)
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise self.refuse(event.start_mark, f"aliases expand to more than {MAX_ALIAS_NODES} values "
                                                    "(refused: an alias bomb?)")
        else:
            anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
            if anchor is not None:
                self.open_anchors.add(anchor)
            try:
                node = super().compose_node(parent, index)
            finally:
                if anchor is not None:
                    self.open_anchors.discard(anchor)
            if node.tag == _FLOAT_TAG and isinstance(node, yaml.ScalarNode):
                value = self.construct_yaml_float(node)
                if not math.isfinite(value):
                    raise self.refuse(node.start_mark, f"{brief(node.value)} is not a finite number "
                                                       "(expected a finite number)")
        if label is not None:
            self.path.pop()
        return node

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlRefused(f"{self.source}: line {line}{self.key_part()}: duplicate key "
                                  f"{brief(key_node.value)} (first given at line {seen[key]}; give each key once)"
                                  if self.lines else f"{self.source}{self.key_part()}: duplicate key "
                                  f"{brief(key_node.value)} (give each key once)")
            seen[key] = line
        return node

    @staticmethod
    def _label(index) -> str | None:
        if isinstance(index, yaml.ScalarNode):
            return "." + brief(index.value, 40).strip("'\"")
        if isinstance(index, int):
            return f"[{index}]"
        return None

    def _size(self, node) -> int:
        """Nodes in ``node``'s expansion (aliases counted in full), memoised by node."""
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        else:
            size = 1
        self.sizes[id(node)] = size
        return size


def load_yaml(text: str, source: str, lines: bool = True) -> Any:
    """Parse ``text`` with the checks of the module docstring.

    Args:
        text: the YAML document.
        source: the file (or ``--set KEY``) named in messages.
        lines: name the line in messages (not for a one-line ``--set`` value).

    Returns:
        The document as Python objects (``None`` for an empty one).

    Raises:
        YamlRefused: a refusal of the module docstring, or a value Python cannot hold
            (an integer of more than 4300 digits).
        yaml.YAMLError: the text is not YAML (the caller words that message).
    """
    loader = _StrictLoader(text, source, lines)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YamlRefused(f"{source}: nested too deeply to read") from None
    except ValueError as exc:  # e.g. int('9' * 5000): over Python's digit limit
        raise YamlRefused(f"{source}: a value dnas cannot read ({brief(str(exc), 120)})") from None
    finally:
        loader.dispose()


def read_yaml(path, error: type[DnasError] = DnasError, kind: str = "a YAML file") -> Any:
    """:func:`load_yaml` of a file, every failure an ``error`` naming the file.

    Args:
        path: the file.
        error: the :class:`DnasError` subclass to raise (``ConfigError``, ``SpaceError``, ...).
        kind: what the file is, for the not-UTF-8 message (``"a recipe"``).
    """
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file ({kind} is UTF-8 YAML)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return load_yaml(text, str(path))
    except YamlRefused as exc:
        raise error(str(exc)) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{path}: not valid YAML ({brief(first, 160).strip(chr(39))})") from None
