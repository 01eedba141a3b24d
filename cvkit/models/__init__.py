"""cvkit's model zoo: ResNet, MobileNetV2 and ViT with ECA, iSQRT-COV and hyper-/frac-connections.

``create_model(name, ...)``, ``list_models(pattern)``, ``load_checkpoint(model, path)``; every
preset is also registered with timm as ``cvkit_<name>`` when this package is imported.
"""
from __future__ import annotations

from cvkit.models.checkpoint import CheckpointError, load_checkpoint
from cvkit.models.factory import create_model
from cvkit.models.registry import PRESETS, get_preset, list_models

__all__ = ["create_model", "list_models", "load_checkpoint", "get_preset", "PRESETS",
           "CheckpointError"]
