"""Weight-decay parameter groups and the LR scaling rule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cvkit
from cvkit.tasks.optim import OptimizerConfig

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def expected_no_decay(model: nn.Module) -> set[str]:
    """Names that must not be decayed, found independently of timm's grouping: norm parameters,
    biases, position embedding / class token, and the HC paper's static B, A_m, A_r."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, NORMS) or p_name == "bias" or p_name in ("pos_embed", "cls_token") \
                    or p_name in ("static_alpha", "static_beta"):
                names.add(full)
    return names


def groups_by_name(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, float]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("name,kwargs,opt_name", [
    ("vit_tiny_patch16_hc2", dict(img_size=32, depth=2), "adamw"),
    ("vit_tiny_patch16_dhc2", dict(img_size=32, depth=2), "adamw"),
    ("resnet18_hc2", {}, "sgd"),
    ("eca_resnet18", {}, "sgd"),
])
def test_no_decay_group(name, kwargs, opt_name):
    model = cvkit.create_model(name, num_classes=10, **kwargs)
    cfg = OptimizerConfig(name=opt_name, weight_decay=0.05)
    wd = groups_by_name(model, cfg.build(model, lr=0.1))
    assert set(wd) == {n for n, p in model.named_parameters() if p.requires_grad}  # nothing lost
    must = expected_no_decay(model)
    assert must, "the test found no norm/bias parameters"
    if "hc" in name:
        static = {n for n in must if n.endswith(("static_alpha", "static_beta"))}
        assert len(static) >= 4
    wrong = sorted(n for n in must if wd[n] != 0.0)
    assert not wrong, f"decayed but should not be: {wrong[:5]}"
    # every other matrix / conv kernel is decayed (dynamic HC weights W_m, W_r, W_beta included)
    decayed = {n for n, p in model.named_parameters() if p.ndim > 1 and n not in must}
    assert decayed and all(wd[n] == 0.05 for n in decayed)


@pytest.mark.parametrize("name,kwargs", [("eca_mobilenetv2", {}), ("resnet18_hc2", {}),
                                         ("vit_tiny_patch16_hc2", dict(img_size=32, depth=2))])
def test_decay_norm_and_bias_decays_all_but_the_models_named_parameters(name, kwargs):
    """The ECA-Net release decays every parameter (torch.optim.SGD(model.parameters(), ...,
    weight_decay)): decay_norm_and_bias does, except the no_weight_decay() names (static HC,
    ViT position embedding / class token: the HC paper's advice), for SGD and AdamW."""
    model = cvkit.create_model(name, num_classes=10, **kwargs)
    for opt_name in ("sgd", "adamw"):
        cfg = OptimizerConfig(name=opt_name, weight_decay=0.05, decay_norm_and_bias=True)
        wd = groups_by_name(model, cfg.build(model, lr=0.1))
        assert set(wd) == {n for n, p in model.named_parameters() if p.requires_grad}
        named = {n for n in wd if n.endswith(("static_alpha", "static_beta"))
                 or n in ("pos_embed", "cls_token")}
        assert all(wd[n] == 0.0 for n in named)
        assert all(wd[n] == 0.05 for n in set(wd) - named), sorted(n for n in wd if wd[n] == 0.0)
        assert any(n.endswith(("bn1.weight", ".bias", "norm.weight")) for n in set(wd) - named)


def test_sgd_and_adamw_hyper_parameters():
    model = nn.Linear(4, 2)
    sgd = OptimizerConfig("sgd", momentum=0.9, nesterov=True).build(model, lr=0.2)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.2
    assert not OptimizerConfig("sgd").build(model, lr=0.1).defaults["nesterov"]
    adamw = OptimizerConfig("adamw", betas=(0.9, 0.95), weight_decay=0.3).build(model, lr=3e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)


def test_lr_scaling_rule():
    sgd = OptimizerConfig("sgd", lr=0.1, reference_batch=256)
    assert sgd.scaled_lr(256) == pytest.approx(0.1)
    assert sgd.scaled_lr(512) == pytest.approx(0.2)          # linear for SGD
    assert sgd.scaled_lr(64) == pytest.approx(0.025)
    adamw = OptimizerConfig("adamw", lr=3e-3, reference_batch=4096)
    assert adamw.scaled_lr(1024) == pytest.approx(3e-3 * math.sqrt(0.25))  # sqrt for AdamW
    assert OptimizerConfig("adamw", lr=3e-3, reference_batch=4096, scaling="linear").scaled_lr(1024) \
        == pytest.approx(7.5e-4)
    assert OptimizerConfig("sgd", scaling="none").scaled_lr(1) == 0.1
