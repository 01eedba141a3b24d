"""CvkitBackbone: cvkit models as mmdet backbones (channels, strides, freezing, checkpoints)."""
from __future__ import annotations

import pytest
import torch


def _build(**kwargs):
    from cvkit.tasks.detection import load_det_config
    from mmdet.registry import MODELS

    load_det_config({})
    return MODELS.build(dict(type="CvkitBackbone", **kwargs))


def test_feature_maps_match_feature_info():
    import cvkit

    backbone = _build(model_name="eca_resnet18", out_indices=(1, 2, 3, 4))
    reference = cvkit.create_model("eca_resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    assert backbone.out_channels == reference.feature_info.channels() == [64, 128, 256, 512]
    feats = backbone(torch.randn(2, 3, 96, 128))
    assert isinstance(feats, tuple)
    assert [f.shape for f in feats] == [(2, c, 96 // s, 128 // s) for c, s in
                                        zip([64, 128, 256, 512], [4, 8, 16, 32])]


def test_frozen_stages_freeze_stem_and_layer1_and_keep_them_in_eval():
    backbone = _build(model_name="eca_resnet18", out_indices=(1, 2, 3, 4), frozen_stages=1)
    net = backbone.body.model  # the ResNet inside timm's FeatureGetterNet
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    # stem (conv1/bn1) and layer1 feed feature 1; nothing of layer2..4 does
    expected = {n for n, _ in net.named_parameters()
                if n.split(".")[0] in {"conv1", "bn1", "layer1"}}
    assert frozen == expected and frozen
    backbone.train()
    stem_bn = net.bn1
    assert not stem_bn.training and net.layer2[0].bn1.training
    before = stem_bn.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(stem_bn.running_mean, before)


@pytest.mark.parametrize("frozen_stages,out_indices,frozen_top", [
    (1, (2, 3, 4), {"conv1", "bn1", "layer1"}),   # the frozen feature is not an output
    (0, (1, 2, 3, 4), {"conv1", "bn1"}),           # 0 = the stem only, as mmdet's ResNet
])
def test_frozen_stages_independent_of_out_indices_survive_a_training_step(
        frozen_stages, out_indices, frozen_top):
    torch.manual_seed(0)
    backbone = _build(model_name="eca_resnet18", out_indices=out_indices,
                      frozen_stages=frozen_stages)
    net = backbone.body.model
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in net.named_parameters() if n.split(".")[0] in frozen_top}
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers() if "running" in n}
    opt = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone.train()
    loss = sum(f.square().mean() for f in backbone(torch.randn(2, 3, 64, 64)))
    loss.backward()
    opt.step()
    for name, p in net.named_parameters():
        changed = not torch.equal(p.detach(), params[name])
        assert changed != (name in frozen), name
    for name, b in net.named_buffers():  # BN statistics: frozen stages keep theirs
        if "running" in name:
            assert torch.equal(b, buffers[name]) == (name.split(".")[0] in frozen_top), name


def test_frozen_vit_blocks_go_to_eval_but_the_trainable_blocks_keep_drop_path():
    """pos_embed / cls_token sit on the ViT itself: freezing them must not put the whole ViT (and
    the stochastic depth of its trainable blocks) into eval mode."""
    backbone = _build(model_name="vit_tiny_patch16", out_indices=(3,), frozen_stages=1,
                      model_kwargs=dict(dynamic_img_size=True, drop_path_rate=0.5))
    net = backbone.body.model
    assert not net.pos_embed.requires_grad and not net.blocks[1].attn.qkv.weight.requires_grad
    assert all(p.requires_grad for p in net.blocks[2].parameters())
    backbone.train()
    assert net.training
    assert not any(m.training for m in [*net.patch_embed.modules(), *net.blocks[0].modules(),
                                        *net.blocks[1].modules()])
    assert all(m.training for m in [*net.blocks[2].modules(), *net.blocks[3].modules()])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # drop path still draws: two training-mode passes differ
        assert not torch.equal(backbone(x)[0], backbone(x)[0])


