"""cvkit.kernels.isqrt_cov_triton against an independent float64 reference and cvkit's PyTorch
path: on the CPU through the Triton interpreter (TRITON_INTERPRET=1, small sizes), and compiled on
a CUDA GPU when one is present (those tests say so with a skipif: they need the hardware, not a
package).

Tolerances (relative Frobenius error, ||out - ref|| / ||ref||): fp32 kernels ("ieee") 1e-5 on the
CPU, 1e-4 on the GPU (d up to 512, five iterations; observed ~1e-6); "tf32x3" 1e-4; "tf32" 1e-2.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton  # noqa: F401  (imported before TRITON_INTERPRET is set: the harder case)
import torch
from torch import nn

from cvkit.kernels import isqrt_cov_triton
from cvkit.layers.covpool import CovariancePooling, isqrt_cov

REPO = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def interpret(monkeypatch):
    """Run the kernels in the Triton interpreter (set after cvkit.kernels was imported, which the
    dispatch supports: it loads the kernel file per mode)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(x: torch.Tensor, iters: int, vectorize: bool = True) -> torch.Tensor:
    """iSQRT-COV in float64, written out from the paper: centred covariance, trace normalisation,
    coupled Newton–Schulz, sqrt(trace) post-compensation, row-major upper triangle."""
    x = x.double()
    feats = x.flatten(2) if x.dim() == 4 else x.transpose(1, 2)  # (B, d, M)
    centred = feats - feats.mean(-1, keepdim=True)
    sigma = centred @ centred.transpose(1, 2) / feats.shape[-1]
    trace = sigma.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    a = sigma / trace
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a, eye
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    c = y * trace.sqrt()
    if not vectorize:
        return c
    rows, cols = torch.triu_indices(c.shape[-1], c.shape[-1], device=c.device)
    return c[:, rows, cols]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()


def check_against_reference(x, iters, vectorize, tol, **kwargs):
    """Forward and input gradient (for a random upstream gradient g) of the kernel vs float64;
    returns them with g."""
    x = x.detach().float().requires_grad_()
    out = isqrt_cov_triton(x, iters, vectorize, **kwargs)
    x64 = x.detach().double().requires_grad_()
    ref = reference(x64, iters, vectorize)
    assert out.shape == ref.shape and out.dtype == torch.float32
    g = torch.randn_like(ref)
    (grad,) = torch.autograd.grad(out, x, g.float())
    (grad_ref,) = torch.autograd.grad(ref, x64, g)
    assert rel_err(out, ref) < tol
    assert rel_err(grad, grad_ref) < tol
    return out, grad, g.float()


# ------------------------------------------------------------------------------------------------
# CPU, Triton interpreter
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("iters", [1, 3, 5])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("d", [16, 24, 32])
def test_maps_match_float64_and_torch_path(interpret, d, batch, iters):
    torch.manual_seed(d * 100 + batch * 10 + iters)
    x = torch.randn(batch, d, 5, 5) + 0.5  # a mean to be removed by the centring
    out, grad, g = check_against_reference(x, iters, True, tol=1e-5)
    xt = x.clone().requires_grad_()
    torch_out = isqrt_cov(xt, iters, backend="torch")
    (torch_grad,) = torch.autograd.grad(torch_out, xt, g)
    assert rel_err(out, torch_out) < 1e-5
    assert rel_err(grad, torch_grad) < 1e-5


@pytest.mark.parametrize("d, even", [(32, True), (64, True), (24, False), (48, False)])
def test_whole_tiles_launch_without_masks_and_agree(interpret, monkeypatch, d, even):
    """The product kernel drops its masks (EVEN) when every config's tile and k-step divide d (the
    interpreter's 32x32 tiles: d = 32, 64), and masks partial tiles otherwise; both agree with
    float64 (d = 32 and 24 also in the test above, with the PyTorch path)."""
    import cvkit.kernels.isqrt_cov as impl

    seen = set()
    launch = impl._launch_autotuned

    def spy(kernel, grid, args, meta):
        if "EVEN" in meta:
            seen.add(meta["EVEN"])
        return launch(kernel, grid, args, meta)
    monkeypatch.setattr(impl, "_launch_autotuned", spy)
    torch.manual_seed(d)
    check_against_reference(torch.randn(2, d, 3, 3), 3, False, tol=1e-5)
    assert seen == {even}


@pytest.mark.parametrize("layout, iters", [("maps", 3), ("tokens", 1), ("tokens", 5)])
def test_matrix_output_and_token_layout(interpret, layout, iters):
    torch.manual_seed(iters)
    x = torch.randn(3, 24, 4, 5) if layout == "maps" else torch.randn(3, 20, 24)
    out = check_against_reference(x, iters, False, tol=1e-5)[0]
    assert out.shape == (3, 24, 24)
    assert torch.equal(out, out.transpose(1, 2))  # written exactly symmetric


@pytest.mark.parametrize("d, batch, iters, precision", [(40, 2, 3, "ieee"), (72, 1, 2, "tf32x3")])
def test_several_tiles_with_masked_edges(interpret, d, batch, iters, precision):
    """d > 32 spans several 32×32 tiles (interpreter config): upper tiles, mirrored tiles, the
    tile-index decoding and masked edges, with both ways of reading the right factor (column
    blocks for "ieee", transposed row blocks otherwise; the interpreter computes in fp32)."""
    torch.manual_seed(d)
    x = torch.randn(batch, d, 3, 3) if d == 40 else torch.randn(batch, 7, d)
    check_against_reference(x, iters, d == 40, tol=1e-5, precision=precision)


@pytest.mark.parametrize("m, strides, mask", [
    (196, (50176, 196, 1), 0b0111),   # 14x14 NCHW map, d = 256: all but the unit stride
    (196, (50176, 1, 256), 0b1011),   # the same map channels_last
    (25, (1000, 25, 1), 0b0010),      # 5x5: only the batch stride
    (49, (49 * 7, 1, 7), 0b0000)])    # tokens, d = 7: nothing divisible by 4
def test_layout_args_quarter_what_4_divides(m, strides, mask):
    """The input-reading kernels get M and the strides divided by 4 where 4 divides them and
    multiply back by a compile-time 4 (16-byte alignment Triton can see): the mask says which,
    and the values restore exactly. Odd and even layouts are both run by the tests above."""
    from cvkit.kernels.isqrt_cov import _layout_args
    values, got = _layout_args(m, strides)
    assert got == mask
    assert tuple(v * (4 if got >> i & 1 else 1) for i, v in enumerate(values)) == (m, *strides)


def test_channels_last_maps_are_read_in_place(interpret, monkeypatch):
    """A channels_last map (what a conv net trained in channels_last feeds the head) is read with
    its own strides, no NCHW copy, and its gradient comes back in the same layout."""
    torch.manual_seed(4)
    x = torch.randn(2, 24, 5, 3)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    x_nchw = x.clone().requires_grad_()
    copies = []
    real_contiguous = torch.Tensor.contiguous

    def spy(self, *args, **kwargs):
        if self.data_ptr() == x_cl.data_ptr():
            copies.append(self.shape)
        return real_contiguous(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "contiguous", spy)
    out_cl = isqrt_cov_triton(x_cl, 3)
    g = torch.randn_like(out_cl)
    (grad_cl,) = torch.autograd.grad(out_cl, x_cl, g)
    assert copies == []
    monkeypatch.setattr(torch.Tensor, "contiguous", real_contiguous)
    out = isqrt_cov_triton(x_nchw, 3)
    (grad,) = torch.autograd.grad(out, x_nchw, g)
    torch.testing.assert_close(out_cl, out, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_cl, grad, rtol=1e-6, atol=1e-8)
    assert grad_cl.stride() == x_cl.stride()


def test_triu_order_is_row_major(interpret):
    torch.manual_seed(0)
    x = torch.randn(2, 24, 3, 3)
    full = isqrt_cov_triton(x, 3, vectorize=False)
    vec = isqrt_cov_triton(x, 3, vectorize=True)
    expected = torch.cat([full[:, i, i:] for i in range(24)], dim=1)  # row by row
    assert torch.equal(vec, expected)


