"""The fused ECA residual (cvkit/models/eca_residual.py) equals the unfused ECA-Net block output
``act(shortcut + x * EcaModule.gate(x))`` in value and gradient (float64), and passes gradcheck."""
from __future__ import annotations

import pytest
import torch

from cvkit.layers.eca import EcaModule
from cvkit.models.eca_residual import eca_residual


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_unfused_eca_in_float64(relu, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 5, 4, dtype=torch.float64, generator=g)
    s = torch.randn(3, 16, 5, 4, dtype=torch.float64, generator=g)
    if channels_last:
        x, s = x.contiguous(memory_format=torch.channels_last), s.contiguous(
            memory_format=torch.channels_last)
    eca = EcaModule(16, kernel_size=5).double()
    x1, s1 = x.clone().requires_grad_(), s.clone().requires_grad_()
    ref = s1 + x1 * eca.gate(x1)
    ref = ref.relu() if relu else ref
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(upstream)
    x2, s2 = x.clone().requires_grad_(), s.clone().requires_grad_()
    w = eca.conv.weight.detach().clone().requires_grad_()
    out = eca_residual(x2, s2, w, relu=relu)
    out.backward(upstream)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.grad, eca.conv.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck(relu):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(1, 1, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: eca_residual(a, b, c, relu), (x, s, w))
