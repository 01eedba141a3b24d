"""Every registered preset, generated from the registry: forward, backward, gradients, features,
timm equivalence; plus the parameter-count identity of ECA and clear errors for bad arguments."""
from __future__ import annotations

import pytest
import timm
import torch

import cvkit
from cvkit.models.registry import PRESETS
from cvkit.layers.eca import eca_kernel_size

HEAVY = {n for n in PRESETS if n.startswith(("vit_base", "resnet152", "eca_resnet152",
                                             "resnet101", "eca_resnet101"))}


def small_kwargs(name: str) -> dict:
    """Small inputs: 10 classes; a 32 px ViT (4 patches) of 2 blocks (the full depth is covered by
    the checkpoint tests, which compare vit_small_patch16 with timm's 12-block model)."""
    kw = dict(num_classes=10)
    if PRESETS[name].family == "vit":
        kw.update(img_size=32, depth=2)
    return kw


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    size = 32 if PRESETS[name].family == "vit" else 64
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(names)]


@pytest.mark.parametrize("name", _params(PRESETS))
def test_preset_trains_and_matches_timm(name):
    """One training step runs with a finite loss and every parameter gets a gradient;
    timm.create_model("cvkit_<name>", features_only=True) builds the same network (same seed ->
    same weights, same maps as forward_intermediates) and its maps have the channels and strides
    feature_info announces."""
    kw = small_kwargs(name)
    torch.manual_seed(0)
    model = cvkit.create_model(name, **kw)
    torch.manual_seed(0)
    feats = timm.create_model(f"cvkit_{name}", features_only=True, **kw)
    own = model.state_dict()
    for key, value in feats.state_dict().items():
        assert torch.equal(own[key.removeprefix("model.")], value), key
    x = small_input(name)
    model.eval(), feats.eval()
    with torch.no_grad():
        maps = feats(x)
        ref = model.forward_intermediates(x, indices=feats.out_indices, intermediates_only=True)
    assert len(maps) == len(ref) and all(torch.equal(a, b) for a, b in zip(maps, ref))
    assert [m.shape[1] for m in maps] == feats.feature_info.channels()
    assert [x.shape[-1] // m.shape[-1] for m in maps] == feats.feature_info.reduction()
    del feats

    model.train()
    logits = model(x)
    assert logits.shape == (2, 10)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7]))
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
        # the dynamic HC scales s_alpha, s_beta have an exactly zero gradient at init (W = 0)
        if not pname.endswith("_scale"):
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient in {pname}"
    assert set(model.no_weight_decay()) <= {n for n, _ in model.named_parameters()} | {
        "reg_token", "dist_token", "cls_token", "pos_embed"}


@pytest.mark.parametrize("name", ["eca_resnet18", "mobilenetv2_gcp", "vit_tiny_patch16_dhc2"])
def test_timm_create_model_equals_cvkit(name):
    kw = small_kwargs(name)
    torch.manual_seed(0)
    a = cvkit.create_model(name, **kw).eval()
    torch.manual_seed(0)
    b = timm.create_model(f"cvkit_{name}", **kw).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = small_input(name)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert b.pretrained_cfg["architecture"] == f"cvkit_{name}"


@pytest.mark.parametrize("name", ["resnet18_hc2", "resnet50_dhc2", "mobilenetv2_fc2",
                                  "resnet18_gcp", "vit_tiny_patch16_dhc2", "vit_tiny_patch16_gcp"])