def test_frozen_stages_stay_in_eval_after_sync_batchnorm_conversion():
    """Lightning's ``sync_batchnorm=True`` / mmengine's ``sync_bn='torch'`` replace every BatchNorm
    object; the frozen stages' new norm layers must still keep their statistics."""
    backbone = _build(model_name="eca_resnet18", out_indices=(1, 2, 3, 4), frozen_stages=1)
    backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    backbone.train()
    net = backbone.body.model
    frozen_norms = [net.bn1, *(m for m in net.layer1.modules()
                               if isinstance(m, torch.nn.SyncBatchNorm))]
    assert all(isinstance(m, torch.nn.SyncBatchNorm) and not m.training for m in frozen_norms)
    assert isinstance(net.layer2[0].bn1, torch.nn.SyncBatchNorm) and net.layer2[0].bn1.training
    before = [m.running_mean.clone() for m in frozen_norms]
    backbone(torch.randn(2, 3, 64, 64))  # one process: SyncBatchNorm runs as BatchNorm
    for m, mean in zip(frozen_norms, before):
        torch.testing.assert_close(m.running_mean, mean)
    assert not torch.equal(net.layer2[0].bn1.running_mean, torch.zeros(128))


def test_norm_eval_keeps_every_batchnorm_in_eval():
    backbone = _build(model_name="eca_resnet18", out_indices=(1, 2, 3, 4), norm_eval=True)
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in backbone.parameters())


