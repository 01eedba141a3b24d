"""Checkpoint loading: torchvision / timm / official ECA-Net / iSQRT-COV / fast-MPN-COV / Lightning
formats round-trip to identical logits; hyper-/frac-connections at init equal the plain network;
bad paths and mismatches fail with one clear error."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import stat
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

import cvkit
from cvkit.models.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]


def _x(size=64, batch=2, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so eval-mode logits depend on every buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("tv_name, name", [("resnet50", "resnet50"),
                                           ("mobilenet_v2", "mobilenetv2")])
def test_torchvision_state_dict_gives_identical_logits(tmp_path, tv_name, name):
    torch.manual_seed(0)
    ref = _randomise_bn(getattr(torchvision.models, tv_name)()).eval()
    path = tmp_path / f"{tv_name}.pth"
    torch.save(ref.state_dict(), path)
    model = cvkit.create_model(name, checkpoint_path=path).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_timm_vit_state_dict_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    path = tmp_path / "vit_small.pth"
    torch.save(ref.state_dict(), path)
    model = cvkit.create_model("vit_small_patch16", checkpoint_path=path).eval()
    x = _x(224, batch=1)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("plain, streams, atol", [
    ("vit_small_patch16", "vit_small_patch16_hc2", 2e-5),   # sum of 2 streams, then LayerNorm
    ("vit_small_patch16", "vit_small_patch16_fc2", 0.0),
    ("vit_tiny_patch16", "vit_tiny_patch16_dhc2", 2e-5),
    ("resnet18", "resnet18_hc2", 0.0),
    ("resnet50", "resnet50_fc2", 0.0),
    ("mobilenetv2", "mobilenetv2_hc2", 0.0),
])
def test_streams_at_init_equal_the_plain_network(tmp_path, plain, streams, atol):
    """Hyper-/frac-connections add parameters and change nothing else at initialisation: loaded
    non-strictly with the plain network's weights, the logits are the plain network's."""
    vit = plain.startswith("vit")
    kw = dict(img_size=64) if vit else {}
    torch.manual_seed(0)
    ref = cvkit.create_model(plain, **kw)
    if not vit:
        _randomise_bn(ref)
    ref.eval()
    path = tmp_path / "plain.pth"
    torch.save(ref.state_dict(), path)
    model = cvkit.create_model(streams, **kw)
    result = cvkit.load_checkpoint(model, path, strict=False)
    assert result.missing_keys and all(("streams." in k or ".hc_" in k)
                                       for k in result.missing_keys)
    assert not result.unexpected_keys
    model.eval()
    x = _x(64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=atol) if atol else \
            torch.equal(model(x), ref(x)) or pytest.fail("logits differ")


@pytest.mark.parametrize("streams", ["vit_tiny_patch16_hc2", "vit_tiny_patch16_fc2",
                                     "vit_tiny_patch16_dhc2"])
def test_vit_streams_take_attention_masks_and_give_plain_scale_features(streams):
    """With the plain ViT's weights, at initialisation: an attention mask (boolean, additive) or
    ``is_causal`` changes the stream model as it changes the plain one (it was silently ignored),
    and ``forward_intermediates`` / ``features_only`` give the plain hidden states (the streams'
    mean; their sum was n times them, what a dense head fine-tuned from plain weights does not
    expect)."""
    torch.manual_seed(0)
    ref = cvkit.create_model("vit_tiny_patch16", img_size=32).eval()
    model = cvkit.create_model(streams, img_size=32)
    model.load_state_dict(ref.state_dict(), strict=False)
    model.eval()
    x = _x(32, batch=2)
    tokens = 1 + 4
    keep = torch.rand(tokens, tokens) > 0.5
    keep |= torch.eye(tokens, dtype=torch.bool)              # every query attends somewhere
    additive = torch.randn(2, 1, tokens, tokens)
    with torch.no_grad():
        for kwargs in (dict(attn_mask=keep), dict(attn_mask=additive), dict(is_causal=True)):
            want = ref.forward_features(x, **kwargs)
            assert not torch.allclose(want, ref.forward_features(x), atol=1e-3)
            torch.testing.assert_close(model.forward_features(x, **kwargs), want,
                                       rtol=0, atol=2e-5)
            got = model.forward_intermediates(x, indices=[0, 11], intermediates_only=True,
                                              **kwargs)
            for a, b in zip(got, ref.forward_intermediates(x, indices=[0, 11],
                                                            intermediates_only=True, **kwargs)):
                torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    with torch.no_grad():
        plain = ref.forward_intermediates(x, indices=[5, 11], intermediates_only=True)
        for a, b in zip(model.forward_intermediates(x, indices=[5, 11], intermediates_only=True),
                        plain):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


# --- official release layouts, built here from the papers' key names --------------------------
def official_eca_resnet50_state_dict(k_size=(3, 5, 5, 7), num_classes=1000, seed=0):
    """The official ECA-Net ResNet-50 layout: torchvision names + layerX.Y.eca.conv.weight [1,1,k],
    written key by key (independent of cvkit's modules)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** .5

    def bn(name, c):
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            sd[f"{p}.eca.conv.weight"] = torch.randn(1, 1, k_size[stage - 1], generator=g)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    sd["fc.weight"] = torch.randn(num_classes, 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(num_classes)
    return sd


def test_official_eca_release_loads_with_k_inferred(tmp_path):
    sd = official_eca_resnet50_state_dict()
    release = {"epoch": 100, "arch": "eca_resnet50", "best_prec1": 77.42,
               "state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())}
    path = tmp_path / "eca_resnet50_k3557.pth.tar"
    torch.save(release, path)
    model = cvkit.create_model("eca_resnet50", checkpoint_path=path).eval()
    assert [[blk.eca.kernel_size for blk in stage] for stage in model.stages()] == \
        [[3] * 3, [5] * 4, [5] * 6, [7] * 3]
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in cvkit.create_model("resnet50").parameters()) + 80
    # the default (paper-formula) model cannot take these weights: one clear error
    with pytest.raises(CheckpointError, match=r"layer1\.0\.eca\.conv\.weight: checkpoint \[1, 1, 3\]"
                                              r" vs model \[1, 1, 5\].*eca_k_size"):
        cvkit.load_checkpoint(cvkit.create_model("eca_resnet50"), path)


# The official ECA-MobileNetV2's kernel size per inverted-residual block, typed from its layout:
# 17 blocks of output width 16, 24 x2, 32 x3, 64 x4, 96 x3, 160 x3, 320 (MobileNetV2 Table 2),
# k = 1 for C < 96, else 3 (papers.md; the release's `if c < 96`).
OFFICIAL_MOBILENETV2_K = (1,) + (1,) * 2 + (1,) * 3 + (1,) * 4 + (3,) * 3 + (3,) * 3 + (3,)


def test_official_eca_mobilenetv2_layout_loads(tmp_path):
    """Official ECA-MobileNetV2 nests the ECA in the block's Sequential (features.N.conv.K.conv)
    and uses k = 1 for C < 96, else 3; the kernel sizes are read back from the file."""
    torch.manual_seed(0)
    ref = _randomise_bn(cvkit.create_model("eca_mobilenetv2",
                                           eca_k_size=OFFICIAL_MOBILENETV2_K)).eval()
    assert [b.eca.kernel_size for b in ref.features[1:18]] == list(OFFICIAL_MOBILENETV2_K)
    assert [b.eca.kernel_size for b in cvkit.create_model(
        "eca_mobilenetv2", eca_k_size="official").features[1:18]] == list(OFFICIAL_MOBILENETV2_K)
    official = OrderedDict()
    for k, v in ref.state_dict().items():
        if k.endswith(".eca.conv.weight"):
            n = int(k.split(".")[1])
            k = f"features.{n}.conv.{len(ref.features[n].conv)}.conv.weight"
        official[f"module.{k}"] = v
    path = tmp_path / "eca_mobilenetv2.pth.tar"
    torch.save({"state_dict": official}, path)
    model = cvkit.create_model("eca_mobilenetv2", checkpoint_path=path).eval()
    ks = [b.eca.kernel_size for b in model.features[1:18]]
    assert ks == list(OFFICIAL_MOBILENETV2_K)
    with torch.no_grad():
        assert torch.equal(model(_x()), ref(_x()))


def _gcp_reference(num_classes=10):
    torch.manual_seed(0)
    ref = cvkit.create_model("resnet50_gcp", num_classes=num_classes)
    return _randomise_bn(ref).eval()


def test_isqrt_cov_release_names_load(tmp_path):
    """iSQRT-COV release (mpncovresnet50): layer_reduce / layer_reduce_bn / fc."""
    ref = _gcp_reference()
    release = OrderedDict()
    for k, v in ref.state_dict().items():
        k = k.replace("global_pool.reduce.0.", "layer_reduce.").replace(
            "global_pool.reduce.1.", "layer_reduce_bn.")
        release[k] = v
    assert "layer_reduce.weight" in release and release["fc.weight"].shape == (10, 32896)
    path = tmp_path / "mpncovresnet50.pth"
    torch.save(release, path)
    model = cvkit.create_model("resnet50_gcp", checkpoint_path=path).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_fast_mpncov_basemodel_layout_loads(tmp_path):
    """fast-MPN-COV's training wrapper: features = resnet children, representation.conv_dr_block,
    classifier — reproduced here with real modules in that layout."""
    ref = _gcp_reference()
    wrapper = nn.Module()
    wrapper.features = nn.Sequential(ref.conv1, ref.bn1, ref.relu, ref.maxpool, ref.layer1,
                                     ref.layer2, ref.layer3, ref.layer4)
    wrapper.representation = nn.Module()
    wrapper.representation.conv_dr_block = ref.global_pool.reduce
    wrapper.classifier = ref.fc
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 65, "state_dict": OrderedDict(
        (f"module.{k}", v) for k, v in wrapper.state_dict().items())}, path)
    model = cvkit.create_model("resnet50_gcp", checkpoint_path=path).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_lightning_ckpt_loads(tmp_path):
    torch.manual_seed(0)
    ref = _randomise_bn(cvkit.create_model("eca_resnet18", num_classes=7)).eval()
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6",
            "state_dict": OrderedDict((f"model.{k}", v) for k, v in ref.state_dict().items())}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    model = cvkit.create_model("eca_resnet18", checkpoint_path=path).eval()  # 7 classes inferred
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    feats = cvkit.create_model("eca_resnet18", checkpoint_path=path, features_only=True).eval()
    with torch.no_grad():
        assert torch.equal(feats(x)[-1], ref.forward_features(x))


