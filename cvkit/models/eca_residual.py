"""ECA rescale fused into the residual add: ``act(shortcut + x * sigmoid(conv1d_k(mean_hw x)))``.

This is ECA-Net's block output (Wang et al., CVPR 2020, Fig. 2 / Eq. 7 with the adaptive-k 1-D
convolution of Eq. 12) written as one autograd function, because on the CPU its element-wise
passes over every block output, not its k weights, are what ECA costs. Autograd's version
materialises ``x * g``, the sum and the activation as separate tensors, keeps ``x`` alive for the
backward and, backwards, writes ``grad * g`` and ``grad * x`` as full tensors.

Here the forward reads ``x`` once for the pooling and once in one ``addcmul`` and keeps nothing
the rest of the network does not keep anyway: the weight gradient needs ``sum_hw grad * x``, and
with ``y = act(s + g x)`` that equals ``(sum_hw grad * (y - s)) / g`` wherever ``grad`` is not
masked by the ReLU, so the sigmoid's derivative ``g (1 - g)`` turns it into

    dL/dz[b, c] = (1 - g[b, c]) * sum_hw grad * (y - s)          (z: the gate's pre-activation)

from the output ``y`` and the shortcut ``s``, which the next block and this block's first
convolution save anyway (all but a projection shortcut's output). With ``inplace=True`` (the ResNet
blocks, as torchvision's ``out += identity``) the result is written into ``x``'s storage: BN's
backward does not need its output. The backward is one ``threshold_backward`` (as without ECA), one
per-channel dot product computed a few samples at a time and one ``addcmul`` writing ``grad_x =
grad * g + d_pool / HW``; the k-tap convolution across channels is a window sum on the (B, C)
pooled vector. The test compares with the unfused form in float64 and runs gradcheck. In float32
``y - s`` carries the rounding of ``y``, so the gate's gradient has a relative error of about 1e-7
|s| / |g x| (2e-6 when the shortcut is 30x the rescaled branch; tested), far below the noise of a
mini-batch gradient. Under bfloat16 autocast the same term carries bf16's rounding (2^-8): on
the CPU the gate's gradient was 2-9 % off float64 for shortcuts 1-30x the branch, against 1-9 %
for the unfused autograd form (9 % vs 1 % at 30x): the fused form's error grows with |s| / |g x|.

The weights are those of :class:`cvkit.layers.eca.EcaModule` (``eca.conv.weight``, [1, 1, k]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cvkit.layers.deployment import capturing_graph


_CHUNK_ELEMENTS = 1 << 20  # 4 MB of fp32 temporaries: cache-sized, and malloc reuses them


def _masked_residual_dot(grad: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``sum_hw grad * (y - s)`` per (batch, channel), computed a few samples at a time.

    A whole-batch product would be a fresh block-output-sized tensor: on the CPU that allocation
    (page faults of freshly mapped memory) costs several times the arithmetic, and einsum's
    batched-matmul route is slow for channels_last."""
    per_sample = y[0].numel()
    step = max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    out = torch.empty(y.shape[:2], dtype=y.dtype, device=y.device)
    for i in range(0, y.shape[0], step):
        j = min(i + step, y.shape[0])
        out[i:j] = torch.sub(y[i:j], s[i:j]).mul_(grad[i:j]).sum(dim=(2, 3))
    return out


def _channel_windows(v: torch.Tensor, k: int, transpose: bool = False) -> torch.Tensor:
    """(B, C) -> (B, C, k): window ``j`` at channel ``c`` is ``v[c + j - (k - 1) // 2]``, zero
    outside. ECA's 1-D convolution across channels (Eq. 12) is ``windows @ taps``: a few small
    ops where ``F.conv1d`` and its two backward convolutions cost ~0.5 ms each per block here.
    ``transpose=True`` pads the other way round: ``windows @ taps.flip(0)`` is the adjoint."""
    pad = (k - 1) // 2
    left, right = (k - 1 - pad, pad) if transpose else (pad, k - 1 - pad)
    return F.pad(v, (left, right)).unfold(-1, k, 1)


def _gate(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ECA's gate ``sigmoid(conv1d_k(mean_hw x))`` as (B, C, 1, 1), and the pooled (B, C)."""
    b, c = x.shape[:2]
    taps = weight.reshape(-1).to(x.dtype)
    pooled = x.mean(dim=(2, 3))
    return torch.sigmoid(_channel_windows(pooled, taps.numel()) @ taps).view(b, c, 1, 1), pooled


def _fused(x, shortcut, weight, relu: bool, inplace: bool):
    """The forward: ``(y, gate, pooled)``; with ``inplace`` ``y`` is ``x`` itself (torch.compile
    refuses an autograd function whose dirty input is not the very tensor it returns)."""
    gate, pooled = _gate(x, weight)
    if inplace:
        torch.addcmul(shortcut, x, gate, out=x)
        y = x
    else:
        y = torch.addcmul(shortcut, x, gate)
    if relu:
        y.relu_()
    return y, gate, pooled


class _EcaResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shortcut, weight, relu: bool, inplace: bool):
        y, gate, pooled = _fused(x, shortcut, weight, relu, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(y, shortcut, gate, pooled, weight)
        ctx.relu = relu
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, shortcut, gate, pooled, weight = ctx.saved_tensors
        b, c, h, w = y.shape
        taps = weight.reshape(-1).to(y.dtype)
        k = taps.numel()
        grad = torch.ops.aten.threshold_backward(grad_y, y, 0) if ctx.relu else grad_y
        # dL/dz = dL/dg * g (1 - g) = (1 - g) * sum_hw grad * (g x), and g x = y - s where grad != 0
        g = gate.view(b, c)
        grad_z = _masked_residual_dot(grad, y, shortcut).mul_(1 - g)         # (B, C)
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = torch.einsum("bck,bc->k", _channel_windows(pooled, k), grad_z)
            grad_w = grad_w.view(weight.shape).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_pooled = _channel_windows(grad_z, k, transpose=True) @ taps.flip(0)
            grad_x = torch.addcmul(grad_pooled.div_(h * w).view(b, c, 1, 1), grad, gate)
        grad_shortcut = grad if ctx.needs_input_grad[1] else None
        return grad_x, grad_shortcut, grad_w, None, None


def eca_residual(x: torch.Tensor, shortcut: torch.Tensor, weight: torch.Tensor,
                 relu: bool = True, inplace: bool = False) -> torch.Tensor:
    """``relu(shortcut + x * eca_gate(x))`` (``relu=False``: no activation, MobileNetV2).

    ``inplace=True`` writes the result into ``x`` (which must not be needed afterwards, like the
    output of the block's last BN). While ``torch.export`` or ``torch.jit.trace`` captures the
    model, the same maths as plain operations (:func:`cvkit.layers.deployment.capturing_graph`;
    with gradients enabled torch also refuses the in-place ``out=`` write there). Without a
    gradient to record (inference) the same forward without the autograd function: torch.compile
    cannot trace its ``mark_dirty`` there, a graph break at every block."""
    if capturing_graph():
        y = torch.addcmul(shortcut, x, _gate(x, weight)[0])
        return torch.relu(y) if relu else y
    if not (torch.is_grad_enabled() and (x.requires_grad or shortcut.requires_grad
                                         or weight.requires_grad)):
        return _fused(x, shortcut, weight, relu, inplace)[0]
    return _EcaResidual.apply(x, shortcut, weight, relu, inplace)
