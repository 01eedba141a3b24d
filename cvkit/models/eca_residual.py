"""ECA rescale fused into the residual add: ``act(shortcut + x * sigmoid(conv1d_k(mean_hw x)))``.

This is ECA-Net's block output (Wang et al., CVPR 2020, Fig. 2 / Eq. 7 with the adaptive-k 1-D
convolution of Eq. 12) written as one autograd function, because on the CPU its element-wise
passes over every block output, not its k weights, are what ECA costs: autograd's version
materialises ``x * g``, then the add, then, backwards, ``grad * g`` and ``grad * x`` as full
tensors and reduces one of them. Here the forward reads ``x`` once for the pooling and once in a
single ``addcmul``; the backward needs one dot product per channel (``sum_hw grad * x``) and one
``addcmul`` that writes ``grad_x = grad * g + d_pool / HW``. The maths is unchanged (the test
compares with the unfused form in float64 and runs gradcheck).

The weights are those of :class:`cvkit.layers.eca.EcaModule` (``eca.conv.weight``, [1, 1, k]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _EcaResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shortcut, weight, relu: bool):
        b, c, h, w = x.shape
        pad = (weight.shape[-1] - 1) // 2
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)                          # (B, 1, C)
        gate = torch.sigmoid(F.conv1d(pooled, weight.to(x.dtype), padding=pad))
        gate = gate.view(b, c, 1, 1)
        y = torch.addcmul(shortcut, x, gate)
        if relu:
            y = y.relu_()
        ctx.save_for_backward(x, gate, y if relu else None, pooled, weight)
        ctx.relu, ctx.pad = relu, pad
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, gate, y, pooled, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        grad = torch.ops.aten.threshold_backward(grad_y, y, 0) if ctx.relu else grad_y
        # dL/dgate[b, c] = sum_hw grad * x, without materialising the product
        grad_gate = torch.einsum("bchw,bchw->bc", grad, x) if x.is_contiguous() else \
            (grad * x).sum(dim=(2, 3))
        g = gate.view(b, 1, c)
        grad_z = grad_gate.view(b, 1, c) * g * (1 - g)                     # sigmoid'
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = torch.nn.grad.conv1d_weight(pooled, weight.shape, grad_z,
                                                 padding=ctx.pad).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_pooled = torch.nn.grad.conv1d_input(pooled.shape, weight.to(x.dtype), grad_z,
                                                     padding=ctx.pad)
            grad_x = torch.addcmul(grad_pooled.view(b, c, 1, 1) / (h * w), grad, gate)
        grad_shortcut = grad if ctx.needs_input_grad[1] else None
        return grad_x, grad_shortcut, grad_w, None


def eca_residual(x: torch.Tensor, shortcut: torch.Tensor, weight: torch.Tensor,
                 relu: bool = True) -> torch.Tensor:
    """``relu(shortcut + x * eca_gate(x))`` (``relu=False``: no activation, MobileNetV2)."""
    return _EcaResidual.apply(x, shortcut, weight, relu)
