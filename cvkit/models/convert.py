"""State-dict conversion from the checkpoint formats users have to cvkit's parameter names.

Formats (detected from the keys, no flag needed):

* official ECA-Net release: ``{'state_dict': {'module.<name>': t}}`` — the DataParallel prefix is
  stripped; ResNet names are already cvkit's; ECA-MobileNetV2 nests the ECA inside the block's
  ``conv`` Sequential (``features.N.conv.{3,4}.conv.weight``), moved to ``features.N.eca.conv.weight``.
  Its per-block kernel sizes are read back by :func:`infer_arch_overrides`.
* official iSQRT-COV release (``mpncovresnet*``) and GCP_Optimization's ``ResNet_MPNCOV``:
  ``layer_reduce`` / ``layer_reduce_bn`` -> the GCP reduction ``global_pool.reduce.{0,1}``; ``fc``
  unchanged.
* GCP_Optimization's ``MobileNetV2_MPNCOV`` (Wang et al., CVPR 2020; saved as
  ``{'state_dict': {'module.<name>': t}}``): ``dimension_reduction.{0,1}`` (1x1 conv, BN; its
  ReLU6 has no weights) -> ``global_pool.reduce.{0,1}``; ``features.N`` (torchvision's names) and
  ``classifier.1`` (the 32896-d fc) unchanged.
* fast-MPN-COV training checkpoints (``Basemodel``): ``features.{0,1,4..7}`` -> ``conv1``, ``bn1``,
  ``layer1..4``; ``features.{8,9}`` or ``representation.conv_dr_block.{0,1}`` -> the reduction;
  ``classifier`` -> ``fc``.
* torchvision and timm state dicts (ResNet, MobileNetV2 from torchvision, ViT from timm): unchanged.
* cvkit / Lightning ``.ckpt``: ``{'state_dict': {'model.<name>': t}}`` — the task module's ``model.``
  prefix is stripped (other entries of the task, e.g. EMA copies, are dropped); ``_orig_mod.``
  (torch.compile) likewise.
"""
from __future__ import annotations

import re
from typing import Any

import torch

_PREFIXES = ("module.", "_orig_mod.")
_TASK_PREFIX = "model."


def strip_wrappers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel / torch.compile prefixes and the Lightning task's ``model.`` prefix."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
        if any(k.startswith(_TASK_PREFIX) for k in sd) and not _looks_like_model(sd):
            sd = {k[len(_TASK_PREFIX):]: v for k, v in sd.items() if k.startswith(_TASK_PREFIX)}
            changed = True
    return sd


def _looks_like_model(sd: dict) -> bool:
    """True if the keys already are a bare model's (so a ``model.`` key is not a task prefix)."""
    return any(k.startswith(("conv1.", "layer1.", "features.", "patch_embed.", "blocks."))
               for k in sd)


def detect_family(sd: dict[str, Any]) -> str | None:
    """"resnet", "mobilenetv2" or "vit" from cvkit-named keys; None if unrecognised."""
    if "layer1.0.conv1.weight" in sd:
        return "resnet"
    if "features.1.conv.0.0.weight" in sd:
        return "mobilenetv2"
    if "patch_embed.proj.weight" in sd:
        return "vit"
    return None


_FAST_MPNCOV = {"features.0.": "conv1.", "features.1.": "bn1.", "features.4.": "layer1.",
                "features.5.": "layer2.", "features.6.": "layer3.", "features.7.": "layer4.",
                "features.8.": "global_pool.reduce.0.", "features.9.": "global_pool.reduce.1.",
                "representation.conv_dr_block.0.": "global_pool.reduce.0.",
                "representation.conv_dr_block.1.": "global_pool.reduce.1.",
                "classifier.": "fc."}
_ISQRT = {"layer_reduce.": "global_pool.reduce.0.", "layer_reduce_bn.": "global_pool.reduce.1."}
_GCP_MBV2 = {"dimension_reduction.0.": "global_pool.reduce.0.",
             "dimension_reduction.1.": "global_pool.reduce.1."}
_ECA_MBV2 = re.compile(r"^features\.(\d+)\.conv\.\d+\.conv\.weight$")


