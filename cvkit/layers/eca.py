"""Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020).

Global average pooling, a 1-D convolution of size ``k`` across channels (no bias, same padding),
a sigmoid, and a rescaling of the input. ``k`` defaults to the paper's adaptive size (Eq. 12).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """Adaptive kernel size of ECA-Net Eq. 12: ``k = |log2(C)/gamma + beta/gamma|_odd``.

    ``t = int(abs((log2 C + beta) / gamma))``; ``k = t`` if ``t`` is odd, else ``t + 1`` (so
    ``k >= 1`` for every ``C >= 1``). With gamma=2, beta=1: 3 for C in 16..96, 5 for 128..1024,
    7 for 2048. Note the released checkpoints use other, per-stage sizes (see papers.md).
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"eca_kernel_size: channels must be an int >= 1, got {channels!r}")
    if gamma == 0:
        raise ValueError("eca_kernel_size: gamma must be non-zero, got 0")
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 == 1 else t + 1


def check_eca_k_size(eca: bool, eca_k_size) -> None:
    """A model's ``eca_k_size`` only means something with ``eca=True``: an error otherwise
    (it would silently build a model without ECA)."""
    if eca_k_size is not None and not eca:
        raise ValueError(f"eca_k_size={eca_k_size!r} given to a model without ECA (eca=False): "
                         "use an eca_* preset or pass eca=True")


class EcaModule(nn.Module):
    """ECA attention for (B, C, H, W) maps: ``x * sigmoid(conv1d_k(avgpool(x)))`` (ECA-Net Fig. 2).

    ``kernel_size=None`` uses :func:`eca_kernel_size` (Eq. 12); an explicit odd value overrides it
    (the released ECA-ResNet checkpoints use per-stage sizes). ``.conv`` is
    ``nn.Conv1d(1, 1, k, padding=(k-1)//2, bias=False)`` as in the official release, so its
    state-dict key is ``<prefix>.conv.weight`` of shape ``[1, 1, k]``.

    :meth:`gate` returns the (B, C, 1, 1) attention alone so that a residual block can fuse the
    rescale into its residual add, e.g. ``torch.addcmul(shortcut, out, eca.gate(out))``.
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2,
                 beta: float = 1) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"EcaModule: channels must be an int >= 1, got {channels!r}")
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        elif (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
              or kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"EcaModule: kernel_size must be an odd int >= 1, got {kernel_size!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel attention ``sigmoid(conv1d(mean_{H,W} x))`` as a (B, C, 1, 1) tensor."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            shape = ", ".join([str(s) for s in x.shape])  # not tuple(x.shape): TorchScript-able
            raise ValueError(f"EcaModule: expected input (B, {self.channels}, H, W), "
                             f"got shape ({shape})")
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)            # (B, 1, C): channels as a sequence
        return torch.sigmoid(self.conv(pooled)).view(x.shape[0], self.channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
