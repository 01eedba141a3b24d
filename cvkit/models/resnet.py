"""ResNet-18/34/50/101/152 (He et al., CVPR 2016) with ECA, iSQRT-COV and hyper-/frac-connections.

One definition for every paper variant; state-dict names are torchvision's (``conv1``, ``bn1``,
``layerX.Y.{conv,bn}{1,2,3}``, ``layerX.Y.downsample.{0,1}``, ``fc``), so torchvision and timm
ResNet weights load unchanged. Options:

* ``eca=True`` — ECA-Net (CVPR 2020): an :class:`~cvkit.layers.eca.EcaModule` after the last BN of
  every block, before the residual add (``layerX.Y.eca.conv.weight`` as in the official release).
  The rescale is fused with the residual add and the ReLU in one autograd function
  (:mod:`cvkit.models.eca_residual`), which saves several full passes over every block output.
  ``eca_k_size``: None = paper Eq. 12 per block; an int; 4 per-stage sizes
  (the released ECA-ResNet-50 uses (3, 5, 5, 7)); or one size per block.
* ``global_pool="gcp"`` — iSQRT-COV (CVPR 2018) paper layout: the last stage keeps stride 1
  (14x14 at 224 px), 1x1 reduction to ``gcp_dim`` + BN + ReLU, ``gcp_iters`` Newton–Schulz
  iterations, fc from the 32896-d upper triangle.
* ``hc_rate`` / ``fc_rate`` (+ ``hc_dynamic``) — hyper-/frac-connections on the identity-shortcut
  blocks, channel-first; see :mod:`cvkit.models.streams` for the stage transitions.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from timm.models._features import feature_take_indices

from cvkit.layers.eca import EcaModule, check_eca_k_size
from cvkit.models.eca_residual import eca_residual
from cvkit.models.heads import check_unpooled_head, create_pool, reset_pool
from cvkit.models.pruning import records_pruned_keys
from cvkit.models.streams import StreamSpec, run_blocks, stream_spec

ARCH = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class _ResidualBlock(nn.Module):
    """Shared forward of BasicBlock / Bottleneck: ``relu(shortcut + eca(body(x)))``."""

    def _finish_init(self, out_channels: int, eca_k: int | None, use_eca: bool,
                     connection: nn.Module | None) -> None:
        self.eca = EcaModule(out_channels, kernel_size=eca_k) if use_eca else None
        self.streams = connection
        self.relu = nn.ReLU(inplace=True)

    def body(self, x: torch.Tensor) -> torch.Tensor:  # up to the last BN
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch F(x): body and, with ECA, its channel rescale."""
        out = self.body(x)
        return out * self.eca.gate(out) if self.eca is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.body(x)
        if self.eca is not None:  # ECA rescale fused into the residual add and the ReLU
            return eca_residual(out, shortcut, self.eca.conv.weight, relu=True, inplace=True)
        out += shortcut  # in place, as torchvision: BN's backward does not need its output
        return self.relu(out)

    def forward_streams(self, streams: torch.Tensor) -> torch.Tensor:
        """Hyper-/frac-connection form: ``relu(HC(H, F))`` per stream (identity shortcut only)."""
        return torch.relu(self.streams(streams, self.branch))


class BasicBlock(_ResidualBlock):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, use_eca: bool = False,
                 eca_k: int | None = None, connection: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self._finish_init(planes, eca_k, use_eca, connection)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, use_eca: bool = False,
                 eca_k: int | None = None, connection: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self._finish_init(planes * 4, eca_k, use_eca, connection)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNetStage(nn.Sequential):
    """A stage (``layerX``): its blocks, run with hyper-/frac-connection streams where enabled."""

    def __init__(self, blocks: Sequence[nn.Module], spec: StreamSpec | None) -> None:
        super().__init__(*blocks)
        self.spec = spec
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self, x, self.spec, self.grad_checkpointing)[0]


def _stage_kernel_sizes(eca_k_size, layers: Sequence[int]) -> list[list[int | None]]:
    """Per-block ECA kernel sizes from None / int / per-stage / per-block ``eca_k_size``."""
    total = sum(layers)
    if eca_k_size is None or isinstance(eca_k_size, int):
        return [[eca_k_size] * n for n in layers]
    if isinstance(eca_k_size, str):  # e.g. "official", MobileNetV2's rule
        raise ValueError(f"eca_k_size must be None, an int, {len(layers)} per-stage sizes or "
                         f"{total} per-block sizes, got {eca_k_size!r} (the official ECA-ResNet "
                         "release uses per-stage sizes, e.g. (3, 5, 5, 7) for ResNet-50)")
    sizes = [int(k) for k in eca_k_size]
    if len(sizes) == len(layers):
        return [[k] * n for k, n in zip(sizes, layers)]
    if len(sizes) == total:
        out, i = [], 0
        for n in layers:
            out.append(sizes[i:i + n])
            i += n
        return out
    raise ValueError(f"eca_k_size must be an int, {len(layers)} per-stage sizes or {total} "
                     f"per-block sizes, got {tuple(eca_k_size)}")