def test_deferred_init_on_the_meta_device(name):
    """A model built under ``torch.device("meta")`` (no memory: shape inference, deferred
    initialisation of large models) runs forward and backward there, and once materialised
    with ``to_empty`` and given a checkpoint's weights computes what the eagerly built one does.
    The connection and covariance layers used to open an autocast context torch refuses on meta."""
    kw = small_kwargs(name)
    if "hc2" in name or "fc2" in name:
        kw["hc_nan_guard"] = True  # no values on meta to check: the guard lets shapes through
    eager = cvkit.create_model(name, **kw).eval()
    with torch.device("meta"):
        deferred = cvkit.create_model(name, **kw)
    out = deferred(small_input(name).to("meta"))
    assert out.device.type == "meta" and out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "meta"
               for p in deferred.parameters() if p.requires_grad)
    deferred = deferred.to_empty(device="cpu").eval()
    deferred.load_state_dict(eager.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(deferred(small_input(name)), eager(small_input(name)))


@pytest.mark.parametrize("name", ["resnet18_gcp", "mobilenetv2_gcp", "vit_tiny_patch16_gcp"])
def test_gcp_model_cast_to_bfloat16_runs(name):
    """``model.to(torch.bfloat16)`` (half-precision inference, FSDP's parameter dtype): the
    covariance head computes in float32 and hands the classifier the network's dtype again; the
    logits are the float32 model's within bf16's rounding. (A CNN's float32 covariance met a bf16
    classifier: "mat1 and mat2 must have the same dtype".)"""
    torch.manual_seed(0)
    model = cvkit.create_model(name, **small_kwargs(name)).eval()
    x = small_input(name)
    with torch.no_grad():
        ref = model(x)
        out = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_list_models_and_timm_names():
    assert "eca_resnet50" in cvkit.list_models("*eca*")
    assert cvkit.list_models("vit_small*") == sorted(n for n in PRESETS
                                                     if n.startswith("vit_small"))
    assert all(f"cvkit_{n}" in timm.list_models("cvkit_*") for n in PRESETS)
    # registered under cvkit_* only: timm's own resnet50 etc. stay untouched
    assert set(timm.list_models("cvkit_*")) == {f"cvkit_{n}" for n in PRESETS}
    assert timm.models.get_pretrained_cfg("resnet50").architecture == "resnet50"
    for family_preset in ("resnet50", "mobilenetv2", "vit_small_patch16"):
        cfg = timm.models.get_pretrained_cfg(f"cvkit_{family_preset}").to_dict()
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875


def test_presets_cover_the_papers():
    for d in (18, 34, 50, 101, 152):
        assert {f"resnet{d}", f"eca_resnet{d}"} <= set(PRESETS)
    for d in (18, 34, 50, 101):
        assert f"resnet{d}_gcp" in PRESETS
    assert {"mobilenetv2", "eca_mobilenetv2", "mobilenetv2_gcp", "eca_resnet50_gcp"} <= set(PRESETS)
    for size in ("tiny", "small", "base"):
        for suffix in ("", "_hc2", "_dhc2", "_fc2", "_gcp"):
            assert f"vit_{size}_patch16{suffix}" in PRESETS


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_eca_adds_exactly_its_kernel_sizes():
    """ECA-Net: 80 extra parameters on ResNet-50 with the released k = (3, 5, 5, 7) (16 blocks);
    with the paper formula the sum of Eq. 12 over the blocks' output widths."""
    base = _count(cvkit.create_model("resnet50"))
    released = cvkit.create_model("eca_resnet50", eca_k_size=(3, 5, 5, 7))
    assert _count(released) - base == 80 == 3 * 3 + 4 * 5 + 6 * 5 + 3 * 7
    formula = cvkit.create_model("eca_resnet50")
    expected = sum(n * eca_kernel_size(c) for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048)))
    assert _count(formula) - base == expected == 86
    assert [m.eca.kernel_size for m in formula.layer4] == [7, 7, 7]
    mb = _count(cvkit.create_model("mobilenetv2"))
    official = cvkit.create_model("eca_mobilenetv2", eca_k_size="official")
    # 17 blocks: C < 96 -> k = 1 (C = 16, 24, 32, 64: 1+2+3+4 = 10 blocks), C in {96, 160, 320}
    # -> k = 3 (3+3+1 = 7 blocks): papers.md and the official code's `if c < 96`
    assert _count(official) - mb == 10 * 1 + 7 * 3


def test_gcp_paper_layout():
    """iSQRT-COV on ResNet-50: last stage stride 1 (14x14 at 224 px), 2048 -> 256 reduction,
    5 iterations, a 32896-d vector into the fc."""
    model = cvkit.create_model("resnet50_gcp").eval()
    assert model.fc.in_features == 32896 == 256 * 257 // 2
    assert model.global_pool.iters == 5 and model.global_pool.dim == 256
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(1, 3, 224, 224))
    assert fmap.shape == (1, 2048, 14, 14)
    assert cvkit.create_model("resnet18_gcp", gcp_dim=128, num_classes=5).fc.in_features == 8256


