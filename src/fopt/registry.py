"""A small named registry: one per extension point (models, runners, optimize methods, ...)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from fopt.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps user-facing names to objects. Register with ``@reg.register("name")``.

    A duplicate name is a programming error (ValueError); an unknown name is a user error
    (UsageError) listing the valid names and the closest match.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(
                f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
