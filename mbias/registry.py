"""A small typed registry: register a class under a stable snake_case name, look it up with "did you mean"."""

from __future__ import annotations

import difflib
import re
from typing import Generic, TypeVar

from mbias.errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._items: dict[str, type[T]] = {}

    def register(self, name: str):
        """Class decorator: ``@PROBES.register("modality_shapley")``."""

        def decorate(cls: type[T]) -> type[T]:
            if not _NAME.match(name):
                raise ValueError(f"{self.kind} name {name!r} must be snake_case")
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._items[name]} and {cls})")
            if not issubclass(cls, self.base):
                raise TypeError(f"{cls.__name__} must subclass {self.base.__name__} to be a {self.kind}")
            cls.name = name
            self._items[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} known: {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