def test_constant_sample_gives_zero_like_torch_path(interpret):
    x = torch.randn(2, 16, 3, 3)
    x[1] = 0.5  # tr(Sigma) = 0 for sample 1 (0.5 keeps the mean exact)
    x.requires_grad_()
    out = isqrt_cov_triton(x, 3)
    ref = isqrt_cov(x, 3, backend="torch")
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert rel_err(out, ref) < 1e-5
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))


def test_half_precision_input_runs_in_fp32(interpret):
    torch.manual_seed(1)
    x = torch.randn(2, 16, 4, 4).to(torch.bfloat16)
    out = isqrt_cov_triton(x, 3)
    assert out.dtype == torch.float32
    assert rel_err(out, reference(x.float(), 3)) < 1e-5


def test_gcp_head_trains_one_step_like_torch_backend(interpret, monkeypatch):
    """A tiny CNN with a CovariancePooling head: one SGD step with backend="triton" gives the same
    loss, gradients and updated weights as backend="torch", and lowers the loss; the Triton step
    really ran the kernels' forward and backward (and the torch step none)."""
    import cvkit.kernels.isqrt_cov as impl

    ran = []
    for name in ("_run_forward", "_run_backward"):
        real = getattr(impl, name)
        monkeypatch.setattr(impl, name, lambda *a, _real=real, _name=name: ran.append(_name)
                            or _real(*a))

    def make(backend):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                             CovariancePooling(8, dim=16, iters=3, backend=backend),
                             nn.Linear(16 * 17 // 2, 4))

    torch.manual_seed(1)
    images, labels = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    results = {}
    for backend in ("triton", "torch"):
        model = make(backend)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        with torch.no_grad():
            after = nn.functional.cross_entropy(model(images), labels)
        results[backend] = (loss.detach(), grads, [p.detach().clone() for p in model.parameters()],
                            after)
        assert ran == (["_run_forward", "_run_backward", "_run_forward"] if backend == "triton"
                       else [])
        ran.clear()
    (l_tr, g_tr, p_tr, a_tr), (l_to, g_to, p_to, a_to) = results["triton"], results["torch"]
    assert abs(l_tr.item() - l_to.item()) < 1e-5
    for g1, g2 in zip(g_tr, g_to):
        assert rel_err(g1, g2) < 1e-4
    for p1, p2 in zip(p_tr, p_to):
        assert rel_err(p1, p2) < 1e-5
    assert a_tr < l_tr and abs(a_tr.item() - a_to.item()) < 1e-4


def test_cpu_tensor_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA tensor.*TRITON_INTERPRET=1"):
        isqrt_cov_triton(torch.randn(1, 16, 2, 2))


@pytest.mark.parametrize("value", ["true", "ON", "yes"])
def test_triton_interpret_is_read_as_triton_reads_it(value, monkeypatch):
    """TRITON_INTERPRET=true runs Triton's interpreter (Triton takes 1/true/yes/on/y); the
    dispatch read only "1" and refused the CPU tensor, telling the user to set what they had."""
    from cvkit.kernels.interpret import interpreting

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreting()
    x = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(isqrt_cov_triton(x, 2).double(), reference(x, 2),
                               rtol=1e-4, atol=1e-5)
    for off in ("0", "false", ""):
        monkeypatch.setenv("TRITON_INTERPRET", off)
        assert not interpreting()


def test_empty_batch_gives_empty_result(interpret):
    x = torch.randn(0, 16, 3, 3, requires_grad=True)
    out = isqrt_cov_triton(x, 3)
    assert out.shape == (0, 136) and out.dtype == torch.float32
    assert isqrt_cov_triton(x, 3, vectorize=False).shape == (0, 16, 16)
    out.sum().backward()  # an empty, but defined, gradient
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("layout", ["strided maps", "transposed tokens", "batch slice"])
def test_non_contiguous_inputs_are_read_right(interpret, layout):
    """Layouts the kernels do not read in place (a strided crop of a map, tokens transposed from
    (B, C, N), every other sample of a batch) are copied first: forward and gradient equal
    float64, the gradient has the input's shape, and inference without autograd works too."""
    torch.manual_seed(2)
    if layout == "strided maps":
        x = torch.randn(2, 16, 6, 7)[:, :, ::2, 1::2]
    elif layout == "transposed tokens":
        x = torch.randn(2, 16, 9).transpose(1, 2)
    else:
        x = torch.randn(6, 16, 3, 3)[::2]
    assert not x.is_contiguous()
    check_against_reference(x, 3, True, tol=1e-5)
    with torch.no_grad():
        out = isqrt_cov_triton(x.requires_grad_(), 3)
    assert not out.requires_grad and rel_err(out, reference(x.detach(), 3)) < 1e-5


@pytest.fixture
def matmul_precision_restored():
    """PyTorch's fp32 matmul settings, legacy and per-backend, put back as they were; the test
    starts from a fresh process's (every backend "none": inheriting the generic setting). An
    earlier ``set_float32_matmul_precision`` (the covpool benchmark's) sets cuBLAS's explicitly,
    and a generic ``torch.backends.fp32_precision = 'tf32'`` then leaves cuBLAS at "ieee"."""
    legacy = torch.get_float32_matmul_precision()
    new = [(module, module.fp32_precision) for module in
           (torch.backends, torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
           if hasattr(module, "fp32_precision")]  # PyTorch >= 2.9
    for module, _ in new:
        module.fp32_precision = "none"
    yield
    torch.set_float32_matmul_precision(legacy)
    for module, value in new:
        module.fp32_precision = value
    assert torch.get_float32_matmul_precision() == legacy


@pytest.mark.parametrize("setting, expected", [
    ("torch.set_float32_matmul_precision('highest')", "tf32x3"),
    ("torch.set_float32_matmul_precision('high')", "tf32"),
    ("torch.set_float32_matmul_precision('medium')", "tf32"),
    ("torch.backends.cuda.matmul.allow_tf32 = True", "tf32"),
    # PyTorch's per-backend API (>= 2.9), after which get_float32_matmul_precision() raises
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "tf32"),
    ("torch.backends.fp32_precision = 'tf32'", "tf32"),
    ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", "tf32x3"),
    ("torch.backends.mkldnn.matmul.fp32_precision = 'bf16'", "tf32x3")])  # a CPU setting
def test_precision_none_follows_the_cublas_setting(interpret, matmul_precision_restored, setting,
                                                   expected):
    """precision=None takes TF32 products exactly when PyTorch's CUDA matmuls (cuBLAS) do, set
    through either API, and a call with it runs whichever API was used."""
    import cvkit.kernels.isqrt_cov as impl

    if "fp32_precision" in setting and not hasattr(torch.backends, "fp32_precision"):
        pytest.skip(f"PyTorch {torch.__version__} has no per-backend fp32_precision API (>= 2.9)")
    exec(setting)
    assert impl._resolve_precision(impl._FOLLOW_TORCH) == expected
    torch.manual_seed(0)
    # TF32 products are ~3e-3 off (docs/kernels.md); an interpreter that computes tl.dot in
    # fp32 whatever the precision is within 1e-5 either way
    check_against_reference(torch.randn(2, 16, 3, 3), 2, True,
                            tol=2e-2 if expected == "tf32" else 1e-5)


def test_bad_arguments_are_clear_errors(interpret):
    with pytest.raises(ValueError, match=r"shape \(16, 4\)"):
        isqrt_cov_triton(torch.randn(16, 4))
    for iters in (0, True, 2.0):  # True is an int to isinstance, not an iteration count
        with pytest.raises(ValueError, match="iters must be a positive int"):
            isqrt_cov_triton(torch.randn(1, 16, 2, 2), iters=iters)
    with pytest.raises(ValueError, match="precision"):
        isqrt_cov_triton(torch.randn(1, 16, 2, 2), precision="fp16")


def test_retain_graph_and_saved_tensor_hooks(interpret):
    """The iterates are saved through autograd: a second backward with retain_graph=True gives the
    same gradient, a third without it is autograd's own error, and saved-tensor hooks (here
    copies) see every saved matrix."""
    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = isqrt_cov_triton(x, 3)
    w = torch.randn_like(out)
    (g1,) = torch.autograd.grad(out, x, w, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x, w, retain_graph=True)
    assert torch.equal(g1, g2)
    # x, C, A, the means, tr, sqrt(tr), (Y_k, Z_k) for k = 1, 2 stacked, T_k for k = 2, 3 stacked
    assert sorted(packed) == sorted([(2, 16, 3, 3), (2, 136), (2, 16, 16), (2, 16), (2,), (2,),
                                     (2, 2, 2, 16, 16), (2, 2, 16, 16)])
    torch.autograd.grad(out, x, w)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(out, x, w)


@pytest.mark.parametrize("iters", [1, 2, 5])
def test_backward_is_2n_minus_1_two_product_launches(interpret, monkeypatch, iters):
    """The backward differentiates the iteration forward: 2N - 1 product launches (each computes
    the tiles of a symmetric result on and above the diagonal only), each a sum of two products,
    dY_k and dZ_k paired in one launch for k = 2..N-1; the last, which writes dL/dA, also sums
    <dL/dA, A> (no launch of its own)."""
    import cvkit.kernels.isqrt_cov as impl
    calls, dots = [], []
    real = impl._products

    def spy(k, out, prods, **kw):
        calls.append((len(prods), any(isinstance(m, impl._Pair) for prod in prods for m in prod)))
        dots.append(kw.get("dot") is not None)
        return real(k, out, prods, **kw)

    monkeypatch.setattr(impl, "_products", spy)
    out = isqrt_cov_triton(torch.randn(2, 24, 4, 4, requires_grad=True), iters)
    calls.clear()
    dots.clear()
    out.sum().backward()
    assert len(calls) == 2 * iters - 1
    assert dots == [False] * (2 * iters - 2) + [True]
    assert all(nprod == 2 for nprod, _ in calls)
    assert sum(paired for _, paired in calls) == max(0, iters - 2)


def test_autotuned_launches_reuse_the_autotuners_choice(interpret, monkeypatch):
    """Triton's Autotuner.run rebuilds its key from every argument on each call (host time per
    launch), so cvkit remembers the config it chose per kernel and key and launches that config
    through the kernel's JIT function afterwards: each key goes through the autotuner once, the
    results are the same bits, and a new key (another d) is autotuned again."""
    import cvkit.kernels.isqrt_cov as impl
    from triton.runtime.autotuner import Autotuner

    monkeypatch.setattr(impl, "_CHOSEN", {})
    tuned = []
    real_run = Autotuner.run

    triton_keys = set()  # the autotuner's key, built as Autotuner.run does (dtypes aside)

    def spy(self, *args, **kwargs):
        tuned.append(self.base_fn.__name__)
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        triton_keys.add((self.base_fn.__name__, *(named[k] for k in self.keys)))
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Autotuner, "run", spy)
    x = torch.randn(2, 24, 4, 4, requires_grad=True)

    def step():
        out = isqrt_cov_triton(x, 3)
        return out, torch.autograd.grad(out.sum(), x)[0]

    out, grad = step()
    # N = 3: 8 product-launch keys (Y_1, T_k, the paired forward, the last forward; dY_1, dT_k,
    # the paired backward, the last backward), the covariance and the input gradient
    assert len(tuned) == len(impl._CHOSEN) == 10
    assert sorted(set(tuned)) == ["_covariance_kernel", "_grad_input_kernel", "_products_kernel"]
    assert {(key[0].base_fn.__name__, *key[1:]) for key in impl._CHOSEN} == triton_keys
    again, grad_again = step()
    assert len(tuned) == 10  # every launch of the second step bypassed the autotuner
    assert torch.equal(again, out) and torch.equal(grad_again, grad)
    isqrt_cov_triton(torch.randn(2, 40, 4, 4), 3)
    assert len(tuned) == 15  # d is part of the key: the forward's 4 product keys + covariance


