"""iSQRT-COV global covariance pooling (Li et al., "Towards Faster Training of Global Covariance
Pooling Networks by Iterative Matrix Square Root Normalization", CVPR 2018).

Per sample, with features X in R^{C x M} (M = H*W positions or N tokens):

* centred covariance  Sigma = X Ibar X^T,  Ibar = (1/M)(I - (1/M) 1 1^T)   (paper Eq. 1; computed as
  the covariance of mean-centred features, the M x M matrix Ibar is never built);
* pre-normalisation   A = Sigma / tr(Sigma)                                    (Eq. 4);
* coupled Newton-Schulz, Y_0 = A, Z_0 = I, for k = 1..N:
  T_k = (3I - Z_{k-1} Y_{k-1}) / 2,  Y_k = Y_{k-1} T_k,  Z_k = T_k Z_{k-1}        (Eq. 2);
* post-compensation   C = sqrt(tr(Sigma)) Y_N                                  (Eq. 5);
* output: the upper triangle of C including the diagonal, row by row (the order the official fc
  weights were trained with), C(C+1)/2 values.

Every iterate is a polynomial in A, so Y_N = p_N(A) for a fixed scalar polynomial p_N. The CPU path
evaluates exactly that function as V diag(p_N(lambda)) V^T from one symmetric eigendecomposition, and
its custom backward uses the Daleckii-Krein formula with divided differences of p_N (no iterate is
stored, no Python loop over the batch). The CUDA path runs the Newton-Schulz matrix iteration and a
hand-written adjoint of it that recomputes the iterates in the backward (batched eigh is slow on
GPUs). See docs/covpool.md for the algebra and the precision choices.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from cvkit.layers.autocast import autocast_off
from cvkit.layers.deployment import capturing_graph
from cvkit.layers.first_derivative import first_derivative_only

__all__ = ["isqrt_cov", "triu_vectorize", "CovariancePooling", "centred_covariance",
           "newton_schulz_polynomial"]

_BACKENDS = ("auto", "torch", "triton")
_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}  # of the reduction block
# A trace at or below this counts as an all-constant (e.g. all-zero) sample: its result is defined
# as zero (the limit of sqrt(tr) * p_N(Sigma / tr) as Sigma -> 0), its gradient as zero.
_TINY_TRACE = {torch.float32: 1e-30, torch.float64: 1e-300}


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _shape_str(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def _check_input(x, iters) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"isqrt_cov: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"isqrt_cov: x must be (B, C, H, W) feature maps or (B, N, C) tokens, "
                         f"got a rank-{x.dim()} tensor of shape {_shape_str(x)}")
    if not x.is_floating_point():
        raise ValueError(f"isqrt_cov: x must have a floating dtype, got {x.dtype} "
                         f"with shape {_shape_str(x)}")
    channels = x.shape[1] if x.dim() == 4 else x.shape[2]
    positions = x.shape[2] * x.shape[3] if x.dim() == 4 else x.shape[1]
    if channels == 0:
        raise ValueError(f"isqrt_cov: x has a channel dimension of 0 (shape {_shape_str(x)})")
    if positions == 0:
        raise ValueError(f"isqrt_cov: x has no spatial positions / tokens (shape {_shape_str(x)})")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"isqrt_cov: iters must be an integer >= 1, got {iters!r} "
                         f"(x shape {_shape_str(x)})")


def _as_channel_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,H*W); (B,N,C) -> (B,C,N) (a view where possible)."""
    if x.dim() == 4:
        return x.reshape(x.shape[0], x.shape[1], -1)
    return x.transpose(1, 2)


def centred_covariance(features: torch.Tensor) -> torch.Tensor:
    """Sigma = X Ibar X^T for X of shape (B, C, M) (paper Eq. 1), as the covariance of the
    mean-centred features; Ibar (M x M) is never built."""
    centred = features - features.mean(dim=-1, keepdim=True)
    return torch.matmul(centred, centred.transpose(-1, -2)) / features.shape[-1]


