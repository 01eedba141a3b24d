"""The fused ECA residual (cvkit/models/eca_residual.py) equals the unfused ECA-Net block output
``act(shortcut + x * EcaModule.gate(x))`` in value and gradient (float64), in place or not, passes
gradcheck, and stays float32-accurate when the shortcut dwarfs the rescaled branch (its backward
recovers ``g * x`` as ``y - s``)."""
from __future__ import annotations

import pytest
import torch

from cvkit.layers.eca import EcaModule
from cvkit.models.eca_residual import eca_residual


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_unfused_eca_in_float64(relu, channels_last, inplace, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 5, 4, dtype=torch.float64, generator=g)
    s = torch.randn(3, 16, 5, 4, dtype=torch.float64, generator=g)
    if channels_last:
        x, s = x.contiguous(memory_format=torch.channels_last), s.contiguous(
            memory_format=torch.channels_last)
    eca = EcaModule(16, kernel_size=k).double()
    torch.nn.init.normal_(eca.conv.weight, generator=g)
    x1, s1 = x.clone().requires_grad_(), s.clone().requires_grad_()
    ref = s1 + x1 * eca.gate(x1)
    ref = ref.relu() if relu else ref
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(upstream)
    x2, s2 = x.clone().requires_grad_(), s.clone().requires_grad_()
    w = eca.conv.weight.detach().clone().requires_grad_()
    x2_in = x2 * 1.0  # a non-leaf, like the BN output the blocks pass
    out = eca_residual(x2_in, s2, w, relu=relu, inplace=inplace)
    assert (out.data_ptr() == x2_in.data_ptr()) == inplace
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    out.backward(upstream)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.grad, eca.conv.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck(relu, inplace, k):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(1, 1, k, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: eca_residual(a.clone(), b, c, relu, inplace=inplace), (x, s, w))


@pytest.mark.parametrize("relu", [True, False])
def test_float32_weight_gradient_with_a_dominant_shortcut(relu):
    """|s| ~ 30 |g x|: the weight gradient (from ``y - s``) stays within 2e-5 of float64 (measured
    2e-6; the error grows like 1e-7 |s| / |g x|: 3e-5 at |s| ~ 1000 |g x|)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 32, 7, 7, dtype=torch.float64, generator=g)
    s = 30 * torch.randn(4, 32, 7, 7, dtype=torch.float64, generator=g)
    w = 0.5 * torch.randn(1, 1, 3, dtype=torch.float64, generator=g)
    upstream = torch.randn(4, 32, 7, 7, dtype=torch.float64, generator=g)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        wd = w.to(dtype).detach().clone().requires_grad_()
        eca_residual(x.to(dtype) * 1.0, s.to(dtype), wd, relu, inplace=True).backward(
            upstream.to(dtype))
        grads[dtype] = wd.grad.double()
    torch.testing.assert_close(grads[torch.float32], grads[torch.float64], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_dot_product_over_several_chunks(monkeypatch, channels_last):
    """The backward's per-channel dot product, forced into chunks of 2 samples over a batch of 5
    (a remainder chunk), equals the whole-batch einsum."""
    from cvkit.models import eca_residual as module

    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 2 * 6 * 4 * 3)
    g = torch.Generator().manual_seed(3)
    grad, y, s = (torch.randn(5, 6, 4, 3, dtype=torch.float64, generator=g) for _ in range(3))
    if channels_last:
        grad, y, s = (t.contiguous(memory_format=torch.channels_last) for t in (grad, y, s))
    expected = torch.einsum("bchw,bchw->bc", grad, y - s)
    torch.testing.assert_close(module._masked_residual_dot(grad, y, s), expected,
                               rtol=1e-12, atol=1e-12)



@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_compiles_in_one_graph_with_the_same_values_and_gradients(relu, inplace, grad):
    """torch.compile(fullgraph=True) takes the fused function whole, forward and backward
    (``aot_eager``): Dynamo refuses an ``inplace`` write whose dirty input is not the very tensor
    returned, and ``mark_dirty`` outside a gradient-recording ``apply`` (inference), which made
    every ECA block a graph break (the ResNet and MobileNetV2 blocks pass ``inplace=True``)."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    x, s = (torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g) for _ in range(2))
    w = torch.randn(1, 1, 3, dtype=torch.float64, generator=g)
    upstream = torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g)

    def block(a, b, c):
        return eca_residual(a * 1.0, b, c, relu=relu, inplace=inplace)  # a non-leaf, as BN's output

    results = []
    for fn in (block, torch.compile(block, fullgraph=True, backend="aot_eager")):
        inputs = [t.clone().requires_grad_() for t in (x, s, w)]
        with torch.set_grad_enabled(grad):
            out = fn(*inputs)
        if grad:
            out.backward(upstream)
        results.append((out.detach(), *(t.grad for t in inputs if grad)))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [True, False])
def test_inference_writes_into_x_as_the_autograd_function(relu):
    """Without gradients (no autograd function) the result is the same and, with ``inplace``, still
    written into ``x``: no block-output-sized tensor more at inference."""
    g = torch.Generator().manual_seed(5)
    x, s = (torch.randn(2, 8, 4, 4, dtype=torch.float64, generator=g) for _ in range(2))
    w = torch.randn(1, 1, 3, dtype=torch.float64, generator=g, requires_grad=True)
    expected = eca_residual(x.clone(), s, w, relu, inplace=True)
    assert expected.requires_grad  # the autograd function
    x_in = x.clone()
    with torch.no_grad():
        out = eca_residual(x_in, s, w, relu, inplace=True)
    assert out.data_ptr() == x_in.data_ptr() and not out.requires_grad
    torch.testing.assert_close(out, expected.detach(), rtol=0, atol=0)
