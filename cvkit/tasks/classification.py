"""ImageNet-style classification as a LightningModule around any cvkit (or timm) model.

Loss: cross entropy with label smoothing, or timm's Mixup/CutMix with SoftTargetCrossEntropy.
Optimiser and LR schedule: :mod:`cvkit.tasks.optim`, :mod:`cvkit.tasks.schedules` (the papers'
recipes; LR scaled to the actual global batch). EMA of weights: Lightning's EMAWeightAveraging.
Metrics: torchmetrics top-1 / top-5. AMP, gradient clipping, DDP/FSDP and SyncBatchNorm are Trainer
options. A non-finite loss stops the run with a one-line error; checkpoints already written stay.
"""
from __future__ import annotations

import dataclasses
import inspect
import random
from dataclasses import asdict
from typing import Any, Optional, Union

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn

from cvkit.data.datamodule import ClassificationDataModule
from cvkit.models.checkpoint import CheckpointError
from cvkit.tasks.optim import OptimizerConfig
from cvkit.tasks.schedules import LRSchedule
from cvkit.tool_errors import PROBABILITY, OptionError, check_options, is_integer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class ConfigError(OptionError):
    """A bad option of the task (optimizer, schedule, model_kwargs, compile); the CLI exits 2."""


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A registered cvkit preset (``cvkit.create_model``), or a timm model by its timm name."""
    from cvkit.models import create_model as cvkit_create_model, list_models
    from cvkit.models.registry import TIMM_PREFIX, closest_names

    if list_models(name):
        return cvkit_create_model(name, num_classes=num_classes, **kwargs)
    import timm

    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    close = closest_names(name)
    close_timm = closest_names(name, (n for n in timm.list_models()
                                      if not n.startswith(TIMM_PREFIX)), n=3, cutoff=0.8)
    hint = "".join(f"; closest {what}: {', '.join(names)}" for what, names in
                   (("cvkit presets", close), ("timm models", close_timm)) if names)
    raise OptionError(f"unknown model {name!r}: not a cvkit preset (cvkit.list_models()) "
                     f"nor a timm model{hint}")


class ModelKwargsError(ConfigError):
    """A model keyword the model does not take; ``reason``: what building the model said."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # pickled across processes (DataLoader workers, DDP) with its reason
        return type(self), (str(self), self.reason)


def model_kwargs_error(model_name: str, model_kwargs: dict, error: Exception,
                       option: str = "model_kwargs") -> ModelKwargsError:
    """A one-line error for a model keyword the model does not take (``error``: what building it
    raised, or an earlier ModelKwargsError), naming ``option``, the keywords and the model."""
    reason = getattr(error, "reason", None) or str(error).strip().splitlines()[-1]
    reason = reason.removeprefix(f"{model_name}: ")
    return ModelKwargsError(f"{option} {dict(model_kwargs)} of model {model_name!r}: {reason}",
                            reason)


def _as(cls, value, what: str):
    """``value`` (None, an instance or a dict) as a ``cls`` dataclass; one-line ConfigError naming
    the unknown key or bad value and what is allowed."""
    if value is None or isinstance(value, cls):
        return value if value is not None else cls()
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a {cls.__name__} or a dict, got {type(value).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"{what}: unknown key {', '.join(map(repr, unknown))}; "
                          f"{cls.__name__} takes {', '.join(allowed)}")
    try:
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: {e}") from None


def head_mismatch(num_classes: int, dataset, head: str) -> Optional[str]:
    """Why ``head`` (``num_classes`` outputs) cannot be trained or scored on ``dataset`` (an
    ImageFolderDataset: label i is its i-th class folder), or None when the counts match."""
    if num_classes == len(dataset.classes):
        return None
    return (f"{head} has {num_classes} outputs but {dataset.root} has {len(dataset.classes)} "
            f"class folders (one output per class folder is needed)")


def _compile_options(value) -> Optional[dict[str, Any]]:
    """The ``compile`` argument as ``torch.compile`` keywords (None: no compilation); unknown
    keys are reported here, not at the first training step."""
    if value is None or value is False:
        return None
    options = {} if value is True else dict(value)
    try:
        inspect.signature(torch.compile).bind(None, **options)
    except TypeError as e:
        raise ConfigError(f"bad compile option {options}: {e} (torch.compile takes "
                         f"{', '.join(list(inspect.signature(torch.compile).parameters)[1:])})"
                         ) from None
    return options