def test_pretrained_init_cfg_loads_a_cvkit_classification_checkpoint(tmp_path):
    import cvkit

    classifier = cvkit.create_model("eca_resnet18", num_classes=10)
    with torch.no_grad():
        for p in classifier.parameters():
            p.normal_()
    path = tmp_path / "cls.ckpt"  # the classification Lightning task's layout
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()}}, path)
    backbone = _build(model_name="eca_resnet18", out_indices=(1, 2, 3, 4),
                      init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    loaded = dict(backbone.body.model.named_parameters())
    for name, value in classifier.named_parameters():
        if not name.startswith("fc."):
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


def _eca_sizes(model) -> tuple[int, ...]:
    """The per-stage ECA kernel sizes of a (features_only) ResNet."""
    net = getattr(model, "model", model)
    return tuple(getattr(net, f"layer{i}")[0].eca.conv.kernel_size[0] for i in range(1, 5))


def _classifier_checkpoint(path, name: str, eca_k_size):
    import cvkit

    model = cvkit.create_model(name, num_classes=10, eca_k_size=eca_k_size)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_the_checkpoint_fixes_the_eca_kernel_sizes_over_the_config(tmp_path):
    """A backbone checkpoint decides the ECA kernel sizes: with none in the config quietly, over
    a config value with a warning naming both (its weights load into nothing else)."""
    import warnings

    ckpt = _classifier_checkpoint(tmp_path / "eca.ckpt", "eca_resnet18", (5, 3, 7, 3))
    init = dict(type="Pretrained", checkpoint=str(ckpt))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = _build(model_name="eca_resnet18", init_cfg=init)
    assert not [w for w in caught if "CvkitBackbone" in str(w.message)]
    assert _eca_sizes(backbone.body) == (5, 3, 7, 3)
    assert backbone.model_kwargs == {"eca_k_size": (5, 3, 7, 3)}  # as built, for the config dump
    with pytest.warns(UserWarning, match=r"eca_k_size=\(5, 3, 7, 3\) from .*eca\.ckpt replaces the "
                                         r"config's \(3, 3, 3, 3\)"):
        backbone = _build(model_name="eca_resnet18", init_cfg=init,
                          model_kwargs=dict(eca_k_size=(3, 3, 3, 3)))
    assert _eca_sizes(backbone.body) == (5, 3, 7, 3)
    assert backbone.model_kwargs == {"eca_k_size": (5, 3, 7, 3)}


def test_config_sizes_that_build_the_checkpoints_layout_do_not_warn(tmp_path):
    """``eca_k_size=5`` and ``(5, 5, 5, 5)`` (or the 8 per-block sizes) build the same ResNet-18:
    a config giving one beside a checkpoint of another form is no conflict; a real one warns."""
    import warnings

    init = dict(type="Pretrained", checkpoint=str(
        _classifier_checkpoint(tmp_path / "eca5.ckpt", "eca_resnet18", 5)))
    for given in (5, [5, 5, 5, 5], (5,) * 8):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backbone = _build(model_name="eca_resnet18", init_cfg=init,  # strict: a load keyword
                              model_kwargs=dict(eca_k_size=given, strict=True))
        assert not [w for w in caught if "CvkitBackbone" in str(w.message)], given
        assert _eca_sizes(backbone.body) == (5, 5, 5, 5)
    with pytest.warns(UserWarning, match=r"eca_k_size=\(5, 5, 5, 5\) from .* replaces the "
                                         r"config's \(5, 5, 5, 5, 5, 5, 5, 3\)"):
        _build(model_name="eca_resnet18", init_cfg=init, model_kwargs=dict(eca_k_size=(5,) * 7 + (3,)))
    # None is Eq. 12 (3, 5, 5, 5 for ResNet-18's widths): the same as a checkpoint of those sizes;
    # create_model's weights_only is a keyword too
    eq12 = dict(type="Pretrained", checkpoint=str(
        _classifier_checkpoint(tmp_path / "eq12.ckpt", "eca_resnet18", None)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = _build(model_name="eca_resnet18", init_cfg=eq12,
                          model_kwargs=dict(eca_k_size=None, weights_only=True))
    assert not [w for w in caught if "CvkitBackbone" in str(w.message)]
    assert _eca_sizes(backbone.body) == (3, 5, 5, 5)


def test_a_backbone_checkpoint_is_read_once(tmp_path, monkeypatch):
    """The checkpoint that fixes the backbone's architecture is the one its weights load from:
    the file is read once, not once per use."""
    import cvkit.models.checkpoint as checkpoint

    init = dict(type="Pretrained", checkpoint=str(
        _classifier_checkpoint(tmp_path / "eca.ckpt", "eca_resnet18", (5, 3, 7, 3))))
    reads = []
    load = torch.load
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: reads.append(a[0]) or load(*a, **k))
    backbone = _build(model_name="eca_resnet18", init_cfg=init)
    backbone.init_weights()
    assert [str(p) for p in reads] == [init["checkpoint"]]
    assert _eca_sizes(backbone.body) == (5, 3, 7, 3)


def test_eca_r50_detection_config_takes_a_backbone_trained_by_the_classification_recipe(tmp_path):
    """configs/classification/eca_resnet50.yaml trains Eq. 12's kernel sizes (5, 5, 5, 7); the
    released checkpoint has (3, 5, 5, 7): the Mask R-CNN ECA-R50 config's backbone takes either."""
    from mmdet.registry import MODELS

    from cvkit.tasks.detection import load_det_config

    config = "configs/detection/mask-rcnn_eca-r50_fpn_1x_coco.py"
    for sizes in ((5, 5, 5, 7), (3, 5, 5, 7)):
        ckpt = _classifier_checkpoint(tmp_path / f"{sizes}.ckpt", "eca_resnet50", sizes)
        cfg = load_det_config(config)
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(ckpt))
        assert _eca_sizes(MODELS.build(cfg.model.backbone).body) == sizes


def test_missing_checkpoint_and_unknown_model_are_named(tmp_path):
    backbone = _build(model_name="eca_resnet18", init_cfg=dict(type="Pretrained",
                                                               checkpoint=str(tmp_path / "no.pth")))
    with pytest.raises(FileNotFoundError, match=r"no\.pth"):
        backbone.init_weights()
    with pytest.raises(ValueError, match="resnet_9000"):
        _build(model_name="resnet_9000")
    for bad in (5, -2):
        with pytest.raises(ValueError, match=rf"frozen_stages={bad} must be -1 .* 0\.\.4"):
            _build(model_name="eca_resnet18", out_indices=(3, 4), frozen_stages=bad)


def test_simple_feature_pyramid_strides_and_channels():
    from cvkit.tasks.detection import load_det_config
    from mmdet.registry import MODELS

    load_det_config({})
    neck = MODELS.build(dict(type="SimpleFeaturePyramid", in_channels=[384], out_channels=32))
    x = torch.randn(2, 384, 6, 8, requires_grad=True)  # a stride-16 ViT map of a 96x128 image
    outs = neck([x])
    assert [o.shape[-2:] for o in outs] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert all(o.shape[:2] == (2, 32) for o in outs)
    sum(o.sum() for o in outs).backward()
    assert x.grad.abs().sum() > 0


def test_backbone_from_a_training_checkpoint_takes_its_backbone_options(tmp_path):
    """A classification training checkpoint trained with hyper-connections starts the detection
    backbone with them (its model_kwargs, not its GCP head's): the maps of the trained network."""
    import cvkit

    torch.manual_seed(0)
    kwargs = {"hc_rate": 2, "global_pool": "gcp", "gcp_dim": 16}
    trained = cvkit.create_model("eca_resnet18", num_classes=4, **kwargs).eval()
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".streams." in name:
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path / "hc.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                "hyper_parameters": {"model_name": "eca_resnet18", "num_classes": 4,
                                     "model_kwargs": kwargs}}, path)
    backbone = _build(model_name="eca_resnet18", out_indices=(1, 2, 3),
                      init_cfg=dict(type="Pretrained", checkpoint=str(path))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = backbone(x)
        want = trained.forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))
