"""iSQRT-COV (cvkit.layers.covpool) against independent float64 references: a literal coupled
Newton-Schulz loop differentiated by autograd, and the eigendecomposition square root."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from cvkit.layers.covpool import CovariancePooling, _isqrt_cov_torch, isqrt_cov, triu_vectorize

METHODS = ("eigh", "ns")  # the CPU default and the CUDA default; both must be the same function


def literal_isqrt_cov(x: torch.Tensor, iters: int) -> torch.Tensor:
    """Independent reference, written from the paper: explicit M x M centring matrix, trace
    normalisation, the coupled iteration as printed, post-compensation. (B,C,H,W) -> (B,C,C)."""
    b, c = x.shape[:2]
    feats = x.reshape(b, c, -1)
    m = feats.shape[-1]
    ibar = (torch.eye(m, dtype=x.dtype) - torch.full((m, m), 1.0 / m, dtype=x.dtype)) / m
    sigma = feats @ ibar @ feats.transpose(1, 2)
    trace = torch.einsum("bii->b", sigma)[:, None, None]
    eye = torch.eye(c, dtype=x.dtype)
    y, z = sigma / trace, eye.expand(b, c, c)
    for _ in range(iters):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * trace.sqrt()


def _maps(b=3, c=6, h=4, w=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("iters", [1, 2, 3, 5])
def test_equals_literal_newton_schulz_forward_and_gradient(method, iters):
    x = _maps().requires_grad_()
    out = _isqrt_cov_torch(x, iters, method)
    ref = literal_isqrt_cov(x, iters)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grad, = torch.autograd.grad((out * weight).sum(), x)
    grad_ref, = torch.autograd.grad((ref * weight).sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)


def test_public_function_is_the_literal_loop_vectorised():
    x = _maps(b=2, c=7, h=3, w=3, seed=3).requires_grad_()
    ref = literal_isqrt_cov(x, 5)
    rows, cols = torch.triu_indices(7, 7)
    torch.testing.assert_close(isqrt_cov(x, 5), ref[:, rows, cols], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(isqrt_cov(x, 5, vectorize=False), ref, rtol=1e-10, atol=1e-12)
    assert isqrt_cov(x).shape == (2, 7 * 8 // 2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_gradcheck_custom_backward(method, iters):
    x = _maps(b=2, c=6, h=3, w=3, seed=iters).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: _isqrt_cov_torch(t, iters, method), (x,))


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_tokens_and_rank_deficient(method):
    # N = 4 tokens < C = 7 channels: Sigma has rank 3, so A has repeated (zero) eigenvalues,
    # the case where the divided differences fall back to derivatives.
    x = torch.randn(2, 4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.autograd.gradcheck(lambda t: _isqrt_cov_torch(t, 3, method),
                                    (x.requires_grad_(),))


@pytest.mark.parametrize("method", METHODS)
def test_double_backward_is_refused_not_silently_wrong(method):
    """A gradient penalty through a layer before the pooling: torch's @once_differentiable let the
    penalty's backward through with the input gradient as a constant (no error, a wrong weight
    gradient); it raises naming the function now."""
    conv = torch.nn.Conv2d(3, 4, 1).double()
    x = _maps(b=1, c=3, h=3, w=3).requires_grad_()
    out = _isqrt_cov_torch(conv(x), 2, method)
    grad, = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"isqrt_cov has no second derivative \(its backward is "
                                           r"hand-written\)"):
        (out.sum() + grad.pow(2).sum()).backward()
    # a first derivative alone (create_graph=False) is unchanged
    x.grad = None
    _isqrt_cov_torch(conv(x), 2, method).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_missing_triton_package_is_a_clear_error_and_auto_falls_back(monkeypatch):
    """CUDA builds of PyTorch without triton exist: the kernels import it only when first run,
    so "auto" on a CUDA tensor raised ModuleNotFoundError from inside the kernel file instead of
    taking the torch path. _triton_kernel (what "auto" tries) now raises the RuntimeError that
    "auto" falls back on, and backend="triton" says what is missing."""
    from cvkit.layers.covpool import _triton_kernel

    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"triton package \(pip install triton\)"):
        _triton_kernel()
    with pytest.raises(RuntimeError, match=r"backend='triton' needs .* triton package"):
        isqrt_cov(_maps(b=1, c=4, h=2, w=2), 2, backend="triton")


def test_many_iterations_converge_to_eigh_square_root():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 20, 20, generator=g, dtype=torch.float64)  # M = 400 >> C = 8
    feats = x.reshape(2, 8, -1)
    centred = feats - feats.mean(-1, keepdim=True)
    sigma = centred @ centred.transpose(1, 2) / feats.shape[-1]
    lam, vecs = torch.linalg.eigh(sigma)
    assert lam.min() / lam.max() > 0.1
    sqrtm = vecs @ torch.diag_embed(lam.sqrt()) @ vecs.transpose(1, 2)
    for method in METHODS:
        torch.testing.assert_close(_isqrt_cov_torch(x, 30, method), sqrtm, rtol=0, atol=1e-6)


def test_float32_matches_float64_reference():
    """Output and input gradient in float32 against autograd through the literal loop in float64
    (observed 1.0e-6 / 1.2e-6 for eigh, 4.0e-7 / 4.5e-7 for ns)."""
    x = _maps(b=2, c=64, h=7, w=7, seed=11).requires_grad_()
    ref = literal_isqrt_cov(x, 5)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    grad_ref, = torch.autograd.grad((ref * weight).sum(), x)
    x32 = x.detach().float().requires_grad_()
    for method in METHODS:
        out = _isqrt_cov_torch(x32, 5, method)
        grad, = torch.autograd.grad((out * weight.float()).sum(), x32)
        assert (out.double() - ref).norm() / ref.norm() < 1e-5
        assert (grad.double() - grad_ref).norm() / grad_ref.norm() < 1e-5


# ---------------------------------------------------------------------------------------------
# layout, order, numerics
# ---------------------------------------------------------------------------------------------
def test_triu_vectorize_is_row_major_upper_triangle():
    mat = torch.arange(16.0).reshape(4, 4)
    expected = torch.tensor([0.0, 1, 2, 3, 5, 6, 7, 10, 11, 15])
    assert torch.equal(triu_vectorize(mat), expected)
    assert torch.equal(triu_vectorize(mat.expand(2, 4, 4)), expected.expand(2, 10))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        triu_vectorize(torch.zeros(3, 4))


def test_tokens_equal_feature_maps_forward_and_gradient():
    x = _maps(b=2, c=5, h=3, w=4, seed=2).requires_grad_()
    tokens = x.flatten(2).transpose(1, 2)          # (B, N, C)
    out_map = isqrt_cov(x, 3)
    out_tok = isqrt_cov(tokens, 3)
    torch.testing.assert_close(out_tok, out_map, rtol=1e-12, atol=1e-14)
    g_map, = torch.autograd.grad(out_map.sum(), x)
    g_tok, = torch.autograd.grad(out_tok.sum(), x)
    torch.testing.assert_close(g_tok, g_map, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_zero_and_constant_input_give_zeros_not_nan(method):
    x = torch.zeros(3, 4, 3, 3)
    x[1] = 2.5                                     # constant over positions: zero covariance too
    x[2] = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    out = _isqrt_cov_torch(x, 5, method)
    assert torch.equal(out[:2], torch.zeros(2, 4, 4))
    torch.testing.assert_close(out[2:], literal_isqrt_cov(x[2:].detach().double(), 5).float(),
                               rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[:2], torch.zeros(2, 4, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_in_float32(dtype):
    x = _maps(b=2, c=16, h=6, w=6, seed=4, dtype=torch.float32)
    conv = torch.nn.Conv2d(16, 16, 1)
    with torch.autocast("cpu", dtype=dtype):
        feats = conv(x)
        assert feats.dtype == dtype
        out = isqrt_cov(feats, 5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, isqrt_cov(feats.float(), 5), rtol=0, atol=0)
    out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    # a half input outside autocast is promoted too
    half = isqrt_cov(x.to(dtype), 5)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_cpu_eigh_thread_split_matches_under_inference_mode_and_no_grad():
    x = _maps(b=5, c=12, h=4, w=4, seed=13, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = isqrt_cov(x, 5)                     # one call to eigh
        torch.set_num_threads(3)                     # batch split over 3 worker threads
        split = isqrt_cov(x, 5)
        with torch.inference_mode():                 # Lightning's validation runs like this
            inference = isqrt_cov(x, 5)
        with torch.no_grad():
            no_grad = isqrt_cov(x, 5)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(split, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inference, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(no_grad, single, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bad input and backends
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, iters, match", [
    (torch.zeros(2, 3), 5, r"rank-2.*\(2, 3\)"),
    (torch.zeros(1, 2, 3, 4, 5), 5, r"rank-5.*\(1, 2, 3, 4, 5\)"),
    (torch.zeros(2, 0, 3, 3), 5, r"channel dimension of 0.*\(2, 0, 3, 3\)"),
    (torch.zeros(2, 9, 0), 5, r"channel dimension of 0.*\(2, 9, 0\)"),
    (torch.zeros(2, 4, 0, 3), 5, r"no spatial positions.*\(2, 4, 0, 3\)"),
    (torch.zeros(2, 4, 3, 3, dtype=torch.int64), 5, r"floating dtype.*\(2, 4, 3, 3\)"),
    (torch.zeros(2, 4, 3, 3), 0, r"iters.*>= 1.*0.*\(2, 4, 3, 3\)"),
    (torch.zeros(2, 4, 3, 3), 2.0, r"iters.*2\.0.*\(2, 4, 3, 3\)"),
])
def test_bad_input_raises_value_error_naming_it(x, iters, match):
    with pytest.raises(ValueError, match=match):
        isqrt_cov(x, iters)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'cuda_fast'"):
        isqrt_cov(torch.zeros(1, 2, 2, 2), backend="cuda_fast")
    with pytest.raises(ValueError, match="'cuda_fast'"):
        CovariancePooling(4, dim=2, backend="cuda_fast")


@pytest.fixture
def fake_kernels(monkeypatch):
    """cvkit.kernels replaced by a module whose isqrt_cov_triton records its calls."""
    calls = []
    module = types.ModuleType("cvkit.kernels")

    def isqrt_cov_triton(x, iters, vectorize):
        calls.append((x.dtype, iters, vectorize))
        return torch.full((x.shape[0], 1), 7.0)

    module.isqrt_cov_triton = isqrt_cov_triton
    monkeypatch.setitem(sys.modules, "cvkit.kernels", module)
    return calls


def test_triton_backend_dispatches_to_the_kernel(fake_kernels):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float16)
    out = isqrt_cov(x, 3, vectorize=False, backend="triton")
    assert torch.equal(out, torch.full((2, 1), 7.0))
    assert fake_kernels == [(torch.float32, 3, False)]      # fp32 island before the kernel
    isqrt_cov(x.float(), 5)                                  # auto on CPU: torch path
    assert len(fake_kernels) == 1


def test_triton_backend_without_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvkit.kernels", types.ModuleType("cvkit.kernels"))
    with pytest.raises(RuntimeError, match="isqrt_cov_triton"):
        isqrt_cov(torch.randn(1, 3, 2, 2), backend="triton")
    # auto on the CPU never needs it
    assert isqrt_cov(torch.randn(1, 3, 2, 2)).shape == (1, 6)


# ---------------------------------------------------------------------------------------------
# the head
# ---------------------------------------------------------------------------------------------
def test_covariance_pooling_shapes_and_gradients():
    head = CovariancePooling(12, dim=5, iters=3)
    assert head.out_features == 15
    assert isinstance(head.reduce[0], torch.nn.Conv2d) and head.reduce[0].bias is None
    assert isinstance(head.reduce[1], torch.nn.BatchNorm2d)
    x = torch.randn(4, 12, 6, 6, requires_grad=True)
    out = head(x)
    assert out.shape == (4, 15) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0

    plain = CovariancePooling(6, dim=None)
    assert isinstance(plain.reduce, torch.nn.Identity) and plain.out_features == 21
    y = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(plain(y), triu_vectorize(literal_isqrt_cov(y, 5)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_covariance_pooling_returns_the_input_dtype(dtype):
    """A half-precision network (``model.to(bf16)``) gets its own dtype back from the head, for
    maps and tokens: computed in float32 (equal to the float32 head on the same rounded input),
    rounded once at the end. Under autocast the output follows the tensor it was given."""
    torch.manual_seed(0)
    head = CovariancePooling(8, dim=4, iters=5).eval()
    maps = torch.randn(2, 8, 3, 3).to(dtype)
    tokens = torch.randn(2, 9, 8).to(dtype)
    with torch.no_grad():
        for x in (maps, tokens):
            ref = head(x.float())
            out = head.to(dtype)(x)
            head.float()
            assert out.dtype == dtype
            torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert head(maps.float()).dtype == torch.float32
            assert head(maps.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0), r"in_channels.*0"),
    (dict(in_channels=8.0), r"in_channels.*8\.0"),     # was a TypeError from inside nn.Conv2d
    (dict(in_channels="8"), r"in_channels.*'8'"),       # was "'<' not supported between ..."
    (dict(in_channels=True, dim=None), r"in_channels.*True"),  # was accepted as 1 channel
    (dict(in_channels=8, dim=0), r"dim.*0"),
    (dict(in_channels=8, dim=4.0), r"dim.*4\.0"),
    (dict(in_channels=8, dim=True), r"dim.*True"),
    (dict(in_channels=8, act="gelu"), r"act 'gelu'.*'relu', 'relu6'"),
])
def test_covariance_pooling_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CovariancePooling(**kwargs)


def test_reduction_activation_relu_by_default_relu6_on_request():
    """The paper's (and the ResNet release's) ReLU after the reduction BN by default; ReLU6 for
    the GCP release's MobileNetV2 (ZhangLi-CS/GCP_Optimization, MobileNetV2_MPNCOV)."""
    assert type(CovariancePooling(8, dim=4).reduce[2]) is torch.nn.ReLU
    head = CovariancePooling(8, dim=4, act="relu6")
    assert type(head.reduce[2]) is torch.nn.ReLU6 and "act='relu6'" in repr(head)
    torch.nn.init.ones_(head.reduce[0].weight)
    with torch.no_grad():  # eval-mode BN at its initial statistics: the 1x1 sums (80) reach ReLU6
        assert head.eval().reduce(torch.full((2, 8, 3, 3), 10.0)).max() == 6.0