class ResNet(nn.Module):
    """ResNet with timm's model contract (``forward_features``, ``forward_head``, ...)."""

    def __init__(self, depth: int = 50, num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = "avg", eca: bool = False, eca_k_size=None,
                 gcp_dim: int | None = 256, gcp_iters: int = 5, hc_rate: int = 0,
                 fc_rate: int = 0, hc_dynamic: bool = False, hc_nan_guard: bool = False,
                 drop_rate: float = 0.0, zero_init_last: bool = False) -> None:
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCH)}, got {depth!r}")
        check_unpooled_head(global_pool, num_classes)
        kind, layers = ARCH[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.spec = stream_spec(hc_rate, fc_rate, hc_dynamic, hc_nan_guard)
        gcp = global_pool == "gcp"
        check_eca_k_size(eca, eca_k_size)
        kernel_sizes = _stage_kernel_sizes(eca_k_size, layers)

        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=64, reduction=2, module="relu")]
        inplanes, reduction, layer_index = 64, 4, 0
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            # iSQRT-COV keeps the last stage at stride 1 (14x14 maps at 224 px)
            stride = 1 if i == 0 or (gcp and i == 3) else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                out = planes * block.expansion
                downsample = None
                if s != 1 or inplanes != out:
                    downsample = nn.Sequential(_conv(inplanes, out, 1, s), nn.BatchNorm2d(out))
                connection = None
                if self.spec is not None and downsample is None:
                    connection = self.spec.connection(out, layer_index)
                    layer_index += 1
                blocks.append(block(inplanes, planes, s, downsample, eca, kernel_sizes[i][j],
                                    connection))
                inplanes = out
            self.add_module(f"layer{i + 1}", ResNetStage(blocks, self.spec))
            reduction *= stride
            self.feature_info.append(dict(num_chs=inplanes, reduction=reduction,
                                          module=f"layer{i + 1}"))
        self.num_features = inplanes
        self.global_pool_type = global_pool
        self.global_pool, self.head_hidden_size = create_pool(global_pool, inplanes, gcp_dim,
                                                              gcp_iters)
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, _ResidualBlock):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    # --- timm contract -------------------------------------------------------------------
    def stages(self) -> list[ResNetStage]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages():
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        from cvkit.models.streams import connection_no_weight_decay

        return connection_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ResNet contract: a new classifier for ``num_classes`` (0: Identity, features
        out); ``global_pool`` None keeps the pooling (a trained GCP head too), "avg" or ""
        replaces it — "" = no pooling, ``forward_head`` returns the (B, C, H, W) map (only with
        num_classes=0); a GCP head then goes entirely (reduction included), the map is the last
        stage's (stride 16 on a GCP ResNet). See :func:`cvkit.models.heads.reset_pool`."""
        pool, width, kind = reset_pool(self.global_pool, self.global_pool_type,
                                       self.head_hidden_size, global_pool, self.num_features,
                                       num_classes)
        w = self.conv1.weight
        self.global_pool, self.head_hidden_size, self.global_pool_type = pool, width, kind
        self.num_classes = num_classes
        self.fc = (nn.Linear(width, num_classes, device=w.device, dtype=w.dtype)
                   if num_classes else nn.Identity())
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.forward_stem(x))
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.global_pool_type:  # a vector; without pooling ("") the map stays, as in timm
            x = x.flatten(1)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API: stem (stride 2) and the four stages."""
        if output_fmt != "NCHW":
            raise ValueError(f"ResNet features are NCHW maps, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(5, indices)
        intermediates = []
        x = self.forward_stem(x)
        if 0 in take:
            intermediates.append(x)
        x = self.maxpool(x)
        stages = self.stages()[:max_index] if stop_early else self.stages()
        for i, stage in enumerate(stages, start=1):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    @records_pruned_keys
    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(5, indices)
        for i in range(max_index + 1, 5):
            setattr(self, f"layer{i}", ResNetStage([], None))
        if prune_head:
            self.reset_classifier(0, "")
        return take
