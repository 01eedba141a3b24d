"""The preset registry: every paper variant is a name for a set of model arguments.

Names: ``resnet{18,34,50,101,152}``, ``mobilenetv2``, ``vit_{tiny,small,base}_patch16``; prefix
``eca_`` = ECA; suffix ``_gcp`` = iSQRT-COV head; ``_hc{n}`` = static hyper-connections with
expansion n, ``_dhc{n}`` = dynamic ones (the paper's SHC / DHC); ``_fc{m}`` = frac-connections.
Every preset is registered with timm as ``cvkit_<name>`` (so ``timm.create_model("cvkit_eca_resnet50")``
works after ``import cvkit``), built by timm's ``build_model_with_cfg`` (``pretrained_cfg``,
``features_only`` through ``FeatureGetterNet``).
"""
from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model
from timm.models._features import FeatureGetterNet

from cvkit.tool_errors import OptionError

TIMM_PREFIX = "cvkit_"


@dataclass(frozen=True)
class Preset:
    """A registered model: the family's builder, its arguments, and the paper's figures (for the
    model table) where the papers report them."""
    name: str
    family: str                      # "resnet" | "mobilenetv2" | "vit"
    kwargs: dict[str, Any]
    paper: dict[str, Any] = field(default_factory=dict)  # params_m, gflops, top1, source


def _family_builder(family: str):
    if family == "resnet":
        from cvkit.models.resnet import ResNet
        return ResNet
    if family == "mobilenetv2":
        from cvkit.models.mobilenetv2 import MobileNetV2
        return MobileNetV2
    from cvkit.models.vit import VisionTransformer
    return VisionTransformer


PRESETS: dict[str, Preset] = {}


def _add(name: str, family: str, paper: dict | None = None, **kwargs) -> None:
    PRESETS[name] = Preset(name, family, kwargs, paper or {})


_ECA = "ECA-Net Table 3"
_ECA_README = "ECA-Net README"
_GCP = "What Deep CNNs Benefit from GCP, LRnorm"
_HC = "Hyper-Connections, ViT/16 300 ep"

# ResNets: plain, ECA (every depth the ECA paper reports), GCP (18/34/50/101 as in the GCP paper)
_RESNET_PAPER = {18: {}, 34: {},
                 50: dict(params_m=24.37, gflops=3.86, top1=75.20, source=_ECA),
                 101: dict(params_m=42.49, gflops=7.34, top1=76.83, source=_ECA),
                 152: dict(params_m=57.40, gflops=10.82, top1=77.58, source=_ECA)}
_ECA_RESNET_PAPER = {18: dict(params_m=11.15, gflops=1.70, top1=70.92, source=_ECA_README),
                     34: dict(params_m=20.79, gflops=3.43, top1=74.21, source=_ECA_README),
                     50: dict(params_m=24.37, gflops=3.86, top1=77.48, source=_ECA),
                     101: dict(top1=78.65, source=_ECA), 152: dict(top1=78.92, source=_ECA)}
_GCP_TOP1 = {18: 75.48, 34: 77.11, 50: 78.56, 101: 79.47}
for _d in (18, 34, 50, 101, 152):
    _add(f"resnet{_d}", "resnet", _RESNET_PAPER[_d], depth=_d)
    _add(f"eca_resnet{_d}", "resnet", _ECA_RESNET_PAPER[_d], depth=_d, eca=True)
    if _d in _GCP_TOP1:
        _add(f"resnet{_d}_gcp", "resnet", dict(top1=_GCP_TOP1[_d], source=_GCP), depth=_d,
             global_pool="gcp")
_add("eca_resnet50_gcp", "resnet", depth=50, eca=True, global_pool="gcp")
# hyper-/frac-connections on CNNs (channel-first; no paper figures)
_add("resnet18_hc2", "resnet", depth=18, hc_rate=2)
_add("resnet50_hc2", "resnet", depth=50, hc_rate=2)
_add("resnet50_dhc2", "resnet", depth=50, hc_rate=2, hc_dynamic=True)
_add("resnet50_fc2", "resnet", depth=50, fc_rate=2)

_add("mobilenetv2", "mobilenetv2", dict(params_m=3.34, gflops=0.3194, top1=71.64, source=_ECA))
_add("eca_mobilenetv2", "mobilenetv2", dict(top1=72.56, source=_ECA), eca=True)
# the GCP release's layout (every stride kept, 7x7 at 224 px; ReLU6 reduction), whose top-1 this is
_add("mobilenetv2_gcp", "mobilenetv2", dict(top1=74.39, source=_GCP), global_pool="gcp")
_add("mobilenetv2_hc2", "mobilenetv2", hc_rate=2)
_add("mobilenetv2_fc2", "mobilenetv2", fc_rate=2)

