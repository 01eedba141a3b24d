"""cvkit: ECA-Net, iSQRT-COV global covariance pooling, hyper-/frac-connections, in one toolkit.

Importing cvkit has no side effects beyond registering its models with timm; the model API loads on
first use so that ``import cvkit`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

_MODEL_API = ("create_model", "list_models", "load_checkpoint")


def __getattr__(name: str):
    if name in _MODEL_API:
        from cvkit import models
        return getattr(models, name)
    raise AttributeError(f"module 'cvkit' has no attribute {name!r}")


__all__ = list(_MODEL_API)
