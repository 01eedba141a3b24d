"""Lazy package exports (PEP 562 module ``__getattr__``): a package lists what it exports and from
which submodule, and the submodule is imported on first use, so importing the package stays cheap
(``import cvkit.det`` loads no mmdet, ``import cvkit.tasks`` no Lightning)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``: ``exports`` maps a name to its module."""
    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(exports)
