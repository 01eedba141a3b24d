"""The Python examples of the README and docs/ run as written (in a folder holding the files they
name, made here in each format the README says) and do what their comments claim."""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cvkit
from test_models_checkpoint import official_eca_resnet50_state_dict

REPO = Path(__file__).resolve().parents[1]


def _python_block(heading: str | None, doc: str = "README.md") -> str:
    """The first ```python block under the section ``## heading`` of ``doc`` (None: of the
    whole document)."""
    text = (REPO / doc).read_text()
    section = (re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
               if heading is not None else re.match(r"(.*)", text, re.S))
    assert section, f"{doc} has no section '## {heading}'"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, f"{doc} section '{heading}' has no python example"
    return block.group(1)


def _lightning(model: nn.Module) -> dict:
    """The classification task's checkpoint layout (``state_dict: {'model.<name>'}``)."""
    return {"epoch": 5, "global_step": 48, "pytorch-lightning_version": "2.6.6",
            "state_dict": OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items())}


def test_models_example(tmp_path, monkeypatch):
    import timm
    import torchvision

    sd = official_eca_resnet50_state_dict()
    torch.save({"epoch": 100, "arch": "eca_resnet50",
                "state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
               tmp_path / "ECA_ResNet50.pth.tar")
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    finetuned = cvkit.create_model("resnet50", num_classes=10)
    torch.save(_lightning(finetuned), tmp_path / "r50_finetuned.ckpt")
    demo = cvkit.create_model("eca_resnet18", global_pool="gcp", gcp_dim=32, gcp_iters=3,
                              num_classes=10)  # configs/classification/demo.yaml's model
    (tmp_path / "runs/demo/checkpoints").mkdir(parents=True)
    torch.save({**_lightning(demo), "hyper_parameters": {  # as ClassificationTask saves them
        "model_name": "eca_resnet18", "num_classes": 10,
        "model_kwargs": {"global_pool": "gcp", "gcp_dim": 32, "gcp_iters": 3}}},
        tmp_path / "runs/demo/checkpoints/last.ckpt")
    torch.save(timm.create_model("vit_small_patch16_224").state_dict(), tmp_path / "vit_s_224.pth")
    monkeypatch.chdir(tmp_path)
    built = []
    create_model = cvkit.create_model
    monkeypatch.setattr(cvkit, "create_model",
                        lambda *a, **kw: built.append(create_model(*a, **kw)) or built[-1])

    scope: dict = {}
    exec(_python_block("Models"), scope)  # noqa: S102 - the README's own text, as written

    eca10, official, r50, demo_model, vit384, features = built
    assert [b.eca.kernel_size for b in eca10.layer1] == [3] * 3 and eca10.num_classes == 10
    assert [[b.eca.kernel_size for b in stage][0] for stage in official.stages()] == [3, 5, 5, 7]
    assert torch.equal(official.state_dict()["layer3.0.conv2.weight"], sd["layer3.0.conv2.weight"])
    # r50: torchvision's backbone, a new 10-class head; then load_checkpoint put the fine-tuned
    # weights in (it is `m` at that line)
    assert r50.fc.out_features == 10
    for k, v in finetuned.state_dict().items():
        assert torch.equal(r50.state_dict()[k], v), k
    x = torch.randn(2, 3, 48, 48)
    assert demo_model.global_pool.iters == 3  # from the checkpoint's model_kwargs
    with torch.no_grad():
        assert torch.equal(demo_model.eval()(x), demo.eval()(x))
    assert vit384.pos_embed.shape == (1, 1 + 24 * 24, 384)
    maps = features(torch.randn(1, 3, 64, 64))
    assert [t.shape[1] for t in maps] == features.feature_info.channels()
    assert type(scope["m"]).__name__ == "VisionTransformer" and len(scope["m"].blocks) == 12
    assert any(b.hc_attn is not None for b in scope["m"].blocks)
    image = torch.randn(1, 3, 224, 224)  # the exported program computes the same network
    with torch.no_grad():
        torch.testing.assert_close(scope["program"].module()(image), scope["m"](image))


def test_layers_example():
    """x, tokens and a stack of pre-norm blocks given; the README's claims checked after it."""
    from cvkit.layers import HyperConnections

    torch.manual_seed(0)
    dim = 16
    blocks = [nn.Module() for _ in range(3)]
    for blk in blocks:
        blk.branch = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
    scope = dict(torch=torch, x=torch.randn(2, 256, 7, 7), tokens=torch.randn(2, 5, dim),
                 blocks=blocks, final_norm=nn.LayerNorm(dim),
                 hcs=[HyperConnections(dim, 2, layer_index=i, dynamic=True) for i in range(3)])
    exec(_python_block("Layers"), scope)  # noqa: S102 - the README's own text, as written

    assert scope["y"].shape == scope["x"].shape
    assert scope["v"].shape == (8, 32896) and scope["head"].out_features == 32896
    h = scope["tokens"]  # the pre-norm residual network the comment says it equals
    for blk in blocks:
        h = h + blk.branch(h)
    torch.testing.assert_close(scope["out"], scope["final_norm"](h), rtol=1e-5, atol=1e-5)


def test_robustness_example():
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    scope = dict(images=images)
    exec(_python_block("Corruption robustness (ImageNet-C / COCO-C)"), scope)  # noqa: S102
    x_c = scope["x_c"]
    assert x_c.dtype == np.uint8 and x_c.shape == images.shape and (x_c != images).any()


def test_covpool_doc_example():
    """docs/covpool.md: the shapes its comments give, and the matrix form's triangle is the
    vector (row-major, diagonal included)."""
    from cvkit.layers.covpool import triu_vectorize

    feats = torch.randn(2, 16, 5, 5)
    scope = dict(feats=feats)
    exec(_python_block(None, "docs/covpool.md"), scope)  # noqa: S102
    assert scope["v"].shape == (2, 16 * 17 // 2) and scope["v"].dtype == torch.float32
    assert scope["m"].shape == (2, 16, 16)
    assert scope["head"].out_features == 32896
    v3 = scope["isqrt_cov"](feats, iters=3)
    torch.testing.assert_close(triu_vectorize(scope["m"]), v3)


def test_hyper_connections_doc_example():
    """docs/hyper_connections.md: the 12-block pre-norm ViT with dynamic hyper-connections runs,
    and at initialisation equals the same blocks as a plain pre-norm residual network."""
    torch.manual_seed(0)
    scope: dict = {}
    exec(_python_block("Using it in a block", "docs/hyper_connections.md"), scope)  # noqa: S102
    blocks, h = scope["blocks"], scope["tokens"]
    assert scope["out"].shape == h.shape
    with torch.no_grad():
        for blk in blocks:
            h = h + blk._attn(h)
            h = h + blk.mlp(blk.norm2(h))
        torch.testing.assert_close(scope["out"], nn.LayerNorm(192)(h), rtol=1e-4, atol=1e-4)
