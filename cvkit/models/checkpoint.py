"""Reading, checking, loading and writing model checkpoints (safely: ``weights_only=True``).

:func:`load_checkpoint` accepts every format of :mod:`cvkit.models.convert` and fails with one
message that lists the missing and unexpected keys and the shape mismatches. A classifier whose
number of classes differs from the checkpoint's is replaced only when asked (``reset_head=True``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cvkit.atomic_write import atomic_write
from cvkit.models.convert import fit_to_model, to_cvkit


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model. ``tool_message``: the same
    with its advice phrased for the command-line tools (``--model`` / ``--model-arg`` instead of
    Python keywords; :func:`cvkit.tool_errors.error_line` prints it)."""

    def __init__(self, message: str, tool_message: str | None = None):
        super().__init__(message)
        self.tool_message = tool_message or message

    def __reduce__(self):  # pickled across processes with its tool message
        return type(self), (str(self), self.tool_message)


@dataclass
class LoadResult:
    missing_keys: list[str]
    unexpected_keys: list[str]
    reset_head: bool = False


def load_failure(error: Exception, path=None) -> str:
    """One line saying why ``torch.load`` failed: an empty or cut-short file (e.g. an interrupted
    download), a file of another kind (given its ``path``: neither a zip archive, PyTorch's format
    since 1.6, nor a pickle, the older one; e.g. a text or HTML error page saved under the name),
    objects other than tensors that a ``weights_only`` load refuses (then, and only then, that
    ``weights_only=False`` reads a trusted file), or the error's own first line (for a
    ``weights_only`` load, the unpickler's, not torch's advice to load unsafely)."""
    if isinstance(error, EOFError):
        return "the file is empty or cut short (EOFError)"
    head = foreign_file_head(path) if path is not None else None
    if head is not None:
        return (f"it is not a PyTorch file (neither a zip archive nor a pickle; it starts with "
                f"{head!r})")
    text = str(error)
    marker = "WeightsUnpickler error:"
    detail = text.split(marker, 1)[1] if marker in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    first = re.split(r"(?<=\.)\s", lines[0])[0][:200] if lines else ""  # its first sentence
    if first.startswith("Unsupported global"):  # a valid file that holds other objects
        return (f"it holds objects other than tensors ({first.split(' was not')[0]}); if you "
                "trust the file, load it with weights_only=False")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def foreign_file_head(path, size: int = 16) -> bytes | None:
    """The first bytes of the file at ``path`` when it is not a PyTorch file at all (neither a
    zip archive, PyTorch's format since 1.6, nor a pickle, the older one); None for a file that
    may be one, or that is empty or unreadable (the caller's error then stands)."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
    except OSError:
        return None
    return head if head and not head.startswith((b"PK", b"\x80")) else None


def read_checkpoint(path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path`` (raw names; the container is unwrapped: a
    ``state_dict`` / ``model`` entry, else the dict itself). Clear errors for a missing file or a
    file that is not a PyTorch checkpoint."""
    return read_checkpoint_and_arguments(path, None, weights_only)[0]


