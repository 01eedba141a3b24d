"""ECA-Net layer: adaptive kernel size (Eq. 12) and the module against a float64 reference."""
from __future__ import annotations

import math

import pytest
import torch

from cvkit.layers.eca import EcaModule, eca_kernel_size


def _paper_k(c: int, gamma: float = 2, b: float = 1) -> int:
    t = int(abs((math.log2(c) + b) / gamma))
    return t if t % 2 else t + 1


@pytest.mark.parametrize("channels, expected", [
    (16, 3), (32, 3), (64, 3), (96, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7),
])
def test_kernel_size_matches_paper_table(channels, expected):
    assert eca_kernel_size(channels) == expected == _paper_k(channels)


def test_kernel_size_is_odd_and_positive_for_every_channel_count():
    # Independent integer form of Eq. 12 with gamma=2, b=1 (not a copy of the float formula):
    # t = floor((log2 C + 1) / 2) = floor((floor(log2 C) + 1) / 2) = C.bit_length() // 2, k = t | 1.
    for c in range(1, 5000):
        k = eca_kernel_size(c)
        assert k >= 1 and k % 2 == 1 and k == (c.bit_length() // 2) | 1, c
    assert eca_kernel_size(1) == 1
    assert eca_kernel_size(256, gamma=1, beta=0) == 9  # t = 8 -> 9
    assert eca_kernel_size(64, gamma=3, beta=1) == 3   # t = int(7/3) = 2 -> 3


def _reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Float64 ECA written out: explicit sum over neighbouring channels with zero padding."""
    x = x.double()
    w = w.double().flatten()
    k = w.numel()
    p = (k - 1) // 2
    b, c = x.shape[:2]
    pooled = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    z = torch.zeros(b, c, dtype=torch.float64)
    for i in range(c):
        for j in range(k):
            src = i + j - p
            if 0 <= src < c:
                z[:, i] += w[j] * pooled[:, src]
    gate = 1.0 / (1.0 + torch.exp(-z))
    return x * gate[:, :, None, None]


@pytest.mark.parametrize("channels, kernel_size", [(1, None), (7, 3), (64, None), (128, None), (5, 7)])
def test_module_equals_float64_reference(channels, kernel_size):
    torch.manual_seed(0)
    eca = EcaModule(channels, kernel_size=kernel_size).double()
    with torch.no_grad():
        eca.conv.weight.normal_()
    x = torch.randn(3, channels, 5, 4, dtype=torch.float64)
    expected_k = kernel_size or eca_kernel_size(channels)
    assert eca.kernel_size == expected_k
    assert eca.conv.weight.shape == (1, 1, expected_k)
    torch.testing.assert_close(eca(x), _reference(x, eca.conv.weight.detach()), rtol=1e-12, atol=1e-12)
    gate = eca.gate(x)
    assert gate.shape == (3, channels, 1, 1)
    torch.testing.assert_close(x * gate, eca(x))


def test_gradient_reaches_conv_weight_and_input():
    torch.manual_seed(0)
    eca = EcaModule(8, kernel_size=3).double()
    x = torch.randn(2, 8, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(eca, (x,), fast_mode=True)
    eca(x).square().sum().backward()
    g = eca.conv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_channels_last_input():
    torch.manual_seed(0)
    eca = EcaModule(16)
    x = torch.randn(2, 16, 6, 5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = eca(x_cl)
    torch.testing.assert_close(out, eca(x))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_torchscript_matches_eager():
    """timm's EcaModule scripts; this one must too (a tuple(x.shape) in the error message broke
    torch.jit.script)."""
    torch.manual_seed(0)
    eca = EcaModule(16)
    scripted = torch.jit.script(eca)
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(scripted(x), eca(x), rtol=0, atol=0)
    with pytest.raises(Exception, match=r"\(2, 9, 4, 4\)"):
        scripted(torch.randn(2, 9, 4, 4))


def test_state_dict_layout_matches_official_release():
    eca = EcaModule(2048)
    sd = eca.state_dict()
    assert list(sd) == ["conv.weight"] and sd["conv.weight"].shape == (1, 1, 7)
    assert eca.conv.padding == (3,) and eca.conv.bias is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=0), "channels"),
    (dict(channels=-3), "channels"),
    (dict(channels=16, kernel_size=4), "kernel_size"),
    (dict(channels=16, kernel_size=0), "kernel_size"),
])
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EcaModule(**kwargs)
    if "kernel_size" not in kwargs:
        with pytest.raises(ValueError, match="channels"):
            eca_kernel_size(kwargs["channels"])


def test_bad_input_shape_raises():
    eca = EcaModule(8)
    with pytest.raises(ValueError, match=r"\(2, 8, 4\)"):
        eca(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match=r"\(2, 9, 4, 4\)"):
        eca(torch.randn(2, 9, 4, 4))
