"""Simple feature pyramid for single-scale (plain ViT) backbones.

Li, Mao, Girshick, He, "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet,
ECCV 2022), Sec. 3 and Fig. 2 (c): from the last stride-16 map alone, build strides
{4, 8, 16, 32} with deconvolutions (x4: two stride-2 deconvs with LayerNorm + GELU between them;
x2: one), identity and a stride-2 max-pool; each level then gets a 1x1 conv and a 3x3 conv, both
followed by LayerNorm. An extra level for the RPN's largest anchors is a stride-2 max-pool of the
coarsest output, as FPN's P6.

mmdet 3.3.0 ships this neck only in ``projects/ViTDet`` (not importable from the package), so
cvkit defines it here and registers it as ``SimpleFeaturePyramid``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.model import BaseModule
from mmdet.registry import MODELS
from timm.layers import LayerNorm2d
from torch import nn


def _rescale(channels: int, scale: float) -> tuple[nn.Module, int]:
    """The up/down-sampling branch for one scale factor and its output channel count."""
    if scale == 4.0:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), LayerNorm2d(channels // 2),
            nn.GELU(), nn.ConvTranspose2d(channels // 2, channels // 4, 2, stride=2)), channels // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), channels // 2
    if scale == 1.0:
        return nn.Identity(), channels
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2), channels
    raise ValueError(f"SimpleFeaturePyramid: scale factor {scale} is not one of 4, 2, 1, 0.5")


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid (Li et al. 2022, Fig. 2c).

    Args:
        in_channels: channels of the backbone map used (an int, or the backbone's channel list).
        out_channels: channels of every pyramid level (256 as FPN).
        scale_factors: resolution of each level relative to the input map; (4, 2, 1, 0.5) gives
            strides 4..32 from a stride-16 ViT.
        num_outs: number of returned levels; levels beyond ``len(scale_factors)`` are stride-2
            max-pools of the last one (5 gives FPN's P2..P6 for mmdet's RPN anchors).
        in_index: which of the backbone's maps to use (the last by default).
    """

    def __init__(self, in_channels: int | Sequence[int], out_channels: int = 256,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5), num_outs: int = 5,
                 in_index: int = -1, init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, int):
            in_channels = list(in_channels)[in_index]
        if num_outs < len(scale_factors):
            raise ValueError(f"SimpleFeaturePyramid: num_outs={num_outs} < {len(scale_factors)} "
                             "scale factors")
        self.in_index = in_index
        self.num_outs = num_outs
        self.rescales = nn.ModuleList()
        self.outputs = nn.ModuleList()
        for scale in scale_factors:
            rescale, channels = _rescale(in_channels, float(scale))
            self.rescales.append(rescale)
            self.outputs.append(nn.Sequential(
                nn.Conv2d(channels, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels)))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x = inputs[self.in_index]
        outs = [out(rescale(x)) for rescale, out in zip(self.rescales, self.outputs)]
        while len(outs) < self.num_outs:
            outs.append(nn.functional.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