def test_head_reset_only_when_asked(tmp_path):
    torch.manual_seed(0)
    ref = _randomise_bn(cvkit.create_model("resnet18")).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"1000 classes.*num_classes=1000.*reset_head=True"):
        cvkit.create_model("resnet18", num_classes=10, checkpoint_path=path)
    model = cvkit.create_model("resnet18", num_classes=10, checkpoint_path=path,
                               reset_head=True).eval()
    assert model.fc.out_features == 10
    x = _x()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), ref.forward_features(x))


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(cvkit.create_model("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        cvkit.load_checkpoint(cvkit.create_model("resnet50"), path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "unexpected keys" not in msg  # every resnet18 name exists in resnet50
    assert "layer1.0.conv1.weight: checkpoint [64, 64, 3, 3] vs model [64, 64, 1, 1]" in msg
    assert "shape mismatches" in msg and "... and" in msg  # long lists are cut, with a count
    assert "\n" not in msg


def test_bad_paths_are_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        cvkit.create_model("resnet18", checkpoint_path=missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.txt is not a readable PyTorch checkpoint"):
        cvkit.load_checkpoint(cvkit.create_model("resnet18"), text)
    with pytest.raises(CheckpointError, match="directory"):
        cvkit.load_checkpoint(cvkit.create_model("resnet18"), tmp_path)


def _convert_tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint",
                                                  REPO / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_tool_writes_clean_state_dict(tmp_path, capsys):
    sd = official_eca_resnet50_state_dict(num_classes=5)
    src = tmp_path / "eca.pth.tar"
    torch.save({"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items()),
                "arch": "eca_resnet50"}, src)
    out = tmp_path / "clean" / "eca_resnet50.pth"
    assert _convert_tool().main([str(src), str(out), "--model", "eca_resnet50"]) == 0
    assert "eca_k_size=(3, 5, 5, 7)" in capsys.readouterr().out
    clean = torch.load(out, weights_only=True)
    assert set(clean) == set(sd) and all(torch.equal(clean[k], sd[k]) for k in sd)
    assert not list(out.parent.glob("*.tmp"))
    model = cvkit.create_model("eca_resnet50", eca_k_size=(3, 5, 5, 7), num_classes=5)
    cvkit.load_checkpoint(model, out)  # strict


def test_convert_tool_errors(tmp_path, capsys):
    tool = _convert_tool()
    assert tool.main([str(tmp_path / "missing.pth"), str(tmp_path / "o.pth")]) == 1
    assert "missing.pth" in capsys.readouterr().err
    src = tmp_path / "r18.pth"
    torch.save(cvkit.create_model("resnet18").state_dict(), src)
    assert tool.main([str(src), str(tmp_path / "o.pth"), "--model", "resnet50"]) == 1
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_convert_tool_mmdet_legacy_mode(tmp_path):
    """--kind mmdet-legacy calls cvkit.det.convert.convert_legacy_mmdet_checkpoint, or stops with
    a message naming it when the detection package does not provide it."""
    src = tmp_path / "det.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.ones(1)}}, src)
    tool = _convert_tool()
    try:
        from cvkit.det.convert import convert_legacy_mmdet_checkpoint
    except ImportError:  # cvkit.det needs mmdet: the tool must say so, not crash
        convert_legacy_mmdet_checkpoint = None
    if convert_legacy_mmdet_checkpoint is not None:
        expected = convert_legacy_mmdet_checkpoint({"backbone.conv1.weight": torch.ones(1)})
        assert tool.main([str(src), str(tmp_path / "o.pth"), "--kind", "mmdet-legacy"]) == 0
        assert set(torch.load(tmp_path / "o.pth", weights_only=True)) == set(expected)
    else:
        with pytest.raises(SystemExit, match="convert_legacy_mmdet_checkpoint|cvkit.det.convert"):
            tool.main([str(src), str(tmp_path / "o.pth"), "--kind", "mmdet-legacy"])


def test_convert_tool_prints_a_converted_detectors_eca_sizes(tmp_path, capsys):
    """mmdet's init_detector / Runner build the config before reading weights: the tool says
    which ECA kernel sizes a converted release has and the --cfg-options that give them."""
    legacy = {f"module.backbone.{k}": v for k, v in official_eca_resnet50_state_dict().items()
              if not k.startswith("fc.")}
    src = tmp_path / "mask_rcnn_eca.pth"
    torch.save({"meta": {"mmdet_version": "1.0.0"}, "state_dict": legacy}, src)
    assert _convert_tool().main([str(src), str(tmp_path / "o.pth"), "--kind", "mmdet-legacy"]) == 0
    out = capsys.readouterr().out
    assert "backbone ECA kernel sizes (3, 5, 5, 7)" in out
    assert ('--cfg-options model.backbone.init_cfg=None '
            'model.backbone.model_kwargs.eca_k_size="(3, 5, 5, 7)"') in out


def test_timm_pretrained_file_goes_through_the_converter(tmp_path):
    torch.manual_seed(0)
    ref = _randomise_bn(cvkit.create_model("resnet18")).eval()
    path = tmp_path / "r18_dp.pth"
    torch.save(OrderedDict((f"module.{k}", v) for k, v in ref.state_dict().items()), path)
    model = timm.create_model("cvkit_resnet18", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_timm_pretrained_file_fixes_the_eca_kernel_sizes_and_gcp_width(tmp_path):
    """The official ECA-ResNet-50 file (k = 3, 5, 5, 7; the preset's Eq. 12 gives 5, 5, 5, 7) and
    a GCP checkpoint of another width load through timm's pretrained=True as through
    cvkit.create_model; a width the caller gives still wins (and then does not fit)."""
    path = tmp_path / "eca_resnet50.pth.tar"
    torch.save({"state_dict": OrderedDict((f"module.{k}", v) for k, v in
                                          official_eca_resnet50_state_dict().items())}, path)
    model = timm.create_model("cvkit_eca_resnet50", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    ref = cvkit.create_model("eca_resnet50", checkpoint_path=path).eval()
    assert [getattr(model, f"layer{i}")[0].eca.conv.kernel_size[0] for i in range(1, 5)] == [3, 5, 5, 7]
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    gcp = tmp_path / "gcp.pth"
    torch.save(cvkit.create_model("resnet18_gcp", gcp_dim=32).state_dict(), gcp)
    model = timm.create_model("cvkit_resnet18_gcp", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(gcp)))
    assert model.fc.in_features == 32 * 33 // 2
    with pytest.raises(RuntimeError, match="size mismatch"):
        timm.create_model("cvkit_resnet18_gcp", pretrained=True, gcp_dim=16,
                          pretrained_cfg_overlay=dict(file=str(gcp)))


def test_a_training_checkpoint_rebuilds_the_model_it_was_trained_as(tmp_path):
    """The demo's last.ckpt (eca_resnet18, model_kwargs global_pool='gcp', gcp_dim 32,
    gcp_iters 3): create_model and timm's pretrained=True take its model_kwargs (gcp_iters shows
    in no tensor: it ran 5 iterations, silently) unless given; a checkpoint of another preset
    lends none."""
    trained = cvkit.create_model("eca_resnet18", num_classes=10, global_pool="gcp", gcp_dim=32,
                                 gcp_iters=3).eval()
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model_name": "eca_resnet18", "num_classes": 10,
                                     "model_kwargs": {"global_pool": "gcp", "gcp_dim": 32, "gcp_iters": 3,
                                                      "checkpoint_path": "start.pth", "drop_rate": 0.5}},
                "state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, path)
    x = _x()
    # (timm's pretrained=True gives a head of another class count than 1000 new weights)
    pooled = lambda m: m.forward_head(m.forward_features(x), pre_logits=True)  # noqa: E731
    for model in (cvkit.create_model("eca_resnet18", checkpoint_path=path),
                  timm.create_model("cvkit_eca_resnet18", pretrained=True, num_classes=10,
                                    pretrained_cfg_overlay=dict(file=str(path)))):
        assert model.global_pool.iters == 3
        with torch.no_grad():
            assert torch.equal(pooled(model.eval()), pooled(trained))
    assert cvkit.create_model("eca_resnet18", checkpoint_path=path).drop_rate == 0  # training-only
    assert cvkit.create_model("eca_resnet18", checkpoint_path=path, gcp_iters=5).global_pool.iters == 5
    # a backbone keeps the preset's layout: the GCP run's stride-1 layer4 would halve C5's stride
    for backbone in (cvkit.create_model("eca_resnet18", features_only=True, checkpoint_path=path),
                     timm.create_model("cvkit_eca_resnet18", features_only=True, pretrained=True,
                                       pretrained_cfg_overlay=dict(file=str(path)))):
        assert backbone.feature_info.reduction()[-1] == 32
    with pytest.raises(CheckpointError, match="iSQRT-COV head"):  # resnet18's own: nothing lent
        cvkit.create_model("resnet18", checkpoint_path=path, strict=False)


# --- unreadable files, checkpoints without a classifier, other image sizes, the file writer -----
def test_unreadable_files_say_why(tmp_path):
    """An empty file (an interrupted download) is named as such; only a valid file holding other
    objects suggests weights_only=False (torch's advice is not passed on for garbage)."""
    model = cvkit.create_model("resnet18")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth .*empty or cut short"):
        cvkit.load_checkpoint(model, empty)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=r"garbage\.pth is not a readable") as err:
        cvkit.load_checkpoint(model, garbage)
    assert "weights_only" not in str(err.value)
    assert r"not a PyTorch file (neither a zip archive nor a pickle; it starts with b'\x00\x01" in str(err.value)
    text = tmp_path / "page.pth"  # an HTML error page saved as the download (torch: "KeyError: 60")
    text.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=r"page\.pth .*not a PyTorch file .*starts with b'<html>404"):
        cvkit.load_checkpoint(model, text)
    legacy = tmp_path / "legacy.pth"  # PyTorch's pre-1.6 format is a pickle: still read
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    cvkit.load_checkpoint(model, legacy)
    objects = tmp_path / "objects.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, objects)
    with pytest.raises(CheckpointError,
                       match=r"objects other than tensors \(Unsupported global: GLOBAL "
                             r"argparse\.Namespace\); if you trust the file.*weights_only=False"):
        cvkit.load_checkpoint(model, objects)
    cvkit.load_checkpoint(model, objects, weights_only=False)  # the explicit opt-out reads it


def test_checkpoint_without_classifier(tmp_path):
    """A backbone-only checkpoint (num_classes=0) loads into features_only, into a headless model,
    and with reset_head=True into a classifier; a plain strict load says what to pass."""
    torch.manual_seed(0)
    ref = _randomise_bn(cvkit.create_model("resnet18", num_classes=0)).eval()
    headless = tmp_path / "r18_backbone.pth"
    torch.save(ref.state_dict(), headless)
    x = _x()
    feats = cvkit.create_model("resnet18", features_only=True, checkpoint_path=headless).eval()
    with torch.no_grad():
        assert torch.equal(feats(x)[-1], ref.forward_features(x))
    fresh = cvkit.create_model("resnet18", num_classes=7, checkpoint_path=headless,
                               reset_head=True).eval()
    with torch.no_grad():
        assert torch.equal(fresh.forward_features(x), ref.forward_features(x))
    assert fresh(x).shape == (2, 7)
    with pytest.raises(CheckpointError,
                       match=r"2 missing keys \(fc\.weight, fc\.bias\).*no classifier.*"
                             r"reset_head=True.*num_classes=0"):
        cvkit.create_model("resnet18", checkpoint_path=headless)
    # the other way round: a classifier checkpoint into a model without one, as timm does
    full = tmp_path / "r18.pth"
    torch.save(_randomise_bn(cvkit.create_model("resnet18")).state_dict(), full)
    pooled = cvkit.create_model("resnet18", num_classes=0, checkpoint_path=full).eval()
    assert pooled(x).shape == (2, 512)


def test_features_only_ignores_a_gcp_head(tmp_path):
    """The demo's checkpoint (ECA-ResNet-18 + iSQRT-COV head, Lightning layout) starts a
    features_only backbone (the detection backbone's path): the head and the covariance
    reduction are pruned layers; stages 1-3 (same strides) give the trained model's maps."""
    torch.manual_seed(0)
    gcp = _randomise_bn(cvkit.create_model("eca_resnet18", num_classes=10, global_pool="gcp",
                                           gcp_dim=32)).eval()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in gcp.state_dict().items()},
                "epoch": 5}, path)
    feats = cvkit.create_model("eca_resnet18", features_only=True, checkpoint_path=path).eval()
    x = _x()
    with torch.no_grad():
        got = feats(x)
        want = gcp.forward_intermediates(x, intermediates_only=True)
    for i in range(4):
        assert torch.equal(got[i], want[i])
    with pytest.raises(CheckpointError, match=r"iSQRT-COV head: build the model with "
                                              r"global_pool='gcp'"):
        cvkit.create_model("eca_resnet18", checkpoint_path=path)


