"""Hyper-connections and frac-connections: init equivalence with pre-norm residual stacks, an
independent float64 reference of the dynamic equations, gradients, fp32 gating, bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cvkit.layers.hyper_connections import (FracConnections, HyperConnections, expand_streams,
                                            merge_fractions, merge_streams, split_fractions)

DIM = 16
DEPTH = 3


class TokenBlock(nn.Module):
    """Pre-norm residual MLP block: x + branch(x), branch = MLP(LayerNorm(x))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def branch(self, x):
        return self.mlp(self.norm(x))


class ConvBlock(nn.Module):
    """Pre-activation residual conv block: x + conv(relu(bn(x)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def branch(self, x):
        return self.conv(torch.relu(self.bn(x)))


class Stack(nn.Module):
    """The same blocks as a plain residual stack (kind=None) or wrapped in HC / FC."""

    def __init__(self, blocks, kind=None, rate=1, dynamic=False, channel_first=False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.kind, self.rate, self.channel_first = kind, rate, channel_first
        cls = {"hc": HyperConnections, "fc": FracConnections, None: None}[kind]
        self.conns = nn.ModuleList(
            [cls(DIM, rate, i, dynamic=dynamic, channel_first=channel_first) for i in range(len(blocks))]
            if cls else [])

    def forward(self, x):
        if self.kind is None:
            for blk in self.blocks:
                x = x + blk.branch(x)
            return x
        if self.kind == "hc":
            s = expand_streams(x, self.rate)
        else:
            s = split_fractions(x, self.rate, self.channel_first)
        for blk, conn in zip(self.blocks, self.conns):
            s = conn(s, blk.branch)
        if self.kind == "hc":
            return merge_streams(s) / self.rate   # every stream equals h_L at init: sum = n * h_L
        return merge_fractions(s, self.channel_first)


def _make(channel_first: bool, kind, rate, dynamic):
    torch.manual_seed(0)
    blocks = [(ConvBlock if channel_first else TokenBlock)(DIM) for _ in range(DEPTH)]
    plain = Stack(copy.deepcopy(blocks))
    wrapped = Stack(copy.deepcopy(blocks), kind, rate, dynamic, channel_first)
    x = torch.randn(2, DIM, 5, 5) if channel_first else torch.randn(2, 7, DIM)
    return plain, wrapped, x


CASES = [(k, r, d) for k in ("hc", "fc") for r in (1, 2, 4) for d in (False, True)]


@pytest.mark.parametrize("channel_first", [False, True], ids=["tokens", "channel_first"])
@pytest.mark.parametrize("kind, rate, dynamic", CASES)
def test_init_equals_pre_norm_stack_and_one_step_changes_it(channel_first, kind, rate, dynamic):
    plain, wrapped, x = _make(channel_first, kind, rate, dynamic)
    ref = plain(x)
    out = wrapped(x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    if kind == "hc":  # the paper's ending: sum of streams, then the final norm
        s = expand_streams(x, rate)
        for blk, conn in zip(wrapped.blocks, wrapped.conns):
            s = conn(s, blk.branch)
        for i in range(rate):
            torch.testing.assert_close(s[:, i], ref, rtol=1e-6, atol=1e-6)
        if not channel_first:
            norm = nn.LayerNorm(DIM, eps=0.0)  # eps=0: LN(n h) == LN(h) exactly in real arithmetic
            torch.testing.assert_close(norm(merge_streams(s)), norm(ref), rtol=1e-5, atol=1e-5)

    # One SGD step on every parameter of each model: the wrapped one must now differ.
    target = torch.randn_like(ref)
    for model in (plain, wrapped):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()
    assert (wrapped(x) - plain(x)).abs().max() > 1e-4
    for conn in wrapped.conns:
        assert not torch.equal(conn.static_beta, torch.ones_like(conn.static_beta))


@pytest.mark.parametrize("kind, rate, dynamic", [c for c in CASES if c[1] > 1])
@pytest.mark.parametrize("channel_first", [False, True], ids=["tokens", "channel_first"])
def test_every_connection_parameter_gets_a_finite_gradient(kind, rate, dynamic, channel_first):
    _, wrapped, x = _make(channel_first, kind, rate, dynamic)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        wrapped(x).square().mean().backward()
        for conn in wrapped.conns:
            for name, p in conn.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                # s_alpha, s_beta multiply tanh(Hbar W) = 0 while W = 0: exactly zero gradient at
                # init (documented); every other parameter, and the scales after one step, learn.
                if step == 1 or not name.endswith("_scale"):
                    assert p.grad.abs().sum() > 0, (name, step)
                else:
                    assert p.grad.abs().sum() == 0, name
        opt.step()


def _layer_norm64(h: torch.Tensor, eps: float) -> torch.Tensor:
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    return (h - mu) / torch.sqrt(var + eps)


def _reference64(conn, streams, branch):
    """Paper equations, token by token, in float64 (tokens layout (B, r, N, F))."""
    streams = streams.double()
    bsz, r, ntok, feat = streams.shape
    k = conn.num_inputs
    sa = conn.static_alpha.detach().double()
    am, ar = sa[:, :k], sa[:, k:]                      # A_m / Y  and  A_r / A
    bst = conn.static_beta.detach().double()
    layer_in = torch.zeros(bsz, ntok, k, feat, dtype=torch.float64)
    bs = torch.zeros(bsz, ntok, r, dtype=torch.float64)
    ars = torch.zeros(bsz, ntok, r, r, dtype=torch.float64)
    for b in range(bsz):
        for t in range(ntok):
            h = streams[b, :, t, :]                    # (r, F)
            a_m, a_r, beta = am, ar, bst
            if conn.dynamic:
                hbar = _layer_norm64(h, conn.norm_eps)
                wa = conn.dynamic_alpha.detach().double()
                wb = conn.dynamic_beta.detach().double()
                s_a = conn.dynamic_alpha_scale.detach().double()
                s_b = conn.dynamic_beta_scale.detach().double()
                beta = s_b * torch.tanh(hbar @ wb) + bst
                a_m = s_a * torch.tanh(hbar @ wa[:, :k]) + am
                a_r = s_a * torch.tanh(hbar @ wa[:, k:]) + ar
            layer_in[b, t] = a_m.T @ h                 # (k, F)
            bs[b, t], ars[b, t] = beta, a_r
    if k == 1:
        branch_in = layer_in[:, :, 0]
    else:
        branch_in = layer_in.reshape(bsz, ntok, k * feat)   # concat of the mixed fractions
    out = branch(branch_in)                                 # (B, N, D)
    out_rows = out.unsqueeze(2) if k == 1 else out.reshape(bsz, ntok, r, feat)
    new = torch.zeros_like(streams)
    for b in range(bsz):
        for t in range(ntok):
            h = streams[b, :, t, :]
            new[b, :, t, :] = bs[b, t][:, None] * out_rows[b, t] + ars[b, t].T @ h
    return new


def _randomise(conn, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)


@pytest.mark.parametrize("cls, rate", [(HyperConnections, 3), (FracConnections, 2), (FracConnections, 4)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_matches_float64_reference_with_random_parameters(cls, rate, dynamic):
    conn = cls(8, rate, layer_index=5, dynamic=dynamic).double()
    _randomise(conn)
    lin = nn.Linear(8, 8).double()
    branch = lambda h: torch.tanh(lin(h))  # noqa: E731 - mixes features, so fraction order matters
    feat = conn.feat
    streams = torch.randn(2, rate, 3, feat, dtype=torch.float64)
    torch.testing.assert_close(conn(streams, branch), _reference64(conn, streams, branch),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls, rate", [(HyperConnections, 2), (FracConnections, 2)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_channel_first_equals_tokens_per_pixel(cls, rate, dynamic):
    """channel_first gates per pixel over C: the same maths as tokens with (H*W) positions."""
    tok = cls(8, rate, 0, dynamic=dynamic).double()
    _randomise(tok)
    cf = cls(8, rate, 0, dynamic=dynamic, channel_first=True).double()
    cf.load_state_dict(tok.state_dict())
    conv = nn.Conv2d(8, 8, 3, padding=1).double()
    feat = tok.feat
    maps = torch.randn(2, rate, feat, 3, 4, dtype=torch.float64)     # (B, r, F, H, W)
    tokens = maps.flatten(3).transpose(2, 3)                          # (B, r, HW, F)

    def tok_branch(h):                                                # (B, HW, D) -> same
        img = h.transpose(1, 2).reshape(2, 8, 3, 4)
        return conv(img).flatten(2).transpose(1, 2)

    out_cf = cf(maps, conv)
    out_tok = tok(tokens, tok_branch)
    torch.testing.assert_close(out_cf.flatten(3).transpose(2, 3), out_tok, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [HyperConnections, FracConnections])
def test_gating_runs_in_fp32_under_bf16_autocast(cls):
    torch.manual_seed(0)
    conn = cls(DIM, 4, 1, dynamic=True)
    _randomise(conn)
    lin = nn.Linear(DIM, DIM)
    streams = torch.randn(2, 4, 6, conn.feat) * 3

    # Gates computed from bf16 streams come out fp32.
    alpha, beta = conn._dynamic_gates(streams.bfloat16())
    assert alpha.dtype == beta.dtype == torch.float32

    seen = {}

    def zero_branch(h):
        seen["dtype"] = h.dtype
        return torch.zeros_like(h)

    ref = conn(streams, zero_branch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conn(streams, zero_branch)
        mixed_out = conn(streams, lin)
    # If gating / mixing had run in bf16 the error would be ~1e-2; fp32 keeps it exact.
    assert seen["dtype"] == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # A branch under autocast returns bf16; the streams stay fp32, finite and close to fp32 maths.
    assert mixed_out.dtype == torch.float32 and torch.isfinite(mixed_out).all()
    torch.testing.assert_close(mixed_out, conn(streams, lin), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("cls, rate", [(HyperConnections, 2), (FracConnections, 2)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_bf16_streams_are_the_correctly_rounded_float64_result(cls, rate, dynamic):
    """A CNN under bf16 autocast carries bf16 streams. The coefficients were cast to bf16 before
    mixing: B = 1.003 acted as 1.0 (bf16 steps by 2^-7 near 1), so small learned changes had no
    effect. Now the result is the float64 formula on the same inputs, rounded once to bf16."""
    conn = cls(8, rate, layer_index=1, dynamic=dynamic)
    with torch.no_grad():
        conn.static_beta.fill_(1.003)
        conn.static_alpha.add_(0.003)
        if dynamic:
            g = torch.Generator().manual_seed(0)
            conn.dynamic_alpha.copy_(torch.randn(conn.dynamic_alpha.shape, generator=g))
            conn.dynamic_beta.copy_(torch.randn(conn.dynamic_beta.shape, generator=g))
    g = torch.Generator().manual_seed(1)
    streams = (torch.randn(2, rate, 64, conn.feat, generator=g) * 0.01).bfloat16()
    branch_out = (torch.rand(2, 64, 8, generator=g) + 1).bfloat16()    # the depth add dominates
    branch = lambda h: branch_out.to(h.dtype)  # noqa: E731 - the same values at any precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conn(streams, branch)
    ref = _reference64(conn, streams, branch)
    assert out.dtype == torch.bfloat16
    # rounded once: the bf16 nearest the float64 value (was: 30-60 % of the elements off by a step)
    wrong = (out != ref.bfloat16()).double().mean().item()
    assert wrong < 0.01, wrong
    assert ((out.double() - ref).abs() <= ref.abs() * 2.0 ** -7).all()   # never more than a step


@pytest.mark.parametrize("cls", [HyperConnections, FracConnections])
@pytest.mark.parametrize("dynamic", [False, True])
def test_no_weight_decay_names_exactly_the_static_parameters(cls, dynamic):
    conn = cls(8, 2, 0, dynamic=dynamic)
    names = conn.no_weight_decay()
    params = dict(conn.named_parameters())
    assert names == {"static_alpha", "static_beta"} and names <= set(params)
    assert set(params) - names == ({"dynamic_alpha", "dynamic_beta", "dynamic_alpha_scale",
                                    "dynamic_beta_scale"} if dynamic else set())


def test_paper_initialisation():
    hc = HyperConnections(8, 4, layer_index=6)
    expected_am = torch.tensor([0.0, 0.0, 1.0, 0.0])   # e_{6 mod 4}
    torch.testing.assert_close(hc.static_alpha[:, 0], expected_am)
    torch.testing.assert_close(hc.static_alpha[:, 1:], torch.eye(4))
    torch.testing.assert_close(hc.static_beta, torch.ones(4))
    fc = FracConnections(8, 4, layer_index=6, dynamic=True)
    torch.testing.assert_close(fc.static_alpha, torch.cat([torch.eye(4), torch.eye(4)], 1))
    assert fc.dynamic_alpha.shape == (2, 8) and fc.dynamic_beta.shape == (2,)
    assert fc.dynamic_alpha.abs().sum() == 0 and fc.dynamic_beta.abs().sum() == 0
    assert fc.dynamic_alpha_scale.item() == pytest.approx(0.01)
    assert fc.dynamic_beta_scale.item() == pytest.approx(0.01)


def test_split_merge_and_expand_shapes():
    x = torch.randn(2, 5, 12)
    f = split_fractions(x, 3)
    assert f.shape == (2, 3, 5, 4)
    torch.testing.assert_close(f[:, 1], x[..., 4:8])
    torch.testing.assert_close(merge_fractions(f), x)
    m = torch.randn(2, 12, 3, 4)
    fm = split_fractions(m, 4)
    assert fm.shape == (2, 4, 3, 3, 4)
    torch.testing.assert_close(fm[:, 2], m[:, 6:9])
    torch.testing.assert_close(merge_fractions(fm), m)
    s = expand_streams(x, 3)
    assert s.shape == (2, 3, 5, 12)
    torch.testing.assert_close(merge_streams(s), 3 * x)
    torch.testing.assert_close(merge_streams(s, reduction="mean"), x)


def test_nan_guard_names_the_layer():
    hc = HyperConnections(8, 2, layer_index=7, nan_guard=True)
    s = torch.randn(1, 2, 3, 8)
    hc(s, lambda h: h)
    with pytest.raises(FloatingPointError, match="layer_index=7.*branch output"):
        hc(s, lambda h: h * float("nan"))
    s[0, 1, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="input streams"):
        hc(s, lambda h: h)


@pytest.mark.parametrize("make, match", [
    (lambda: HyperConnections(8, 0, 0), "rate"),
    (lambda: FracConnections(8, 0, 0), "rate"),
    (lambda: HyperConnections(0, 2, 0), "dim"),
    (lambda: HyperConnections(8, 2, -1), "layer_index"),
    (lambda: FracConnections(10, 4, 0), "dim=10 is not divisible by rate=4"),
    (lambda: split_fractions(torch.randn(2, 3, 10), 4), r"10 of shape \(2, 3, 10\)"),
    (lambda: expand_streams(torch.randn(2, 3), 0), "n must be"),
    (lambda: merge_streams(torch.randn(2, 3, 4), reduction="max"), "reduction"),
    (lambda: HyperConnections(8, 2, 0)(torch.randn(2, 3, 8), lambda h: h), r"got shape \(2, 3, 8\)"),
    (lambda: HyperConnections(8, 2, 0)(torch.randn(2, 3, 4, 8), lambda h: h), r"got shape \(2, 3, 4, 8\)"),
    (lambda: HyperConnections(8, 2, 0, channel_first=True)(torch.randn(2, 2, 4, 8), lambda h: h),
     r"\(B, 2, 8, H, W\)"),
    (lambda: FracConnections(8, 2, 0)(torch.randn(2, 2, 4, 8), lambda h: h), r"\(B, 2, N, 4\)"),
    (lambda: HyperConnections(8, 2, 0)(torch.randn(2, 2, 4, 8), lambda h: h[:, :2]),
     r"branch must return shape \(2, 4, 8\), got \(2, 2, 8\)"),
])
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
