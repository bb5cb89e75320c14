"""A small name -> factory registry used for models, criteria, structures, datasets and stages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from prunekit.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; `register` is a decorator, `create` builds by name.

    Lookup errors name the bad value, suggest the closest name and list every choice,
    so a typo in a recipe never fails with a bare KeyError.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str, *aliases: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or function under `name` (and optional aliases)."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            for key in (name, *aliases):
                if key in self._entries:
                    raise ValueError(f"{self.kind} '{key}' is registered twice")
                self._entries[key] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered as `name`, or raise a helpful ConfigError."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self._entries) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build the entry registered as `name` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
