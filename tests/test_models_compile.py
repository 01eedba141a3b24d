"""torch.compile on the CPU for one model of each family: same logits and gradients as eager.

Inductor (C++ code generation) for the ResNet and the ViT; for MobileNetV2 the ``aot_eager``
backend — the same Dynamo capture and AOTAutograd forward/backward graphs, without the C++ build
that made this case take > 3 minutes on the shared 2-core machine.
"""
from __future__ import annotations

import pytest
import torch

import cvkit


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size, backend", [
    ("eca_resnet18", {}, 64, "inductor"),
    ("mobilenetv2_hc2", {}, 64, "aot_eager"),
    ("vit_tiny_patch16_hc2", dict(img_size=32, depth=2), 32, "inductor"),
])
def test_compiled_model_matches_eager(name, kwargs, size, backend):
    torch.manual_seed(0)
    model = cvkit.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    compiled = torch.compile(model, backend=backend)
    ref = model(x)
    ref.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-4, msg=n)


def test_eca_resnet_compiles_into_one_graph():
    """Every ECA block of a ResNet is inside one Dynamo graph, with gradients and without (the
    fused ECA residual writes into its input: a graph break at each block while that dirty input
    was not the tensor returned, or under no_grad), and ``fullgraph=True`` with AOTAutograd (the
    backward traced too) gives eager's logits and gradients. The cheap backends: this checks the
    capture, not the code generation."""
    torch.manual_seed(0)
    model = cvkit.create_model("eca_resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    for grad in (True, False):
        torch._dynamo.reset()
        with torch.set_grad_enabled(grad):
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, (grad, [str(r.reason)[:200]
                                                         for r in explained.break_reasons])
        assert explained.graph_count == 1
    torch._dynamo.reset()
    results = []
    for fn in (model, torch.compile(model, fullgraph=True, backend="aot_eager")):
        model.zero_grad()
        out = fn(x)
        out.sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)
