"""Any cvkit model as an MMDetection backbone, through its ``features_only`` form.

    backbone=dict(type='CvkitBackbone', model_name='eca_resnet50', out_indices=(1, 2, 3, 4),
                  frozen_stages=1, norm_eval=True,
                  init_cfg=dict(type='Pretrained', checkpoint='eca_resnet50_imagenet.pth'))

The backbone IS ``cvkit.create_model(model_name, features_only=True, out_indices=...)`` (kept as
``self.body``): there is no second definition of any network. Indices follow cvkit/timm's
``feature_info`` (for ResNets 0 = stem at stride 2, 1..4 = layer1..layer4, so ``(1, 2, 3, 4)`` are
mmdet's C2..C5; for ViTs they are block indices). ``init_cfg=dict(type='Pretrained', checkpoint=p)``
loads ``p`` with :func:`cvkit.load_checkpoint`, so every format it reads (cvkit/Lightning, timm,
torchvision, the official ECA-Net release) initialises a detector; ``mmdet.apis.init_detector``
clears ``init_cfg`` as it does for mmdet's own backbones.
"""
from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import torch
from mmengine.model import BaseModule
from mmdet.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from cvkit.tool_errors import OptionError


def _pretrained_path(init_cfg) -> str | None:
    if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
        return os.path.expanduser(str(init_cfg.get("checkpoint", "")))
    return None


def with_checkpoint_architecture(model_name: str, model_kwargs: Mapping, state: Mapping,
                                 source: str, trained_with: Mapping | None = None) -> dict:
    """``model_kwargs`` with the architecture keywords the weights ``state`` fix for
    ``model_name`` (ECA kernel sizes, GCP width, and a training checkpoint's backbone
    ``model_kwargs``, ``trained_with``, e.g. ``hc_rate``:
    ``cvkit.models.factory.checkpoint_arguments``): the checkpoint's win, as its weights load
    into nothing else; a config value they replace is a warning naming both."""
    from cvkit.models.convert import to_cvkit
    from cvkit.models.factory import checkpoint_arguments
    from cvkit.models.registry import get_preset, same_architecture_value

    _check_model_name(model_name)
    kwargs = dict(model_kwargs)
    preset = get_preset(model_name)
    fixed = checkpoint_arguments(preset, to_cvkit(dict(state)), kwargs, dict(trained_with or {}),
                                 features_only=True)
    fixed.pop("num_classes", None)  # a backbone has no classifier
    for key, value in fixed.items():
        others = {k: v for k, v in kwargs.items() if k != key}
        if key in kwargs and not same_architecture_value(preset, key, kwargs[key], value, **others):
            warnings.warn(f"CvkitBackbone({model_name!r}): {key}={value!r} from {source} replaces "
                          f"the config's {kwargs[key]!r}", stacklevel=2)
    return {**kwargs, **fixed}


def is_cvkit_backbone(backbone_cfg) -> bool:
    return str((backbone_cfg or {}).get("type", "")).endswith("CvkitBackbone")


def fit_backbone_config(backbone_cfg, detector_state: Mapping, source: str) -> None:
    """Set in ``backbone_cfg`` (a detector config's ``model.backbone``) the architecture keywords
    the backbone weights of a detector checkpoint fix, so the detector built from the config loads
    them (e.g. the official ECA-Net release's kernel sizes in a converted detector), and drop its
    ``init_cfg`` checkpoint: the detector's weights replace it (and its sizes must not win). Only
    for a ``CvkitBackbone``."""
    from cvkit.det.convert import CVKIT_BACKBONE_PREFIX as PREFIX  # where the network sits

    if not is_cvkit_backbone(backbone_cfg):
        return
    body = {k[len(PREFIX):]: v for k, v in detector_state.items() if k.startswith(PREFIX)}
    if body:
        backbone_cfg["model_kwargs"] = with_checkpoint_architecture(
            backbone_cfg["model_name"], backbone_cfg.get("model_kwargs") or {}, body, source)
        backbone_cfg["init_cfg"] = None


def _check_model_name(model_name: str) -> None:
    import cvkit

    known = cvkit.list_models()
    if model_name not in known:
        close = [m for m in known if model_name.split("_")[0] in m][:8]
        raise OptionError(f"unknown cvkit backbone model_name={model_name!r} (model.backbone in the "
                          f"detector config); cvkit models include {close or known[:8]} - see "
                          "cvkit.list_models()")


