"""Package attributes imported on first use (PEP 562), so that importing a package, as
`python -m package.tool` does, loads nothing heavy until a name is asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that returns `homes[name]`'s attribute `name` (importing it)."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
