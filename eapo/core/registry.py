"""Named families of implementations: one ``Registry`` per family (advantages, aggregations, policy losses,
weightings, CMI estimators, synthetic families, data importers, sampler backends).

A registry is the only owner of its names: code that picks an implementation looks it up here, and
``eapo.config``'s ``Registered(...)`` field type checks params.yaml's names against the same object, so a new
implementation is one decorated definition::

    WEIGHTINGS = Registry("weighting", name_attr="name")

    @WEIGHTINGS.register("my_weighting")
    class MyWeighting(Weighting): ...

    WEIGHTINGS["my_weighting"]        # the class; an unknown name raises UnknownName listing the registered ones

A registry reads like a read-only mapping (``in``, iteration in registration order, ``len``, ``sorted(...)``), so
callers that only list or test names need nothing else. Pure: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownName"]

T = TypeVar("T")
_MISSING = object()


class UnknownName(KeyError, ValueError):
    """A name no implementation was registered under. Both a ``KeyError`` (mapping lookups) and a ``ValueError``
    (bad input), so callers that validate values catch it as the latter."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Name → implementation, for one family (``kind`` names it in error messages).

    ``name_attr``: when set, ``register`` also stores the name on the registered object under that attribute (a
    class's ``name``), so an instance can say what it was built as.
    """

    def __init__(self, kind: str, *, name_attr: str | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` and return it unchanged (apart from
        ``name_attr``). A name can be registered once: a second registration raises ValueError."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it held (tests that register a temporary implementation)."""
        return self._items.pop(name) if name in self._items else self[name]

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def pop(self, name: str, default=_MISSING):
        """``dict.pop``: remove ``name``; ``default`` (if given) when it is not registered."""
        if default is _MISSING:
            return self.unregister(name)
        return self._items.pop(name, default)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._items)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" from a bad params file
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
