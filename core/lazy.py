"""Lazy re-exports: a package's public verbs without importing their (heavy) modules up front."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str],
                 submodules: bool = False) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``exports`` (name -> defining module) on first use.

    With ``submodules``, any other name is tried as a submodule of ``package``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            return getattr(importlib.import_module(module), name)
        if submodules:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