def test_first_autotuned_launches_in_two_threads_keep_their_own_configs(monkeypatch):
    """Triton's Autotuner keeps its latest run's config on itself (``best_config``), shared by
    every thread. Two threads' first launches with different keys (nn.DataParallel replicas)
    must each remember the config their own launch ran with, not the other's: with the other's,
    a plan pairs the compiled kernel with a grid for another tile size (tiles left unwritten, or
    programs past the batch). A stand-in autotuner makes the interleaving certain: the first
    thread's run waits (up to 2 s) for the second thread's run to finish before returning."""
    import threading

    import cvkit.kernels.isqrt_cov as impl

    monkeypatch.setattr(impl, "_CHOSEN", {})
    first_running, second_done = threading.Event(), threading.Event()

    class Config:
        def __init__(self, block):
            self.block = block

        def all_kwargs(self):
            return {"BLOCK": self.block}

    class StandInAutotuner:  # the part of triton.runtime.autotuner.Autotuner cvkit relies on
        keys, arg_names, fn = ["d"], ["X", "d"], None

        def __getitem__(self, grid):
            def run(x, d, **meta):
                self.best_config = Config(16 * d)  # as Autotuner.run: the config this key ran
                if d == 1:
                    first_running.set()
                    second_done.wait(timeout=2)
                else:
                    second_done.set()
                return f"compiled with BLOCK={16 * d}"
            return run

    kernel = StandInAutotuner()
    threads = [threading.Thread(target=impl._launch_autotuned, args=(kernel, (1,), (None, d), {}))
               for d in (1, 2)]
    threads[0].start()
    assert first_running.wait(timeout=10)
    threads[1].start()
    for thread in threads:
        thread.join(timeout=10)
    assert impl._CHOSEN == {(kernel, 1): {"BLOCK": 16}, (kernel, 2): {"BLOCK": 32}}


@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
@pytest.mark.parametrize("nprod", [1, 2])
def test_paired_launch_computes_both_sums(interpret, precision, nprod):
    """A paired launch (e.g. Y_k = Y_{k-1} T_k and Z_k = Z_{k-1} T_k, or the backward's
    (dY_k, dZ_k)): two sums in one launch, the second reading its paired operands one matrix
    further on. Both outputs equal float64, at d = 40 (several tiles, masked edges), with the
    epilogue (c_prod, c_eye, E) applied to each."""
    import cvkit.kernels.isqrt_cov as impl

    k = impl._kernels()
    torch.manual_seed(0)
    batch, d = 2, 40
    m = torch.randn(batch, d, d, dtype=torch.float64)
    a = (m + m.transpose(1, 2)) / (8 * d) ** 0.5
    powers = [a]  # polynomials in one symmetric matrix: every sum below is symmetric
    for _ in range(6):
        powers.append(powers[-1] @ a)
    lefts = [torch.stack(powers[0:2]), torch.stack(powers[2:4])][:nprod]
    rights, e = [powers[4], powers[5]][:nprod], torch.stack(powers[5:7])
    out = torch.full((2, batch, d, d), float("nan"))
    impl._products(k, out, [(impl._pair(left.float()), right.float())
                            for left, right in zip(lefts, rights)],
                   c_prod=-0.5, c_eye=1.5, e=impl._pair(e.float()), c_e=0.25,
                   precision=precision)
    eye = torch.eye(d, dtype=torch.float64)
    for i in range(2):
        expected = (-0.5 * sum(left[i] @ right for left, right in zip(lefts, rights))
                    + 1.5 * eye + 0.25 * e[i])
        assert rel_err(out[i], expected) < 1e-6


@pytest.mark.parametrize("config", [None, {"BLOCK": 16, "BLOCK_K": 16, "num_warps": 2,
                                             "num_stages": 1}])