def test_mobilenetv2_gcp_follows_the_gcp_release_layout():
    """mobilenetv2_gcp is the GCP release's network (ZhangLi-CS/GCP_Optimization
    MobileNetV2_MPNCOV), whose 74.39 / 73.97 / 72.45 top-1 the registry cites: every stride kept
    (7x7 at 224 px, feature_info and features_only strides 2..32 as the plain network's,
    pretrained_cfg pool size 7x7), 1280 -> 256 reduction ending in ReLU6, 32896-d fc. The ResNets
    keep ReLU, as the release's ResNet_MPNCOV. (It ran the 160-channel stage at stride 1: 14x14,
    stride 16, and used ReLU.)"""
    model = cvkit.create_model("mobilenetv2_gcp").eval()
    plain = cvkit.create_model("mobilenetv2")
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
    assert type(model.global_pool.reduce[2]) is torch.nn.ReLU6
    assert model.global_pool.dim == 256 and model.global_pool.iters == 5
    assert model.get_classifier().in_features == 32896
    assert [(i["reduction"], i["module"]) for i in model.feature_info] == [
        (i["reduction"], i["module"]) for i in plain.feature_info]
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    feats = cvkit.create_model("mobilenetv2_gcp", features_only=True)
    assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [m.shape[-1] for m in feats(torch.randn(1, 3, 64, 64))] == [32, 16, 8, 4, 2]
    assert model.pretrained_cfg["pool_size"] == (7, 7)
    assert cvkit.create_model("resnet50_gcp").pretrained_cfg["pool_size"] == (14, 14)
    assert type(cvkit.create_model("resnet18_gcp").global_pool.reduce[2]) is torch.nn.ReLU


def test_mobilenetv2_pruned_with_its_head_keeps_the_last_conv():
    """prune_intermediate_layers(prune_head=False) on the whole network keeps features.18 (the
    320 -> 1280 conv the head reads), as timm's mobilenetv2_100: same logits (the forward failed,
    "mat1 and mat2 shapes cannot be multiplied (2x320 and 1280x1000)"). Truncated, the head goes
    with its input, as in timm; with prune_head=True the conv goes too (features_only)."""
    x = torch.randn(2, 3, 64, 64)
    for name in ("mobilenetv2", "mobilenetv2_gcp"):
        model = cvkit.create_model(name, num_classes=10).eval()
        with torch.no_grad():
            ref = model(x)
            model.prune_intermediate_layers(indices=(4,), prune_head=False)
            assert len(model.features) == 19 and torch.equal(model(x), ref)
    model = cvkit.create_model("mobilenetv2").eval()
    model.prune_intermediate_layers(indices=(2,), prune_head=False)
    assert len(model.features) == 7 and model.num_classes == 0
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 32, 8, 8)
    model = cvkit.create_model("mobilenetv2")
    model.prune_intermediate_layers(indices=(4,))
    assert len(model.features) == 18


def test_vit_gcp_head_concatenates_class_token_and_covariance():
    model = cvkit.create_model("vit_tiny_patch16_gcp", img_size=32, num_classes=3).eval()
    x = small_input("vit_tiny_patch16_gcp")
    with torch.no_grad():
        tokens = model.forward_features(x)
        feat = model.forward_head(tokens, pre_logits=True)
        cov = model.gcp.cov(tokens[:, 1:])
    assert feat.shape == (2, 192 + 32896)
    assert torch.equal(feat[:, :192], tokens[:, 0])
    assert torch.equal(feat[:, 192:], cov)


def test_hc_static_params_have_no_weight_decay():
    model = cvkit.create_model("resnet50_hc2")
    nwd = model.no_weight_decay()
    assert "layer1.1.streams.static_alpha" in nwd and "layer1.1.streams.static_beta" in nwd
    # transition blocks (projection shortcut) run without a connection
    assert model.layer2[0].streams is None and model.layer2[1].streams is not None
    vit = cvkit.create_model("vit_tiny_patch16_dhc2", img_size=32)
    nwd = vit.no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.hc_attn.static_alpha"} <= nwd
    assert not any("dynamic" in n for n in nwd)


