"""torch.compile (inductor, CPU) on one model of each family: same logits and gradients as eager."""
from __future__ import annotations

import pytest
import torch

import cvkit


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size", [
    ("eca_resnet18", {}, 64),
    ("mobilenetv2_hc2", {}, 64),
    ("vit_tiny_patch16_hc2", dict(img_size=32, depth=2), 32),
])
def test_compiled_model_matches_eager(name, kwargs, size):
    torch.manual_seed(0)
    model = cvkit.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    compiled = torch.compile(model)
    ref = model(x)
    ref.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-4, msg=n)