@MODELS.register_module()
class CvkitBackbone(BaseModule):
    """A cvkit model's feature maps for mmdet necks (tuple of NCHW maps at ``out_indices``).

    Args:
        model_name: a name from ``cvkit.list_models()``.
        out_indices: feature indices in the model's ``feature_info``.
        frozen_stages: parameters that feature ``frozen_stages`` depends on (stem and every stage
            up to it, e.g. 0 = the stem only and 1 = stem + layer1 on a ResNet, as mmdet's ResNet)
            get ``requires_grad=False`` and their modules stay in eval mode (BatchNorm statistics
            included); any feature index of the model, whether or not it is in ``out_indices``;
            -1 freezes nothing.
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training, as mmdet
            does for ImageNet-pretrained ResNets at small per-GPU batches.
        model_kwargs: further keywords for ``cvkit.create_model`` (e.g. ``eca_k_size``,
            ``drop_path_rate``, ``dynamic_img_size``). The architecture keywords a checkpoint
            fixes (ECA kernel sizes, GCP width) come from the ``init_cfg`` checkpoint when there
            is one (a config value they replace is a warning); ``self.model_kwargs`` holds
            the keywords the backbone was built with.
        probe_size: input side used once to find which parameters each feature depends on
            (default: 64, else the model's ``pretrained_cfg['input_size']``).
        init_cfg: ``dict(type='Pretrained', checkpoint=path)`` loads a cvkit-readable checkpoint.
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (1, 2, 3, 4),
                 frozen_stages: int = -1, norm_eval: bool = False, model_kwargs: dict | None = None,
                 probe_size: int | None = None, init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        self.model_name = model_name
        _check_model_name(model_name)
        checkpoint = _pretrained_path(init_cfg)
        # a checkpoint present now is read while building (it may fix architecture details);
        # one that is missing now fails clearly in init_weights(), where mmengine loads weights
        self._loaded_from = checkpoint if checkpoint and os.path.isfile(checkpoint) else None
        self.model_kwargs = dict(model_kwargs or {})
        if self._loaded_from:  # read once: its tensors fix the architecture, then load into it
            from cvkit.models.checkpoint import read_checkpoint_and_arguments
            from cvkit.models.factory import model_from_state
            from cvkit.models.registry import get_preset

            weights_only = self.model_kwargs.pop("weights_only", True)  # create_model's, not the model's
            state, trained_with = read_checkpoint_and_arguments(
                self._loaded_from, get_preset(model_name).name, weights_only)
            self.model_kwargs = with_checkpoint_architecture(
                model_name, self.model_kwargs, state, self._loaded_from, trained_with)
            self.body = model_from_state(model_name, state, self._loaded_from, features_only=True,
                                         out_indices=tuple(out_indices), **self.model_kwargs)
        else:
            import cvkit

            self.body = cvkit.create_model(model_name, features_only=True,
                                           out_indices=tuple(out_indices), **self.model_kwargs)
        self.out_indices = tuple(out_indices)
        self.out_channels = list(self.body.feature_info.channels())
        self.num_features = len(self.body.feature_info.info)  # every level, not just the outputs
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages < self.num_features):
            raise ValueError(f"CvkitBackbone({model_name!r}): frozen_stages={frozen_stages!r} must be "
                             f"-1 (nothing frozen) or a feature index 0..{self.num_features - 1} of "
                             "the model's feature_info")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.probe_size = probe_size
        self._frozen_module_names: list[str] = []
        self._freeze_stages()

    # -- freezing -----------------------------------------------------------------------------
    def _probe_sizes(self) -> list[int]:
        """Input sides to try: ``probe_size``, else a cheap 64 px and then the model's own size
        (ViTs without ``dynamic_img_size`` accept only that)."""
        if self.probe_size is not None:
            return [int(self.probe_size)]
        cfg = getattr(self.body, "pretrained_cfg", None) or getattr(
            getattr(self.body, "model", None), "pretrained_cfg", None) or {}
        return [64, int(cfg.get("input_size", (3, 224, 224))[-1])]

    def _params_feeding(self, feature_index: int) -> set[str]:
        """Names of the parameters that the given feature map depends on (found by autograd).

        This works for any cvkit network (ResNet stages, MobileNetV2 blocks, ViT blocks) without
        knowing how its modules are named: stage ``k`` depends on exactly the stem and stages <= k.
        """
        named = [(n, p) for n, p in self.body.named_parameters() if p.requires_grad]
        was_training = self.body.training
        self.body.eval()
        try:
            for attempt, size in enumerate(self._probe_sizes()):
                try:
                    with torch.enable_grad():  # the one feature, whether it is an output or not
                        feat = self.body.model.forward_intermediates(
                            torch.zeros(1, 3, size, size), indices=[feature_index],
                            norm=self.body.norm, output_fmt=self.body.output_fmt,
                            intermediates_only=True)[0]
                        grads = torch.autograd.grad(feat.float().sum(), [p for _, p in named],
                                                    allow_unused=True)
                    break
                except (ValueError, RuntimeError, AssertionError):
                    if attempt == len(self._probe_sizes()) - 1:
                        raise
        finally:
            self.body.train(was_training)
        return {n for (n, _), g in zip(named, grads) if g is not None}

    def _freeze_stages(self) -> None:
        """Freeze the parameters feeding feature ``frozen_stages`` and record, by name, the modules
        that ``train()`` keeps in eval mode: those whose whole parameter tree is frozen (with their
        parameter-free children such as DropPath / Dropout), never one with a trainable
        descendant (a ViT holds ``pos_embed`` itself, yet its later blocks train)."""
        if self.frozen_stages < 0:
            return
        frozen = self._params_feeding(self.frozen_stages)
        for name, param in self.body.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
        self._frozen_module_names = [
            name for name, m in self.body.named_modules()
            if any(True for _ in m.parameters())
            and all(n in frozen for n, _ in m.named_parameters(prefix=name))]

    def train(self, mode: bool = True) -> "CvkitBackbone":
        super().train(mode)
        if mode:
            # looked up by name each time: SyncBatchNorm conversion replaces the module objects
            frozen = set(self._frozen_module_names)
            for name, m in self.body.named_modules():
                if name in frozen:
                    m.eval()
            if self.norm_eval:
                for m in self.body.modules():
                    if isinstance(m, _BatchNorm):
                        m.eval()
        return self

    # -- weights ------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Load ``init_cfg['checkpoint']`` with cvkit's loader; other init_cfg types go to mmengine."""
        path = _pretrained_path(self.init_cfg)
        if path is None:
            super().init_weights()
            return
        if path != self._loaded_from:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CvkitBackbone({self.model_name!r}) init_cfg checkpoint "
                                        f"not found: {path!r}")
            import cvkit

            cvkit.load_checkpoint(self.body, path)
            self._loaded_from = path
        self._is_init = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))