class ClassificationTask(LightningModule):
    """Train / evaluate an image classifier.

    Args:
        model_name: a cvkit preset (``cvkit.list_models()``) or a timm model name.
        num_classes: classes of the head (the CLI links it to the data folder).
        model_kwargs: preset overrides, e.g. ``{gcp_dim: 128, drop_rate: 0.1, hc_dynamic: true}``.
        pretrained_path: initial weights (any format ``cvkit.load_checkpoint`` reads).
        optimizer: :class:`OptimizerConfig` or a dict of its fields (name, lr at
            reference_batch, momentum, wd, ...).
        schedule: :class:`LRSchedule` or a dict of its fields (step / multistep / exponential /
            poly / cosine / piecewise_linear + warmup).
        label_smoothing: cross-entropy label smoothing.
        mixup, cutmix: Beta(alpha, alpha) parameters for timm's Mixup (0 = off).
        mixup_prob, mixup_switch_prob: timm Mixup's probability to apply / to pick cutmix.
        ema_decay: keep an EMA of the weights (Lightning's EMAWeightAveraging); None = off.
        channels_last: NHWC memory format for model and inputs (faster convs under AMP on GPU).
        compile: ``torch.compile`` the model in place (``nn.Module.compile``: checkpoints keep
            their keys and load uncompiled): True for the defaults, or its options, e.g.
            ``{mode: reduce-overhead}`` (CUDA graphs: no per-launch cost for the ~22 launches of
            the Triton covariance kernels, docs/kernels.md). None / False = eager.

    Bad options (an unknown key or name, a model_kwargs key the model does not take, a value out
    of range) raise a one-line :class:`ConfigError` when the task is built; a head whose
    ``num_classes`` is not the ClassificationDataModule's class count, when fit / validate / test
    start.
    """

    def __init__(self, model_name: str = "eca_resnet50", num_classes: int = 1000,
                 model_kwargs: Optional[dict[str, Any]] = None, pretrained_path: Optional[str] = None,
                 # typed as the dataclasses only, so the CLI checks keys and names while parsing
                 # (before any data is read) and merges dotted overrides into the YAML's values
                 optimizer: Optional[OptimizerConfig] = None,
                 schedule: Optional[LRSchedule] = None,
                 label_smoothing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
                 mixup_prob: float = 1.0, mixup_switch_prob: float = 0.5,
                 ema_decay: Optional[float] = None, channels_last: bool = False,
                 compile: Union[bool, dict[str, Any], None] = None):
        non_negative = (lambda v: 0 <= v < float("inf"), ">= 0 (0 = off)")
        check_options((("model." + key, value, test, allowed) for key, value, test, allowed in [
            ("num_classes", num_classes, lambda v: is_integer(v) and v >= 2, "an integer >= 2"),
            ("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("mixup", mixup, *non_negative),
            ("cutmix", cutmix, *non_negative),
            ("mixup_prob", mixup_prob, *PROBABILITY),
            ("mixup_switch_prob", mixup_switch_prob, *PROBABILITY),
            ("ema_decay", ema_decay, lambda v: v is None or 0 <= v < 1, "null (off) or in [0, 1)"),
        ]), ConfigError)
        super().__init__()
        self._compile_options = _compile_options(compile)
        self.optimizer_cfg = _as(OptimizerConfig, optimizer, "optimizer")
        self.schedule = _as(LRSchedule, schedule, "schedule")
        # recorded as plain dicts (checkpoints stay loadable with weights_only=True):
        # save_hyperparameters reads the arguments' current values. (Two calls, one for these
        # two, kept only the second's: load_from_checkpoint rebuilt SGD 0.1 and a step schedule.)
        optimizer, schedule = asdict(self.optimizer_cfg), asdict(self.schedule)
        self.save_hyperparameters()
        kwargs = dict(model_kwargs or {})
        if pretrained_path:
            kwargs["checkpoint_path"] = pretrained_path
            # fine-tuning: the data decides the classes; a head of another size is not loaded
            kwargs.setdefault("reset_head", True)
        try:
            self.model = create_model(model_name, num_classes=num_classes, **kwargs)
        except CheckpointError:  # the weights, not the keywords
            raise
        except (TypeError, ValueError) as e:  # a misspelt key, a bad value (eca_k_size=4)
            if not model_kwargs or isinstance(e, OptionError):
                raise
            raise model_kwargs_error(model_name, model_kwargs, e) from None
        self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob,
                                  switch_prob=mixup_switch_prob, label_smoothing=label_smoothing,
                                  num_classes=num_classes)
            self.train_loss_fn = SoftTargetCrossEntropy()
        from torchmetrics.classification import MulticlassAccuracy

        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.test_top1 = self.val_top1.clone()
        self.test_top5 = self.val_top5.clone()
        self._compiled = False
        self.bad_files: set[str] = set()
        self.global_batch: Optional[int] = None
        self.scaled_lr: Optional[float] = None
        self.steps_per_epoch: Optional[int] = None  # of an epoch-based schedule, else None
        self._resumed_schedule: Optional[dict] = None  # what the resumed checkpoint was trained at
        self._schedule_now: Optional[dict] = None  # what this fit trains at (configure_optimizers)

    # -- model ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._resumed_schedule = self._schedule_now = None  # nothing carried over from another run
        self._check_head(stage)

    def _check_head(self, stage: str) -> None:
        """The head must have one output per class folder of the split this stage reads (a
        smaller one failed at the first step with cross entropy's bare IndexError; a larger one
        scores labels as other classes)."""
        dm = getattr(self._trainer, "datamodule", None)
        if not isinstance(dm, ClassificationDataModule):
            return
        dataset = {"fit": dm.train_set, "validate": dm.val_set, "test": dm.test_set}.get(stage)
        why = None if dataset is None else head_mismatch(
            self.hparams.num_classes, dataset, "the model's head (model.num_classes)")
        if why:
            raise ConfigError(f"{why}; build the task with num_classes=dm.num_classes "
                              f"({len(dataset.classes)})")

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self._compile_options is not None and not self._compiled:
            self.model.compile(**self._compile_options)  # Lightning calls this once per stage
            self._compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def configure_callbacks(self):
        if self.hparams.ema_decay is None:
            return []
        from lightning.pytorch.callbacks import EMAWeightAveraging

        return [EMAWeightAveraging(decay=self.hparams.ema_decay)]

    # -- steps ----------------------------------------------------------------------------------
    def _unpack(self, batch):
        """(images, targets) of a batch; the skipped files of a ``collate_skip_bad`` batch are
        recorded."""
        images, targets, *rest = batch
        if rest:
            self.bad_files.update(rest[0])
        return images, targets

    def training_step(self, batch, batch_idx: int):
        images, targets = self._unpack(batch)
        if images.numel() == 0:
            return self._nothing_to_train()
        if self.mixup_fn is not None:
            if images.shape[0] % 2:  # a skipped bad file left an odd batch: timm's Mixup pairs samples
                images, targets = images[:-1], targets[:-1]
                if images.numel() == 0:
                    return self._nothing_to_train()
            images, targets = self.mixup_fn(images, targets)
        loss = self.train_loss_fn(self(images), targets)
        self._check_finite(loss)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=images.shape[0], sync_dist=False)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True,
                 on_step=True, on_epoch=False)
        return loss

    def _nothing_to_train(self) -> Optional[torch.Tensor]:
        """A step whose files were all skipped: None on one device (Lightning skips it); under
        DDP a zero loss through every trainable parameter, so this rank still joins the other
        ranks' gradient all-reduce and NaN check (with None they would wait for it forever)."""
        if self.trainer.world_size <= 1:
            return None
        loss = torch.zeros((), device=self.device)
        for p in self.parameters():
            if p.requires_grad:
                loss = loss + p.sum() * 0
        self._check_finite(loss)
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        """NaN guard: all ranks stop together, before the bad step reaches the weights."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            ckpt = self.trainer.checkpoint_callback
            last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
            where = f"last good checkpoint kept: {last}" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}; stopped ({where})")

    def _eval_step(self, batch, prefix: str):
        images, targets = self._unpack(batch)
        if images.numel() == 0:
            return None
        logits = self(images)
        loss = self.eval_loss_fn(logits, targets)
        top1, top5 = getattr(self, f"{prefix}_top1"), getattr(self, f"{prefix}_top5")
        top1.update(logits, targets)
        top5.update(logits, targets)
        bs = images.shape[0]
        self.log(f"{prefix}_loss", loss, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log(f"{prefix}_top1", top1, prog_bar=True, batch_size=bs)
        self.log(f"{prefix}_top5", top5, batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx: int):
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int):
        """Class probabilities, one row per sample of the batch as the loader gave it: a skipped
        file keeps its row, NaN (so row i of the concatenated predictions is sample i of the
        predict set, ``dm.test_set.samples[i]``)."""
        images, _ = self._unpack(batch)
        bad_at = batch[3] if len(batch) > 3 else []
        probs = self(images).softmax(-1) if images.numel() else None
        if not bad_at:
            return probs
        rows = images.shape[0] + len(bad_at)
        out = torch.full((rows, self.hparams.num_classes), float("nan"), device=images.device,
                         dtype=torch.float32 if probs is None else probs.dtype)
        if probs is not None:
            kept = torch.ones(rows, dtype=torch.bool)
            kept[bad_at] = False
            out[kept.to(out.device)] = probs
        return out

    # -- optimisation ---------------------------------------------------------------------------
    def _per_device_batch(self) -> Optional[int]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "batch_size", None):
            return int(dm.batch_size)
        loader = self.trainer.train_dataloader
        return getattr(loader, "batch_size", None)

    def configure_optimizers(self):
        trainer = self.trainer
        total_steps = trainer.estimated_stepping_batches  # also sets the train loader up
        accumulate = trainer.accumulate_grad_batches
        per_device = self._per_device_batch()
        global_batch = None if per_device is None else per_device * trainer.world_size * accumulate
        batches = trainer.num_training_batches
        if batches == float("inf") or trainer.max_epochs in (None, -1):
            steps_per_epoch, total_epochs = max(1, int(total_steps)), 1.0
            self.steps_per_epoch = None
        else:
            steps_per_epoch = max(1, -(-int(batches) // accumulate))
            total_epochs = float(trainer.max_epochs)
            self.steps_per_epoch = steps_per_epoch
        if self.mixup_fn is not None and per_device is not None and per_device % 2:
            raise ConfigError(f"mixup / cutmix pair the samples of a batch: data.batch_size must be "
                              f"even, got {per_device}")
        out = self.build_optimizers(global_batch, steps_per_epoch, total_epochs)
        self._schedule_now = {"global_batch": global_batch, "steps_per_epoch": self.steps_per_epoch,
                              "param_groups": len(out["optimizer"].param_groups)}
        self._check_resumed_schedule()
        return out

    def _check_resumed_schedule(self) -> None:
        """A resumed run continues its schedule at the optimiser's step count, and Lightning
        restores the checkpoint's LR: both only mean the same epoch and LR at the global batch and
        steps per epoch the checkpoint was trained at, so another one is refused. Runs once both
        are known: after configure_optimizers, before or after the checkpoint is read (FSDP and
        DeepSpeed restore it after setting up)."""
        was, now = self._resumed_schedule, self._schedule_now
        if not was or now is None:
            return
        self._resumed_schedule = None
        path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        groups = (was.get("param_groups"), now.get("param_groups"))
        if None not in groups and groups[0] != groups[1]:
            flag = self.optimizer_cfg.decay_norm_and_bias
            raise ConfigError(
                f"--ckpt_path {path} holds an optimiser state of {groups[0]} parameter "
                f"groups; this run builds {groups[1]} "
                f"(model.optimizer.decay_norm_and_bias={str(flag).lower()}; the ECA-Net and GCP "
                f"recipes set it since 2026-11-28): resume with "
                f"--model.optimizer.decay_norm_and_bias {str(not flag).lower()}")
        changed = [k for k in ("global_batch", "steps_per_epoch")
                   if was.get(k) is not None and now[k] is not None and was[k] != now[k]]
        if changed:
            raise ConfigError(
                f"--ckpt_path {path} was trained at "
                + ", ".join(f"{k.replace('_', ' ')} {was[k]}" for k in changed)
                + "; this run has " + ", ".join(f"{now[k]}" for k in changed)
                + ": its LR schedule would continue at another epoch and its LR stay the "
                "checkpoint's. Resume at the same global batch (data.batch_size x devices x "
                "num_nodes x accumulate_grad_batches) and training set, or start a new run from "
                "its weights with --model.pretrained_path")

    def build_optimizers(self, global_batch: Optional[int], steps_per_epoch: int,
                         total_epochs: float) -> dict[str, Any]:
        """Optimiser (LR scaled to ``global_batch``) and the per-step LambdaLR of the recipe."""
        cfg = self.optimizer_cfg
        self.global_batch = global_batch
        self.scaled_lr = cfg.lr if global_batch is None else cfg.scaled_lr(global_batch)
        if self.scaled_lr != cfg.lr:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"LR scaled {cfg.lr:g} -> {self.scaled_lr:g} for global batch "
                           f"{global_batch} (recipe: {cfg.reference_batch}, rule: {cfg.scaling})")
        optimizer = cfg.build(self.model, self.scaled_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, self.schedule.lambda_lr(steps_per_epoch, total_epochs))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, except by norm under FSDP, which Lightning refuses (its
        FSDPPrecision raises at the first step; the ViT recipes clip at 1.0 and offer
        ``--trainer.strategy fsdp``): the wrapped module's own ``clip_grad_norm_``, the norm over
        every rank's shards (PyTorch's FSDP API)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = getattr(self.trainer.strategy, "model", None)
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and isinstance(wrapped, FullyShardedDataParallel)):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- resume: RNG streams (dropout, mixup) continue exactly where they stopped -------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cvkit_schedule"] = {"global_batch": self.global_batch,
                                        "steps_per_epoch": self.steps_per_epoch}
        np_state = np.random.get_state()
        checkpoint["cvkit_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout masks on a GPU
            # this device's generator: every rank draws the same numbers from the same seed
            checkpoint["cvkit_rng"]["cuda"] = torch.cuda.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_same_network(checkpoint)
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        self._resumed_schedule = dict(checkpoint.get("cvkit_schedule") or {}) if fitting else None
        states = checkpoint.get("optimizer_states") or []
        if fitting and states and isinstance(states[0], dict) and "param_groups" in states[0]:
            self._resumed_schedule["param_groups"] = len(states[0]["param_groups"])
        self._check_resumed_schedule()
        rng = checkpoint.get("cvkit_rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])

    def _check_same_network(self, checkpoint: dict[str, Any]) -> None:
        """The network the config builds must be the checkpoint's (``--ckpt_path`` restores a run;
        the config's model options win, as for ``last``): one line naming the first tensors that
        differ and the checkpoint's model options, instead of load_state_dict's key dump."""
        if "state_dict" not in checkpoint or self._trainer is None or not self.strict_loading:
            return  # FSDP / DeepSpeed load and check the weights themselves; load_from_checkpoint
        theirs = checkpoint["state_dict"]
        ours = self.state_dict()
        prefix = "model."
        differ = [k for k in sorted(set(theirs) | set(ours)) if k.startswith(prefix)
                  and (k not in theirs or k not in ours or theirs[k].shape != ours[k].shape)]
        if not differ:
            return
        from cvkit.models.checkpoint import CheckpointError

        def shape(sd, k):
            return tuple(sd[k].shape) if k in sd else "absent"

        hp = checkpoint.get("hyper_parameters") or {}
        trained = {k: hp.get(k) for k in ("model_name", "num_classes", "model_kwargs")}
        config = {k: self.hparams.get(k) for k in trained}
        path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        examples = "; ".join(f"{k[len(prefix):]} {shape(theirs, k)} vs {shape(ours, k)}"
                             for k in differ[:3])
        raise CheckpointError(
            f"{path} holds another network than the config builds ({len(differ)} tensors differ, "
            f"e.g. {examples}): it was trained with "
            + ", ".join(f"model.{k}={v!r}" for k, v in trained.items())
            + "; the config gives " + ", ".join(f"model.{k}={v!r}" for k, v in config.items())
            + ". Resume with the checkpoint's model options, or start a new run from its weights "
            "with --model.pretrained_path")

    def gather_bad_files(self) -> list[str]:
        """Skipped files seen by any rank."""
        files = set(self.bad_files)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, sorted(files))
            files = set().union(*map(set, parts))
        return sorted(files)