def test_dot_partial_sums_cover_every_slot(interpret, config):
    """The per-sample dots of the input gradient come as per-tile partial sums: from a product
    launch (<out, m>, off-diagonal tiles counted twice) and from the seed kernel (<G, C>, the
    stored triangle or a symmetric matrix). The kernels write every slot of the buffer, zeros
    where no tile of the chosen size lands (a buffer filled with NaN first sums exactly), whatever
    tile config runs (the interpreter's 32, or a forced 16: six tiles at d = 40)."""
    import cvkit.kernels.isqrt_cov as impl

    k = impl._kernels()
    torch.manual_seed(0)
    batch, d = 3, 40
    sym = torch.randn(4, batch, d, d, dtype=torch.float64)
    sym = (sym + sym.transpose(-1, -2)).div(8 * d ** 0.5)
    a, b, m = sym[0].float(), (sym[1] @ sym[1]).float(), sym[2].float()
    part = impl._dot_partials(k, batch, d, "cpu").fill_(float("nan"))
    out = impl._products(k, torch.empty_like(a), [(a, b), (b, a)], dot=(m, part),
                         precision="ieee", config=config)
    expected = (out.double() * m.double()).sum((1, 2))
    torch.testing.assert_close(part.double().sum(1), expected, rtol=1e-5, atol=1e-6)

    rows, cols = torch.triu_indices(d, d)
    sqrt_trace = torch.rand(batch) + 0.5
    for vector in (True, False):
        c = sym[3][:, rows, cols] if vector else sym[3]
        g = torch.randn_like(c)
        gc = impl._partials(batch, 4, "cpu").fill_(float("nan"))
        s = torch.empty(batch, d, d)
        k._grad_seed_kernel[(batch * 4,)](g.float(), c.float(), sqrt_trace, s, gc, d,
                                          VECTOR=vector, GC_SLOTS=gc.shape[1], BLOCK=32)
        torch.testing.assert_close(gc.double().sum(1), (g * c).sum(tuple(range(1, c.dim()))),
                                   rtol=1e-5, atol=1e-6)
        # the seed tangent S = -P/2 = -sqrt(tr Sigma) sym(dL/dC) / 2
        full = torch.zeros(batch, d, d, dtype=torch.float64)
        if vector:
            full[:, rows, cols] = g
            full = full + full.transpose(1, 2) - torch.diag_embed(full.diagonal(0, 1, 2))
            sym_g = torch.where(torch.eye(d, dtype=torch.bool), full, full / 2)
        else:
            sym_g = (g + g.transpose(1, 2)) / 2
        torch.testing.assert_close(s.double(), -0.5 * sqrt_trace.double()[:, None, None] * sym_g,
                                   rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="dot= needs a single unscaled"):
        impl._products(k, torch.empty_like(a), [(a, b)], dot=(m, part), triu=True)
    with pytest.raises(ValueError, match="BLOCK=16 gives more tiles at d=40 than the 4 slots"):
        impl._products(k, torch.empty_like(a), [(a, b)], dot=(m, part[:, :4]),
                       config={"BLOCK": 16, "BLOCK_K": 16, "num_warps": 2, "num_stages": 1})


def test_double_backward_is_a_clear_error(interpret):
    """Eager mode (the autograd.Function) and the custom operators (what torch.compile gets)
    both refuse a second derivative with a message naming the function, when it is taken (the
    first backward with create_graph=True works)."""
    import cvkit.kernels.isqrt_cov as impl

    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(isqrt_cov_triton(x, 3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="isqrt_cov_triton has no second derivative"):
        grad.sum().backward()
    out = impl._isqrt_cov_op(x, 3, True, "ieee")[0]
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="isqrt_cov_triton_backward.*no autograd formula"):
        grad.sum().backward()


def test_eager_mode_uses_the_function_and_torch_compile_the_operators(interpret, monkeypatch):
    """Eager calls go through ``_IsqrtCovFunction`` (no custom-operator dispatch: less host time
    per step), torch.compile through the custom operators (kept whole in its graph); the same
    numbers either way."""
    import cvkit.kernels.isqrt_cov as impl

    calls = []
    apply = impl._IsqrtCovFunction.apply
    monkeypatch.setattr(impl._IsqrtCovFunction, "apply",
                        lambda *args: calls.append(1) or apply(*args))
    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    eager = isqrt_cov_triton(x, 3)
    (grad_eager,) = torch.autograd.grad(eager.sum(), x)
    assert calls == [1]

    def refuse(*args):
        raise AssertionError("the autograd.Function under torch.compile")
    monkeypatch.setattr(impl._IsqrtCovFunction, "apply", refuse)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: isqrt_cov_triton(t, 3), fullgraph=True, backend="eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_eager, rtol=0, atol=0)


def test_operators_pass_torch_library_opcheck(interpret):
    """Forward and backward are torch.library custom operators: schema, fake (meta) shapes,
    autograd registration and AOT dispatch checked by PyTorch's own opcheck."""
    import cvkit.kernels.isqrt_cov as impl
    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    for precision in ("ieee", impl._FOLLOW_TORCH):
        torch.library.opcheck(impl._isqrt_cov_op, (x, 3, True, precision))
    for layout in (torch.contiguous_format, torch.channels_last):  # the gradient keeps it
        xl = x.detach().to(memory_format=layout)
        out = impl._isqrt_cov_op(xl, 3, False, "ieee")
        torch.library.opcheck(impl._isqrt_cov_backward_op,
                              (torch.randn_like(out[0]), xl, *(o.detach() for o in out), 3,
                               False, "ieee"))


def test_torch_compile_fullgraph_matches_eager(interpret):
    """torch.compile keeps the Triton head whole in its graph (fullgraph=True: no graph break)
    and gives the eager result and gradient."""
    torch.manual_seed(0)
    head = CovariancePooling(32, dim=16, backend="triton")
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    ref = head(x)
    (grad_ref,) = torch.autograd.grad(ref.pow(2).sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)
    # under bf16 autocast (AMP) the head stays an fp32 island in the compiled graph too; eager
    # and compiled differ only by the bf16 reduction conv (observed 1.7e-3 absolute)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
        ref = head(x)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-2


def test_interpreter_variable_set_before_import():
    """TRITON_INTERPRET=1 in the environment before anything is imported works the same."""
    code = ("import torch; from cvkit.kernels import isqrt_cov_triton; "
            "x = torch.randn(2, 16, 3, 3, requires_grad=True); "
            "isqrt_cov_triton(x, 2).sum().backward(); print(bool(torch.isfinite(x.grad).all()))")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_launches_are_guarded_by_the_tensor_device():
    """Triton launches on the current CUDA device: the operators make the input's device current
    (a tensor on cuda:1 while cuda:0 is current is then read from its own GPU; on two GPUs:
    ``test_cuda_second_device``); on the CPU there is nothing to guard."""
    import cvkit.kernels.isqrt_cov as impl

    guard = impl._device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(impl._device_guard(torch.device("cpu")), contextlib.nullcontext)


# ------------------------------------------------------------------------------------------------
# CUDA GPU, compiled kernels (need the hardware; CI has none)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_second_device_while_the_first_is_current(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(11)
    x = torch.randn(3, 64, 7, 7, device="cuda:1")
    with torch.cuda.device(0):
        check_against_reference(x, 5, True, tol=1e-4, precision="ieee")


@needs_cuda
@pytest.mark.parametrize("d, batch, iters", [(208, 5, 5), (256, 3, 1), (256, 2, 5), (512, 2, 5)])
def test_cuda_fp32_matches_float64(monkeypatch, d, batch, iters):
    """d = 208 is no power of two and leaves partial 64- and 128-wide tiles (masked edges)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(d + iters)
    x = torch.randn(batch, d, 14, 14, device="cuda")
    check_against_reference(x, iters, True, tol=1e-4, precision="ieee")
    check_against_reference(x.flatten(2).transpose(1, 2), iters, False, tol=1e-4,
                            precision="ieee")


@needs_cuda
@pytest.mark.parametrize("precision, tol", [("tf32x3", 1e-4), ("tf32", 1e-2)])
def test_cuda_tensor_core_precisions(monkeypatch, precision, tol):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(7)
    check_against_reference(torch.randn(4, 256, 14, 14, device="cuda"), 5, True, tol=tol,
                            precision=precision)


@needs_cuda
def test_cuda_auto_backend_uses_triton_and_matches_torch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(3)
    x = torch.randn(8, 128, 14, 14, device="cuda", requires_grad=True)
    out = isqrt_cov(x, 5, backend="auto")
    assert torch.equal(out, isqrt_cov_triton(x, 5))
    ref = isqrt_cov(x, 5, backend="torch")
    assert rel_err(out, ref) < 1e-4
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    assert rel_err(grad, grad_ref) < 1e-4


@needs_cuda
def test_cuda_graphs_through_torch_compile_reduce_overhead(monkeypatch):
    """mode="reduce-overhead" records the head's launches (forward and backward) into CUDA graphs
    and replays them: same output and gradient as eager over several steps."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(5)
    head = CovariancePooling(256, dim=128, backend="triton").cuda()
    compiled = torch.compile(head, mode="reduce-overhead", fullgraph=True)
    for step in range(4):  # the first calls warm up and record, the later ones replay
        x = torch.randn(8, 256, 14, 14, device="cuda", requires_grad=True)
        ref = head(x)
        (grad_ref,) = torch.autograd.grad(ref.pow(2).sum(), x)
        out = compiled(x)
        (grad,) = torch.autograd.grad(out.pow(2).sum(), x)
        # 1e-4, as against the PyTorch path: inductor's compiled 1x1 convolution and batch norm
        # around the kernels round differently from eager's (1.4e-5 seen on an H100)
        assert rel_err(out, ref) < 1e-4, step
        assert rel_err(grad, grad_ref) < 1e-4, step