def test_vit_checkpoint_at_another_image_size_matches_timm(tmp_path):
    """A 224-px ViT checkpoint into a 64-px model: the position embedding is resampled exactly
    as timm resamples it for its own ViT (same logits), through create_model and through timm."""
    torch.manual_seed(0)
    path = tmp_path / "vit_tiny_224.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), path)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=64, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path))).eval()
    ours = cvkit.create_model("vit_tiny_patch16", img_size=64, checkpoint_path=path).eval()
    via_timm = timm.create_model("cvkit_vit_tiny_patch16", img_size=64, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert ours.pos_embed.shape == (1, 17, 192)
    x = _x(64, batch=1)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
        assert torch.equal(via_timm(x), ref(x))


def test_saved_state_dicts_are_whole_and_readable(tmp_path, monkeypatch):
    """save_state_dict: the permissions of a normally created file (not mkstemp's 0600); a
    write that fails leaves the previous file as it was and no temporary file."""
    from cvkit.models.checkpoint import save_state_dict

    path = tmp_path / "sd.pth"
    save_state_dict({"w": torch.ones(3)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["sd.pth"]


def test_convert_tool_model_args(tmp_path, capsys):
    """--model-arg gives the arguments a preset lacks (the demo's GCP head); a bad one is named."""
    gcp = cvkit.create_model("resnet18", num_classes=10, global_pool="gcp", gcp_dim=32)
    src = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in gcp.state_dict().items()}}, src)
    tool = _convert_tool()
    out = tmp_path / "o.pth"
    assert tool.main([str(src), str(out), "--model", "resnet18"]) == 1
    assert "pass --model-arg global_pool=gcp" in capsys.readouterr().err  # the tool's option
    assert tool.main([str(src), str(out), "--model", "resnet18", "--model-arg",
                      "global_pool=gcp"]) == 0
    assert "gcp_dim=32, num_classes=10" in capsys.readouterr().out
    assert tool.main([str(src), str(out), "--model", "resnet18", "--model-arg", "gcp"]) == 2
    assert "--model-arg 'gcp': expected KEY=VALUE" in capsys.readouterr().err


