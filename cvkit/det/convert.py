"""Convert detector checkpoints of MMDetection 1.x (e.g. the ECA-Net Mask R-CNN release) to mmdet 3.

What changed between MMDetection 1.x and 2.0 (and stayed so in 3.x), per the mmdet 2.0 compatibility
notes:

* two-stage detectors moved their RoI heads under ``roi_head``: ``bbox_head.*`` ->
  ``roi_head.bbox_head.*`` and ``mask_head.*`` -> ``roi_head.mask_head.*``;
* softmax classifiers put the background class LAST instead of first: ``fc_cls`` keeps its
  81 = 80 + 1 outputs, but row 0 (background) moves to row 80;
* class-specific box regression drops the background's 4 outputs: ``fc_reg`` 324 -> 320 rows;
* the mask head predicts no background mask: ``conv_logits`` 81 -> 80 outputs.

Sigmoid classifiers (RPN, RetinaNet) never had a background output and are kept as they are.
The backbone's keys are moved under the prefix of the backbone that replaces the legacy one
(``backbone.body.model.`` for :class:`cvkit.det.backbone.CvkitBackbone`, whose ``body`` is timm's
``FeatureGetterNet`` around the cvkit model).

This module needs only torch: ``tools/convert_checkpoint.py --kind mmdet-legacy`` calls
:func:`convert_legacy_mmdet_checkpoint`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

#: Legacy two-stage RoI heads that mmdet 2.0 moved under ``roi_head``.
LEGACY_ROI_HEADS = ("bbox_head", "mask_head")
#: Where :class:`cvkit.det.backbone.CvkitBackbone` keeps the wrapped cvkit feature network.
CVKIT_BACKBONE_PREFIX = "backbone.body.model."


def _unwrap(checkpoint: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
    """Accept a bare state dict or an mmdet/mmcv checkpoint ``{'state_dict': ..., 'meta': ...}``."""
    inner = checkpoint.get("state_dict")
    state = inner if isinstance(inner, Mapping) else checkpoint
    if not state:
        raise ValueError("legacy mmdet checkpoint: the state dict is empty")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"legacy mmdet checkpoint: entries that are not tensors: {bad[:5]}")
    return state


def _strip_module_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _background_last(value: torch.Tensor, key: str) -> torch.Tensor:
    """Softmax classifier rows [bg, c1..cK] (mmdet 1.x) -> [c1..cK, bg] (mmdet 2+)."""
    if value.shape[0] < 2:
        raise ValueError(f"legacy mmdet checkpoint: {key} has {value.shape[0]} outputs, "
                         "expected classes + background")
    return torch.cat([value[1:], value[:1]], dim=0)


def _drop_background(value: torch.Tensor, key: str, per_class: int) -> torch.Tensor:
    """Remove the ``per_class`` leading background rows (regression: 4, mask logits: 1)."""
    if value.shape[0] % per_class or value.shape[0] // per_class < 2:
        raise ValueError(f"legacy mmdet checkpoint: {key} has {value.shape[0]} outputs, not a "
                         f"multiple of {per_class} covering background + classes")
    return value[per_class:]


def convert_legacy_mmdet_checkpoint(
        state_dict: Mapping[str, object],
        backbone_prefix: str | None = CVKIT_BACKBONE_PREFIX,
        class_agnostic_reg: bool | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Return an mmdet-3 state dict for a detector saved by MMDetection 1.x.

    Args:
        state_dict: the legacy state dict, or the whole legacy checkpoint holding it under
            ``'state_dict'`` (a ``module.`` DataParallel prefix is removed).
        backbone_prefix: what ``backbone.`` becomes; the default fits cvkit's ``CvkitBackbone``
            configs (``configs/detection/*eca-r50*``); ``None`` or ``"backbone."`` keeps the keys for
            mmdet's own ResNet.
        class_agnostic_reg: whether ``fc_reg`` has 4 outputs for all classes (then it is kept);
            ``None`` infers it from the shapes (4 rows means agnostic).

    Raises:
        ValueError: for a checkpoint that is already in mmdet >= 2 layout (``roi_head.``), an empty
            one, or heads whose shapes do not fit background + classes.
    """
    state = _unwrap(state_dict)
    keys = [_strip_module_prefix(k) for k in state]
    if any(k.startswith("roi_head.") for k in keys):
        raise ValueError("legacy mmdet checkpoint: keys already start with 'roi_head.' - this "
                         "checkpoint is in mmdet >= 2.0 layout and needs no conversion")
    two_stage = any(k.startswith("rpn_head.") for k in keys)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for old_key, value in state.items():
        key = _strip_module_prefix(old_key)
        head, _, rest = key.partition(".")
        if backbone_prefix is not None and head == "backbone":
            key = backbone_prefix + rest
        elif two_stage and head in LEGACY_ROI_HEADS:
            key = f"roi_head.{key}"
            leaf = rest.rsplit(".", 1)[0]  # e.g. 'fc_cls', 'fc_reg', 'conv_logits'
            if head == "bbox_head" and leaf == "fc_cls":
                value = _background_last(value, old_key)
            elif head == "bbox_head" and leaf == "fc_reg":
                agnostic = value.shape[0] == 4 if class_agnostic_reg is None else class_agnostic_reg
                if not agnostic:
                    value = _drop_background(value, old_key, per_class=4)
            elif head == "mask_head" and leaf == "conv_logits":
                value = _drop_background(value, old_key, per_class=1)
        out[key] = value.clone()
    return out
