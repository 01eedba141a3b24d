"""Global pooling heads: average pooling (GAP) or iSQRT-COV global covariance pooling (GCP).

GCP follows the paper layout (Li et al., "Towards Faster Training of Global Covariance Pooling
Networks by Iterative Matrix Square Root Normalization", CVPR 2018): a 1x1 convolution to
``gcp_dim`` (256) channels + BN + ReLU, the centred covariance, ``gcp_iters`` (5) Newton–Schulz
iterations with pre-normalisation by the trace and post-compensation, and the row-major upper
triangle — 32896 values for 256 channels. The maths lives in :mod:`cvkit.layers.covpool`.

For a ViT (:class:`TokenCovariancePool`) the patch tokens go through the same covariance pooling
(1x1 reduction + BN + ReLU applied per token) and the class token is concatenated to the result. One linear
classifier on ``[cls, cov]`` equals the sum of a class-token classifier and a covariance
classifier (the two-head sum of So-ViT, Xie et al. 2021), with one shared bias.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import SelectAdaptivePool2d

POOLS = ("avg", "gcp")


def create_pool(kind: str, in_channels: int, gcp_dim: int | None = 256,
                gcp_iters: int = 5) -> tuple[nn.Module, int]:
    """The pooling module for ``kind`` ("avg", "gcp", or "" = no pooling, timm's meaning: the
    (B, C, H, W) map passes through) and its output width (channels for "")."""
    if kind == "avg":
        return SelectAdaptivePool2d(pool_type="avg", flatten=True), in_channels
    if kind == "gcp":
        from cvkit.layers.covpool import CovariancePooling

        pool = CovariancePooling(in_channels, dim=gcp_dim, iters=gcp_iters)
        return pool, pool.out_features
    if kind == "":
        return nn.Identity(), in_channels
    raise ValueError(f"unknown global pool {kind!r}; expected one of {POOLS} or '' (no pooling)")


def check_unpooled_head(kind: str, num_classes: int) -> None:
    """No classifier on an unpooled map: ``global_pool=""`` needs ``num_classes=0`` (timm builds
    the Linear and fails at the first forward with a shape mismatch)."""
    if kind == "" and num_classes:
        raise ValueError(f"global_pool='' (no pooling) gives (B, C, H, W) maps, which a linear "
                         f"classifier of num_classes={num_classes} cannot take: use "
                         f"num_classes=0 for the unpooled features, or a pool: "
                         f"{' or '.join(map(repr, POOLS))}")


def reset_pool(pool: nn.Module, kind: str, width: int, new_kind: str | None, in_channels: int,
               num_classes: int) -> tuple[nn.Module, int, str]:
    """The pooling of a CNN after timm's ``reset_classifier(num_classes, new_kind)``: (module,
    output width, kind). None or the same kind keeps ``pool`` (a trained iSQRT-COV head too);
    "avg" or "" replaces it (a GCP head's reduction layers go with it: "" is the backbone's
    map, "avg" its global average); "gcp" cannot be added to a built network (the ResNets' GCP
    layout runs the last stage at stride 1, and its reduction would be untrained). Checked before
    anything changes."""
    new_kind = kind if new_kind is None else new_kind
    if new_kind != kind and new_kind == "gcp":
        raise ValueError(f"reset_classifier cannot add an iSQRT-COV head to a built model "
                         f"({kind!r} -> 'gcp'): create one with global_pool='gcp' (a *_gcp preset)")
    if new_kind not in (*POOLS, ""):
        raise ValueError(f"unknown global pool {new_kind!r}; expected one of {POOLS} or '' "
                         f"(no pooling)")
    check_unpooled_head(new_kind, num_classes)
    if new_kind == kind:
        return pool, width, kind
    return (*create_pool(new_kind, in_channels), new_kind)


class TokenCovariancePool(nn.Module):
    """ViT head pooling: ``concat(class token, iSQRT-COV(patch tokens as a map))``.

    Input: (B, P + h*w, D) normalised tokens with ``P`` prefix tokens (the class token first).
    Output: (B, D + gcp_dim*(gcp_dim+1)/2).
    """

    def __init__(self, embed_dim: int, num_prefix_tokens: int, gcp_dim: int | None = 256,
                 gcp_iters: int = 5) -> None:
        super().__init__()
        if num_prefix_tokens < 1:
            raise ValueError("the ViT covariance head needs a class token")
        self.num_prefix_tokens = num_prefix_tokens
        self.cov, cov_features = create_pool("gcp", embed_dim, gcp_dim, gcp_iters)
        self.out_features = embed_dim + cov_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = tokens[:, 0]
        cov = self.cov(tokens[:, self.num_prefix_tokens:])  # (B, N, D) tokens: 1 x N map
        return torch.cat([cls, cov], dim=1)
