"""``create_model``: a preset name (+ overrides) -> a model, optionally loaded from a checkpoint."""
from __future__ import annotations

from typing import Any

from torch import nn

from cvkit.models.checkpoint import load_state_dict, read_checkpoint
from cvkit.models.convert import checkpoint_num_classes, infer_arch_overrides, to_cvkit
from cvkit.models.registry import build, get_preset


def create_model(name: str, num_classes: int | None = None, checkpoint_path=None,
                 features_only: bool = False, *, strict: bool = True, reset_head: bool = False,
                 weights_only: bool = True, **overrides: Any) -> nn.Module:
    """Build the preset ``name`` (see :func:`cvkit.list_models`).

    ``num_classes``: None means 1000, or the checkpoint's when one is given; a different explicit
    value with a checkpoint is an error unless ``reset_head=True``. ``checkpoint_path``: any format
    of :mod:`cvkit.models.convert`; architecture arguments the checkpoint fixes (ECA kernel sizes,
    the GCP width) are read from it unless given. ``features_only``: a timm ``FeatureGetterNet``
    returning the stage maps (``out_indices=`` selects them). ``overrides``: any constructor
    argument (``eca_k_size=(3, 5, 5, 7)``, ``gcp_dim=128``, ``hc_dynamic=True``, ``img_size=...``).
    """
    preset = get_preset(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if checkpoint_path is None:
        return build(preset, features_only=features_only, **overrides)

    out_indices = overrides.pop("out_indices", None)
    state_dict = to_cvkit(read_checkpoint(checkpoint_path, weights_only))
    has_eca = overrides.get("eca", preset.kwargs.get("eca", False))
    has_gcp = overrides.get("global_pool", preset.kwargs.get("global_pool")) == "gcp"
    for key, value in infer_arch_overrides(state_dict, preset.family, has_eca, has_gcp).items():
        overrides.setdefault(key, value)
    if num_classes is None:
        overrides.setdefault("num_classes",
                             checkpoint_num_classes(state_dict, preset.family) or 1000)
    model = build(preset, **overrides)
    if features_only:  # wrapped first: the layers it prunes (head, pooling) need no weights
        from timm.models._features import FeatureGetterNet

        if out_indices is None:
            out_indices = (min(3, len(model.blocks)) if preset.family == "vit"
                           else (0, 1, 2, 3, 4))
        cfg = model.pretrained_cfg
        model = FeatureGetterNet(model, out_indices=out_indices)
        model.pretrained_cfg = cfg
    load_state_dict(model, state_dict, strict=strict, reset_head=reset_head,
                    source=str(checkpoint_path))
    return model