def test_tile_benchmark_forces_each_config_and_checks_it(interpret):
    """``tools/benchmark.py covpool-tiles`` launches the product kernel with each given tile config
    instead of the autotuner's (the config reaches the kernel: tiles of 16 and 32 both agree with
    the autotuned launch), for the four launch kinds of a step, then the covariance and
    input-gradient kernels with theirs (a 3x3 map), after compiling the grids in worker processes
    (``--jobs``), models a step per product config and ends with the three chosen config lists."""
    import argparse

    from cvkit.benchmarks import covpool_tiles as bench
    from cvkit.kernels.tile_configs import ENV_VARS

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--batch", "1", "--dim", "40", "--precision",
                              "ieee", "--configs", "32,32,4,1", "16,16,4,1", "--jobs", "2",
                              "--size", "3", "--covariance-configs", "32,32,4,1", "16,16,4,1",
                              "--gradx-configs", "32,32,32,4,1", "16,16,16,4,1"])
    report = bench.run(args)
    assert "--configs 32,32,4,1 16,16,4,1" in report
    assert "--gradx-configs 32,32,32,4,1 16,16,16,4,1" in report
    # 2 configs x (4 product launch kinds + the covariance + the input gradient)
    assert "in 2 processes: 12 of 12 launches" in report
    product_rows = [line for line in report.splitlines() if line.startswith("| forward") or
                    line.startswith("| backward")]
    kernel_rows = [line for line in report.splitlines() if line.startswith("| covariance") or
                   line.startswith("| input gradient")]
    assert len(product_rows) == 4 * 3 and len(kernel_rows) == 2 * 3  # autotuned + 2 configs each
    assert "M = 9" in report
    for rows, small in ((product_rows, "| 16,16,4,1 |"), (kernel_rows[:3], "| 16,16,4,1 |"),
                        (kernel_rows[3:], "| 16,16,16,4,1 |")):
        diffs = {row: float(row.split("|")[-2].strip()) for row in rows}
        assert all(diff < 1e-6 for diff in diffs.values()), diffs  # rounding only; no "WRONG"
        # 16-wide tiles and k-steps sum in another order than the autotuned 32: the config
        # reached the kernel
        assert any(diff > 0 for row, diff in diffs.items() if small in row), diffs
    assert "| 16,16,4,1 |" in report.split("modelled product time")[1]
    chosen = report.splitlines()[-3:]
    assert [line.split("=")[0] for line in chosen] == list(ENV_VARS)
    assert set(chosen[0].split("=")[1].split(";")) <= {"32,32,4,1", "16,16,4,1"}
    # at most --max-configs (2) of each, here both: the faster first
    assert set(chosen[1].split("=")[1].split(";")) == {"32,32,4,1", "16,16,4,1"}
    assert set(chosen[2].split("=")[1].split(";")) == {"32,32,32,4,1", "16,16,16,4,1"}
    with pytest.raises(SystemExit, match="BLOCK,BLOCK_K,WARPS,STAGES"):
        bench.parse_config("64,32")
    with pytest.raises(SystemExit, match="covpool-tiles --gradx-configs: expected "
                                         "BLOCK_C,BLOCK_M,BLOCK_K,WARPS,STAGES"):
        bench.run(parser.parse_args(["--device", "cpu", "--gradx-configs", "64,32,4,3"]))


def test_tile_benchmark_survives_failed_worker_processes(interpret, monkeypatch):
    """Compiling ahead is a head start only: if the worker processes fail, the report says so and
    every config is still compiled and timed by the timing process."""
    import argparse

    from cvkit.benchmarks import covpool_tiles as bench

    class BrokenPool:
        def __init__(self, *args, **kwargs):
            raise OSError("cannot spawn")

    monkeypatch.setattr(bench, "ProcessPoolExecutor", BrokenPool)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    report = bench.run(parser.parse_args(["--device", "cpu", "--batch", "1", "--dim", "16",
                                          "--configs", "16,16,4,1", "--jobs", "2", "--size", "2",
                                          "--covariance-configs", "16,16,4,1",
                                          "--gradx-configs", "16,16,16,4,1"]))
    assert ("Compiling in 2 processes failed (OSError: cannot spawn); compiled while timing."
            in report)
    assert sum(line.startswith("| ") and "| 16,16,4,1 |" in line
               for line in report.split("modelled product time")[0].splitlines()) == 4
    assert report.splitlines()[-3:] == ["CVKIT_ISQRT_COV_PRODUCT_CONFIGS=16,16,4,1",
                                        "CVKIT_ISQRT_COV_COVARIANCE_CONFIGS=16,16,4,1",
                                        "CVKIT_ISQRT_COV_GRADX_CONFIGS=16,16,16,4,1"]


def _launch_record(launches, buffers):
    """(stand-in kernel, arguments) per launch, every device address (a tensor's, or an int a
    replay passes) as (buffer, byte offset) among ``buffers``, the tensors the calls handed to
    ``_replayed`` (matched through their storages), so that calls over different memory compare."""
    def where(ptr):
        for i, t in enumerate(buffers):
            if t is not None:
                first = t.untyped_storage().data_ptr()
                if first <= ptr < first + t.untyped_storage().nbytes():
                    return ("buffer", i, ptr - t.data_ptr())
        return None

    def normal(arg):
        if isinstance(arg, torch.Tensor):
            found = where(arg.data_ptr())
            assert found is not None, f"a tensor argument outside the call's buffers: {arg.shape}"
            return found
        if type(arg) is int:
            return where(arg) or arg
        return arg
    return [(kernel, tuple(normal(a) for a in args)) for kernel, args in launches]


