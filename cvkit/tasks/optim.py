"""Optimiser of a recipe: SGD (momentum / Nesterov) or AdamW, weight-decay parameter groups, and the
learning-rate scaling rule for a global batch other than the paper's.

Parameter groups come from timm (``create_optimizer_v2`` with ``filter_bias_and_bn``): every 1-d
parameter (norm weights and biases, biases of convs and linears, ECA has none) and every name the
model returns from ``no_weight_decay()`` (position embeddings, class token, static hyper-connection
matrices — the HC paper's advice) get no weight decay. ``decay_norm_and_bias=True`` decays the 1-d
parameters too, as the ECA-Net release's training script does (``torch.optim.SGD(model.parameters(),
..., weight_decay=...)``); the ``no_weight_decay()`` names stay undecayed.

LR scaling rule: the recipe states ``lr`` for ``reference_batch`` (the paper's global batch). For a
global batch B = per-device batch x devices x nodes x gradient accumulation, the LR used is
    linear (SGD, Goyal et al. 2017):  lr * B / reference_batch
    sqrt   (AdamW, timm's default):   lr * sqrt(B / reference_batch)
``scaling="auto"`` picks linear for SGD and sqrt for AdamW; ``"none"`` keeps ``lr`` as given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "adamw"]
ScalingRule = Literal["auto", "linear", "sqrt", "none"]


@dataclass
class OptimizerConfig:
    """Optimiser hyper-parameters as the papers state them (lr at ``reference_batch``)."""

    name: OptimizerName = "sgd"
    lr: float = 0.1
    reference_batch: int = 256
    scaling: ScalingRule = "auto"
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False

    def __post_init__(self) -> None:
        for key, value, allowed in (("name", self.name, OptimizerName.__args__),
                                    ("scaling", self.scaling, ScalingRule.__args__)):
            if value not in allowed:
                raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")
        self.betas = tuple(self.betas)  # YAML and checkpoints give lists: equal configs compare equal

    def scaled_lr(self, global_batch: int) -> float:
        """The LR for ``global_batch`` under the scaling rule (see module docstring)."""
        rule = self.scaling
        if rule == "auto":
            rule = "linear" if self.name == "sgd" else "sqrt"
        ratio = global_batch / self.reference_batch
        if rule == "linear":
            return self.lr * ratio
        if rule == "sqrt":
            return self.lr * math.sqrt(ratio)
        if rule == "none":
            return self.lr
        raise ValueError(f"unknown LR scaling rule {self.scaling!r}; choose auto, linear, sqrt or none")

    def build(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """timm's optimiser factory with no-decay groups for 1-d params and model.no_weight_decay()."""
        from timm.optim import create_optimizer_v2

        params = _all_but_named(model, self.weight_decay) if self.decay_norm_and_bias else model
        if self.name == "sgd":
            return create_optimizer_v2(params, opt="nesterov" if self.nesterov else "momentum",
                                       lr=lr, weight_decay=self.weight_decay, momentum=self.momentum)
        if self.name == "adamw":
            return create_optimizer_v2(params, opt="adamw", lr=lr, weight_decay=self.weight_decay,
                                       betas=tuple(self.betas), eps=self.eps)
        raise ValueError(f"unknown optimizer {self.name!r}; choose sgd or adamw")


def _all_but_named(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups decaying every trainable parameter except the names (fnmatch patterns,
    as timm reads them) in ``model.no_weight_decay()``; empty groups left out."""
    from fnmatch import fnmatch

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    kept: dict[bool, list] = {True: [], False: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kept[any(fnmatch(name, pattern) for pattern in skip)].append(p)
    return [g for g in ({"params": kept[True], "weight_decay": 0.0},
                        {"params": kept[False], "weight_decay": weight_decay}) if g["params"]]