def test_convert_tool_misspelt_model_arg_is_one_line_naming_key_and_model(tmp_path, capsys):
    src = tmp_path / "r18.pth"
    torch.save(cvkit.create_model("resnet18", num_classes=10).state_dict(), src)
    out = tmp_path / "o.pth"
    assert _convert_tool().main([str(src), str(out), "--model", "resnet18",
                                 "--model-arg", "globl_pool=gcp"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: --model-arg"), err
    assert "'globl_pool'" in err[0] and "'resnet18'" in err[0], err
    assert not out.exists()


def test_features_only_ignores_only_what_its_pruning_removed(tmp_path):
    """A features_only model ignores the checkpoint keys of the layers it pruned (later stages or
    blocks, pooling, classifier); a checkpoint of another network (deeper stages, ECA modules,
    hyper-connections) is an error naming the keys, as for the whole model, also when the backbone
    is built through timm and loaded afterwards (the detection backbone's init_weights)."""
    def saved(name, **kw):
        path = tmp_path / f"{name}.pth"
        torch.save(_randomise_bn(cvkit.create_model(name, **kw)).state_dict(), path)
        return path

    r18 = saved("resnet18")
    feats = cvkit.create_model("resnet18", features_only=True, out_indices=(1, 2), checkpoint_path=r18)
    full = cvkit.create_model("resnet18", checkpoint_path=r18).eval()
    with torch.no_grad():
        got = feats.eval()(_x())
        want = full.forward_intermediates(_x(), indices=(1, 2), intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    vit = saved("vit_tiny_patch16", img_size=32)
    cvkit.create_model("vit_tiny_patch16", img_size=32, features_only=True, out_indices=(2,),
                       checkpoint_path=vit)  # blocks 3-11, norm and head pruned
    for other, name, kw, missing in [
            (saved("resnet34"), "resnet18", {}, "96 unexpected keys (layer1.2.conv1.weight"),
            (saved("eca_resnet18"), "resnet18", {}, "8 unexpected keys (layer1.0.eca.conv.weight"),
            (saved("vit_tiny_patch16_hc2", img_size=32), "vit_tiny_patch16", {"img_size": 32},
             "unexpected keys (blocks.0.hc_attn")]:
        with pytest.raises(CheckpointError, match=re.escape(missing)):
            cvkit.create_model(name, features_only=True, checkpoint_path=other, **kw)
        backbone = timm.create_model(f"cvkit_{name}", features_only=True, **kw)
        with pytest.raises(CheckpointError, match=re.escape(missing)):
            cvkit.load_checkpoint(backbone, other)


def test_features_only_keeps_the_trained_backbone_options_not_the_head(tmp_path):
    """A training checkpoint's model_kwargs build its backbone (hyper-connections: the trained
    connections give the trained maps) but not its head: the GCP run's stride-1 last stage and
    covariance pooling are the classifier's, pruned from a features_only backbone."""
    torch.manual_seed(0)
    kwargs = {"hc_rate": 2, "hc_dynamic": True, "global_pool": "gcp", "gcp_dim": 16}
    trained = _randomise_bn(cvkit.create_model("eca_resnet18", num_classes=5, **kwargs))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".streams." in name:  # trained connections, not their initial values
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path / "hc.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                "hyper_parameters": {"model_name": "eca_resnet18", "num_classes": 5,
                                     "model_kwargs": kwargs}}, path)
    feats = cvkit.create_model("eca_resnet18", features_only=True, checkpoint_path=path).eval()
    assert feats.feature_info.reduction()[-1] == 32  # the preset's strides, not the GCP run's
    with torch.no_grad():
        got = feats(_x())
        want = trained.eval().forward_intermediates(_x(), intermediates_only=True)
    for i in range(4):  # stem and stages 1-3 (stage 4 has another stride in the GCP run)
        assert torch.equal(got[i], want[i])
    plain = tmp_path / "hc_weights.pth"  # weights only: which options is a hint, not a key dump
    torch.save(trained.state_dict(), plain)
    with pytest.raises(CheckpointError, match="has hyper-/frac-connections: build the model with "
                                              "the hc_rate"):
        cvkit.create_model("eca_resnet18", features_only=True, checkpoint_path=plain)