#: never taken from a training checkpoint's model_kwargs: create_model's own arguments and the
#: training-only settings (regularisation, the NaN guard that syncs the device at every layer)
_NOT_INHERITED = {"checkpoint_path", "pretrained_path", "reset_head", "strict", "weights_only",
                  "num_classes", "features_only", "out_indices", "drop_rate", "drop_path_rate",
                  "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "hc_nan_guard"}


def read_checkpoint_and_arguments(path, model_name: str | None,
                                  weights_only: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """:func:`read_checkpoint`'s tensors, and the model keywords a cvkit training checkpoint of
    the preset ``model_name`` was trained with (its ``hyper_parameters['model_kwargs']``, e.g.
    ``gcp_iters=3``, which no tensor shows; not the training-only ones, ``drop_rate``...), or
    that tools/convert_checkpoint.py recorded; ``{}`` for any other file or model."""
    from cvkit.models.registry import TIMM_PREFIX

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: "
                              f"{load_failure(e, path)}") from None
    arguments = {}
    # a Lightning checkpoint's entry, or the same as an attribute of a plain state dict (as torch's
    # ``_metadata``; tools/convert_checkpoint.py), which dict consumers do not see
    hp = (obj.get("hyper_parameters", getattr(obj, "hyper_parameters", None))
          if isinstance(obj, dict) else None)
    if (model_name is not None and isinstance(hp, dict)
            and str(hp.get("model_name", "")).removeprefix(TIMM_PREFIX) == model_name
            and isinstance(hp.get("model_kwargs"), dict)):
        arguments = {k: v for k, v in hp["model_kwargs"].items() if k not in _NOT_INHERITED}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (keys: {list(obj)[:5]})")
    return tensors, arguments


def save_state_dict(state_dict: dict[str, torch.Tensor], path) -> None:
    """Write ``state_dict`` atomically (:func:`cvkit.atomic_write.atomic_write`)."""
    with atomic_write(path) as f:
        torch.save(state_dict, f)


def _head_prefix(model: nn.Module) -> str | None:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head and name:
            return name + "."
    return None


def _listing(title: str, items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit]) + (f", ... and {len(items) - limit} more"
                                        if len(items) > limit else "")
    return f"{len(items)} {title} ({shown})"


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True,
                    reset_head: bool = False, source: str = "checkpoint") -> LoadResult:
    """Load a state dict in any supported format into ``model`` with checked keys and shapes.

    ``strict``: missing and unexpected keys are errors (shape mismatches always are).
    ``reset_head``: the model keeps its freshly initialised classifier when the checkpoint's has
    another size or the checkpoint has none. A model without a classifier (``num_classes=0``)
    ignores the checkpoint's, as timm does. A ``features_only`` wrapper is loaded through its
    ``model``; the keys of the layers it pruned (classifier, pooling, later stages:
    :func:`cvkit.models.pruning.pruned_away`) are ignored, any other key it lacks is unexpected.
    A ViT checkpoint of another image or patch size is resampled to the model's
    (:func:`~cvkit.models.convert.fit_to_model`). ``torch.compile``, ``nn.DataParallel`` and
    ``DistributedDataParallel`` wrappers are loaded through the model they wrap. A model built on
    the meta device (deferred initialisation) takes the checkpoint's tensors themselves
    (``load_state_dict(assign=True)``, in the model's dtypes): copying into meta tensors would
    keep no value; what the checkpoint lacks (``strict=False``) stays on the meta device.
    """
    from timm.models._features import FeatureGetterNet

    from cvkit.models.pruning import pruned_away

    model = unwrap_model(model)
    pruned = isinstance(model, FeatureGetterNet)
    target = model.model if pruned else model
    sd = fit_to_model(to_cvkit(state_dict), target)
    own = target.state_dict()
    head = _head_prefix(target)
    own_head = [k for k in own if head and k.startswith(head)]
    ckpt_head = [k for k in sd if head and k.startswith(head)]
    if ckpt_head and not own_head:  # a model without a classifier (or a pruned one)
        sd = {k: v for k, v in sd.items() if k not in ckpt_head}
    head_mismatch = [k for k in sd if head and k.startswith(head) and k in own
                     and sd[k].shape != own[k].shape]
    class_mismatch = [k for k in head_mismatch if sd[k].shape[0] != own[k].shape[0]]
    did_reset = False
    if head_mismatch and (reset_head or class_mismatch):
        if not reset_head:
            k = class_mismatch[0]
            raise CheckpointError(
                f"{source}: the checkpoint's classifier has {sd[k].shape[0]} classes "
                f"({k} {list(sd[k].shape)}) but the model's has {own[k].shape[0]} "
                f"({list(own[k].shape)}); build the model with num_classes={sd[k].shape[0]}, "
                f"or pass reset_head=True to keep a new {own[k].shape[0]}-class head")
        sd = {k: v for k, v in sd.items() if not k.startswith(head)}
        did_reset = True
    headless = own_head and not any(k.startswith(head) for k in sd)  # nothing loads into it
    did_reset = did_reset or bool(headless and reset_head)
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")
               and not (did_reset and k in own_head)]
    # a features_only model ignores what its pruning removed (cvkit.models.pruning), nothing else;
    # a wrapper of a model that does not record it ignores every key it lacks
    unexpected = [k for k in sd if k not in own
                  and not (pruned and pruned_away(target, k) in (True, None))]
    mismatched = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
                  for k in sd if k in own and sd[k].shape != own[k].shape]
    problems = []
    if strict and missing:
        problems.append(_listing("missing keys", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatches", mismatched))
    if problems:
        text = f"{source} does not match the model: " + "; ".join(problems)
        hints = _hints(mismatched, missing, unexpected, own_head if headless else [],
                       list(sd), list(own))
        raise CheckpointError(text + "".join(f"; {python}" for python, _ in hints),
                              text + "".join(f"; {tool}" for _, tool in hints))
    meta = any(t.is_meta for t in own.values())
    filled = {k: v.to(own[k].dtype) if meta else v for k, v in sd.items() if k in own}
    for k in own:  # older checkpoints lack BatchNorm's num_batches_tracked: keep the model's
        if k not in filled and k.endswith("num_batches_tracked"):
            filled[k] = torch.zeros_like(own[k], device="cpu") if own[k].is_meta else own[k]
    target.load_state_dict(filled, strict=False, assign=meta)
    return LoadResult(missing, unexpected, did_reset)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside the wrappers that share its weights under a prefix: ``torch.compile``'s
    ``_orig_mod``, ``nn.DataParallel`` / ``DistributedDataParallel``'s ``module``."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, (nn.DataParallel, DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")
_RESNET_DEPTHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
                  (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152}
_REDUCTION_LIKE = re.compile(r"reduc|conv_dr|_dr\.")  # layer_reduce, dimension_reduction, ...


def _resnet_blocks(keys) -> set[tuple[int, int]]:
    return {(int(m.group(1)), int(m.group(2))) for k in keys if (m := _BLOCK.match(k))}


def _depth_hint(missing: list[str], unexpected: list[str], own_keys: list[str],
                ckpt_keys: list[str]) -> tuple[str, str] | None:
    """A hint when whole ResNet blocks ``layerX.Y`` are missing or unexpected: the checkpoint is
    of another depth (named when its blocks per stage are a torchvision depth's)."""
    ckpt = _resnet_blocks(ckpt_keys)
    lacking = _resnet_blocks(missing) - ckpt                   # not one key of it in the file
    extra = _resnet_blocks(unexpected) - _resnet_blocks(own_keys)  # not one key in the model
    if not lacking and not extra:
        return None
    counts = tuple(1 + max((i for s, i in ckpt if s == stage), default=-1)
                   for stage in (1, 2, 3, 4))
    bottleneck = any(re.match(r"^layer\d\.\d+\.conv3\.", k) for k in ckpt_keys)
    depth = _RESNET_DEPTHS.get((bottleneck, counts))
    blocks = ", ".join(f"layer{s}.{i}" for s, i in sorted(lacking | extra)[:4])
    what = (f"the checkpoint is a ResNet-{depth} (blocks per stage {', '.join(map(str, counts))})"
            if depth else f"the checkpoint is a network of another depth (blocks per stage "
                          f"{', '.join(map(str, counts))})")
    text = f"whole blocks differ ({blocks}{', ...' if len(lacking | extra) > 4 else ''}): {what}"
    if depth:
        name = (("eca_" if any(".eca." in k for k in ckpt_keys) else "") + f"resnet{depth}"
                + ("_gcp" if any(k.startswith("global_pool.reduce.") for k in ckpt_keys) else ""))
        return (f"{text}: build {name} (or its depth in your variant)",
                f"{text}: give --model {name} (or its depth in your variant)")
    return (f"{text}: build the preset of its depth", f"{text}: give the preset of its depth as "
            "--model")


def _hints(mismatched: list[str], missing: list[str], unexpected: list[str],
           headless: list[str], ckpt_keys: list[str] = (),
           own_keys: list[str] = ()) -> list[tuple[str, str]]:
    """What to do about a mismatch whose cause the keys show: (in Python terms, in the tools'
    terms) per cause. ``ckpt_keys`` / ``own_keys``: the (converted) checkpoint's and the model's
    keys."""
    hints = []
    depth = _depth_hint(missing, unexpected, list(own_keys), list(ckpt_keys))
    if depth is not None:
        hints.append(depth)
    if any(".eca.conv.weight" in m for m in mismatched):
        hints.append(("ECA kernel sizes differ: cvkit.create_model(name, checkpoint_path=...) reads "
                      "them from the checkpoint (or pass eca_k_size=...)",
                      "ECA kernel sizes differ: the tools read them from the checkpoint; drop "
                      "--model-arg eca_k_size"))
    if any(k.endswith(".eca.conv.weight") for k in unexpected):
        hints.append(("the checkpoint has ECA modules: build an eca_* preset (or pass eca=True)",
                      "the checkpoint has ECA modules: give an eca_* preset as --model"))
    elif (any(k.endswith(".eca.conv.weight") for k in missing)
          and not any(k.endswith(".eca.conv.weight") for k in ckpt_keys)):
        hints.append(("the model has ECA modules the checkpoint lacks: build the preset without "
                      "eca_", "the model has ECA modules the checkpoint lacks: give a --model "
                      "without eca_"))
    if any(k.startswith(("global_pool.reduce.", "gcp.")) for k in unexpected):
        hints.append(("the checkpoint has an iSQRT-COV head: build the model with "
                      "global_pool='gcp' (or a *_gcp preset)",
                      "the checkpoint has an iSQRT-COV head: pass --model-arg global_pool=gcp "
                      "(or a *_gcp preset as --model)"))
    elif any(k.startswith(("global_pool.reduce.", "gcp.")) for k in missing) and (
            unmapped := [k for k in unexpected if _REDUCTION_LIKE.search(k)]):
        hints.append((f"the checkpoint's reduction layer has names cvkit does not map "
                      f"({unmapped[0]}, ...): rename them to global_pool.reduce.0.* (conv) and "
                      f"global_pool.reduce.1.* (BN)",
                      f"the checkpoint's reduction layer has names cvkit does not map "
                      f"({unmapped[0]}, ...): rename them to global_pool.reduce.0.* (conv) and "
                      f"global_pool.reduce.1.* (BN)"))
    elif any(k.startswith(("global_pool.reduce.", "gcp.")) for k in missing):
        hints.append(("the model has an iSQRT-COV head the checkpoint lacks: build it without "
                      "global_pool='gcp', or load with strict=False, reset_head=True to train the "
                      "head and a new classifier from scratch",
                      "the model has an iSQRT-COV head the checkpoint lacks: give a --model "
                      "without _gcp and no --model-arg global_pool=gcp"))
    streams = (".streams.", ".hc_attn.", ".hc_mlp.")  # CNN blocks' / ViT sub-layers' connections
    if any(s in k for k in unexpected for s in streams):
        hints.append(("the checkpoint has hyper-/frac-connections: build the model with the "
                      "hc_rate / fc_rate (hc_dynamic) it was trained with (or its *_hc preset)",
                      "the checkpoint has hyper-/frac-connections: pass --model-arg hc_rate=N "
                      "(fc_rate, hc_dynamic) as it was trained, or its *_hc preset as --model"))
    elif any(s in k for k in missing for s in streams):
        hints.append(("the model has hyper-/frac-connections the checkpoint lacks: build it "
                      "without hc_rate / fc_rate", "the model has hyper-/frac-connections the "
                      "checkpoint lacks: give a --model without them"))
    if headless and set(headless) <= set(missing):
        hints.append(("the checkpoint has no classifier: pass reset_head=True to keep a new one, "
                      "or num_classes=0 for none",
                      "the checkpoint has no classifier, only a backbone (tools/convert_checkpoint.py "
                      "reads it as one with --model-arg num_classes=0)"))
    return hints


def load_checkpoint(model: nn.Module, path, strict: bool = True, reset_head: bool = False,
                    weights_only: bool = True) -> LoadResult:
    """Load the checkpoint file at ``path`` (any supported format) into ``model``.

    See :func:`load_state_dict` for ``strict`` and ``reset_head``; ``weights_only=False`` is an
    explicit opt-out of safe loading for trusted files that hold other objects.
    """
    return load_state_dict(model, read_checkpoint(path, weights_only), strict=strict,
                           reset_head=reset_head, source=str(path))