def test_direct_launches_replay_the_kernels_triton_would_pick(monkeypatch):
    """With direct launches on (the default), the first forward+backward with a plan key goes
    through Triton's JIT functions and records each launch; later ones replay the recorded
    kernels over their own buffers, without cvkit's launch sequence. On the CPU every launch goes
    through Triton's real JIT path to a stand-in compiled kernel per Triton cache key
    (covpool-host's), so this checks that a replay launches exactly the kernels Triton's own
    specialisation would pick, with the same grid and argument list (every compile-time argument
    included, as JITFunction.run passes them; each pointer at the same place in the same buffer
    as the JIT path passes it), and that the plan key follows what Triton specialises on: the
    input's 16-byte alignment (a view one element in), its shape. The compiled call itself needs
    a GPU (a CUDA test)."""
    import cvkit.kernels.isqrt_cov as impl
    from cvkit.benchmarks.covpool_host import stand_in_launches

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(impl, "_CHOSEN", {})
    k = impl._kernels()
    launches, buffers, sequence_launches = [], [], []
    storage = torch.randn(2 * 24 * 4 * 4 + 1)
    real_replayed, real_launch = impl._replayed, impl._launch

    def watched_replayed(*call_buffers):
        buffers.extend(call_buffers)
        return real_replayed(*call_buffers)

    def counted_launch(*args):
        sequence_launches.append(args[0])
        return real_launch(*args)
    monkeypatch.setattr(impl, "_replayed", watched_replayed)
    monkeypatch.setattr(impl, "_launch", counted_launch)

    def step(x, direct):
        monkeypatch.setattr(impl, "_DIRECT", direct)
        launches.clear()
        buffers.clear()
        sequence_launches.clear()
        out = impl._isqrt_cov(x, 3, True, "tf32x3")
        out.backward(torch.ones_like(out))
        return _launch_record(launches, buffers)

    with stand_in_launches(k, launches):
        plans = impl._PLANS
        aligned = storage[:-1].view(2, 24, 4, 4).requires_grad_()
        via_jit = step(aligned, False)
        assert len(via_jit) == 14 and not plans  # N = 3: 14 launches; no plan without the flag
        assert sequence_launches  # (the autotuned kernels' first launches skip _launch)
        recording = step(aligned, True)
        assert len(plans) == 2  # the forward's and the backward's
        replayed = step(aligned, True)
        assert not sequence_launches  # the replay skipped cvkit's launch sequence
        assert via_jit == recording == replayed
        assert any(arg[0] == "buffer" for _, args in replayed for arg in args
                   if isinstance(arg, tuple))
        assert all(len(args) == len(kernel_args) for (_, args), (_, kernel_args)
                   in zip(replayed, via_jit))

        shifted = storage[1:].view(2, 24, 4, 4).requires_grad_()  # 4 bytes off 16-byte alignment
        assert shifted.data_ptr() % 16 != 0
        via_jit_shifted = step(shifted, False)
        assert step(shifted, True) == step(shifted, True) == via_jit_shifted
        assert len(plans) == 4
        # the kernels that read the input are specialised on its alignment, the others are not
        changed = {kernel.name for (kernel, _), (other, _) in zip(via_jit, via_jit_shifted)
                   if kernel is not other}
        assert changed == {"_channel_stats_kernel", "_covariance_kernel", "_grad_input_kernel"}

        for shape in [(3, 24, 4, 4), (2, 5, 24)]:  # another batch size; tokens
            x = torch.randn(shape, requires_grad=True)
            assert step(x, True) == step(x, True) == step(x, False)
        assert len(plans) == 8
        for iters in (1, 2):  # N = 1 and 2 use other buffers (and launch sequences)
            monkeypatch.setattr(impl, "_DIRECT", True)
            records = []
            for _ in range(2):
                launches.clear()
                buffers.clear()
                out = impl._isqrt_cov(aligned, iters, False, "tf32x3")
                out.backward(torch.ones_like(out))
                records.append(_launch_record(launches, buffers))
            assert records[0] == records[1] and len(records[0]) == 2 + 4 * iters
    assert impl._PLANS == {}  # the stand-in kernels' plans are gone


def test_a_failed_replay_falls_back_to_the_jit_functions(monkeypatch):
    """Were a recorded kernel's launch to raise (a Triton release whose launcher differs), the call
    goes through the JIT functions instead, with a warning naming the error and the variable, and
    direct launches stay off for the process."""
    import cvkit.kernels.isqrt_cov as impl
    from cvkit.benchmarks.covpool_host import stand_in_launches

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(impl, "_CHOSEN", {})
    monkeypatch.setattr(impl, "_DIRECT", True)
    k = impl._kernels()
    launches = []
    x = torch.randn(2, 24, 4, 4, requires_grad=True)

    class Refusing:
        function = packed_metadata = None

        def launch_metadata(self, *args):
            return None

        def run(self, *args):
            raise TypeError("an argument this launcher does not take")

    with stand_in_launches(k, launches):
        impl._isqrt_cov(x, 3, True, "tf32x3")  # records the forward's plan
        (key, plan), = impl._PLANS.items()
        impl._PLANS[key] = [plan[0], (Refusing(), *plan[1][1:]), *plan[2:]]
        launches.clear()
        with pytest.warns(RuntimeWarning, match="a direct launch failed .TypeError: an argument "
                          "this launcher does not take.*CVKIT_ISQRT_COV_DIRECT_LAUNCH=0"):
            impl._isqrt_cov(x, 3, True, "tf32x3")
        # the first recorded launch, then the whole forward through the JIT functions
        assert len(launches) == 1 + 7 and launches[0][0] is launches[1][0]
        assert impl._DIRECT is False and impl._PLANS == {}


def test_no_plan_when_a_launch_cannot_be_replayed(monkeypatch):
    """JITFunction.run returns None when a Triton hook takes a launch over, and a tensor argument
    outside the buffers the call named (or inside two of them) has no place in a template: such
    a call makes no plan (a later call with the key goes through the JIT functions again)."""
    import cvkit.kernels.isqrt_cov as impl

    monkeypatch.setattr(impl, "_PLANS", {})
    fn = impl._kernels()._grad_seed_kernel
    buf, other = torch.zeros(8), torch.zeros(8)
    args = (buf, buf[2:], buf, buf, buf, 4)
    meta = dict(VECTOR=True, GC_SLOTS=16, BLOCK=32)
    with impl._StepLaunches(("key",)) as step:
        assert not step.replayed((buf,))
        step.record(fn, None, (1,), args, meta)
    with impl._StepLaunches(("key",)) as step:
        step.replayed((buf,))
        step.record(fn, "compiled", (1,), (*args[:4], other, 4), meta)
    with impl._StepLaunches(("key",)) as step:
        step.replayed((buf, buf[1:]))  # overlapping buffers: buf[2:] is in both
        step.record(fn, "compiled", (1,), args, meta)
    assert impl._PLANS == {}
    with impl._StepLaunches(("key",)) as step:
        step.replayed((buf,))
        step.record(fn, "compiled", (1,), args, meta)
    (compiled, dims, template, slots), = impl._PLANS[("key",)]
    assert compiled == "compiled" and dims == (1, 1, 1)
    assert template == (None, None, None, None, None, 4, True, 16, 32)
    assert slots == ((0, 0, 0), (1, 0, 8), (2, 0, 0), (3, 0, 0), (4, 0, 0))


def test_direct_launches_are_the_default_and_the_variable_turns_them_off(monkeypatch):
    """CVKIT_ISQRT_COV_DIRECT_LAUNCH: unset or 1 launches directly (the default since run 9), 0
    through Triton's JIT functions; anything else is an error naming the variable and value."""
    import cvkit.kernels.isqrt_cov as impl

    monkeypatch.delenv(impl.DIRECT_LAUNCH_ENV, raising=False)
    assert impl._direct_launch_setting() is True
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(impl.DIRECT_LAUNCH_ENV, value)
        assert impl._direct_launch_setting() is expected
    monkeypatch.setenv(impl.DIRECT_LAUNCH_ENV, "yes")
    with pytest.raises(ValueError, match="CVKIT_ISQRT_COV_DIRECT_LAUNCH='yes': expected 1"):
        impl._direct_launch_setting()


def test_direct_launches_are_off_in_the_interpreter(interpret, monkeypatch):
    import cvkit.kernels.isqrt_cov as impl

    monkeypatch.setattr(impl, "_DIRECT", True)
    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    out = isqrt_cov_triton(x, 3)
    out.sum().backward()
    assert impl._PLANS == {}
    assert rel_err(out, reference(x.detach().double(), 3)) < 1e-5


