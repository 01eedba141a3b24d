"""iSQRT-COV on Triton: ``isqrt_cov_triton(x, iters=5, vectorize=True, precision=None)``.

Same function as ``cvkit.layers.covpool.isqrt_cov`` (Li et al., "Towards Faster Training of Global
Covariance Pooling Networks by Iterative Matrix Square Root Normalization", CVPR 2018):
Sigma = Xc Xc^T / M, A = Sigma / tr(Sigma), N coupled Newton–Schulz steps (Y_0 = A, Z_0 = I,
T_k = (3I - Z_{k-1} Y_{k-1}) / 2, Y_k = Y_{k-1} T_k, Z_k = T_k Z_{k-1}), C = sqrt(tr Sigma) Y_N,
then the row-major upper triangle of C including the diagonal. The backward differentiates the
iterations forward, along the output gradient, over iterates stored by the forward (a polynomial's
derivative at a symmetric matrix is self-adjoint). Design and tolerances: docs/kernels.md.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

_KERNEL_FILE = Path(__file__).with_name("isqrt_cov_kernels.py")
_LOADED: dict[bool, object] = {}
PRECISIONS = ("ieee", "tf32x3", "tf32")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels():
    """The kernel module for the current Triton mode. ``@triton.jit`` decides compiled versus
    interpreted when it decorates (it reads TRITON_INTERPRET then, in Triton 3.6 and 3.8 alike), so
    the kernel file is loaded once per mode, whenever the variable was set."""
    interpret = _interpreting()
    if interpret not in _LOADED:
        name = f"cvkit.kernels._isqrt_cov_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, _KERNEL_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton resolves a kernel's globals through its module
        spec.loader.exec_module(module)
        _LOADED[interpret] = module
    return _LOADED[interpret]


def _resolve_precision(precision: str | None) -> str:
    """``None`` follows ``torch.get_float32_matmul_precision()``: "highest" (PyTorch's default)
    -> "tf32x3", whose error against float64 matched plain fp32 on an H100 (4.6e-7 vs 6.6e-7
    relative, B=128, d=256) at 1.3x its speed; "high" or "medium" -> "tf32", as cuBLAS then uses
    TF32 in the PyTorch path. "ieee" (fp32 FMA products) is chosen explicitly."""
    if precision is None:
        return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    return precision


def _as_channel_matrix(x: torch.Tensor) -> tuple[torch.Tensor, int, int, tuple[int, int, int]]:
    """(B,C,H,W) maps or (B,N,C) tokens -> the tensor, d, M and the (batch, channel, position)
    strides that read it as X[b, c, m] without a copy."""
    if x.dim() == 4:
        x = x.contiguous()
        b, c, h, w = x.shape
        return x, c, h * w, (x.stride(0), h * w, 1)
    if x.dim() == 3:
        x = x.contiguous()
        b, n, c = x.shape
        return x, c, n, (x.stride(0), 1, c)
    raise ValueError(f"isqrt_cov_triton expects (B,C,H,W) maps or (B,N,C) tokens, got shape "
                     f"{tuple(x.shape)}")


class _Pair(NamedTuple):
    """An operand of a two-sum launch: ``first`` for the first sum, the matrix ``offset``
    elements on (negative: before) for the second."""
    first: torch.Tensor
    offset: int


def _pair(buf: torch.Tensor, swapped: bool = False) -> _Pair:
    """(2, B, d, d) buffer as a paired operand, in order or swapped."""
    n = buf[0].numel()
    return _Pair(buf[1], -n) if swapped else _Pair(buf[0], n)


def _products(k, out, prods, *, symmetric=True, c_prod=1.0, c_eye=0.0, e=None, c_e=0.0,
              f=None, c_f=0.0, scale=None, triu=False, precision="ieee"):
    """out = scale * (c_prod * sum(a @ b for a, b in prods) + c_eye I + c_e e + c_f f); with
    paired operands (``_Pair``), two such sums in one launch, written to out[0] and out[1].
    Right factors must be symmetric."""
    ops = [m for prod in prods for m in prod]
    ops += [ops[0], ops[1]] * ((6 - len(ops)) // 2)
    ops += [e if e is not None else ops[0]]
    npair = 2 if any(isinstance(m, _Pair) for m in ops) else 1
    target = _pair(out) if npair == 2 else out  # a (2, B, d, d) buffer then
    ptrs = [m.first if isinstance(m, _Pair) else m for m in ops + [target]]
    offsets = [m.offset if isinstance(m, _Pair) else 0 for m in ops + [target]]
    batch, d = ptrs[0].shape[0], ptrs[0].shape[-1]

    def grid(meta):
        nt = triton_cdiv(d, meta["BLOCK"])
        return (npair * batch * (nt * (nt + 1) // 2 if symmetric else nt * nt),)

    k._products_kernel[grid](
        *ptrs[:7], f if f is not None else ptrs[0], scale if scale is not None else ptrs[0],
        ptrs[7], *offsets, c_prod, c_eye, c_e, c_f, d, batch, _batch_class(batch),
        NPAIR=npair, NPROD=len(prods), SYMMETRIC=symmetric, HAS_E=e is not None,
        HAS_F=f is not None, HAS_SCALE=scale is not None, OUT_TRIU=triu, PRECISION=precision)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _batch_class(batch: int) -> int:
    """Autotuning key: small batches want small tiles (more programs), large ones large tiles."""
    return int(batch >= 64)


def _forward(x, iters, vectorize, precision):
    """Runs the forward kernels; returns the output and what the backward needs: A, the channel
    means, tr Sigma, its square root, the pairs (Y_k, Z_k) for k = 1..N-1 as (2, B, d, d) buffers,
    and T_k for k = 2..N."""
    k = _kernels()
    xm, d, m, (sb, sc, sm) = _as_channel_matrix(x)
    batch = xm.shape[0]
    dev = xm.device
    mean = torch.empty(batch, d, device=dev, dtype=torch.float32)
    var = torch.empty_like(mean)
    k._channel_stats_kernel[(batch * triton_cdiv(d, 32),)](
        xm, mean, var, d, m, sb, sc, sm, BLOCK_C=32, BLOCK_M=64)

    def mat(*lead):
        return torch.empty(*lead, batch, d, d, device=dev, dtype=torch.float32)

    a, yz = mat(), mat(2)
    trace = torch.empty(batch, device=dev, dtype=torch.float32)
    sqrt_trace = torch.empty_like(trace)
    k._covariance_kernel[lambda meta: (batch * (triton_cdiv(d, meta["BLOCK"]) *
                                                (triton_cdiv(d, meta["BLOCK"]) + 1) // 2),)](
        xm, mean, var, a, yz[1], trace, sqrt_trace, d, m, _batch_class(batch), sb, sc, sm,
        PRECISION=precision, BLOCK_D=max(16, 1 << (d - 1).bit_length()))  # yz[1] = Z_1 = T_1

    out = (torch.empty(batch, d * (d + 1) // 2, device=dev, dtype=torch.float32) if vectorize
           else mat())
    final = dict(scale=sqrt_trace, triu=vectorize, precision=precision)
    yzs, ts = [], []
    saved = (a, mean, trace, sqrt_trace, yzs, ts)
    if iters == 1:  # Y_1 = A T_1 = 1.5 A - 0.5 A A, times sqrt(tr Sigma)
        _products(k, out, [(a, a)], c_prod=-0.5, e=a, c_e=1.5, **final)
        return out, saved
    _products(k, yz[0], [(a, a)], c_prod=-0.5, e=a, c_e=1.5, precision=precision)
    yzs.append(yz)
    for step in range(2, iters + 1):
        prev = yzs[-1]
        t = _products(k, mat(), [(prev[1], prev[0])], c_prod=-0.5, c_eye=1.5,
                      precision=precision)
        ts.append(t)
        if step == iters:
            _products(k, out, [(prev[0], t)], **final)
        else:  # Y_k = Y_{k-1} T_k and Z_k = T_k Z_{k-1} = Z_{k-1} T_k in one launch
            yzs.append(_products(k, mat(2), [(_pair(prev), t)], precision=precision))
    return out, saved


def _backward(grad_out, x, out, saved, iters, vectorize, precision):
    """dL/dA by forward-mode differentiation. Y_N = g(A) for a real polynomial g (every iterate is
    a polynomial in A), and at a symmetric A the Fréchet derivative L_g(A) of a polynomial is
    self-adjoint, so dL/dA = L_g(A)[P] with the seed P = dL/dY_N: the derivative of the iteration
    along P, carried forward over the stored iterates with the tangents
        dT_k = -0.5 (dZ_{k-1} Y_{k-1} + Z_{k-1} dY_{k-1}),
        dY_k = dY_{k-1} T_k + Y_{k-1} dT_k,     dZ_k = dZ_{k-1} T_k + Z_{k-1} dT_k
    from dY_0 = P, dZ_0 = 0 (so dZ_1 = dT_1 = -P/2 and dY_1 = 1.5 P - 0.5 (P A + A P)).
    Every tangent is symmetric (the derivative of a polynomial in A along a symmetric direction),
    so each is a symmetric two-product launch, dY_k and dZ_k in one: 3 d³-products per step with
    half the tiles computed, against 5 for the reverse recursion with its non-symmetric Y P."""
    k = _kernels()
    xm, d, m, (sb, sc, sm) = _as_channel_matrix(x)
    batch = xm.shape[0]
    dev = xm.device
    grad_out = grad_out.contiguous().float()
    a, mean, trace, sqrt_trace, yzs, ts = saved

    def mat(*lead):
        return torch.empty(*lead, batch, d, d, device=dev, dtype=torch.float32)

    def vec():
        return torch.empty(batch, device=dev, dtype=torch.float32)

    gc = vec()
    k._batched_dot_kernel[(batch,)](grad_out, out, gc, out.numel() // batch, BLOCK=1024)
    p = mat()  # dL/dY_N = sqrt(tr Sigma) sym(dL/dC); its tangent dZ_1 = -P/2 into dyz[1]
    dyz, spare = (mat(2), mat(2)) if iters >= 3 else (mat(2), None) if iters == 2 else (None, None)
    k._grad_seed_kernel[(batch * triton_cdiv(d, 32) ** 2,)](
        grad_out, sqrt_trace, p, p if dyz is None else dyz[1], d, VECTOR=vectorize,
        HAS_DZ=dyz is not None, BLOCK=32)
    h = _products(k, mat() if dyz is None else dyz[0], [(p, a), (a, p)], c_prod=-0.5, e=p,
                  c_e=1.5, precision=precision)  # dY_1
    dt = mat() if iters >= 2 else None
    for step in range(2, iters + 1):
        yz, t = yzs[step - 2], ts[step - 2]  # Y_{k-1}, Z_{k-1} and T_k for k = step
        _products(k, dt, [(dyz[1], yz[0]), (yz[1], dyz[0])], c_prod=-0.5, precision=precision)
        if step == iters:  # dL/dA = dY_N, into P's buffer (P is not needed after step 1)
            h = _products(k, p, [(dyz[0], t), (yz[0], dt)], precision=precision)
        else:
            dyz, spare = _products(k, spare, [(_pair(dyz), t), (_pair(yz), dt)],
                                   precision=precision), dyz
    ha = vec()
    k._batched_dot_kernel[(batch,)](h, a, ha, d * d, BLOCK=1024)  # <dL/dA, A>
    grad_x = torch.empty_like(xm)
    k._grad_input_kernel[lambda meta: (batch * triton_cdiv(d, meta["BLOCK_C"]) *
                                       triton_cdiv(m, meta["BLOCK_M"]),)](
        h, xm, mean, trace, gc, ha, grad_x, d, m, _batch_class(batch), sb, sc, sm,
        PRECISION=precision)
    return grad_x


class _ISqrtCovFunction(torch.autograd.Function):
    """Forward and backward kernels as one autograd node. The forward keeps A, Y_1..Y_{N-1},
    Z_1..Z_{N-1} and T_2..T_N (3N-2 d×d matrices per sample) for the backward instead of
    recomputing them: GPU memory is cheaper than the extra products. All are saved through
    ``save_for_backward``, so autograd frees them after the backward, keeps them for
    ``retain_graph=True``, and saved-tensor hooks (e.g. offloading to the CPU) apply."""

    @staticmethod
    def forward(ctx, x, iters, vectorize, precision):
        out, (a, mean, trace, sqrt_trace, yzs, ts) = _forward(x, iters, vectorize, precision)
        ctx.iters, ctx.vectorize, ctx.precision = iters, vectorize, precision
        ctx.n_yz = len(yzs)
        ctx.save_for_backward(x, out, a, mean, trace, sqrt_trace, *yzs, *ts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, out, a, mean, trace, sqrt_trace, *rest = ctx.saved_tensors
        saved = (a, mean, trace, sqrt_trace, rest[:ctx.n_yz], rest[ctx.n_yz:])
        grad_x = _backward(grad_out, x, out, saved, ctx.iters, ctx.vectorize, ctx.precision)
        return grad_x.view_as(x), None, None, None


def isqrt_cov_triton(x: torch.Tensor, iters: int = 5, vectorize: bool = True,
                     precision: str | None = None) -> torch.Tensor:
    """iSQRT-COV of (B,C,H,W) maps or (B,N,C) tokens with Triton kernels (forward and backward).

    Returns (B, C(C+1)/2), the row-major upper triangle of sqrt(tr Sigma) * Y_N incl. the diagonal,
    or (B, C, C) when ``vectorize=False``; float32 whatever the input dtype (an fp32 island under
    autocast). ``precision``: "tf32x3" (each fp32 operand split into two TF32 numbers, three
    tensor-core products, fp32 accumulation: fp32-level error), "ieee" (fp32 FMA products),
    "tf32" (one TF32 product, ~3e-3 relative error), or None to follow
    ``torch.get_float32_matmul_precision()`` ("highest" -> tf32x3, otherwise tf32). Needs a CUDA
    tensor, or TRITON_INTERPRET=1 for the Triton interpreter on the CPU (slow: meant for tests).
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(
            f"isqrt_cov_triton needs a CUDA tensor (got one on {x.device}); to run the Triton "
            "kernels on the CPU set TRITON_INTERPRET=1, or use isqrt_cov(..., backend='torch')")
    if x.dim() not in (3, 4) or x.shape[1:].numel() == 0:
        raise ValueError(f"isqrt_cov_triton expects (B,C,H,W) maps or (B,N,C) tokens with "
                         f"channels and positions, got shape {tuple(x.shape)}")
    precision = _resolve_precision(precision)
    if x.shape[0] == 0:  # an empty batch gives an empty result (and a zero gradient)
        d = x.shape[1] if x.dim() == 4 else x.shape[2]
        shape = (0, d * (d + 1) // 2) if vectorize else (0, d, d)
        return x.float().sum() * 0 + torch.zeros(shape, device=x.device)
    return _ISqrtCovFunction.apply(x.float(), iters, vectorize, precision)
