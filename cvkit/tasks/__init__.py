"""Lightning tasks: ImageNet-style classification (``ClassificationTask``). Loaded on first use, so
``import cvkit.tasks`` does not import Lightning."""
from __future__ import annotations

_EXPORTS = {
    "ClassificationTask": "cvkit.tasks.classification",
    "NonFiniteLossError": "cvkit.tasks.classification",
    "OptimizerConfig": "cvkit.tasks.optim",
    "LRSchedule": "cvkit.tasks.schedules",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cvkit.tasks' has no attribute {name!r}")


__all__ = list(_EXPORTS)