@pytest.mark.parametrize("name", ["resnet18_hc2", "mobilenetv2_fc2", "vit_tiny_patch16_dhc2"])
def test_hc_nan_guard_from_create_model_names_the_layer(name):
    """``hc_nan_guard=True`` reaches every connection of the model: a non-finite weight inside a
    block stops the forward at the first connection that sees it, naming its layer; without the
    guard the same model returns NaN logits."""
    x = small_input(name)
    for guard in (False, True):
        torch.manual_seed(0)
        model = cvkit.create_model(name, hc_nan_guard=guard, **small_kwargs(name)).eval()
        connections = [m for m in model.modules() if hasattr(m, "nan_guard")]
        assert connections and all(m.nan_guard is guard for m in connections)
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
            block = next(m for m in connections if m.layer_index > 0)
            next(p for p in block.parameters()).fill_(float("nan"))
            if guard:
                with pytest.raises(FloatingPointError, match=r"layer_index=\d+"):
                    model(x)
            else:
                assert torch.isnan(model(x)).any()


def test_reset_classifier_and_forward_head():
    model = cvkit.create_model("resnet18_gcp", num_classes=10).eval()
    model.reset_classifier(4)
    x = small_input("resnet18")
    with torch.no_grad():
        out = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert out.shape == (2, 4) and pre.shape == (2, 32896)
    assert model.get_classifier().out_features == 4
    vit = cvkit.create_model("vit_tiny_patch16_gcp", img_size=32, num_classes=10)
    vit.reset_classifier(0)
    with torch.no_grad():
        assert vit(small_input("vit_tiny_patch16")).shape == (2, 192 + 32896)


def test_reset_classifier_zero_and_no_pool_is_timms_resnet():
    """reset_classifier(0, "") (timm: no classifier, no pooling) raised on every CNN preset; on
    resnet18 it now gives what timm's resnet18 gives with the same weights: the (B, 512, H/32,
    W/32) map."""
    x = small_input("resnet18")
    model = cvkit.create_model("resnet18").eval()
    ref = timm.create_model("resnet18").eval()
    ref.load_state_dict(model.state_dict())
    model.reset_classifier(0, "")
    ref.reset_classifier(0, "")
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 512, 2, 2) and torch.equal(out, ref(x))


@pytest.mark.parametrize("name, shape", [("resnet18_gcp", (2, 512, 4, 4)),
                                         ("mobilenetv2", (2, 1280, 2, 2)),
                                         ("mobilenetv2_gcp", (2, 1280, 2, 2))])
def test_reset_classifier_pool_changes_on_cnns(name, shape):
    """global_pool="" = the backbone's map (a GCP head goes whole: reduction, covariance; the GCP
    ResNet's last stage stays at stride 1, 4x4 at 64 px); "avg" = its global average; a trained GCP
    head stays with None / "gcp"; a classifier on an unpooled map, or adding a GCP head to a built
    network, is a clear error that changes nothing."""
    x = small_input(name)
    model = cvkit.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)
        if name.endswith("_gcp"):
            model.reset_classifier(0, "gcp")
            assert torch.equal(model(x), pooled)
        model.reset_classifier(0, "")
        assert not any(k.startswith("global_pool.") for k in model.state_dict())
        out = model(x)
        assert out.shape == shape and torch.equal(out, fmap)
        with pytest.raises(ValueError, match=r"num_classes=5 cannot take: use num_classes=0"):
            model.reset_classifier(5, "")
        with pytest.raises(ValueError, match=r"cannot add an iSQRT-COV head .*'' -> 'gcp'"):
            model.reset_classifier(5, "gcp")
        assert torch.equal(model(x), fmap)
        model.reset_classifier(3, "avg")
        torch.testing.assert_close(model.forward_head(fmap, pre_logits=True), fmap.mean((2, 3)))
        assert model(x).shape == (2, 3) and model.get_classifier().in_features == shape[1]
    with pytest.raises(ValueError, match=r"global_pool='' .* num_classes=10"):
        cvkit.create_model(name, num_classes=10, global_pool="")