def test_host_benchmark_counts_the_launches_and_puts_the_kernels_back(monkeypatch, capsys):
    """``tools/benchmark.py covpool-host`` times the compiled-mode launch path on the CPU: every
    launch goes through Triton's JIT launcher to a stand-in compiled kernel (no GPU, no
    compilation): 22 launches per forward+backward at N = 5, four candidates reported, each
    launch timed per kernel (18 products, one of each other kernel), a profile of the host side;
    the "Autotuner.run" candidate really sends every launch through the autotuner; afterwards
    Triton's driver, the JIT functions' caches, the autotuners' choices and cvkit's remembered
    ones are as they were."""
    import cvkit.kernels.isqrt_cov as impl
    from cvkit.benchmarks import covpool_host, main

    from triton.runtime import driver

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    chosen = {}
    monkeypatch.setattr(impl, "_CHOSEN", chosen)
    k = impl._kernels()
    tuners = (k._products_kernel, k._covariance_kernel, k._grad_input_kernel)
    caches = [dict(kernel.cache) for kernel in tuners]  # what earlier CUDA tests left, if any
    jit_functions = [t.fn for t in tuners] + [k._grad_seed_kernel, k._channel_stats_kernel]
    jit_caches = [fn.device_caches for fn in jit_functions]
    active_driver = driver._active
    through_autotuner = {True: 0, False: 0}  # autotuner launches in steps that remember / not
    original_run = type(k._products_kernel).run
    for kernel in tuners:  # as with TRITON_CACHE_AUTOTUNING=1: stand-in timings must not be saved
        monkeypatch.setattr(kernel, "cache_results", True)

    def counting_run(tuner, *args, **kwargs):
        assert tuner.cache_results is False
        through_autotuner[isinstance(impl._CHOSEN, covpool_host._Forgetful)] += 1
        return original_run(tuner, *args, **kwargs)
    monkeypatch.setattr(type(k._products_kernel), "run", counting_run)
    assert main(["covpool-host", "--batch", "1", "--dim", "40", "--size", "3", "--steps", "2",
                 "--repeats", "1"]) == 0
    report = capsys.readouterr().out
    assert ("22 launches per step, each through Triton's JIT launcher to a stand-in compiled "
            "kernel" in report)
    profile = report.split("Host-side profile of 5 steps")[1]
    assert "_IsqrtCovFunctionBackward" in profile and "# of Calls" in profile
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ")]
    assert [r[0] for r in rows if r[0][2] in "ce" or r[0].startswith("| the same")] == [
        "| candidate", "| cvkit (direct launches of the recorded kernels)",
        "| the same through Triton's JIT functions (CVKIT_ISQRT_COV_DIRECT_LAUNCH=0)",
        "| the same through the custom operators (torch.compile's path)",
        "| every launch through Triton's Autotuner.run"]
    launches = {r[0][2:]: r[1] for r in rows if r[0].startswith("| _")}
    assert launches == {"_channel_stats_kernel": "1", "_covariance_kernel": "1",
                        "_grad_input_kernel": "1", "_grad_seed_kernel": "1",
                        "_products_kernel": "18"}
    # forgetful steps (a warm-up and 2 timed): all 20 autotuned launches through the autotuner;
    # remembering ones (the other candidates): only the first launch per key (10 keys) in the
    # whole run
    assert through_autotuner == {True: 3 * 20, False: 10}
    for kernel, cache in zip(tuners, caches):
        assert "_bench" not in vars(kernel) and kernel.cache == cache
        assert kernel.cache_results is True
    for fn, jit_cache in zip(jit_functions, jit_caches):
        assert "run" not in vars(fn) and "_do_compile" not in vars(fn)
        assert fn.device_caches is jit_cache
        assert not any(isinstance(kernel, covpool_host._StandInKernel)
                       for entry in jit_cache.values() for kernel in entry[0].values())
    assert driver._active is active_driver
    assert impl._CHOSEN is chosen and chosen == {} and impl._PLANS == {}

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda: no CUDA device here"):
        main(["covpool-host", "--device", "cuda"])


def test_tile_choice_is_the_fastest_config_of_each_launch_kind():
    """The chosen list: each launch kind's fastest config (never the "autotuned" row), once,
    ordered by the modelled step time (launch counts per kind: 6, 3, 6, 3); with more winners than
    ``max_configs``, the set of that size whose per-kind best gives the least modelled time."""
    from cvkit.benchmarks.covpool_tiles import KINDS, choose, modelled_list

    t_kind, pair_kind, dt_kind, dpair_kind = KINDS
    times = {t_kind: {"autotuned": 1.0, "a": 3.0, "b": 2.0},
             pair_kind: {"autotuned": 1.0, "a": 2.0, "b": 4.0},
             dt_kind: {"a": 5.0, "b": 4.0, "c": 4.5},
             dpair_kind: {"a": 6.0, "c": 5.0}}  # "b" wrong or not compiled for this kind
    # a: 6*3 + 3*2 + 6*5 + 3*6 = 72; b: inf (missing a kind); c: inf
    assert choose(times, max_configs=3) == ["a", "b", "c"]
    # pairs: (a, b) 6*2 + 3*2 + 6*4 + 3*6 = 60, (a, c) 66, (b, c) 63
    assert modelled_list(times, ["a", "b"]) == 60.0
    assert modelled_list(times, ["b", "c"]) == 63.0
    assert choose(times) == ["a", "b"]  # at most 2 by default
    assert choose({t_kind: {"autotuned": 1.0, "x": 2.0}, pair_kind: {"x": 1.0}}) == ["x"]
    assert choose({t_kind: {}}) == []
    # the covariance's and input gradient's lists: the fastest configs of their one launch kind
    from cvkit.benchmarks.covpool_tiles import fastest

    assert fastest({"autotuned": 0.5, "a": 3.0, "b": 1.0, "c": 2.0}) == ["b", "c"]
    assert fastest({"a": 3.0, "b": 1.0, "c": 2.0}, max_configs=1) == ["b"]
    assert fastest({"autotuned": 1.0}) == []


@pytest.mark.parametrize("text, message", [
    ("64,32,4", "four integers"), ("64,32,4,x", "four integers"),
    ("48,32,4,3", "BLOCK must be a power of two >= 16, got 48"),
    ("64,8,4,3", "BLOCK_K must be a power of two >= 16, got 8"),
    ("64,32,3,3", "WARPS must be a power of two, got 3"), ("64,32,4,0", "STAGES must be >= 1"),
    (" ; ", "no tile config given")])
def test_tile_config_text_is_validated(text, message):
    """A bad ``CVKIT_ISQRT_COV_PRODUCT_CONFIGS`` names the variable, the entry and the rule."""
    from cvkit.kernels.tile_configs import (format_tile_config, parse_tile_config,
                                            parse_tile_configs)

    with pytest.raises(ValueError, match="CVKIT_ISQRT_COV_PRODUCT_CONFIGS") as info:
        parse_tile_configs(text)
    assert message in str(info.value)
    configs = parse_tile_configs("64,32,4,3; 128,32,8,2  16,16,1,1")
    assert [format_tile_config(c) for c in configs] == ["64,32,4,3", "128,32,8,2", "16,16,1,1"]
    configs = parse_tile_configs("64, 32, 4, 3; 128 ,32,8, 2")  # spaces after commas, as typed
    assert [format_tile_config(c) for c in configs] == ["64,32,4,3", "128,32,8,2"]
    assert parse_tile_config("64,32,4,3") == {"BLOCK": 64, "BLOCK_K": 32, "num_warps": 4,
                                              "num_stages": 3}


@pytest.mark.parametrize("text, message", [
    ("128,32,32,4", "five integers"), ("128,32,32,4,3,1", "five integers"),
    ("128,24,32,4,3", "BLOCK_M must be a power of two >= 16, got 24"),
    ("8,32,32,4,3", "BLOCK_C must be a power of two >= 16, got 8"),
    ("128,32,32,6,3", "WARPS must be a power of two, got 6"),
    ("128,32,32,4,0", "STAGES must be >= 1"),
    (" ; ", "no tile config given (expected BLOCK_C,BLOCK_M,BLOCK_K,WARPS,STAGES[;...])")])
def test_input_gradient_tile_config_text_is_validated(text, message, monkeypatch):
    """``CVKIT_ISQRT_COV_GRADX_CONFIGS`` takes five integers per entry (BLOCK_C, BLOCK_M, BLOCK_K,
    WARPS, STAGES); a bad one names the variable, the entry and the rule.
    ``CVKIT_ISQRT_COV_COVARIANCE_CONFIGS`` takes the products' four."""
    from cvkit.kernels.tile_configs import (COVARIANCE_ENV_VAR, GRADX_BLOCKS, GRADX_ENV_VAR,
                                            configs_from_env, format_tile_config,
                                            parse_tile_configs)

    monkeypatch.setenv(GRADX_ENV_VAR, text)
    with pytest.raises(ValueError, match=GRADX_ENV_VAR) as info:
        configs_from_env(GRADX_ENV_VAR)
    assert message in str(info.value)
    monkeypatch.setenv(GRADX_ENV_VAR, "128,32,32,4,3; 64, 64 ,32,8,2")
    configs = configs_from_env(GRADX_ENV_VAR)
    assert configs[0] == {"BLOCK_C": 128, "BLOCK_M": 32, "BLOCK_K": 32, "num_warps": 4,
                          "num_stages": 3}
    assert [format_tile_config(c, GRADX_BLOCKS) for c in configs] == ["128,32,32,4,3",
                                                                      "64,64,32,8,2"]
    assert parse_tile_configs("16,16,16,1,1", GRADX_ENV_VAR)[0]["BLOCK_M"] == 16
    monkeypatch.setenv(COVARIANCE_ENV_VAR, "64,16,4,4")
    assert configs_from_env(COVARIANCE_ENV_VAR) == [{"BLOCK": 64, "BLOCK_K": 16, "num_warps": 4,
                                                     "num_stages": 4}]
    monkeypatch.setenv(COVARIANCE_ENV_VAR, "64,32,32,4,3")
    with pytest.raises(ValueError, match=f"{COVARIANCE_ENV_VAR}: expected BLOCK,BLOCK_K,WARPS,"
                                         "STAGES \\(four integers\\), got '64,32,32,4,3'"):
        configs_from_env(COVARIANCE_ENV_VAR)
    monkeypatch.setenv(COVARIANCE_ENV_VAR, "  ")
    assert configs_from_env(COVARIANCE_ENV_VAR) is None  # blank: as unset


