"""Convert detector checkpoints of MMDetection 1.x (e.g. the ECA-Net Mask R-CNN release) to mmdet 3.

What changed between MMDetection 1.x and 2.0 (and stayed so in 3.x), per the mmdet 2.0 compatibility
notes:

* two-stage detectors moved their RoI heads under ``roi_head``: ``bbox_head.*`` ->
  ``roi_head.bbox_head.*``, ``mask_head.*`` -> ``roi_head.mask_head.*``, also per cascade stage
  (``bbox_head.2.fc_cls`` -> ``roi_head.bbox_head.2.fc_cls``), Mask Scoring R-CNN's
  ``mask_iou_head`` and Grid R-CNN's ``grid_head``;
* softmax classifiers put the background class LAST instead of first: ``fc_cls`` keeps its
  81 = 80 + 1 outputs, but row 0 (background) moves to row 80;
* class-specific box regression drops the background's 4 outputs: ``fc_reg`` 324 -> 320 rows
  (class-agnostic regression, e.g. cascade stages, keeps its 4);
* the mask head predicts no background mask: ``conv_logits`` 81 -> 80 outputs (a class-agnostic
  one keeps its 1), and Mask Scoring R-CNN's ``fc_mask_iou`` 81 -> 80 likewise.

Layers whose class order cannot be fixed here (HTC's ``semantic_head``, SSD's softmax
``cls_convs``) are refused with an error naming the key, never passed through unchanged.

Sigmoid classifiers (RPN, RetinaNet) never had a background output and are kept as they are.
The backbone's keys are moved under the prefix of the backbone that replaces the legacy one
(``backbone.body.model.`` for :class:`cvkit.det.backbone.CvkitBackbone`, whose ``body`` is timm's
``FeatureGetterNet`` around the cvkit model).

This module needs only torch: ``tools/convert_checkpoint.py --kind mmdet-legacy`` calls
:func:`convert_legacy_mmdet_checkpoint`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch

#: Legacy two-stage RoI heads that mmdet 2.0 moved under ``roi_head`` (the heads mmdet's
#: ``tools/model_converters/upgrade_model_version.py`` moves, less HTC's ``semantic_head``, below).
#: Cascade detectors keep one head per stage: ``bbox_head.<stage>.*``, ``mask_head.<stage>.*``.
LEGACY_ROI_HEADS = ("bbox_head", "mask_head", "mask_iou_head", "grid_head")
#: Heads whose class-ordered outputs this converter does not know how to reorder: refused.
UNSUPPORTED_HEADS = {
    "semantic_head": "HTC's semantic segmentation head (stuff classes) is not supported",
}
#: Leaf modules (anywhere in a RoI head's key, e.g. ``bbox_head.2.fc_cls``) with one row (group)
#: per class, background first in mmdet 1.x, and how they change:
#: ``fc_cls`` background row moved last; the others lose the background's rows.
CLASS_LEAVES = {"fc_cls": "background_last", "fc_reg": 4, "conv_logits": 1, "fc_mask_iou": 1}
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


def _drop_background(value: torch.Tensor, key: str, per_class: int,
                     with_background: int | None) -> torch.Tensor:
    """Remove the ``per_class`` leading background rows (regression: 4, mask logits: 1).

    ``with_background``: classes + background as the checkpoint's ``fc_cls`` says (None: inferred
    from this tensor alone)."""
    rows = value.shape[0]
    expected = None if with_background is None else per_class * with_background
    if (expected is not None and rows != expected) or rows % per_class or rows // per_class < 2:
        what = (f"expected {expected} (background + {with_background - 1} classes, as fc_cls)"
                if expected is not None else f"not a multiple of {per_class} covering background "
                                             "+ classes")
        raise ValueError(f"legacy mmdet checkpoint: {key} has {rows} outputs, {what}")
    return value[per_class:]


def _leaf(key: str) -> str:
    """The module that owns a parameter: ``bbox_head.2.fc_cls.weight`` -> ``fc_cls``."""
    parts = key.split(".")
    return parts[-2] if len(parts) >= 2 else key


def _classes_with_background(state: Mapping[str, torch.Tensor]) -> int | None:
    """Rows of the legacy softmax classifier(s) ``fc_cls`` (classes + background); every cascade
    stage must agree."""
    rows = {_strip_module_prefix(k): v.shape[0] for k, v in state.items()
            if _leaf(k) == "fc_cls" and v.dim() >= 1}
    if len(set(rows.values())) > 1:
        raise ValueError(f"legacy mmdet checkpoint: the fc_cls layers disagree on the number of "
                         f"classes: {rows}")
    return next(iter(rows.values()), None)


def _convert_roi_tensor(key: str, old_key: str, value: torch.Tensor, with_background: int | None,
                        class_agnostic_reg: bool | None) -> torch.Tensor:
    kind = CLASS_LEAVES.get(_leaf(key))
    if kind is None:
        return value
    if kind == "background_last":
        return _background_last(value, old_key)
    if _leaf(key) == "fc_reg":
        agnostic = value.shape[0] == 4 if class_agnostic_reg is None else class_agnostic_reg
        return value if agnostic else _drop_background(value, old_key, 4, with_background)
    if _leaf(key) == "conv_logits" and value.shape[0] == 1:
        return value  # class-agnostic mask head: one mask, no background
    return _drop_background(value, old_key, kind, with_background)


def convert_legacy_mmdet_checkpoint(
        state_dict: Mapping[str, object],
        backbone_prefix: str | None = CVKIT_BACKBONE_PREFIX,
        class_agnostic_reg: bool | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Return an mmdet-3 state dict for a detector saved by MMDetection 1.x.

    Two-stage detectors (those with an ``rpn_head``): every RoI head of :data:`LEGACY_ROI_HEADS`,
    including each stage of a cascade (``bbox_head.<i>.*``, ``mask_head.<i>.*``) and Mask Scoring
    R-CNN's ``mask_iou_head``, moves under ``roi_head.``; the class-ordered layers of
    :data:`CLASS_LEAVES` are matched by their module name wherever it sits in the key.

    Args:
        state_dict: the legacy state dict, or the whole legacy checkpoint holding it under
            ``'state_dict'`` (a ``module.`` DataParallel prefix is removed).
        backbone_prefix: what ``backbone.`` becomes; the default fits cvkit's ``CvkitBackbone``
            configs (``configs/detection/*eca-r50*``); ``None`` or ``"backbone."`` keeps the keys for
            mmdet's own ResNet.
        class_agnostic_reg: whether ``fc_reg`` has 4 outputs for all classes (then it is kept);
            ``None`` infers it from the shapes (4 rows means agnostic, as in cascade stages).

    Raises:
        ValueError: for a checkpoint that is already in mmdet >= 2 layout (``roi_head.``), an empty
            one, heads whose shapes do not fit background + classes (named by key), and layers
            whose class order this converter cannot fix (HTC's ``semantic_head``, a single-stage
            softmax classifier such as SSD's ``cls_convs``): never passed through unchanged.
    """
    state = _unwrap(state_dict)
    keys = [_strip_module_prefix(k) for k in state]
    if any(k.startswith("roi_head.") for k in keys):
        raise ValueError("legacy mmdet checkpoint: keys already start with 'roi_head.' - this "
                         "checkpoint is in mmdet >= 2.0 layout and needs no conversion")
    parts = {k.partition(".")[0] for k in keys}
    if keys and not parts & {"backbone", "neck", "rpn_head", *LEGACY_ROI_HEADS}:
        # e.g. a classifier's state dict given as a detector
        raise ValueError("legacy mmdet checkpoint: no detector part (no 'backbone.', 'neck.' or "
                         f"head keys; the first keys: {', '.join(keys[:4])}): not an "
                         "MMDetection detector; a classification checkpoint converts with "
                         "--kind auto")
    two_stage = "rpn_head" in parts
    with_background = _classes_with_background(state) if two_stage else None
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for old_key, value in state.items():
        key = _strip_module_prefix(old_key)
        head, _, rest = key.partition(".")
        if head in UNSUPPORTED_HEADS:
            raise ValueError(f"legacy mmdet checkpoint: cannot convert {old_key!r}: "
                             f"{UNSUPPORTED_HEADS[head]}")
        if backbone_prefix is not None and head == "backbone":
            key = backbone_prefix + rest
        elif two_stage and head in LEGACY_ROI_HEADS:
            key = f"roi_head.{key}"
            value = _convert_roi_tensor(key, old_key, value, with_background, class_agnostic_reg)
        elif not two_stage and head == "bbox_head" and re.fullmatch(
                r"cls_convs\.\d+\.(weight|bias)", rest):
            # SSD's softmax classifier (background first) or a RetinaNet older than mmdet 0.5.3
            raise ValueError(f"legacy mmdet checkpoint: cannot convert {old_key!r}: single-stage "
                             "softmax classifiers (SSD) and pre-0.5.3 RetinaNet heads are not "
                             "supported")
        out[key] = value.clone()
    return out