def test_head_options_without_the_head_and_misplaced_out_indices_are_errors(tmp_path):
    """gcp_dim / gcp_iters without the iSQRT-COV head, out_indices without features_only: errors
    naming them (they were ignored); a GAP checkpoint starts a GCP model with the hint's
    strict=False, reset_head=True; a compiled model loads a checkpoint into its weights."""
    for name, kw in [("resnet18", {"gcp_dim": 128}), ("mobilenetv2", {"gcp_iters": 3}),
                     ("vit_tiny_patch16", {"gcp_dim": 64, "img_size": 32})]:
        with pytest.raises(ValueError, match=r"given to a model without the iSQRT-COV head"):
            cvkit.create_model(name, **kw)
    assert cvkit.create_model("resnet18", global_pool="gcp", gcp_dim=16).global_pool.dim == 16
    gap = tmp_path / "r18.pth"
    torch.save(_randomise_bn(cvkit.create_model("resnet18")).state_dict(), gap)
    with pytest.raises(ValueError, match=r"out_indices=\(1, 2\) is for features_only=True"):
        cvkit.create_model("resnet18", checkpoint_path=gap, out_indices=(1, 2))
    with pytest.raises(CheckpointError, match="strict=False, reset_head=True"):
        cvkit.create_model("resnet18_gcp", checkpoint_path=gap)
    gcp = cvkit.create_model("resnet18_gcp", checkpoint_path=gap, strict=False, reset_head=True)
    assert torch.equal(gcp.conv1.weight, torch.load(gap)["conv1.weight"])
    compiled = torch.compile(cvkit.create_model("resnet18"))
    cvkit.load_checkpoint(compiled, gap)
    assert torch.equal(compiled.conv1.weight, torch.load(gap)["conv1.weight"])


