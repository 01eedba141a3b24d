"""Train and evaluate MMDetection detectors with Lightning, driven by an mmdet config file.

The config is an ordinary mmdet 3 config (``configs/detection/*.py``): the same file works with
``mmdet.apis.init_detector`` and mmengine's ``Runner``. From it this task takes

* the detector (``model``: backbone, neck, heads, ``data_preprocessor``, losses) built by mmdet;
* the data: mmdet datasets and pipelines (``train_dataloader`` / ``val_dataloader`` /
  ``test_dataloader``) in plain torch ``DataLoader``s with mmengine's ``pseudo_collate``, so Lightning
  can shard them for DDP;
* the optimiser (``optim_wrapper``, built by mmengine with its ``paramwise_cfg``; ``clip_grad``) and
  the LR schedule (``param_scheduler``: e.g. linear warmup per iteration and x0.1 steps per epoch,
  stepped exactly as mmengine's ``ParamSchedulerHook`` does); ``auto_scale_lr`` (linear scaling
  rule: lr x global batch / base_batch_size, Goyal et al. 2017);
* the evaluation (``val_evaluator`` / ``test_evaluator``: mmdet's ``CocoMetric``, i.e. pycocotools'
  COCOeval: AP, AP50, AP75, APs/m/l for ``bbox`` and ``segm``), run on every validation.

AMP and DDP are Lightning's (``Trainer(precision='16-mixed' | 'bf16-mixed', strategy='ddp')``).
Under AMP the backbone and neck run in the low precision; the heads (box coding, NMS, RoIAlign,
losses) run in fp32, as mmdet 2's ``force_fp32`` did: mmcv's CPU kernels have no bf16 version.
"""
from __future__ import annotations

import copy
import math
import os
import os.path as osp
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import lightning as L
import torch
from torch import nn

from cvkit.atomic_write import atomic_write
from cvkit.det.coco_metric import fill_empty_coco_results, restrict_to_dataset_images
from cvkit.models.checkpoint import CheckpointError, foreign_file_head, load_failure
from cvkit.tool_errors import OptionError, option_errors

METRIC_PREFIX = "coco/"


# -- config --------------------------------------------------------------------------------------
def load_det_config(config: Any, cfg_options: Mapping[str, Any] | None = None):
    """An mmengine ``Config`` from a path (or a Config/dict), with mmdet's scope and cvkit's modules.

    Raises a one-line error naming the file when it is missing or does not parse.
    """
    from mmengine.config import Config
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    import cvkit.det.register  # noqa: F401  cvkit's backbones, neck and dataset in mmdet's registries

    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, Mapping):
        cfg = Config(dict(config))
    else:
        path = os.fspath(config)
        if not osp.isfile(path):
            raise FileNotFoundError(f"detection config not found: {path!r}")
        try:
            cfg = Config.fromfile(path)
        except Exception as e:  # noqa: BLE001 - syntax/_base_ errors surface with the file name
            raise ValueError(f"cannot read detection config {path!r}: {type(e).__name__}: {e}") from e
    if cfg_options:
        merge_cfg_options(cfg, cfg_options)
    return cfg


def merge_cfg_options(cfg, cfg_options: Mapping[str, Any]) -> None:
    """``cfg.merge_from_dict(cfg_options)``, except that an option under a key whose value is
    ``None`` sets it (mmengine refuses to merge into ``None``), e.g.
    ``model.backbone.init_cfg.checkpoint=FILE`` on ``init_cfg=None``; an ``init_cfg`` so set with
    a ``checkpoint`` and no ``type`` is ``Pretrained``. A value that does not merge is an
    OptionError."""
    from mmengine.config import ConfigDict

    created = []  # dotted keys whose None became a dict
    for key, value in cfg_options.items():
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not hasattr(node, "get") or part not in node:  # a list index, a new key: as mmengine
                break
            if node[part] is None:
                if i < len(parts) - 1 or isinstance(value, Mapping):
                    node[part] = ConfigDict()
                    created.append(parts[:i + 1])
                break
            node = node[part]
    try:
        cfg.merge_from_dict(dict(cfg_options))
    except (TypeError, AttributeError) as e:  # e.g. a dict option on a string, a list item
        raise OptionError(f"cfg_options {dict(cfg_options)!r}: {e}") from None
    for parts in created:
        if parts[-1] == "init_cfg":
            init_cfg = cfg
            for part in parts:
                init_cfg = init_cfg[part]
            if "checkpoint" in init_cfg and "type" not in init_cfg:
                init_cfg["type"] = "Pretrained"