_VIT_PAPER = {"base": {"": dict(top1=76.38, source=_HC), "hc2": dict(top1=77.60, source=_HC),
                       "dhc2": dict(top1=77.26, source=_HC)}}
for _size in ("tiny", "small", "base"):
    _base = f"vit_{_size}_patch16"
    _paper = _VIT_PAPER.get(_size, {})
    _add(_base, "vit", _paper.get(""), size=_size)
    _add(f"{_base}_hc2", "vit", _paper.get("hc2"), size=_size, hc_rate=2)
    _add(f"{_base}_dhc2", "vit", _paper.get("dhc2"), size=_size, hc_rate=2, hc_dynamic=True)
    _add(f"{_base}_fc2", "vit", size=_size, fc_rate=2)
    _add(f"{_base}_gcp", "vit", size=_size, global_pool="gcp")


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (a leading ``cvkit_`` is accepted); a clear error otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    if key not in PRESETS:
        close = closest_names(key)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise OptionError(f"unknown model {name!r}{hint} (cvkit.list_models() lists all "
                         f"{len(PRESETS)})")
    return PRESETS[key]


def closest_names(name: str, names=None, n: int = 5, cutoff: float = 0.5) -> list[str]:
    """The names of ``names`` (default: the presets) closest to a misspelt ``name``, best first."""
    return difflib.get_close_matches(name, list(PRESETS if names is None else names), n=n,
                                     cutoff=cutoff)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted preset names matching the shell-style ``pattern`` (e.g. ``"*eca*"``)."""
    return sorted(n for n in PRESETS if fnmatch.fnmatchcase(n, pattern))


def pretrained_cfg(preset: Preset) -> dict[str, Any]:
    """timm ``pretrained_cfg`` of a preset: preprocessing and head metadata (no weights URL).

    ``interpolation`` is the resize filter the preset's recipe trains and evaluates with (what
    timm's ``resolve_data_config`` hands to its transforms): antialiased bilinear, the data
    pipeline's default, for every preset. The CNN recipes are the papers' torchvision/PIL
    pipeline (bilinear). The ViT recipes (``configs/classification/vit_*.yaml``) set
    ``data.interpolation: bilinear``: Hyper-Connections does not state it, its ViT/16 recipe is
    the ViT paper's ImageNet one, whose public config (big_vision ``configs/vit_i1k.py``) resizes
    the training crop ``method="bilinear"``; bicubic (timm's ViT configs) is DeiT's recipe, not
    theirs. ``tests/test_models_registry.py`` checks every recipe against this value."""
    from cvkit.data.transforms import INTERPOLATIONS

    cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875,
               interpolation=INTERPOLATIONS[0], mean=IMAGENET_DEFAULT_MEAN,
               std=IMAGENET_DEFAULT_STD, license="apache-2.0")
    gcp = preset.kwargs.get("global_pool") == "gcp"
    if preset.family == "resnet":  # the iSQRT-COV ResNets' last stage runs at stride 1
        pool_size = (14, 14) if gcp else (7, 7)
        cfg.update(first_conv="conv1", classifier="fc", pool_size=pool_size)
    elif preset.family == "mobilenetv2":  # the GCP release keeps every stride: 7x7 either way
        cfg.update(first_conv="features.0.0", classifier="classifier.1", pool_size=(7, 7))
    else:
        cfg.update(first_conv="patch_embed.proj", classifier="head", fixed_input_size=True)
    return cfg


def model_kwargs(preset: Preset, overrides: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of ``preset`` with the user's ``overrides`` applied."""
    kwargs = dict(preset.kwargs)
    kwargs.update(overrides)
    head_only = [k for k in ("gcp_dim", "gcp_iters") if k in overrides]
    if head_only and kwargs.get("global_pool") != "gcp":  # the model would ignore them
        raise ValueError(f"{', '.join(f'{k}={overrides[k]!r}' for k in head_only)} given to a "
                         f"model without the iSQRT-COV head (global_pool="
                         f"{kwargs.get('global_pool', 'the default')!r}): use a *_gcp preset or "
                         f"pass global_pool='gcp'")
    if preset.family == "vit":
        from cvkit.models.vit import ARCH

        size = kwargs.pop("size")
        for key, value in ARCH[size].items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("patch_size", 16)
    return kwargs


def build(preset: Preset, pretrained: bool = False, **overrides) -> Any:
    """Build ``preset`` through timm's ``build_model_with_cfg`` (also the timm entry point)."""
    from cvkit.models.convert import timm_filter_fn

    cfg = overrides.pop("pretrained_cfg", None) or pretrained_cfg(preset)  # timm passes these
    overlay = overrides.pop("pretrained_cfg_overlay", None)
    kwargs = model_kwargs(preset, overrides)
    feature_cfg = dict(feature_cls="getter")
    if preset.family == "vit":
        feature_cfg["out_indices"] = min(3, kwargs["depth"])  # the last 3 blocks, as timm's ViT
    try:
        model = build_model_with_cfg(
            _family_builder(preset.family), TIMM_PREFIX + preset.name, pretrained,
            pretrained_cfg=cfg, pretrained_cfg_overlay=overlay, feature_cfg=feature_cfg,
            pretrained_filter_fn=timm_filter_fn, **kwargs)
    except TypeError as e:  # an unknown keyword: name the model and the argument
        raise TypeError(f"{preset.name}: {e}") from None
    inner = model.model if isinstance(model, FeatureGetterNet) else model
    if preset.family == "vit":  # keep pretrained_cfg's input size in step with img_size
        size = tuple(inner.patch_embed.img_size)
        inner.pretrained_cfg = dict(inner.pretrained_cfg, input_size=(3, *size))
    inner.cvkit_preset = preset.name
    return model


# create_model's / timm's keywords about loading weights, not about the network
_LOADING_KEYWORDS = {"checkpoint_path", "weights_only", "strict", "reset_head", "pretrained",
                     "pretrained_cfg", "pretrained_cfg_overlay"}


def same_architecture_value(preset: Preset, key: str, a: Any, b: Any, **others: Any) -> bool:
    """Whether ``key=a`` and ``key=b`` (beside ``others``) build the same ``preset``: equal values,
    or values that give every weight the same shape (ECA kernel sizes ``5`` and ``(5, 5, 5, 5)``,
    or None where Eq. 12 gives the other's sizes), compared on the meta device (no memory)."""
    def plain(v):
        return tuple(plain(x) for x in v) if isinstance(v, (list, tuple)) else v

    if plain(a) == plain(b):
        return True
    import torch

    others = {k: v for k, v in others.items() if k not in _LOADING_KEYWORDS}
    shapes = []
    for value in (a, b):
        try:
            with torch.device("meta"):
                model = build(preset, **{**others, key: value})
        except (ValueError, TypeError):  # a value the model refuses: not the same
            return False
        shapes.append({k: tuple(v.shape) for k, v in model.state_dict().items()})
    return shapes[0] == shapes[1]


def _pretrained_file(kwargs: dict) -> str | None:
    """The local weights file of a timm ``pretrained=True`` call (``pretrained_cfg_overlay`` or
    ``pretrained_cfg`` with ``file=``), if any."""
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        cfg = kwargs.get(key)
        path = cfg.get("file") if isinstance(cfg, dict) else getattr(cfg, "file", None)
        if path:
            return str(path)
    return None


def _timm_entrypoint(preset: Preset):
    def entrypoint(pretrained: bool = False, **kwargs):
        path = _pretrained_file(kwargs) if pretrained else None
        if path is not None:  # architecture the weights fix (ECA kernel sizes, GCP width), as
            from cvkit.models.factory import checkpoint_file_arguments  # cvkit.create_model does

            for key, value in checkpoint_file_arguments(preset, path, kwargs).items():
                kwargs.setdefault(key, value)  # what the caller gave wins
        return build(preset, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = TIMM_PREFIX + preset.name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"cvkit preset {preset.name!r}: {preset.family} {preset.kwargs}"
    return entrypoint


default_cfgs: dict[str, dict] = {}


def register_with_timm() -> None:
    """Register every preset as ``cvkit_<name>`` with timm (idempotent)."""
    from timm.models import is_model

    module = sys.modules[__name__]
    for preset in PRESETS.values():
        timm_name = TIMM_PREFIX + preset.name
        if is_model(timm_name):
            continue
        default_cfgs[timm_name] = pretrained_cfg(preset)
        entry = _timm_entrypoint(preset)
        setattr(module, timm_name, entry)
        register_model(entry)


register_with_timm()
