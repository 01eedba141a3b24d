"""The model table's counting method (cvkit.models.table) against MACs counted by hand from the
layer shapes: attention and the Newton-Schulz square root included, nothing counted twice."""
from __future__ import annotations

import pytest
import torch

from cvkit.models.table import markdown, measure, update, START, END


def _vit_macs(dim: int, depth: int = 12, tokens: int = 197, classes: int = 1000) -> int:
    """ViT/16 at 224²: patch embedding, per block qkv + q k^T + attn v + projection + MLP (4x),
    classifier."""
    patch = 3 * 16 * 16 * dim * 196
    block = (tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim
             + 2 * tokens * dim * 4 * dim)
    return patch + depth * block + dim * classes


def _gcp_head_macs(in_channels: int, positions: int, dim: int = 256, iters: int = 5) -> int:
    """1x1 reduction, centred covariance (dim x positions x dim), max(1, 3N - 3) d x d products of
    the coupled Newton-Schulz iteration (iSQRT-COV Eq. 2-3), the fc's extra inputs."""
    products = max(1, 3 * iters - 3)
    triu = dim * (dim + 1) // 2
    return (in_channels * dim * positions + dim * dim * positions + products * dim ** 3
            + triu * 1000)


def test_vit_counts_attention():
    """ViT-B/16: 17.56 GMACs (the CPU's fused attention kernel was not counted: 16.85)."""
    params, gmacs = measure("vit_base_patch16")
    assert gmacs * 1e9 == pytest.approx(_vit_macs(768), rel=1e-12)
    assert params == 86_567_656


def test_gcp_head_counts_the_newton_schulz_products_once():
    """The GCP ViT's extra MACs are exactly its head's: reduction, covariance, 12 d^3 products
    (the CPU's eigh reconstruction product was counted besides the 12 added by formula)."""
    _, plain = measure("vit_tiny_patch16")
    _, gcp = measure("vit_tiny_patch16_gcp")
    assert plain * 1e9 == pytest.approx(_vit_macs(192), rel=1e-12)
    assert (gcp - plain) * 1e9 == pytest.approx(_gcp_head_macs(192, 196), rel=1e-12)


def test_mobilenetv2_gcp_head_runs_on_the_7x7_map():
    """mobilenetv2_gcp keeps every stride (the GCP release): its extra MACs over mobilenetv2 are
    its head's on 7x7 = 49 positions less the plain 1280-input classifier: 0.55 GMACs in all (0.85
    when its 160-channel stage ran at stride 1, 14x14)."""
    _, plain = measure("mobilenetv2")
    _, gcp = measure("mobilenetv2_gcp")
    assert (gcp - plain) * 1e9 == pytest.approx(_gcp_head_macs(1280, 49) - 1280 * 1000,
                                                rel=1e-12)
    assert f"{gcp:.2f}" == "0.55"


def test_update_replaces_the_marked_table(tmp_path):
    doc = tmp_path / "models.md"
    doc.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    table = markdown(["resnet18", "eca_resnet18"])
    update(doc, table)
    text = doc.read_text()
    assert text == f"intro\n{START}\n{table}\n{END}\noutro\n"
    assert "| `eca_resnet18` | 11,689,548 | 1.81 |" in table      # ResNet-18 + 36 ECA weights
    (tmp_path / "none.md").write_text("no markers")
    with pytest.raises(ValueError, match="none.md"):
        update(tmp_path / "none.md", table)
