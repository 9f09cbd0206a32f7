"""A tiny name -> factory registry (timm style): duplicate names raise, unknown names suggest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from dytrim.suggest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories for one kind of component (models, data sources, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register a factory under `name` (default: the function's name)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            hint = did_you_mean(name, self._items)
            raise KeyError(f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
