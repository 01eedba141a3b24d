"""MobileNetV2, width 1.0 (Sandler et al., CVPR 2018), with ECA, iSQRT-COV and hyper-/frac-connections.

State-dict names are torchvision's (``features.N.conv.*``, ``classifier.1``), so torchvision
``mobilenet_v2`` weights load unchanged. Options:

* ``eca=True`` — ECA after the projection BN of every inverted residual, before the skip add
  (ECA-Net, CVPR 2020), at ``features.N.eca.conv.weight`` (the official release nests it at
  ``features.N.conv.{3,4}.conv.weight``; :mod:`cvkit.models.convert` maps it). ``eca_k_size``:
  None = paper Eq. 12 on each block's output channels; an int; ``"official"`` = the official
  ECA-MobileNetV2 rule (k = 1 for C < 96, else 3, as the paper's text and the release's current
  code; its first commit had ``c <= 96``); 7 per-stage sizes (one per row of the MobileNetV2
  table); or 17 per-block sizes.
* ``global_pool="gcp"`` — iSQRT-COV head in the layout of the GCP release whose top-1 the
  registry cites (Wang et al., "What Deep CNNs Benefit from Global Covariance Pooling: An
  Optimization Perspective", CVPR 2020; ZhangLi-CS/GCP_Optimization ``MobileNetV2_MPNCOV``):
  every stride of the plain network is kept (the 1280-channel map is 7x7 at 224 px; unlike the
  ResNets, no stage runs at stride 1), then a 1x1 reduction to ``gcp_dim`` + BN + **ReLU6**, the
  covariance square root and the classifier.
* ``hc_rate`` / ``fc_rate`` (+ ``hc_dynamic``) on the blocks with an identity skip; see
  :mod:`cvkit.models.streams`.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models._features import feature_take_indices

from cvkit.layers.covpool import CovariancePooling
from cvkit.layers.eca import EcaModule, check_eca_k_size
from cvkit.models.eca_residual import eca_residual
from cvkit.models.heads import check_unpooled_head, create_pool, reset_pool
from cvkit.models.pruning import records_pruned_keys
from cvkit.models.streams import run_blocks, stream_spec

# t (expansion), c (channels), n (blocks), s (stride of the first block): the paper's Table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))
FEATURE_BLOCKS = (1, 3, 6, 13, 17)  # last block at strides 2, 4, 8, 16, 32 (as timm's levels)


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, use_eca: bool = False,
                 eca_k: int | None = None, connection: nn.Module | None = None) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvBNReLU6(inp, hidden, 1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self.eca = EcaModule(oup, kernel_size=eca_k) if use_eca else None
        self.streams = connection if self.use_res_connect else None

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out * self.eca.gate(out) if self.eca is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_res_connect:
            return self.branch(x)
        out = self.conv(x)
        if self.eca is not None:  # ECA rescale fused into the skip add
            return eca_residual(out, x, self.eca.conv.weight, relu=False, inplace=True)
        return x + out

    def forward_streams(self, streams: torch.Tensor) -> torch.Tensor:
        return self.streams(streams, self.branch)


def official_eca_k(channels: int) -> int:
    """Kernel size of the official ECA-MobileNetV2 code: 1 for C < 96, else 3 (its current
    ``if c < 96``, as the paper's text; its first commit had ``c <= 96``)."""
    return 1 if channels < 96 else 3


def _block_kernel_sizes(eca_k_size) -> list[int | None]:
    per_stage = [n for _, _, n, _ in SETTINGS]
    channels = [c for _, c, n, _ in SETTINGS for _ in range(n)]
    if eca_k_size is None or isinstance(eca_k_size, int):
        return [eca_k_size] * len(channels)
    if eca_k_size == "official":
        return [official_eca_k(c) for c in channels]
    if isinstance(eca_k_size, str):
        raise ValueError(f"eca_k_size must be None, an int, 'official' or a sequence, "
                         f"got {eca_k_size!r}")
    sizes = [int(k) for k in eca_k_size]
    if len(sizes) == len(SETTINGS):
        return [k for k, n in zip(sizes, per_stage) for _ in range(n)]
    if len(sizes) == len(channels):
        return sizes
    raise ValueError(f"eca_k_size for MobileNetV2 must be an int, 'official', {len(SETTINGS)} "
                     f"per-stage or {len(channels)} per-block sizes, got {tuple(eca_k_size)}")


class MobileNetV2(nn.Module):
    """MobileNetV2 with timm's model contract."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg",
                 eca: bool = False, eca_k_size=None, gcp_dim: int | None = 256,
                 gcp_iters: int = 5, hc_rate: int = 0, fc_rate: int = 0,
                 hc_dynamic: bool = False, hc_nan_guard: bool = False,
                 drop_rate: float = 0.2) -> None:
        super().__init__()
        check_unpooled_head(global_pool, num_classes)
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.spec = stream_spec(hc_rate, fc_rate, hc_dynamic, hc_nan_guard)
        gcp = global_pool == "gcp"
        check_eca_k_size(eca, eca_k_size)
        kernel_sizes = _block_kernel_sizes(eca_k_size)
        features: list[nn.Module] = [ConvBNReLU6(in_chans, 32, 3, 2)]
        inp, reduction, layer_index, b = 32, 2, 0, 0
        self.feature_info = []
        for t, c, n, s in SETTINGS:
            for i in range(n):
                stride = s if i == 0 else 1
                reduction *= stride
                connection = None
                if self.spec is not None and stride == 1 and inp == c:
                    connection = self.spec.connection(c, layer_index)
                    layer_index += 1
                features.append(InvertedResidual(inp, c, stride, t, eca, kernel_sizes[b],
                                                 connection))
                inp, b = c, b + 1
                if len(features) - 1 in FEATURE_BLOCKS:
                    self.feature_info.append(dict(num_chs=c, reduction=reduction,
                                                  module=f"features.{len(features) - 1}"))
        features.append(ConvBNReLU6(inp, 1280, 1))
        self.features = nn.Sequential(*features)
        self.num_features = 1280
        self.global_pool_type = global_pool
        if gcp:  # the GCP release's MobileNetV2 reduction ends in ReLU6 (its ResNets': ReLU)
            self.global_pool = CovariancePooling(1280, dim=gcp_dim, iters=gcp_iters, act="relu6")
            self.head_hidden_size = self.global_pool.out_features
        else:
            self.global_pool, self.head_hidden_size = create_pool(global_pool, 1280)
        self.drop_rate = drop_rate
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), self._linear(num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _linear(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        return nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        from cvkit.models.streams import connection_no_weight_decay

        return connection_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^features\.0\.", blocks=r"^features\.(\d+)")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's contract, as :meth:`cvkit.models.resnet.ResNet.reset_classifier`: ``global_pool``
        None keeps the pooling (a trained GCP head too), "avg" or "" (no pooling: the (B, 1280,
        H, W) map out, only with num_classes=0) replaces it; the dropout stays."""
        pool, width, kind = reset_pool(self.global_pool, self.global_pool_type,
                                       self.head_hidden_size, global_pool, self.num_features,
                                       num_classes)
        self.global_pool, self.head_hidden_size, self.global_pool_type = pool, width, kind
        self.num_classes = num_classes
        w = self.features[0][0].weight
        self.classifier[1] = self._linear(num_classes, w.device, w.dtype)
        self.global_pool.train(self.training)
        self.classifier[1].train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.features, x, self.spec, self.grad_checkpointing)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.global_pool_type:  # a vector; without pooling ("") the map stays, as in timm
            x = x.flatten(1)
        x = self.classifier[0](x)
        return x if pre_logits else self.classifier[1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API: the five levels of ``feature_info``."""
        if output_fmt != "NCHW":
            raise ValueError(f"MobileNetV2 features are NCHW maps, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(FEATURE_BLOCKS), indices)
        blocks = [FEATURE_BLOCKS[i] for i in take]
        run = self.features[:FEATURE_BLOCKS[max_index] + 1] if stop_early else self.features
        x, intermediates = run_blocks(run, x, self.spec, self.grad_checkpointing, take=blocks)
        return intermediates if intermediates_only else (x, intermediates)

    @records_pruned_keys
    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's contract (as its EfficientNet / mobilenetv2_100): the blocks after the last
        level taken go; the final 1x1 conv to 1280 channels (``features.18``, timm's conv_head)
        and the head stay only when the network is whole and ``prune_head`` / ``prune_norm`` are
        False, so that the kept model still classifies. The head goes whenever its input does."""
        take, max_index = feature_take_indices(len(FEATURE_BLOCKS), indices)
        last = FEATURE_BLOCKS[max_index]
        keep_end = last == FEATURE_BLOCKS[-1] and not (prune_head or prune_norm)
        if not keep_end:
            self.features = self.features[:last + 1]
        if prune_head or not keep_end:
            self.reset_classifier(0, "")
        return take