def leaf_datasets(dataset_cfg) -> list:
    """The dataset configs inside dataset wrappers (``dataset`` of RepeatDataset /
    ClassBalancedDataset / MultiImageMixDataset, ``datasets`` of ConcatDataset), in order;
    ``[dataset_cfg]`` when it wraps none."""
    if dataset_cfg.get("dataset") is not None:
        return leaf_datasets(dataset_cfg["dataset"])
    if isinstance(dataset_cfg.get("datasets"), (list, tuple)):
        return [leaf for inner in dataset_cfg["datasets"] for leaf in leaf_datasets(inner)]
    return [dataset_cfg]


def _relative_to(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` when it lies under it (compared by path components:
    ``data/coco2017/x`` is not under ``data/coco``), else None."""
    if not root or not path:
        return None
    rel = osp.relpath(osp.normpath(path), osp.normpath(root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or osp.isabs(rel):
        return None
    return rel


def set_data_root(cfg, data_root: str) -> None:
    """Point every dataset of ``cfg`` (inside dataset wrappers too) and the evaluators'
    ``ann_file`` (when it lies under a dataset's old ``data_root``) at ``data_root``."""
    data_root = osp.join(os.fspath(data_root), "")
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if not loader:
            continue
        old_roots = []
        for dataset in leaf_datasets(loader["dataset"]):
            old_roots.append(dataset.get("data_root") or "")
            dataset["data_root"] = data_root
        evaluator = cfg.get(f"{split}_evaluator") or []
        for metric in evaluator if isinstance(evaluator, list) else [evaluator]:
            ann = metric.get("ann_file")
            if not isinstance(ann, str):
                continue
            rel = next((r for r in (_relative_to(ann, root) for root in old_roots) if r), None)
            if rel is not None:
                metric["ann_file"] = osp.join(data_root, rel)


def build_detector(cfg) -> nn.Module:
    """``MODELS.build(cfg.model)``. A config mistake (an unknown type, a keyword or value the
    module refuses, a neck whose ``in_channels`` are not the backbone's output channels, anchor or
    RoI strides that are not the backbone's) is one OptionError naming the config file and entry."""
    from mmdet.registry import MODELS

    where = cfg.filename or "the config"
    try:
        detector = MODELS.build(cfg.model)
    except (OptionError, CheckpointError):  # already one line; a checkpoint's is no config's
        raise
    except (KeyError, TypeError, AssertionError, ValueError) as e:
        raise OptionError(f"cannot build the detector of {where}: {_failed_entry(cfg.model, e)}"
                          f"{str(e) or type(e).__name__}") from e
    _check_neck_channels(cfg.model, detector, where)
    _check_feature_strides(cfg.model, detector, where)
    return detector


def _config_entries(node, path: str) -> Iterator[tuple[str, Mapping]]:
    """``(dotted path, entry)`` for every dict with a ``type`` in ``node``."""
    if isinstance(node, Mapping):
        if "type" in node:
            yield path, node
        for key, value in node.items():
            yield from _config_entries(value, f"{path}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _config_entries(value, f"{path}.{i}")


def _failed_entry(model_cfg, error: BaseException) -> str:
    """``"model.backbone (CvkitBackbone): "``: the innermost config entry mmengine's
    ``build_from_cfg`` was building when ``error`` was raised (its ``cfg`` in the traceback),
    located in ``model_cfg``; ``""`` when there is none."""
    import traceback

    built = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "build_from_cfg" and "mmengine" in frame.f_code.co_filename:
            built = frame.f_locals.get("cfg")
    if not isinstance(built, Mapping) or "type" not in built:
        return ""
    kind = built["type"]
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))
    same_type = [(p, e) for p, e in _config_entries(model_cfg, "model") if e["type"] == kind]
    # the parent may add keys (e.g. train_cfg) before building: every key of the entry matches
    same = [p for p, e in same_type if all(k in built and built[k] == v for k, v in e.items())]
    path = (same or [p for p, _ in same_type] or [None])[0]
    return f"{path} ({name}): " if path else f"{name}: "


def _check_neck_channels(model_cfg, detector: nn.Module, where: str) -> None:
    """The neck's ``in_channels`` are the backbone's ``out_channels`` (when it states them): a
    mismatch otherwise fails at the first forward, deep in torch."""
    neck = model_cfg.get("neck")
    channels = getattr(getattr(detector, "backbone", None), "out_channels", None)
    if not isinstance(neck, Mapping) or not isinstance(channels, (list, tuple)):
        return
    given, channels = neck.get("in_channels"), [int(c) for c in channels]
    if isinstance(given, int) and len(channels) == 1:
        fits = given == channels[0]
    elif isinstance(given, (list, tuple)):
        fits = list(given) == channels
    else:  # an int for one map of several (a neck that picks it), or no in_channels
        return
    if not fits:
        backbone = model_cfg.backbone
        what = ", ".join(f"{k} {backbone[k]!r}" for k in ("model_name", "out_indices")
                         if k in backbone)
        raise OptionError(f"cannot build the detector of {where}: model.neck.in_channels={given!r} "
                          f"does not match the output channels of model.backbone "
                          f"({what or backbone.get('type')}): {channels}")


# the config entries whose strides are the neck's output levels, in order (mmdet's names)
_LEVEL_STRIDES = {"anchor_generator": "strides", "prior_generator": "strides",
                  "bbox_roi_extractor": "featmap_strides", "mask_roi_extractor": "featmap_strides"}


def _check_feature_strides(model_cfg, detector: nn.Module, where: str) -> None:
    """Anchor / prior / RoI-extractor strides in the config are the strides of the maps a
    CvkitBackbone gives, through an FPN (``start_level`` / ``end_level``; each extra level doubles
    the last) or no neck, to the nearest power of two (YOLACT's 550/69, 550/5). A ``*_gcp``
    ResNet preset runs its last stage at stride 1 (the paper's 14x14 map): its C5 is at stride 16, and
    anchors assumed at 32 silently sat at twice their image positions. Other backbones and necks
    (SimpleFPN rescales) and other strides (SOLO's mask head, HTC's semantic head) are not
    checked."""
    info = getattr(getattr(getattr(detector, "backbone", None), "body", None), "feature_info", None)
    neck = model_cfg.get("neck")
    if info is None or not (neck is None or (isinstance(neck, Mapping) and neck.get("type") == "FPN")):
        return
    levels = [int(r) for r in info.reduction()]
    if neck:
        end = int(neck.get("end_level", -1))
        stop = None if end in (-1, len(levels) - 1) else end + 1
        levels = levels[int(neck.get("start_level", 0)):stop]
        while levels and len(levels) < int(neck.get("num_outs", 0)):
            levels.append(2 * levels[-1])
    for path, entry in _config_entries(model_cfg, "model"):
        key = _LEVEL_STRIDES.get(path.rsplit(".", 1)[-1])
        given = entry.get(key) if key else None
        if not isinstance(given, (list, tuple)) or not given:
            continue
        first = [float(s[0] if isinstance(s, (list, tuple)) else s) for s in given]
        if len(first) > len(levels) or any(a <= 0 or 2 ** round(math.log2(a)) != b
                                           for a, b in zip(first, levels)):
            backbone = model_cfg.backbone
            what = ", ".join(f"{k} {backbone[k]!r}" for k in ("model_name", "out_indices")
                             if k in backbone)
            raise OptionError(
                f"cannot build the detector of {where}: {path}.{key}={list(given)!r} are not "
                f"the strides of the maps model.backbone ({what}) gives"
                f"{' through model.neck (FPN)' if neck else ''}: {levels}"
                + (" (a GCP ResNet's last stage runs at stride 1: use the plain model or these "
                   "strides)" if _gcp_resnet(backbone) else ""))


def _gcp_resnet(backbone_cfg) -> bool:
    """Whether a CvkitBackbone config builds a ResNet with an iSQRT-COV head (a ``*_gcp`` preset
    or ``model_kwargs.global_pool='gcp'``), whose last stage runs at stride 1."""
    from cvkit.models.registry import PRESETS, TIMM_PREFIX

    preset = PRESETS.get(str(backbone_cfg.get("model_name", "")).removeprefix(TIMM_PREFIX))
    kwargs = backbone_cfg.get("model_kwargs") or {}
    pool = kwargs.get("global_pool", preset.kwargs.get("global_pool") if preset else None)
    return preset is not None and preset.family == "resnet" and pool == "gcp"


_UNTRUSTED_HINT = " (an mmengine Runner checkpoint? pass --trust-checkpoint if you trust it)"


def read_detector_state(path: str, trust: bool = False,
                        untrusted_hint: str = _UNTRUSTED_HINT) -> Mapping[str, torch.Tensor]:
    """The detector's state dict in a detector checkpoint: a cvkit Lightning ``.ckpt``
    (``detector.`` keys), an mmdet/mmengine checkpoint or a bare state dict. ``weights_only=True``
    unless ``trust`` (mmengine Runner checkpoints hold logger objects that only an unrestricted,
    trusted load can read); ``untrusted_hint`` ends the error of a load that fails without it."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"detector checkpoint not found: {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # noqa: BLE001
        hint = "" if trust or foreign_file_head(path) else untrusted_hint
        raise ValueError(f"cannot load detector checkpoint {path!r}: {load_failure(e, path)}{hint}"
                         ) from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: no state dict inside")
    if any(k.startswith("detector.") for k in state):
        state = {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}
    return state


def load_detector_weights(detector: nn.Module, path: str, trust: bool = False,
                          config: str | None = None,
                          state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Load a detector checkpoint (:func:`read_detector_state`; ``state``: already read from
    ``path``). Keys or shapes that do not fit are one error naming ``path``, ``config`` (the
    detector's config file) and the first keys."""
    if state is None:
        state = read_detector_state(path, trust)
    own = detector.state_dict()
    # checked before loading: load_state_dict raises a multi-line RuntimeError on shapes even when
    # not strict
    mismatched = [f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
                  for k, v in state.items()
                  if k in own and getattr(v, "shape", None) not in (None, own[k].shape)]
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        what = f"the detector of {config}" if config else "the detector"
        shapes = f"shape mismatches {mismatched[:5]} ({len(mismatched)}), " if mismatched else ""
        raise ValueError(f"{path} does not fit {what}: {shapes}missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    detector.load_state_dict(state, strict=True)


@contextmanager
def _quiet_init_dump() -> Iterator[None]:
    """mmengine's ``init_weights`` logs every parameter's initialisation (~400 lines for a Faster
    R-CNN) at INFO unless its logger has a file handler (its Runner gives it the run's log file):
    kept off the console here; warnings still show."""
    import logging

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_dataloader(loader_cfg, shuffle: bool | None = None) -> torch.utils.data.DataLoader:
    """A torch DataLoader over the mmdet dataset of ``loader_cfg`` with ``pseudo_collate``."""
    from mmengine.dataset import pseudo_collate
    from mmdet.registry import DATASETS

    loader_cfg = copy.deepcopy(loader_cfg)
    dataset = DATASETS.build(loader_cfg["dataset"])
    if hasattr(dataset, "full_init"):
        dataset.full_init()
    if shuffle is None:
        shuffle = bool((loader_cfg.get("sampler") or {}).get("shuffle", False))
    workers = int(loader_cfg.get("num_workers", 0))
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(loader_cfg.get("batch_size", 1)), shuffle=shuffle,
        num_workers=workers, collate_fn=pseudo_collate,
        persistent_workers=bool(loader_cfg.get("persistent_workers", False)) and workers > 0,
        drop_last=bool(loader_cfg.get("drop_last", False)), pin_memory=False)


def _class_heads(detector: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(config entry, head)`` for every head that classifies into the dataset's classes: the
    single-stage ``bbox_head`` / ``mask_head`` and the RoI head's ``bbox_head`` (one per stage of
    a cascade) and ``mask_head``. Not: RPN heads (one objectness class; mmdet's ``RPN`` detector
    keeps its RPNHead as ``bbox_head``), semantic heads, and the heads of text-prompted detectors
    (Grounding DINO, GLIP: ``num_classes`` counts text tokens)."""
    from mmdet.models.dense_heads import RPNHead

    if hasattr(detector, "language_model"):
        return []
    heads = []
    for name in ("bbox_head", "mask_head"):
        head = getattr(detector, name, None)
        if head is not None:
            heads.append((f"model.{name}", head))
    roi_head = getattr(detector, "roi_head", None)
    for name in ("bbox_head", "mask_head"):
        head = getattr(roi_head, name, None)
        if isinstance(head, (nn.ModuleList, list, tuple)):
            heads += [(f"model.roi_head.{name}.{i}", h) for i, h in enumerate(head)]
        elif head is not None:
            heads.append((f"model.roi_head.{name}", head))
    return [(path, head) for path, head in heads if not isinstance(head, RPNHead)
            and isinstance(getattr(head, "num_classes", None), int)]


def check_num_classes(detector: nn.Module, dataset, where: str, config: str = "the config") -> None:
    """Every class head's ``num_classes`` is the number of classes of ``dataset`` (its metainfo;
    the ``thing_classes`` of a panoptic one): more end in mmdet's ``results2json`` with a bare
    IndexError after the whole evaluation, fewer silently never predict the last classes. An
    OptionError naming both numbers and the entry."""
    meta = getattr(dataset, "metainfo", None) or {}
    classes = meta.get("thing_classes", meta.get("classes"))
    if classes is None:
        return
    for path, head in _class_heads(detector):
        if head.num_classes != len(classes):
            shown = ", ".join(map(str, list(classes)[:5])) + (", ..." if len(classes) > 5 else "")
            raise OptionError(
                f"{config}: {path}.num_classes={head.num_classes} but {where} has "
                f"{len(classes)} classes ({shown}): set {path}.num_classes={len(classes)} or the "
                f"dataset's metainfo classes")


# -- the task ------------------------------------------------------------------------------------
class DetectionTask(L.LightningModule):
    """Lightning training/evaluation of the mmdet detector described by ``config``.

    Args:
        config: path of an mmdet config (or a loaded Config).
        cfg_options: overrides in mmengine's dotted form, e.g. ``{'train_dataloader.batch_size': 4}``.
        data_root: moves every dataset (and evaluator annotation file) under this folder.
        load_from: detector weights to start from (see :func:`load_detector_weights`); otherwise
            the detector is initialised by its ``init_cfg`` (e.g. a cvkit backbone checkpoint).
        auto_scale_lr: apply the linear LR scaling rule; ``None`` follows ``auto_scale_lr.enable``.
        show_dir: test only: write a PNG per image with predicted boxes and masks into this folder.
        show_score_thr: minimum score of a drawn prediction.
    """

    def __init__(self, config: Any, cfg_options: Mapping[str, Any] | None = None,
                 data_root: str | None = None, load_from: str | None = None,
                 auto_scale_lr: bool | None = None, show_dir: str | None = None,
                 show_score_thr: float = 0.3, trust_checkpoint: bool = False):
        super().__init__()
        self.cfg = load_det_config(config, cfg_options)
        if data_root is not None:
            set_data_root(self.cfg, data_root)
        state = read_detector_state(load_from, trust_checkpoint) if load_from else None
        if state is not None:  # architecture details the weights fix (e.g. ECA kernel sizes)
            from cvkit.det.backbone import fit_backbone_config

            fit_backbone_config(self.cfg.model.backbone, state, load_from)
        self.detector = build_detector(self.cfg)
        backbone = getattr(self.detector, "backbone", None)
        if isinstance(getattr(backbone, "model_kwargs", None), dict):  # a CvkitBackbone: the
            self.cfg.model.backbone.model_kwargs = dict(backbone.model_kwargs)  # ones it was built with
        self.save_hyperparameters({"config": self.cfg.pretty_text, "auto_scale_lr": auto_scale_lr})
        if state is not None:
            load_detector_weights(self.detector, load_from, config=self.cfg.filename, state=state)
        else:
            with _quiet_init_dump():
                self.detector.init_weights()
        self.auto_scale_lr = auto_scale_lr
        self.show_dir = show_dir
        self.show_score_thr = show_score_thr
        self._loaders: dict[str, torch.utils.data.DataLoader] = {}
        self._evaluators: dict[str, Any] = {}
        self._iter_schedulers: list = []
        self._epoch_schedulers: list = []
        self._optim_wrapper = None  # configure_optimizers builds it
        self.last_metrics: dict[str, float] = {}
        self.last_metrics_step: int | None = None  # global step of the weights last_metrics measured

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, split: str) -> torch.utils.data.DataLoader:
        if split not in self._loaders:
            key = f"{split}_dataloader"
            if not self.cfg.get(key):
                raise ValueError(f"the detection config has no {key}")
            loader = build_dataloader(self.cfg[key])
            check_num_classes(self.detector, loader.dataset, f"{key}.dataset",
                              self.cfg.filename or "the config")
            self._loaders[split] = loader
        return self._loaders[split]

    def setup(self, stage: str) -> None:
        """Build the datasets the run will use (checking the heads' ``num_classes`` against
        them: :func:`check_num_classes`) before it trains or evaluates anything."""
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage, [])
        for split in splits:
            if split == "val" and (not self.cfg.get("val_dataloader") or (
                    self._trainer is not None and self._trainer.limit_val_batches == 0)):
                continue
            self._loader(split)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """The batch as loaded: the detector's data preprocessor moves it to ``device``. Lightning
        moves this module with ``nn.Module.to``, which never calls mmengine's
        ``BaseDataPreprocessor.to``, where the preprocessor learns its device: set here."""
        self.detector.data_preprocessor.to(device)
        return batch

    # -- optimisation -------------------------------------------------------------------------
    def global_batch_size(self) -> int:
        per_device = int(self.cfg.train_dataloader.get("batch_size", 1))
        trainer = self._trainer
        devices = trainer.world_size if trainer is not None else 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        return per_device * devices * accumulate

    def scaled_lr(self) -> float:
        """The config's lr, times global batch / ``auto_scale_lr.base_batch_size`` when enabled."""
        lr = float(self.cfg.optim_wrapper.optimizer.lr)
        scaling = self.cfg.get("auto_scale_lr") or {}
        enabled = scaling.get("enable", False) if self.auto_scale_lr is None else self.auto_scale_lr
        if enabled:
            lr *= self.global_batch_size() / float(scaling.get("base_batch_size", 16))
        return lr

    def configure_optimizers(self):
        from mmengine.optim import build_optim_wrapper
        from mmdet.registry import PARAM_SCHEDULERS

        wrapper_cfg = copy.deepcopy(self.cfg.optim_wrapper)
        wrapper_cfg["type"] = "OptimWrapper"  # AMP is Lightning's (Trainer precision)
        wrapper_cfg.pop("loss_scale", None)
        wrapper_cfg.pop("dtype", None)
        wrapper_cfg["optimizer"]["lr"] = self.scaled_lr()
        with option_errors("optim_wrapper: "):  # e.g. clip_grad type='max'
            wrapper = build_optim_wrapper(self.detector, wrapper_cfg)
        if wrapper.clip_grad_kwargs:  # checked now rather than at the first step's clipping
            import inspect

            try:
                inspect.signature(wrapper.clip_func).bind([], **wrapper.clip_grad_kwargs)
            except TypeError as e:
                raise OptionError(
                    f"optim_wrapper.clip_grad={dict(self.cfg.optim_wrapper.clip_grad)!r}: "
                    f"{wrapper.clip_func.__name__}: {e} (type='norm' takes max_norm, norm_type; "
                    "type='value' takes clip_value; _delete_=True replaces an inherited clip_grad)"
                ) from None
        self._optim_wrapper = wrapper  # its clip_grad clips (configure_gradient_clipping)
        schedulers = self.cfg.get("param_scheduler") or []
        if isinstance(schedulers, Mapping):
            schedulers = [schedulers]
        self._iter_schedulers, self._epoch_schedulers = [], []
        for sched_cfg in schedulers:
            sched = PARAM_SCHEDULERS.build(dict(copy.deepcopy(sched_cfg), optimizer=wrapper.optimizer))
            (self._epoch_schedulers if sched.by_epoch else self._iter_schedulers).append(sched)
        return wrapper.optimizer

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        """The Trainer's ``gradient_clip_val`` when given, else the config's
        ``optim_wrapper.clip_grad`` clipped by mmengine's ``OptimWrapper`` itself (``type='norm'``:
        ``clip_grad_norm_(max_norm, norm_type, ...)``; ``type='value'``: ``clip_grad_value_``)."""
        if gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif self._optim_wrapper is not None and self._optim_wrapper.clip_grad_kwargs:
            wrapper = self._optim_wrapper  # mmengine's clip_func and arguments: its semantics
            params = [p for group in optimizer.param_groups for p in group["params"]
                      if p.requires_grad and p.grad is not None]
            if params:
                wrapper.clip_func(params, **wrapper.clip_grad_kwargs)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        for sched in self._iter_schedulers:
            sched.step()

    def on_train_epoch_end(self):
        for sched in self._epoch_schedulers:
            sched.step()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["param_schedulers"] = [
            {k: (dict(v) if isinstance(v, dict) else v) for k, v in s.state_dict().items()}
            for s in self._iter_schedulers + self._epoch_schedulers]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pending_scheduler_states = checkpoint.get("param_schedulers")

    def on_train_start(self) -> None:
        states = getattr(self, "_pending_scheduler_states", None)
        if states:
            for sched, state in zip(self._iter_schedulers + self._epoch_schedulers, states):
                sched.load_state_dict(state)
            self._pending_scheduler_states = None

    @contextmanager
    def _autocast_features_only(self) -> Iterator[None]:
        """Narrow Lightning's autocast (AMP) to the detector's ``extract_feat`` (backbone + neck,
        most of the compute); everything after it runs in fp32 on fp32 feature maps. mmcv's CPU
        ``nms`` / ``roi_align`` reject bf16 inputs, and fp32 box maths and losses are mmdet 2's
        ``force_fp32`` policy. Without autocast this does nothing."""
        device = self.device.type
        if not torch.is_autocast_enabled(device):
            yield
            return
        dtype = torch.get_autocast_dtype(device)
        extract_feat = self.detector.extract_feat

        def extract_feat_in_autocast(batch_inputs):
            with torch.autocast(device, dtype=dtype):
                feats = extract_feat(batch_inputs)
            return tuple(f.float() for f in feats)

        self.detector.extract_feat = extract_feat_in_autocast  # shadows the method for this step
        try:
            with torch.autocast(device, enabled=False):
                yield
        finally:
            del self.detector.extract_feat

    def training_step(self, batch, batch_idx):
        with self._autocast_features_only():
            data = self.detector.data_preprocessor(batch, True)
            losses = self.detector(**data, mode="loss")
        loss, log_vars = self.detector.parse_losses(losses)
        n = len(batch["inputs"])
        self.log_dict({f"train/{k}": float(v.detach() if torch.is_tensor(v) else v)
                       for k, v in log_vars.items()}, batch_size=n,
                      prog_bar=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n,
                 prog_bar=True)
        return loss

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluator(self, split: str):
        if split not in self._evaluators:
            from mmengine.evaluator import Evaluator

            metric_cfg = self.cfg.get(f"{split}_evaluator")
            if not metric_cfg:
                raise ValueError(f"the detection config has no {split}_evaluator")
            evaluator = Evaluator(copy.deepcopy(metric_cfg))
            dataset = self._loader(split).dataset
            evaluator.dataset_meta = dataset.metainfo
            restrict_to_dataset_images(evaluator, dataset)
            self._evaluators[split] = evaluator
        return self._evaluators[split]

    def _eval_step(self, split: str, batch) -> None:
        with self._autocast_features_only():
            outputs = (self.detector.val_step(batch) if split == "val"
                       else self.detector.test_step(batch))
        self._evaluator(split).process(data_samples=outputs, data_batch=batch)
        if self.show_dir and split == "test":
            self._draw(outputs)

    def _eval_epoch_end(self, split: str) -> None:
        evaluator = self._evaluator(split)
        if self.trainer.sanity_checking:  # a few batches only: no meaningful COCO numbers
            for metric in evaluator.metrics:
                metric.results.clear()
            return
        raw = evaluator.evaluate(len(self._loader(split).dataset))
        raw = fill_empty_coco_results(evaluator, raw)
        metrics = {k[len(METRIC_PREFIX):] if k.startswith(METRIC_PREFIX) else k: float(v)
                   for k, v in raw.items() if isinstance(v, (int, float))}
        self.last_metrics = metrics
        self.last_metrics_step = self.global_step
        # mmengine's Evaluator gathers every rank's results and broadcasts rank 0's metrics, so the
        # values agree on every rank already; syncing them (a mean of equal numbers) is a no-op
        # that keeps Lightning's distributed bookkeeping quiet.
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def _draw(self, outputs) -> None:
        from cvkit.det.visualize import draw_predictions, png_names

        dataset = self._loader("test").dataset
        if getattr(self, "_png_names", None) is None:  # one name per image of the whole split
            paths = [dataset.get_data_info(i)["img_path"] for i in range(len(dataset))]
            prefix = (getattr(dataset, "data_prefix", None) or {}).get("img")
            self._png_names = png_names(paths, prefix)
        draw_predictions(outputs, dataset.metainfo, self.show_dir, score_thr=self.show_score_thr,
                         names=self._png_names)

    # -- export -------------------------------------------------------------------------------
    def export_config(self, path: str) -> str:
        """Write the config this detector was built from (data root, options and the backbone's
        architecture keywords as built, e.g. the ECA kernel sizes its checkpoint fixed), as mmengine's
        Runner dumps it: ``mmdet.apis.init_detector(path, detector.pth)`` rebuilds this detector."""
        with atomic_write(path, "w") as f:
            f.write(self.cfg.pretty_text)
        return path

    def export_detector(self, path: str) -> str:
        """Write ``{'state_dict', 'meta': {'dataset_meta'}}`` for ``mmdet.apis.init_detector``
        (atomically: ``cvkit.atomic_write``)."""
        meta = {}
        train_cfg = self.cfg.get("train_dataloader") or {}
        metainfo = (train_cfg.get("dataset") or {}).get("metainfo")
        if metainfo:
            meta["dataset_meta"] = {k: (list(v) if isinstance(v, tuple) else v)
                                    for k, v in dict(metainfo).items()}
        with atomic_write(path) as f:
            torch.save({"state_dict": {k: v.detach().cpu()
                                       for k, v in self.detector.state_dict().items()},
                        "meta": meta}, f)
        return path


# -- runs (what tools/train_det.py and tools/test_det.py call) ------------------------------------
def make_trainer(cfg, work_dir: str, accelerator: str = "auto", devices: Any = "auto",
                 strategy: str = "auto", precision: str = "32-true", max_epochs: int | None = None,
                 limit_train_batches: Any = None, limit_val_batches: Any = None,
                 logger: bool = True, enable_progress_bar: bool = False) -> L.Trainer:
    """A Lightning Trainer with the config's epochs and validation interval, ``last.ckpt`` in
    ``work_dir/checkpoints`` rewritten (atomically) at the end of every epoch, and a CSV log."""
    from lightning.pytorch.loggers import CSVLogger

    from cvkit.tasks.callbacks import AtomicCheckpointIO, KeepLastCheckpoint

    train_cfg = cfg.get("train_cfg") or {}
    if train_cfg.get("type", "EpochBasedTrainLoop") != "EpochBasedTrainLoop":
        raise ValueError(f"train_cfg.type={train_cfg.get('type')!r}: the Lightning task runs "
                         "epoch-based configs (EpochBasedTrainLoop)")
    epochs = int(max_epochs if max_epochs is not None else train_cfg.get("max_epochs", 12))
    interval = int(train_cfg.get("val_interval", 1))
    log_every = int(((cfg.get("default_hooks") or {}).get("logger") or {}).get("interval", 50))
    with option_errors():  # an unknown accelerator, strategy or precision
        return L.Trainer(
            default_root_dir=work_dir, accelerator=accelerator, devices=devices, strategy=strategy,
            # the last epoch is validated by train_detector when the interval skips it
            precision=precision, max_epochs=epochs, check_val_every_n_epoch=interval,
            num_sanity_val_steps=0, log_every_n_steps=log_every,
            limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            logger=CSVLogger(work_dir, name="logs") if logger else False,
            callbacks=[KeepLastCheckpoint(dirpath=osp.join(work_dir, "checkpoints"), save_last=True,
                                          save_top_k=0, save_on_train_epoch_end=True)],
            plugins=[AtomicCheckpointIO()],
            enable_progress_bar=enable_progress_bar, enable_model_summary=False)


def train_detector(config: Any, work_dir: str, data_root: str | None = None,
                   backbone_checkpoint: str | None = None, load_from: str | None = None,
                   resume: str | None = None, cfg_options: Mapping[str, Any] | None = None,
                   seed: int = 0, trust_checkpoint: bool = False,
                   **trainer_kwargs) -> tuple[DetectionTask, dict[str, float]]:
    """Fine-tune the detector of ``config``; returns the task and the validation metrics of its
    final weights (the last epoch is validated even when ``val_interval`` skips it).
    ``trust_checkpoint``: read ``load_from`` with ``weights_only=False`` (mmengine Runner
    checkpoints); ``resume`` takes a checkpoint this function wrote (``last.ckpt``).

    Writes ``work_dir/checkpoints/last.ckpt`` (Lightning, resumable; rewritten every epoch),
    ``work_dir/detector.pth`` and ``work_dir/config.py`` (for ``mmdet.apis.init_detector``).
    """
    cfg = load_det_config(config, cfg_options)
    if backbone_checkpoint:
        if not osp.isfile(backbone_checkpoint):
            raise FileNotFoundError(f"backbone checkpoint not found: {backbone_checkpoint!r}")
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=backbone_checkpoint)
    elif not load_from and not resume and not (cfg.model.get("backbone") or {}).get("init_cfg"):
        import warnings

        warnings.warn("the backbone starts from random weights: pass backbone_checkpoint "
                      "(tools/train_det.py --backbone-checkpoint) to fine-tune a pretrained one",
                      stacklevel=2)
    from cvkit.det.backbone import fit_backbone_config, is_cvkit_backbone

    if resume and is_cvkit_backbone(cfg.model.get("backbone")):
        # the backbone it trained, whatever the config or a backbone checkpoint says
        fit_backbone_config(cfg.model.backbone, read_detector_state(resume, untrusted_hint=(
            " (--resume takes WORK_DIR/checkpoints/last.ckpt of tools/train_det.py; to start from "
            "other detector weights use --load-from)")), resume)
    L.seed_everything(seed, workers=True, verbose=False)
    task = DetectionTask(cfg, data_root=data_root, load_from=load_from,
                         trust_checkpoint=trust_checkpoint)
    trainer = make_trainer(task.cfg, work_dir, **trainer_kwargs)
    trainer.fit(task, ckpt_path=resume)
    if task.last_metrics_step != trainer.global_step and trainer.limit_val_batches != 0:
        trainer.validate(task, verbose=False)
    if trainer.is_global_zero:
        task.export_detector(osp.join(work_dir, "detector.pth"))
        task.export_config(osp.join(work_dir, "config.py"))
    return task, dict(task.last_metrics)


def save_metrics(metrics: Mapping[str, float], out: str | None = None, echo: bool = False,
                 is_global_zero: bool = True) -> None:
    """The metrics as JSON, on global rank zero only (every DDP rank runs the tool): written to
    ``out`` atomically (:func:`cvkit.atomic_write.atomic_write`), printed when ``echo``."""
    import json

    if not is_global_zero:
        return
    text = json.dumps(dict(metrics), indent=2)
    if out:
        with atomic_write(out, "w") as f:
            f.write(text)
    if echo:
        print(text, flush=True)


def evaluate_detector(config: Any, checkpoint: str, data_root: str | None = None,
                  show_dir: str | None = None, show_score_thr: float = 0.3,
                  cfg_options: Mapping[str, Any] | None = None, trust_checkpoint: bool = False,
                  out: str | None = None, echo: bool = False,
                  **trainer_kwargs) -> dict[str, float]:
    """COCO metrics of a trained detector on the config's test split (optionally drawing PNGs).
    ``out``: also write them there as JSON, ``echo``: print them (both on global rank zero only:
    :func:`save_metrics`). Every rank returns them."""
    task = DetectionTask(config, cfg_options=cfg_options, data_root=data_root, load_from=checkpoint,
                         show_dir=show_dir, show_score_thr=show_score_thr,
                         trust_checkpoint=trust_checkpoint)
    trainer_kwargs.setdefault("logger", False)
    with tempfile.TemporaryDirectory(prefix="cvkit-test-det-") as scratch:
        trainer = make_trainer(task.cfg, scratch, **trainer_kwargs)
        trainer.test(task, verbose=False)
    metrics = dict(task.last_metrics)
    save_metrics(metrics, out, echo, is_global_zero=trainer.is_global_zero)
    return metrics