@pytest.mark.parametrize("name", ["vit_tiny_patch16", "vit_tiny_patch16_hc2"])
def test_vit_frozen_stem_and_blocks_stay_in_eval_in_training(name):
    """With the embedding and block 0 frozen (CvkitBackbone(frozen_stages=0), mmdet's frozen
    stages) train() keeps them in eval mode, pos_drop included (it stayed in training: the frozen
    feature map was random); their output is the eval output. Trainable blocks keep drop path;
    with block 0 trainable, pos_drop regularises its input and trains (mmpretrain freezes
    drop_after_pos only with frozen layers)."""
    torch.manual_seed(0)
    model = cvkit.create_model(name, img_size=32, depth=3, num_classes=10, pos_drop_rate=0.5,
                               drop_path_rate=0.5)
    x = small_input(name)
    frozen = [model.pos_embed, model.cls_token, *model.patch_embed.parameters(),
              *model.blocks[0].parameters()]
    for p in frozen:
        p.requires_grad_(False)

    def first():
        return model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]

    model.eval()
    with torch.no_grad():
        ref = first()
        model.train()
        assert model.training and not model.pos_drop.training
        assert not any(m.training for m in model.blocks[0].modules())
        assert all(m.training for m in model.blocks[1].modules())
        assert torch.equal(first(), ref)
        assert not torch.equal(model(x), model(x))  # drop path in the trainable blocks
    for p in model.blocks[0].parameters():
        p.requires_grad_(True)
    model.train()
    assert model.pos_drop.training and model.blocks[0].training


def test_recipes_and_pretrained_cfg_agree_on_interpolation():
    """Every recipe's resize filter (data.interpolation, else the datamodule's default) is the
    interpolation its preset's pretrained_cfg announces (timm's resolve_data_config reads it):
    the ViT presets said bicubic while their recipes trained and evaluated bilinear."""
    from pathlib import Path

    import yaml

    from cvkit.models.registry import pretrained_cfg

    default = "bilinear"  # the datamodule's (its pixels: test_data_datamodule.py)
    folder = Path(__file__).resolve().parents[1] / "configs" / "classification"
    recipes = sorted(folder.glob("*.yaml"))
    assert len(recipes) > 40
    for path in recipes:
        cfg = yaml.safe_load(path.read_text())
        name = cfg["model"]["model_name"]
        recipe = (cfg.get("data") or {}).get("interpolation", default)
        assert pretrained_cfg(PRESETS[name])["interpolation"] == recipe, path.name
        assert timm.models.get_pretrained_cfg(f"cvkit_{name}").interpolation == recipe, path.name


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = cvkit.create_model("resnet18_hc2", num_classes=10).eval()
    x = small_input("resnet18")
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_unknown_model_name_lists_closest():
    with pytest.raises(ValueError, match=r"unknown model 'eca_resnet5'.*eca_resnet50"):
        cvkit.create_model("eca_resnet5")
    with pytest.raises(ValueError, match="vit_small_patch16"):
        cvkit.create_model("vit_small_patch_16")


def test_vit_wrong_input_size_is_one_clear_error():
    model = cvkit.create_model("vit_tiny_patch16_hc2", img_size=32)
    with pytest.raises(ValueError, match=r"built for 32x32 images but got 64x48"):
        model(torch.randn(1, 3, 64, 48))
    plain = cvkit.create_model("vit_tiny_patch16")
    with pytest.raises(ValueError, match=r"224x224 images but got 64x64"):
        plain(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(eca_k_size=(3, 5)), "eca_k_size"),
    (dict(hc_rate=2, fc_rate=2), "not both"),
    (dict(hc_rate=-1), "hc_rate"),
    (dict(hc_dynamic=True), "hc_dynamic"),
    (dict(hc_rate=2, hc_dynamic="no"), "hc_dynamic must be true or false, got 'no'"),  # was True
    (dict(hc_nan_guard=True), "hc_nan_guard=True needs hc_rate > 0 or fc_rate > 0"),
    (dict(eca_k_size=4), "odd"),
    (dict(eca_k_size="official"), "per-stage sizes, e.g. \\(3, 5, 5, 7\\)"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cvkit.create_model("eca_resnet18", **kwargs)


def test_eca_k_size_without_eca_is_an_error():
    """It would otherwise build a plain ResNet / MobileNetV2 (no ECA parameters) without a word."""
    for name, k in (("resnet50", (3, 5, 5, 7)), ("mobilenetv2", "official")):
        with pytest.raises(ValueError, match=r"without ECA \(eca=False\).*eca=True"):
            cvkit.create_model(name, eca_k_size=k)


def test_unknown_keyword_names_the_model():
    with pytest.raises(TypeError, match="resnet18"):
        cvkit.create_model("resnet18", not_an_option=1)
