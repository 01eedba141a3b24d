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
