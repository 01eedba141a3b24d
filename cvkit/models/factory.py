"""``create_model``: a preset name (+ overrides) -> a model, optionally loaded from a checkpoint."""
from __future__ import annotations

from typing import Any

from torch import nn

from cvkit.models.checkpoint import load_state_dict, read_checkpoint_and_arguments
from cvkit.models.convert import checkpoint_num_classes, infer_arch_overrides, to_cvkit
from cvkit.models.registry import build, get_preset
from cvkit.tool_errors import OptionError, literal_or_text


def parse_model_args(pairs: list[str], option: str = "--model-arg") -> dict[str, Any]:
    """The tools' ``--model-arg KEY=VALUE`` options as model keywords: ``["global_pool=gcp",
    "gcp_dim=128"]`` -> ``{"global_pool": "gcp", "gcp_dim": 128}`` (values are Python literals,
    else strings)."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise OptionError(f"{option} {pair!r}: expected KEY=VALUE, e.g. global_pool=gcp")
        out[key.strip()] = literal_or_text(text)
    return out


HEAD_KWARGS = ("global_pool", "gcp_dim", "gcp_iters", "num_classes", "drop_rate")
"""Model keywords of the classification head (pooling, classifier), which ``features_only`` prunes."""


def checkpoint_arguments(preset, state_dict: dict, overrides: dict, trained_with: dict | None = None,
                         features_only: bool = False) -> dict[str, Any]:
    """What a (cvkit-named) checkpoint fixes for ``preset`` built with ``overrides``: the
    ``model_kwargs`` a cvkit training checkpoint was trained with (``trained_with``; for
    ``features_only`` all but the head's, which pruning removes: a GCP run's stride-1 layer4 would
    halve a detector's C5 stride, while hyper-connections or ECA sizes are the backbone's), then
    the ECA kernel sizes, the GCP width and the number of classes where its tensors have them
    (whether it has ECA / a GCP head: from ``overrides``, then those model_kwargs). ``overrides``
    win where the caller applies the result."""
    inherited = {k: v for k, v in (trained_with or {}).items()
                 if not (features_only and k in HEAD_KWARGS)}
    if {**preset.kwargs, **inherited, **overrides}.get("global_pool") != "gcp":
        inherited.pop("gcp_dim", None)  # the caller's other head: the trained one's settings
        inherited.pop("gcp_iters", None)  # do not apply
    arch = {**preset.kwargs, **inherited, **overrides}
    out = infer_arch_overrides(state_dict, preset.family, arch.get("eca", False),
                               arch.get("global_pool") == "gcp")
    classes = checkpoint_num_classes(state_dict, preset.family)
    if classes:
        out["num_classes"] = classes
    return {**inherited, **out}


def checkpoint_file_arguments(preset, path, overrides: dict) -> dict[str, Any]:
    """The arguments :func:`create_model` reads from the checkpoint file at ``path`` except the
    number of classes (for timm's ``pretrained=True`` loading, which handles the classifier
    itself)."""
    state_dict, trained_with = read_checkpoint_and_arguments(path, preset.name)
    out = checkpoint_arguments(preset, to_cvkit(state_dict), overrides, trained_with,
                               bool(overrides.get("features_only")))
    out.pop("num_classes", None)
    return out


def create_model(name: str, num_classes: int | None = None, checkpoint_path=None,
                 features_only: bool = False, *, strict: bool = True, reset_head: bool = False,
                 weights_only: bool = True, **overrides: Any) -> nn.Module:
    """Build the preset ``name`` (see :func:`cvkit.list_models`).

    ``num_classes``: None means 1000, or the checkpoint's when one is given; a different explicit
    value with a checkpoint is an error unless ``reset_head=True``. ``checkpoint_path``: any format
    of :mod:`cvkit.models.convert`; architecture arguments the checkpoint fixes (ECA kernel sizes,
    the GCP width; for a cvkit training checkpoint of this preset, the ``model_kwargs`` it was
    trained with, e.g. ``global_pool='gcp', gcp_iters=3``; with ``features_only`` all but the
    head's, :data:`HEAD_KWARGS`) are
    read from it unless given. ``features_only``: a timm ``FeatureGetterNet``
    returning the stage maps (``out_indices=`` selects them). ``overrides``: any constructor
    argument (``eca_k_size=(3, 5, 5, 7)``, ``gcp_dim=128``, ``hc_dynamic=True``, ``img_size=...``).
    """
    preset = get_preset(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if checkpoint_path is None:
        return build(preset, features_only=features_only, **overrides)

    state_dict, trained_with = read_checkpoint_and_arguments(checkpoint_path, preset.name, weights_only)
    return model_from_state(preset.name, state_dict, str(checkpoint_path), features_only,
                            strict=strict, reset_head=reset_head, trained_with=trained_with,
                            **overrides)


def model_from_state(name: str, state_dict: dict, source: str, features_only: bool = False, *,
                     strict: bool = True, reset_head: bool = False,
                     trained_with: dict | None = None, **overrides: Any) -> nn.Module:
    """:func:`create_model` for checkpoint tensors already read from ``source`` (any format of
    :mod:`cvkit.models.convert`; ``trained_with``: a training checkpoint's ``model_kwargs``), so a
    caller that looked at them first does not read the file twice."""
    preset = get_preset(name)
    out_indices = overrides.pop("out_indices", None)
    if out_indices is not None and not features_only:
        raise ValueError(f"out_indices={out_indices!r} is for features_only=True (the feature maps "
                         f"it returns); {name} without it is a classifier")
    state_dict = to_cvkit(state_dict)
    for key, value in checkpoint_arguments(preset, state_dict, overrides, trained_with,
                                           features_only).items():
        overrides.setdefault(key, value)  # what the user gave wins
    overrides.setdefault("num_classes", 1000)  # a checkpoint without a classifier
    model = build(preset, **overrides)
    if features_only:  # wrapped first: the layers it prunes (head, pooling) need no weights
        from timm.models._features import FeatureGetterNet

        if out_indices is None:
            out_indices = (min(3, len(model.blocks)) if preset.family == "vit"
                           else (0, 1, 2, 3, 4))
        cfg = model.pretrained_cfg
        model = FeatureGetterNet(model, out_indices=out_indices)
        model.pretrained_cfg = cfg
    load_state_dict(model, state_dict, strict=strict, reset_head=reset_head, source=source)
    return model