def _rename_prefixes(sd: dict, table: dict[str, str]) -> dict:
    out = {}
    for k, v in sd.items():
        for old, new in table.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def to_cvkit(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a state dict in any supported format to cvkit's names (see the module docstring)."""
    sd = strip_wrappers(state_dict)
    if "features.4.0.conv1.weight" in sd and "layer1.0.conv1.weight" not in sd:
        sd = _rename_prefixes(sd, _FAST_MPNCOV)                 # fast-MPN-COV Basemodel
    if any(k.startswith("layer_reduce") for k in sd):
        sd = _rename_prefixes(sd, _ISQRT)                       # iSQRT-COV release
    if any(k.startswith("dimension_reduction.") for k in sd) and "features.1.conv.0.0.weight" in sd:
        sd = _rename_prefixes(sd, _GCP_MBV2)                    # GCP_Optimization MobileNetV2
    out = {}
    for k, v in sd.items():                                     # official ECA-MobileNetV2
        m = _ECA_MBV2.match(k)
        if m and v.dim() == 3:
            k = f"features.{m.group(1)}.eca.conv.weight"
        out[k] = v
    return out


_ECA_RESNET = re.compile(r"^layer(\d)\.(\d+)\.eca\.conv\.weight$")
_ECA_FEATURES = re.compile(r"^features\.(\d+)\.eca\.conv\.weight$")
_HEADS = {"resnet": "fc.weight", "mobilenetv2": "classifier.1.weight", "vit": "head.weight"}
_GCP_REDUCE = {"resnet": "global_pool.reduce.0.weight",
               "mobilenetv2": "global_pool.reduce.0.weight", "vit": "gcp.cov.reduce.0.weight"}


def infer_eca_k_size(sd: dict[str, torch.Tensor]) -> tuple[int, ...] | None:
    """ECA kernel sizes stored in a (cvkit-named) checkpoint: per stage if constant within every
    ResNet stage (e.g. (3, 5, 5, 7) for the released ECA-ResNet-50), else per block; None if the
    checkpoint has no ECA weights."""
    resnet = sorted(((int(m.group(1)), int(m.group(2))), v.shape[-1])
                    for k, v in sd.items() if (m := _ECA_RESNET.match(k)))
    if resnet:
        stages: dict[int, set[int]] = {}
        for (stage, _), k in resnet:
            stages.setdefault(stage, set()).add(int(k))
        if all(len(ks) == 1 for ks in stages.values()) and len(stages) == 4:
            return tuple(next(iter(stages[s])) for s in sorted(stages))
        return tuple(int(k) for _, k in resnet)
    blocks = sorted((int(m.group(1)), int(v.shape[-1]))
                    for k, v in sd.items() if (m := _ECA_FEATURES.match(k)))
    return tuple(k for _, k in blocks) or None


def checkpoint_num_classes(sd: dict[str, torch.Tensor], family: str) -> int | None:
    """Rows of the classifier weight, or None if the checkpoint has no classifier."""
    w = sd.get(_HEADS[family])
    return int(w.shape[0]) if w is not None and w.dim() == 2 else None


def infer_arch_overrides(sd: dict[str, torch.Tensor], family: str,
                         has_eca: bool, has_gcp: bool) -> dict[str, Any]:
    """Architecture arguments a checkpoint fixes: ECA kernel sizes and the GCP reduction width."""
    out: dict[str, Any] = {}
    if has_eca:
        k = infer_eca_k_size(sd)
        if k is not None:
            out["eca_k_size"] = k
    if has_gcp:
        w = sd.get(_GCP_REDUCE[family])
        if w is not None:
            out["gcp_dim"] = int(w.shape[0])
    return out


def fit_to_model(sd: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """A (cvkit-named) state dict adapted to ``model``'s input geometry where timm does the same
    for its own models: for a ViT, timm's ViT ``checkpoint_filter_fn`` resamples the position
    embedding to the model's patch grid (e.g. a 224-px checkpoint into an ``img_size=384`` model)
    and the patch embedding to its patch size. Other models: unchanged."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if isinstance(model, VisionTransformer) and "pos_embed" in sd:
        return checkpoint_filter_fn(sd, model)
    return sd


def timm_filter_fn(state_dict: dict[str, torch.Tensor], model=None) -> dict[str, torch.Tensor]:
    """``pretrained_filter_fn`` for timm: lets ``timm.create_model("cvkit_...", pretrained=True,
    pretrained_cfg_overlay=dict(file=path))`` read any supported format (ViT position embeddings
    resampled as timm's own ViTs do)."""
    sd = to_cvkit(state_dict)
    return sd if model is None else fit_to_model(sd, model)