def test_covariance_pooling_tokens_equal_maps():
    head = CovariancePooling(8, dim=4, iters=5).double().eval()
    with torch.no_grad():
        head.reduce[1].running_mean.uniform_(-0.1, 0.1)
    tokens = torch.randn(2, 10, 8, dtype=torch.float64)      # (B, N, C)
    as_map = tokens.transpose(1, 2).reshape(2, 8, 2, 5)
    torch.testing.assert_close(head(tokens), head(as_map), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"8 channels.*\(2, 10, 9\)"):
        head(torch.randn(2, 10, 9))
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        head(torch.randn(2, 8))


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_sample_gives_nan_without_spoiling_the_batch(method):
    x = _maps(b=3, c=4, h=3, w=3, seed=9)
    x[1, 2, 0, 0] = float("nan")
    x[2, 0, 1, 1] = float("inf")
    x.requires_grad_()
    out = _isqrt_cov_torch(x, 5, method)                 # no LAPACK error from eigh
    assert torch.isnan(out[1]).all() and not torch.isfinite(out[2]).all()
    torch.testing.assert_close(out[0], literal_isqrt_cov(x[:1].detach(), 5)[0])
    out.sum().backward()
    assert torch.isfinite(x.grad[0]).all()


# ---------------------------------------------------------------------------------------------
# the benchmark's baselines and memory measure (cvkit/benchmarks/covpool.py)
# ---------------------------------------------------------------------------------------------
def test_benchmark_baselines_compute_the_same_function():
    from cvkit.benchmarks.covpool import centred_autograd_isqrt_cov, straightforward_isqrt_cov

    x = _maps(b=2, c=5, h=3, w=3, seed=12)
    expected = isqrt_cov(x, 4)
    torch.testing.assert_close(straightforward_isqrt_cov(x, 4), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(centred_autograd_isqrt_cov(x, 4), expected, rtol=1e-10, atol=1e-12)


def test_cpu_peak_memory_counts_live_storages():
    from cvkit.benchmarks.timing import cpu_peak_memory_bytes

    def pattern():
        a = torch.empty(1000, dtype=torch.float32)      # 4000 B
        a.fill_(1.0)
        b = a.view(10, 100).add_(1.0)                   # a view: no new storage
        del a, b                                        # freed
        c = torch.ones(500, dtype=torch.float64)        # 4000 B
        d = c * 2                                       # 4000 B, alive with c
        return d.sum()                                  # 8 B, alive with c and d

    def freed_first():
        a = torch.empty(3000, dtype=torch.float32)      # 12000 B, freed before the rest
        del a
        return torch.ones(500, dtype=torch.float64)     # 4000 B

    assert cpu_peak_memory_bytes(pattern) == 8008
    assert cpu_peak_memory_bytes(freed_first) == 12000


def test_benchmark_cpu_report_runs_on_a_tiny_case():
    import argparse

    from cvkit.benchmarks import covpool as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--batch", "2", "--dim", "6", "--size", "3", "--repeats", "1"])
    report = bench.run(args)
    assert "python tools/benchmark.py covpool --batch 2 --dim 6 --size 3 --repeats 1" in report
    rows = [line for line in report.splitlines() if line.startswith("| 2 | 6 |")]
    assert len(rows) == 4 and not any("not run" in r for r in rows)


@pytest.mark.slow
def test_torch_compile_runs_the_head_eagerly_with_the_same_result():
    torch.manual_seed(0)
    head = CovariancePooling(8, dim=4).eval()
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    ref = head(x)
    grad_ref, = torch.autograd.grad(ref.pow(2).sum(), x)
    out = torch.compile(head)(x)
    grad, = torch.autograd.grad(out.pow(2).sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (0, 9, 4)])
def test_empty_batch_is_empty_and_differentiable(shape):
    """B = 0 (the last, empty shard of an uneven split): an empty result that backward goes
    through with a zero gradient of the input's shape, as any other batch."""
    x = torch.zeros(shape, requires_grad=True)
    out = isqrt_cov(x, 3, backend="torch")
    assert out.shape == (0, 10)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
