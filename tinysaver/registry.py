"""A tiny name → object registry, in the spirit of mmengine's ``Registry``.

Users extend TinySaver by registering their own objects (e.g. a confidence function) under a name
that configs, records and the CLI can then refer to.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Optional, TypeVar

from .errors import TinySaverError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects.

    Args:
        kind: What the registry holds, used in error messages ("confidence function").

    Examples:
        >>> FUNCS = Registry("function")
        >>> @FUNCS.register("double")
        ... def double(x):
        ...     return 2 * x
        >>> FUNCS.get("double")(3)
        6
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: Optional[str] = None, *, force: bool = False) -> Callable[[T], T]:
        """Decorator that registers an object under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items and not force:
                raise KeyError(f"{self.kind} {key!r} is already registered (pass force=True to replace it)")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Returns the object registered as ``name``; the error lists the known names."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise TinySaverError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"
