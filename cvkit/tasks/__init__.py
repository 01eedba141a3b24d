"""Lightning tasks: ImageNet-style classification (``ClassificationTask``). Loaded on first use, so
``import cvkit.tasks`` does not import Lightning."""
from __future__ import annotations

from cvkit._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "ClassificationTask": "cvkit.tasks.classification",
    "NonFiniteLossError": "cvkit.tasks.classification",
    "OptimizerConfig": "cvkit.tasks.optim",
    "LRSchedule": "cvkit.tasks.schedules",
})