def test_converted_training_checkpoint_rebuilds_the_trained_network(tmp_path, capsys):
    """The settings of a run that no tensor shows (``gcp_iters=1``; the preset's default is 5)
    travel in the converted file: ``create_model`` from it, and tools/test.py's loader, give the
    trained logits, while the file stays a plain dict of tensors for ``model.load_state_dict``."""
    from cvkit.tasks.evaluate import load_task

    torch.manual_seed(0)
    trained = _randomise_bn(cvkit.create_model("resnet18_gcp", gcp_iters=1, gcp_dim=16,
                                               num_classes=5)).eval()
    src, out = tmp_path / "last.ckpt", tmp_path / "clean.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18_gcp", "num_classes": 5,
                                     "model_kwargs": {"gcp_iters": 1, "gcp_dim": 16}}}, src)
    assert _convert_tool().main([str(src), str(out), "--model", "resnet18_gcp"]) == 0
    assert "gcp_iters=1" in capsys.readouterr().out
    x = _x(size=32)
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(cvkit.create_model("resnet18_gcp", checkpoint_path=out).eval()(x),
                           expected)
        task, _ = load_task(out, "resnet18_gcp", num_classes=5)
        assert torch.equal(task.model.eval()(x), expected)
    clean = torch.load(out, weights_only=True)
    assert set(clean) == set(trained.state_dict())
    trained.load_state_dict(clean)  # strict: tensors only


