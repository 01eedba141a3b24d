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
    """The pooling module for ``kind`` ("avg" or "gcp") and the width of its output vector."""
    if kind == "avg":
        return SelectAdaptivePool2d(pool_type="avg", flatten=True), in_channels
    if kind == "gcp":
        from cvkit.layers.covpool import CovariancePooling

        pool = CovariancePooling(in_channels, dim=gcp_dim, iters=gcp_iters)
        return pool, pool.out_features
    raise ValueError(f"unknown global pool {kind!r}; expected one of {POOLS}")


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