def _kernel_file(monkeypatch, interpret=False, **variables):
    """The kernel file executed afresh (not cached, not registered) with only the given tile-config
    variables set, compiled mode unless ``interpret``: its autotune lists as each kernel holds
    them, (tile sizes..., warps, stages) per config."""
    import importlib.util

    import cvkit.kernels.isqrt_cov as impl
    from cvkit.kernels.tile_configs import ENV_VARS

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    if interpret:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = importlib.util.spec_from_file_location("cvkit.kernels._isqrt_cov_kernels_configs_test",
                                                  impl._KERNEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.INTERPRET == interpret
    return {name: [(*c.kwargs.values(), c.num_warps, c.num_stages)
                   for c in getattr(module, f"_{name}_kernel").configs]
            for name in ("products", "covariance", "grad_input")}


def test_each_tile_config_variable_replaces_its_kernels_list(monkeypatch):
    """Unset, the kernel file's lists (pinned here: the covariance kernel shares the products');
    CVKIT_ISQRT_COV_PRODUCT_CONFIGS replaces the product list and, while
    CVKIT_ISQRT_COV_COVARIANCE_CONFIGS is unset, the covariance's; each of the other two replaces
    its own kernel's list only, compiled or interpreted; a bad entry stops the load, naming the
    variable."""
    product = [(64, 32, 4, 4), (64, 64, 4, 2)]
    gradx = [(64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (128, 32, 32, 4, 3)]
    assert _kernel_file(monkeypatch) == {"products": product, "covariance": product,
                                         "grad_input": gradx}
    assert _kernel_file(monkeypatch, CVKIT_ISQRT_COV_PRODUCT_CONFIGS="32,32,4,3") == {
        "products": [(32, 32, 4, 3)], "covariance": [(32, 32, 4, 3)], "grad_input": gradx}
    assert _kernel_file(monkeypatch, CVKIT_ISQRT_COV_PRODUCT_CONFIGS="32,32,4,3",
                        CVKIT_ISQRT_COV_COVARIANCE_CONFIGS="64,16,4,4;128,32,8,3") == {
        "products": [(32, 32, 4, 3)], "covariance": [(64, 16, 4, 4), (128, 32, 8, 3)],
        "grad_input": gradx}
    assert _kernel_file(monkeypatch, CVKIT_ISQRT_COV_GRADX_CONFIGS="256,32,32,8,3") == {
        "products": product, "covariance": product, "grad_input": [(256, 32, 32, 8, 3)]}
    assert _kernel_file(monkeypatch, interpret=True) == {
        "products": [(32, 32, 4, 1)], "covariance": [(32, 32, 4, 1)],
        "grad_input": [(32, 32, 32, 4, 1)]}
    assert _kernel_file(monkeypatch, interpret=True, CVKIT_ISQRT_COV_GRADX_CONFIGS="16,16,16,2,1",
                        CVKIT_ISQRT_COV_COVARIANCE_CONFIGS="16,16,2,1") == {
        "products": [(32, 32, 4, 1)], "covariance": [(16, 16, 2, 1)],
        "grad_input": [(16, 16, 16, 2, 1)]}
    with pytest.raises(ValueError, match="CVKIT_ISQRT_COV_GRADX_CONFIGS: bad tile config "
                                         "'128,32,48,4,3': BLOCK_K must be a power of two"):
        _kernel_file(monkeypatch, CVKIT_ISQRT_COV_GRADX_CONFIGS="128,32,48,4,3")
    with pytest.raises(ValueError, match="CVKIT_ISQRT_COV_COVARIANCE_CONFIGS: expected "
                                         "BLOCK,BLOCK_K,WARPS,STAGES"):
        _kernel_file(monkeypatch, CVKIT_ISQRT_COV_COVARIANCE_CONFIGS="64,32")


def test_product_configs_from_the_environment_reach_the_kernels():
    """The three tile-config variables replace the matrix kernels' autotune lists (read when the
    kernel file loads, so in a fresh process), and the result stays right: 16x16 product tiles
    with 16-wide k-steps, 32x32 covariance tiles with 16-wide steps along the positions, 16x32
    input-gradient tiles with 16-wide k-steps, at d = 40 (partial tiles) against the float64
    reference."""
    script = """
import torch
from cvkit.kernels.isqrt_cov import _kernels
from cvkit.kernels import isqrt_cov_triton
from test_kernels_isqrt_cov import reference, rel_err
k = _kernels()
for kernel, expected in ((k._products_kernel, [(16, 16, 2, 1)]),
                         (k._covariance_kernel, [(32, 16, 2, 1)]),
                         (k._grad_input_kernel, [(16, 32, 16, 2, 1)])):
    cfgs = [(*c.kwargs.values(), c.num_warps, c.num_stages) for c in kernel.configs]
    assert cfgs == expected, cfgs
torch.manual_seed(0)
x = torch.randn(2, 40, 5, 5, dtype=torch.float64).float().requires_grad_()
out = isqrt_cov_triton(x, 3, precision="ieee")
x64 = x.detach().double().requires_grad_()
ref = reference(x64, 3)
g = torch.randn_like(ref)
(gx,) = torch.autograd.grad(out, x, g.float())
(gr,) = torch.autograd.grad(ref, x64, g)
print(rel_err(out, ref), rel_err(gx, gr))
assert rel_err(out, ref) < 1e-5 and rel_err(gx, gr) < 1e-5
"""
    env = dict(os.environ, TRITON_INTERPRET="1", CVKIT_ISQRT_COV_PRODUCT_CONFIGS="16,16,2,1",
               CVKIT_ISQRT_COV_COVARIANCE_CONFIGS="32,16,2,1",
               CVKIT_ISQRT_COV_GRADX_CONFIGS="16,32,16,2,1",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(env, CVKIT_ISQRT_COV_PRODUCT_CONFIGS="64,32"), timeout=300)
    assert bad.returncode != 0
    assert "CVKIT_ISQRT_COV_PRODUCT_CONFIGS: expected BLOCK,BLOCK_K,WARPS,STAGES" in bad.stderr


@needs_cuda
def test_cuda_direct_launches_give_the_same_bits(monkeypatch):
    """Direct launches (the default) run the compiled kernels the JIT
    functions returned: the same output and gradient bits as JIT launches, over repeated steps (the
    plan's replays), for an aligned input, one 4 bytes off 16-byte alignment and tokens. Last in
    the file: were a direct launch to fault, the CUDA context would be lost for every test after
    it."""
    import cvkit.kernels.isqrt_cov as impl

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(5)
    storage = torch.randn(3 * 208 * 7 * 7 + 1, device="cuda")
    inputs = [storage[:-1].view(3, 208, 7, 7), storage[1:].view(3, 208, 7, 7),
              torch.randn(2, 50, 96, device="cuda")]
    for x in inputs:
        x = x.detach().requires_grad_()
        results = []
        for direct in (False, True, True, True):
            monkeypatch.setattr(impl, "_DIRECT", direct)
            out = isqrt_cov_triton(x, 5, precision="tf32x3")
            (grad,) = torch.autograd.grad((out * out).sum(), x)
            results.append((out, grad))
        for out, grad in results[1:]:
            assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
    assert len(impl._PLANS) >= 6