def test_converted_file_keeps_the_model_args_it_was_verified_with(tmp_path):
    """A --model-arg that no tensor fixes (a ViT's ``img_size``: its position embedding is resampled
    to the size the model is built with) is recorded too: no silent resampling to 224."""
    vit = cvkit.create_model("vit_tiny_patch16", img_size=32, num_classes=3).eval()
    src, out = tmp_path / "vit.pth", tmp_path / "clean.pth"
    torch.save(vit.state_dict(), src)
    assert _convert_tool().main([str(src), str(out), "--model", "vit_tiny_patch16",
                                 "--model-arg", "img_size=32"]) == 0
    model = cvkit.create_model("vit_tiny_patch16", checkpoint_path=out).eval()
    assert model.pos_embed.shape == vit.pos_embed.shape
    x = _x(size=32)
    with torch.no_grad():
        assert torch.equal(model(x), vit(x))


def test_another_head_than_the_trained_gcp_one_takes_none_of_its_settings(tmp_path):
    """global_pool='avg' given for a GCP training checkpoint: its gcp_dim / gcp_iters are not
    inherited (they would be an error without the GCP head); the backbone loads, non-strict."""
    gcp = cvkit.create_model("resnet18", num_classes=4, global_pool="gcp", gcp_dim=16, gcp_iters=3)
    path = tmp_path / "gcp.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in gcp.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18", "num_classes": 4,
                                     "model_kwargs": {"global_pool": "gcp", "gcp_dim": 16,
                                                      "gcp_iters": 3}}}, path)
    avg = cvkit.create_model("resnet18", checkpoint_path=path, global_pool="avg", strict=False,
                             reset_head=True)
    assert avg.get_classifier().in_features == 512
    assert torch.equal(avg.conv1.weight, gcp.conv1.weight)


def test_vit_gcp_checkpoint_starts_a_plain_features_only_vit(tmp_path):
    """The ViT's covariance head (``gcp.*``, beside the blocks, not in a pooling module) is part
    of the pruned head: its checkpoint starts a features_only ViT of the plain preset, as the
    CNNs' GCP checkpoints do; the blocks' maps are the trained network's."""
    gcp = cvkit.create_model("vit_tiny_patch16", img_size=32, global_pool="gcp", gcp_dim=16).eval()
    path = tmp_path / "vit_gcp.pth"
    torch.save(gcp.state_dict(), path)
    feats = cvkit.create_model("vit_tiny_patch16", img_size=32, features_only=True,
                               out_indices=(2,), checkpoint_path=path).eval()
    x = _x(32)
    with torch.no_grad():
        assert torch.equal(feats(x)[0], gcp.forward_intermediates(x, indices=(2,),
                                                                  intermediates_only=True)[0])


