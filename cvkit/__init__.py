"""cvkit: ECA-Net, iSQRT-COV global covariance pooling, hyper-/frac-connections, in one toolkit.

Importing cvkit imports only torch and timm and registers every cvkit preset with timm as
``cvkit_<name>`` (so ``timm.create_model("cvkit_eca_resnet50")`` works after ``import cvkit``).
"""
from __future__ import annotations

__version__ = "0.1.0"

from cvkit.models import create_model, list_models, load_checkpoint  # noqa: E402  (registers with timm)

__all__ = ["create_model", "list_models", "load_checkpoint"]