def triu_vectorize(mat: torch.Tensor) -> torch.Tensor:
    """Upper triangle incl. the diagonal of (..., C, C), row-major: element (i, j), i <= j, row
    by row -> (..., C(C+1)/2). This order is what the official iSQRT-COV fc weights expect."""
    if mat.dim() < 2 or mat.shape[-1] != mat.shape[-2]:
        raise ValueError(f"triu_vectorize: mat must be (..., C, C), got shape {_shape_str(mat)}")
    c = mat.shape[-1]
    rows, cols = torch.triu_indices(c, c, device=mat.device)  # row-major order
    # index_select on the flattened matrix: the same elements as mat[..., rows, cols], ~5x faster
    # forward and backward (index_add instead of index_put) on the CPU
    return mat.flatten(-2).index_select(-1, rows * c + cols)


# ----------------------------------------------------------------------------------------------
# the scalar Newton-Schulz polynomial
# ----------------------------------------------------------------------------------------------
def newton_schulz_polynomial(lam: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p_N(lam) and p_N'(lam) elementwise: the scalar version of the coupled Newton-Schulz
    iteration (paper Eq. 2) with y_0 = lam, z_0 = 1, differentiated alongside."""
    y, dy = lam, torch.ones_like(lam)
    z, dz = torch.ones_like(lam), torch.zeros_like(lam)
    for k in range(iters):
        p, dp = z * y, dz * y + z * dy
        t, dt = 1.5 - 0.5 * p, -0.5 * dp
        y, dy = y * t, dy * t + y * dt
        if k + 1 < iters:
            z, dz = t * z, dt * z + t * dz
    return y, dy


def _divided_differences(lam: torch.Tensor, p: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
    """F_ij = (p(l_i) - p(l_j)) / (l_i - l_j) for (B, C) vectors lam, p = p_N(lam), dp = p_N'(lam),
    in their dtype, with three (B, C, C) temporaries.

    Where l_i and l_j are so close that the quotient would lose digits to cancellation
    (|l_i - l_j| <= rho max(|l_i|, |l_j|)), F_ij is the mean of the derivatives
    (p'(l_i) + p'(l_j)) / 2, which differs from the divided difference by O(p''' h^2). rho balances
    the two errors: the quotient's relative error is about 2 eps / rho, the mean's about
    rho^2 / 64 for p ~ sqrt, so rho = 2e-2 in float32 (both ~6e-6) and 1e-5 in float64 (~1e-11)."""
    rho = 1e-5 if lam.dtype == torch.float64 else 2e-2
    dl = lam.unsqueeze(-1) - lam.unsqueeze(-2)
    f = p.unsqueeze(-1) - p.unsqueeze(-2)
    f.div_(dl)                                                  # inf/nan where dl == 0: replaced
    tol = lam.abs().mul_(rho)
    near = torch.maximum(tol.unsqueeze(-1), tol.unsqueeze(-2))
    close = torch.le(dl.abs_(), near)
    del dl
    half_dp = 0.5 * dp
    torch.add(half_dp.unsqueeze(-1), half_dp.unsqueeze(-2), out=near)  # near := mean derivative
    return torch.where(close, near, f, out=near)


_EIGH_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _eigh_pool(workers: int) -> ThreadPoolExecutor:
    """A process-local thread pool (re-created after a fork, whose child has no pool threads)."""
    global _EIGH_POOL
    if _EIGH_POOL is None or _EIGH_POOL[:2] != (os.getpid(), workers):
        _EIGH_POOL = (os.getpid(), workers,
                      ThreadPoolExecutor(workers, thread_name_prefix="cvkit-eigh"))
    return _EIGH_POOL[2]


def _eigh_one_thread(job) -> None:
    a, lam, vecs, inference = job
    torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: set it in the worker
    # grad and inference modes are thread-local: take the caller's (inference tensors can only be
    # written inside inference mode)
    with torch.inference_mode(inference), torch.no_grad():
        torch.linalg.eigh(a, out=(lam, vecs))


def _batched_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh of a (B, C, C) batch. On the CPU, MKL's threaded syevd is slower than the
    sequential one for matrices of a few hundred rows (2-6x on the 2-core benchmark machine), so
    every matrix is solved on one thread and the batch is split over torch.get_num_threads()
    Python threads instead (LAPACK releases the GIL). The thread count is restored afterwards."""
    if a.device.type != "cpu":
        return torch.linalg.eigh(a)
    threads = torch.get_num_threads()
    workers = min(threads, a.shape[0])
    torch.set_num_threads(1)
    try:
        if workers <= 1:
            return torch.linalg.eigh(a)
        # outputs allocated here, in LAPACK's column-major layout (what eigh itself returns), and
        # filled in place by the workers: no copies
        lam = a.new_empty(a.shape[:-1])
        vecs = a.new_empty(a.shape).transpose(-1, -2)
        inference = [torch.is_inference_mode_enabled()] * workers
        jobs = zip(a.chunk(workers), lam.chunk(workers), vecs.chunk(workers), inference)
        list(_eigh_pool(workers).map(_eigh_one_thread, jobs))
    finally:
        torch.set_num_threads(threads)
    return lam, vecs


# ----------------------------------------------------------------------------------------------
# the two torch implementations (custom autograd Functions)
# ----------------------------------------------------------------------------------------------
def _normalised(features: torch.Tensor, symmetrise: bool):
    """A = Sigma / tr(Sigma) for the centred covariance Sigma, its trace, and a mask `ok` of
    samples with a usable (finite, not tiny) trace; the others are divided by 1 instead and their
    output is zeroed (tiny trace) or NaN (non-finite input) by the caller. symmetrise: make A exactly symmetric (BLAS need not
    return a bit-symmetric X X^T); not needed before eigh, which reads one triangle only."""
    sigma = centred_covariance(features)
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)
    ok = (trace > _TINY_TRACE[features.dtype]) & torch.isfinite(trace)
    safe_trace = torch.where(ok, trace, torch.ones_like(trace))
    a = sigma.div_(safe_trace[:, None, None])
    if symmetrise:
        a = (a + a.transpose(-1, -2)).mul_(0.5)
    return a, trace, ok


def _covariance_backward(features, grad_sigma):
    """d loss / d X for Sigma = Xc Xc^T / M: (G + G^T) Xc / M (the centring needs no backward
    term: the rows of (G + G^T) Xc already have zero mean)."""
    centred = features - features.mean(dim=-1, keepdim=True)
    return torch.matmul(grad_sigma + grad_sigma.transpose(-1, -2), centred) / features.shape[-1]


def _trace_normalisation_backward(grad_a, inner_g_y, inner_ga_a, trace, ok):
    """Backward of C = s * p(Sigma / t), t = tr(Sigma), s = sqrt(t), given grad_a = the adjoint of
    p at A applied to the incoming gradient G, <G, Y_N> and <grad_a, A>:
    dL/dSigma = (grad_a - <grad_a, A> I) / s + <G, Y_N> / (2 s) I."""
    s = torch.where(ok, trace, torch.ones_like(trace)).sqrt()
    diag_term = (0.5 * inner_g_y - inner_ga_a) / s
    grad_sigma = grad_a / s[:, None, None]
    grad_sigma.diagonal(dim1=-2, dim2=-1).add_(diag_term[:, None])
    return grad_sigma * ok[:, None, None].to(grad_sigma.dtype)


class _IsqrtCovEigh(torch.autograd.Function):
    """C = sqrt(tr Sigma) * V diag(p_N(lambda)) V^T with A = Sigma / tr Sigma = V diag(lambda) V^T;
    backward by Daleckii-Krein: dL/dA = V (F o (V^T G V)) V^T, F the divided differences of p_N.
    Saves the input, V and lambda (no iterate)."""

    @staticmethod
    def forward(ctx, features, iters):
        a, trace, ok = _normalised(features, symmetrise=False)
        all_finite = bool(torch.isfinite(trace).all())
        if not all_finite:  # eigh raises on NaN/inf; those samples give NaN, as the loop would
            a.masked_fill_(~ok[:, None, None], 0.0)
        lam, vecs = _batched_eigh(a)
        del a
        p, _ = newton_schulz_polynomial(lam.double(), iters)
        s = torch.where(ok, trace, torch.zeros_like(trace)).sqrt()
        scaled = vecs * (p.to(vecs.dtype) * s[:, None]).unsqueeze(-2)
        out = torch.matmul(scaled, vecs.transpose(-1, -2))
        if not all_finite:
            out.masked_fill_(~torch.isfinite(trace)[:, None, None], float("nan"))
        ctx.save_for_backward(features, vecs, lam, trace, ok)
        ctx.iters = iters
        return out

    @staticmethod
    @first_derivative_only("isqrt_cov", "its backward is hand-written")
    def backward(ctx, grad_out):
        features, vecs, lam, trace, ok = ctx.saved_tensors
        p64, dp64 = newton_schulz_polynomial(lam.double(), ctx.iters)
        p, dp = p64.to(lam.dtype), dp64.to(lam.dtype)
        w = torch.matmul(vecs.transpose(-1, -2), torch.matmul(grad_out, vecs))
        w_diag = w.diagonal(dim1=-2, dim2=-1)
        inner_g_y = (p * w_diag).sum(-1)                 # <G, Y_N>
        inner_ga_a = (dp * lam * w_diag).sum(-1)         # <V(F o W)V^T, A>, F_ii = p'(l_i)
        fw = _divided_differences(lam, p, dp).mul_(w)
        del w, w_diag
        grad_a = torch.matmul(vecs, torch.matmul(fw, vecs.transpose(-1, -2)))
        grad_sigma = _trace_normalisation_backward(grad_a, inner_g_y, inner_ga_a, trace, ok)
        grad_x = _covariance_backward(features, grad_sigma)
        return grad_x.masked_fill_(~torch.isfinite(trace)[:, None, None], float("nan")), None


def _newton_schulz(a: torch.Tensor, iters: int, e: torch.Tensor | None = None):
    """Y_N of the coupled iteration (paper Eq. 2) with the fewest products, max(1, 3N - 3); given
    a direction E, also its derivative L(E) = d/dh Y_N(A + h E) at h = 0, by differentiating the
    iteration forward (tangents dT, dY, dZ beside T, Y, Z; 6 more products per step).

    Y_N = g(A) for a real polynomial g, and at a symmetric A the Fréchet derivative of a
    polynomial, L(E) = sum_k c_k sum_{i+j=k-1} A^i E A^j, is its own adjoint: the backward's
    dL/dA for the incoming gradient G is L(G) (docs/covpool.md). Returns Y_N, or (Y_N, L(E))."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    t = 0.5 * (3.0 * eye - a)                                   # T_1 = (3I - A) / 2
    y, z = torch.matmul(a, t), t
    if e is not None:
        dt = -0.5 * e
        dy, dz = torch.baddbmm(torch.matmul(e, t), a, dt), dt
    for k in range(1, iters):
        last = k + 1 == iters
        t = torch.baddbmm(eye, z, y, beta=1.5, alpha=-0.5)      # T = (3I - Z Y) / 2
        if e is not None:  # tangents first: they read the previous Y and Z
            dt = torch.baddbmm(torch.matmul(dz, y), z, dy).mul_(-0.5)
            dy = torch.baddbmm(torch.matmul(dy, t), y, dt)
            if not last:
                dz = torch.baddbmm(torch.matmul(dt, z), t, dz)
        y = torch.matmul(y, t)
        if not last:
            z = torch.matmul(t, z)
    return y if e is None else (y, dy)


class _IsqrtCovNewtonSchulz(torch.autograd.Function):
    """The Newton-Schulz matrix iteration with a hand-written backward (for GPUs, where batched
    eigh is slow). Saves only the input; the backward recomputes the iterates alongside their
    derivative along the incoming gradient (forward-mode, self-adjoint: ``_newton_schulz``),
    so it keeps no list of iterates: a few d×d matrices per sample at any N."""

    @staticmethod
    def forward(ctx, features, iters):
        a, trace, ok = _normalised(features, symmetrise=True)
        y = _newton_schulz(a, iters)
        s = torch.where(ok, trace, torch.zeros_like(trace)).sqrt()
        ctx.save_for_backward(features)
        ctx.iters = iters
        return y * s[:, None, None]

    @staticmethod
    @first_derivative_only("isqrt_cov", "its backward is hand-written")
    def backward(ctx, grad_out):
        (features,) = ctx.saved_tensors
        a, trace, ok = _normalised(features, symmetrise=True)
        y_n, grad_a = _newton_schulz(a, ctx.iters, grad_out.contiguous())
        inner_g_y = (grad_out * y_n).sum((-2, -1))          # <G, Y_N>
        del y_n
        inner_ga_a = (grad_a * a).sum((-2, -1))              # <dL/dA, A>
        # A was symmetrised; sym(grad_a) is not needed: the covariance backward symmetrises.
        grad_sigma = _trace_normalisation_backward(grad_a, inner_g_y, inner_ga_a, trace, ok)
        return _covariance_backward(features, grad_sigma), None


def _isqrt_cov_traceable(x: torch.Tensor, iters: int) -> torch.Tensor:
    """The same C as :func:`_isqrt_cov_torch` in plain tensor operations (Newton-Schulz products,
    no eigh, no autograd function, no data-dependent branch): for ``torch.export`` and
    ``torch.jit.trace``, whose programs run it anywhere. Autograd differentiates it there."""
    a, trace, ok = _normalised(_as_channel_matrix(x), symmetrise=True)
    s = torch.where(ok, trace, torch.zeros_like(trace)).sqrt()
    return _newton_schulz(a, iters) * s[:, None, None]


@torch.compiler.disable  # eager under torch.compile: one clean graph break, no tracing of eigh
def _isqrt_cov_torch(x: torch.Tensor, iters: int, method: str | None = None) -> torch.Tensor:
    """(B, C, C) post-compensated square root. method: "eigh" (default on CPU) or "ns" (default
    elsewhere); both compute exactly the same function."""
    features = _as_channel_matrix(x)
    if method is None:
        method = "eigh" if x.device.type == "cpu" else "ns"
    if method == "eigh":
        return _IsqrtCovEigh.apply(features, iters)
    if method == "ns":
        return _IsqrtCovNewtonSchulz.apply(features, iters)
    raise ValueError(f"isqrt_cov: unknown torch method {method!r}; expected 'eigh' or 'ns'")


def _triton_kernel():
    """``cvkit.kernels.isqrt_cov_triton``, or RuntimeError when it or the ``triton`` package (which
    the kernels import only when first run) is missing: "auto" then takes the torch path."""
    try:
        import triton  # noqa: F401 - CUDA builds of PyTorch without it exist (e.g. Windows)

        from cvkit.kernels import isqrt_cov_triton  # lazy: Triton is only needed on this path
    except ImportError as e:
        raise RuntimeError("isqrt_cov: backend='triton' needs cvkit.kernels.isqrt_cov_triton and "
                           f"the triton package (pip install triton), not available ({e})") from e
    return isqrt_cov_triton


def isqrt_cov(x: torch.Tensor, iters: int = 5, vectorize: bool = True,
              backend: str = "auto") -> torch.Tensor:
    """iSQRT-COV of (B, C, H, W) feature maps or (B, N, C) tokens -> (B, C(C+1)/2) row-major upper
    triangle incl. the diagonal, or (B, C, C) if ``vectorize=False``. Runs in float32 (float64 if
    given float64) with autocast disabled; fp16/bf16 inputs give a float32 result.

    backend: "torch" (the implementation here), "triton" (``cvkit.kernels.isqrt_cov_triton``), or
    "auto" (Triton for non-empty float32 CUDA inputs when the kernel is available, torch
    otherwise: float64 keeps its precision on the torch path). The Triton kernels compute in
    float32 (TF32 products as :func:`cvkit.kernels.isqrt_cov_triton` says): ``backend="triton"``
    gives a float32 result for a float64 input. Under ``torch.export`` / ``torch.jit.trace``, "auto"
    and "torch" trace the Newton-Schulz iteration in plain tensor operations (a portable program:
    ONNX, AOTInductor, TorchScript; the same function, by products instead of eigh); "triton"
    keeps its custom operators."""
    if backend not in _BACKENDS:
        raise ValueError(f"isqrt_cov: unknown backend {backend!r}; expected one of {_BACKENDS}")
    _check_input(x, iters)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    use_triton = backend == "triton"
    kernel = None
    if use_triton:
        kernel = _triton_kernel()
    elif (backend == "auto" and not capturing_graph() and x.is_cuda
          and x.dtype == torch.float32 and x.shape[0] > 0):
        try:
            kernel = _triton_kernel()
            use_triton = True
        except RuntimeError:
            use_triton = False
    with autocast_off(x.device):
        if use_triton:
            return kernel(x, iters, vectorize)
        if x.shape[0] == 0:
            c = x.shape[1] if x.dim() == 4 else x.shape[2]
            mat = x.new_zeros(0, c, c) + x.sum() * 0  # in the graph: backward gives a zero gradient
        elif capturing_graph():
            mat = _isqrt_cov_traceable(x, iters)
        else:
            mat = _isqrt_cov_torch(x, iters)
        return triu_vectorize(mat) if vectorize else mat


class CovariancePooling(nn.Module):
    """iSQRT-COV head: optional 1x1 conv (no bias) + BatchNorm + ReLU reduction to ``dim``
    channels (paper layout: 2048 -> 256; ``act="relu6"``: ReLU6, as the GCP release's
    MobileNetV2, ZhangLi-CS/GCP_Optimization), then :func:`isqrt_cov` -> (B, dim(dim+1)/2),
    computed in float32 and returned in the input's dtype (a bf16 / fp16 network hands its
    classifier its own dtype, as under autocast; float64 stays float64).

    Accepts (B, C, H, W) maps and (B, N, C) tokens. Tokens go through the *same* reduction,
    treated as a 1 x N map: a per-token linear projection without bias, BatchNorm over batch and
    tokens, ReLU. One set of weights therefore serves both layouts, and tokens give exactly what
    the equivalent (B, C, N, 1) map gives. ``dim=None`` skips the reduction (nn.Identity)."""

    def __init__(self, in_channels: int, dim: int | None = 256, iters: int = 5,
                 backend: str = "auto", act: str = "relu"):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"CovariancePooling: in_channels must be an int >= 1, "
                             f"got {in_channels!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"CovariancePooling: dim must be an int >= 1 or None, got {dim!r}")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"CovariancePooling: iters must be an integer >= 1, got {iters!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"CovariancePooling: unknown backend {backend!r}; "
                             f"expected one of {_BACKENDS}")
        if not isinstance(act, str) or act not in _ACTIVATIONS:
            raise ValueError(f"CovariancePooling: unknown act {act!r}; "
                             f"expected one of {tuple(_ACTIVATIONS)}")
        self.in_channels = in_channels
        self.dim = dim
        self.iters = iters
        self.backend = backend
        self.act = act
        if dim is None:
            self.reduce = nn.Identity()
        else:
            self.reduce = nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=1, bias=False),
                                        nn.BatchNorm2d(dim), _ACTIVATIONS[act](inplace=True))
        channels = in_channels if dim is None else dim
        self.out_features = channels * (channels + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            if x.shape[1] != self.in_channels:
                raise ValueError(f"CovariancePooling: expected {self.in_channels} channels in "
                                 f"(B, C, H, W) input, got shape {_shape_str(x)}")
            return isqrt_cov(self.reduce(x), self.iters, True, self.backend).to(x.dtype)
        if x.dim() == 3:
            if x.shape[2] != self.in_channels:
                raise ValueError(f"CovariancePooling: expected {self.in_channels} channels in "
                                 f"(B, N, C) input, got shape {_shape_str(x)}")
            as_map = x.transpose(1, 2).unsqueeze(-1)          # (B, C, N, 1)
            return isqrt_cov(self.reduce(as_map), self.iters, True, self.backend).to(x.dtype)
        raise ValueError(f"CovariancePooling: x must be (B, C, H, W) or (B, N, C), "
                         f"got shape {_shape_str(x)}")

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, dim={self.dim}, iters={self.iters}, "
                f"out_features={self.out_features}, backend={self.backend!r}"
                + (f", act={self.act!r}" if self.act != "relu" else ""))