# --- GCP_Optimization (ZhangLi-CS) MobileNetV2_MPNCOV, written here from its structure --------
def _isqrt_cov_reference(x: torch.Tensor, iters: int = 5) -> torch.Tensor:
    """iSQRT-COV (Li et al., CVPR 2018) by the paper's equations: centred covariance (Eq. 1),
    trace pre-normalisation (Eq. 4), ``iters`` coupled Newton-Schulz steps (Eq. 2), post-
    compensation by sqrt(trace) (Eq. 5), row-major upper triangle."""
    b, c = x.shape[:2]
    f = x.reshape(b, c, -1)
    f = f - f.mean(-1, keepdim=True)
    sigma = f @ f.transpose(1, 2) / f.shape[-1]
    trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).view(b, 1, 1)
    eye = torch.eye(c, dtype=x.dtype).expand(b, c, c)
    y, z = sigma / trace, eye
    for _ in range(iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    rows, cols = torch.triu_indices(c, c)
    return (trace.sqrt() * y)[:, rows, cols]


def _release_conv(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _ReleaseBlock(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [_release_conv(cin, hidden, 1)] if t != 1 else []
        layers += [_release_conv(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.skip else self.conv(x)


class _GcpOptMobileNetV2(nn.Module):
    """MobileNetV2 1.0 with every stride of the paper's Table 2, then ``dimension_reduction``
    (1x1 conv 1280 -> 256 without bias, BN, ReLU6), iSQRT-COV (5 iterations) and ``classifier``
    (Dropout 0.2, Linear 32896 -> classes): the module names of the GCP release."""

    def __init__(self, num_classes=10):
        super().__init__()
        layers, cin = [_release_conv(3, 32, 3, 2)], 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
            for i in range(n):
                layers.append(_ReleaseBlock(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_release_conv(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.dimension_reduction = nn.Sequential(nn.Conv2d(1280, 256, 1, bias=False),
                                                 nn.BatchNorm2d(256), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32896, num_classes))

    def forward(self, x):
        x = _isqrt_cov_reference(self.dimension_reduction(self.features(x)))
        return self.classifier(x)


def test_gcp_optimization_mobilenetv2_checkpoint_gives_the_release_logits(tmp_path):
    """A GCP_Optimization MobileNetV2_MPNCOV checkpoint ({'state_dict': {'module.' + key}},
    dimension_reduction.{0,1}, classifier.1 of 32896 inputs) loads into mobilenetv2_gcp (classes
    read from it) and gives the release network's logits: every stride kept (a 3x3 map at 96 px),
    ReLU6 after the reduction. (It did not load: 5 missing, 6 unexpected keys.)"""
    torch.manual_seed(0)
    ref = _GcpOptMobileNetV2().double()
    for m in ref.modules():  # the release's initialisation; BN statistics of a few batches
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        for seed in range(3):
            ref(_x(96, batch=4, seed=seed + 1).double())
        ref.dimension_reduction[1].bias.fill_(4.0)  # past 6: ReLU6 and ReLU differ
        ref.dimension_reduction[1].weight.fill_(3.0)
    ref = ref.float().double().eval()  # float32 values, as a released file holds
    path = tmp_path / "mobilenetv2_mpncov.pth.tar"
    torch.save({"epoch": 150, "arch": "mobilenet_v2_mpncov", "best_acc1": torch.tensor(73.97),
                "state_dict": OrderedDict((f"module.{k}", v.float())
                                          for k, v in ref.state_dict().items())}, path)
    model = cvkit.create_model("mobilenetv2_gcp", checkpoint_path=path).double().eval()
    assert model.get_classifier().out_features == 10
    x = _x(96).double()
    with torch.no_grad():
        assert ref.dimension_reduction[:2](ref.features(x)).max() > 6  # the clamp takes part
        torch.testing.assert_close(model(x), ref(x), rtol=1e-9, atol=1e-9)


def test_gcp_head_hint_only_when_no_key_looks_like_a_reduction(tmp_path):
    """A model's iSQRT-COV head a checkpoint lacks: the "build it without global_pool='gcp'" hint
    for a plain network's file; for a file whose reduction has names cvkit does not map, a hint
    naming them instead (a GCP file is not a file without the head)."""
    plain = tmp_path / "plain.pth"
    torch.save(cvkit.create_model("mobilenetv2").state_dict(), plain)
    with pytest.raises(CheckpointError, match="iSQRT-COV head the checkpoint lacks"):
        cvkit.load_checkpoint(cvkit.create_model("mobilenetv2_gcp"), plain)
    other = tmp_path / "other.pth"
    torch.save({k.replace("global_pool.reduce.", "head.reduction_block."): v for k, v in
                cvkit.create_model("mobilenetv2_gcp").state_dict().items()}, other)
    with pytest.raises(CheckpointError) as err:
        cvkit.load_checkpoint(cvkit.create_model("mobilenetv2_gcp"), other)
    assert "head the checkpoint lacks" not in str(err.value)
    assert ("reduction layer has names cvkit does not map (head.reduction_block.0.weight"
            in str(err.value))


def test_a_meta_device_model_takes_the_checkpoint_tensors(tmp_path):
    """Deferred initialisation: a model built under torch.device("meta") loaded with
    cvkit.load_checkpoint runs on the checkpoint's tensors (assign=True) and gives the logits of
    an eagerly built model loaded from the same file; a checkpoint without num_batches_tracked
    leaves no meta buffer. (Copying into meta tensors kept nothing, with 122 torch warnings, and
    reported success.)"""
    torch.manual_seed(0)
    src = _randomise_bn(cvkit.create_model("eca_resnet18", num_classes=10))
    path = tmp_path / "r18.pth"
    torch.save({k: v for k, v in src.state_dict().items()
                if not k.endswith("num_batches_tracked")}, path)
    eager = cvkit.create_model("eca_resnet18", num_classes=10)
    cvkit.load_checkpoint(eager, path)
    with torch.device("meta"):
        deferred = cvkit.create_model("eca_resnet18", num_classes=10)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "copying from a non-meta parameter" warning
        cvkit.load_checkpoint(deferred, path)
    assert not any(t.is_meta for t in deferred.state_dict().values())
    assert all(p.requires_grad for p in deferred.parameters())
    with torch.no_grad():
        assert torch.equal(deferred.eval()(_x()), eager.eval()(_x()))


def test_eca_hint_only_without_eca_weights_and_another_depth_is_named(tmp_path):
    """An ECA-ResNet-50 file into eca_resnet101: whole blocks layer3.6.. are missing, the hint
    names the checkpoint's depth; "build the preset without eca_" only for a file without ECA
    weights. (It told the user to drop ECA from an ECA checkpoint.)"""
    path = tmp_path / "eca50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in cvkit.create_model(
        "eca_resnet50", eca_k_size=(3, 5, 5, 7)).state_dict().items()}}, path)
    with pytest.raises(CheckpointError) as err:
        cvkit.create_model("eca_resnet101", checkpoint_path=path)
    msg = str(err.value)
    assert "without eca_" not in msg
    assert ("whole blocks differ (layer3.6, layer3.7, layer3.8, layer3.9, ...): the checkpoint is "
            "a ResNet-50 (blocks per stage 3, 4, 6, 3): build eca_resnet50" in msg)
    deeper = tmp_path / "r101.pth"
    torch.save(cvkit.create_model("resnet101").state_dict(), deeper)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(layer3\.6\..*the checkpoint is "
                                              r"a ResNet-101 .*build resnet101"):
        cvkit.load_checkpoint(cvkit.create_model("resnet50"), deeper)
    plain = tmp_path / "r50.pth"
    torch.save(cvkit.create_model("resnet50").state_dict(), plain)
    with pytest.raises(CheckpointError) as err:
        cvkit.load_checkpoint(cvkit.create_model("eca_resnet50"), plain)
    assert "the model has ECA modules the checkpoint lacks: build the preset without eca_" in str(
        err.value) and "whole blocks" not in str(err.value)


def test_data_parallel_and_ddp_targets_load_through_their_module(tmp_path):
    """cvkit.load_checkpoint(nn.DataParallel(m) / DistributedDataParallel(m), path) loads into m
    (as torch.compile's _orig_mod): it failed with "102 missing keys (module.conv1.weight, ...)"."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    src = _randomise_bn(cvkit.create_model("resnet18", num_classes=10)).eval()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dp = nn.DataParallel(cvkit.create_model("resnet18", num_classes=10))
    cvkit.load_checkpoint(dp, path)
    with torch.no_grad():
        assert torch.equal(dp.module.eval()(_x()), src(_x()))
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        ddp = DistributedDataParallel(cvkit.create_model("resnet18", num_classes=10))
        cvkit.load_checkpoint(ddp, path)
        with torch.no_grad():
            assert torch.equal(ddp.module.eval()(_x()), src(_x()))
    finally:
        dist.destroy_process_group()
