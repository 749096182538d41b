"""One registry of ops with one constructor signature (docs/architecture.md principle 3).

Every op is built as ``cls(in_chs, out_chs, stride, **kw)``; variants are keyword
arguments, not new names. Plain ops (for derived networks) and their super-op twins
(for the supernet) live in two registries under the same name (:data:`SEARCHABLE_OPS`:
the names in both). Spaces are validated without torch against the declared op specs
(:mod:`dnas.space.op_specs`: names and searchable keyword arguments); a searchable op is
declared there and registered here in both registries (tests/test_ops.py checks that
the two sides agree). Registering a name twice raises.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator


class OpRegistry:
    """A name -> class mapping that refuses duplicates."""

    def __init__(self, kind: str):
        self.kind = kind
        self._ops: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self._ops:
                raise ValueError(f"{self.kind} op {name!r} is already registered ({self._ops[name].__name__})")
            self._ops[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type:
        try:
            return self._ops[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} op {name!r} (known: {', '.join(sorted(self._ops))})") from None

    def build(self, name: str, in_chs: int, out_chs: int, stride: int, **kw: Any) -> Any:
        return self.get(name)(in_chs, out_chs, stride, **kw)

    def __contains__(self, name: str) -> bool:
        return name in self._ops

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._ops))


PLAIN_OPS = OpRegistry("plain")
SUPER_OPS = OpRegistry("super")


class _Searchable:
    """Names registered as both a plain op and a super op (usable in a stage)."""

    def __iter__(self) -> Iterator[str]:
        # The built-in ops are registered by now: importing this module runs
        # dnas/ops/__init__.py first, which imports them.
        return iter(sorted(set(PLAIN_OPS) & set(SUPER_OPS)))

    def __contains__(self, name: str) -> bool:
        return name in set(self)


SEARCHABLE_OPS = _Searchable()
