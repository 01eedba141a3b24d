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

import contextlib
import contextvars
import functools
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from cvkit.kernels.interpret import interpreting
from cvkit.layers.first_derivative import first_derivative_only

_KERNEL_FILE = Path(__file__).with_name("isqrt_cov_kernels.py")
_LOADED: dict[bool, object] = {}
PRECISIONS = ("ieee", "tf32x3", "tf32")


def _kernels():
    """The kernel module for the current Triton mode. ``@triton.jit`` decides compiled versus
    interpreted when it decorates (it reads TRITON_INTERPRET then, in Triton 3.6 and 3.8 alike), so
    the kernel file is loaded once per mode, whenever the variable was set."""
    interpret = interpreting()
    if interpret not in _LOADED:
        name = f"cvkit.kernels._isqrt_cov_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, _KERNEL_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton resolves a kernel's globals through its module
        spec.loader.exec_module(module)
        _LOADED[interpret] = module
    return _LOADED[interpret]


_FOLLOW_TORCH = "follow_torch"  # the operators' precision argument for precision=None


def _check_precision(precision: str | None) -> str:
    """The precision argument as the operators take it: checked here, resolved when they run
    (torch.compile cannot trace ``torch.get_float32_matmul_precision``; a compiled graph follows
    the setting at run time, as cuBLAS does)."""
    if precision is None:
        return _FOLLOW_TORCH
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    return precision


def _resolve_precision(precision: str) -> str:
    """``_FOLLOW_TORCH`` (precision=None) follows ``torch.get_float32_matmul_precision()``:
    "highest" (PyTorch's default) -> "tf32x3", whose error against float64 matched plain fp32 on
    an H100 (4.6e-7 vs 6.6e-7 relative, B=128, d=256) at 1.3x its speed; "high" or "medium" ->
    "tf32", as cuBLAS then uses TF32 in the PyTorch path. "ieee" (fp32 FMA products) is chosen
    explicitly.

    Since PyTorch 2.9 ``torch.get_float32_matmul_precision()`` raises once the per-backend API
    has been used (``torch.backends.fp32_precision``, ``torch.backends.cuda.matmul.fp32_precision``,
    even ``torch.backends.mkldnn.matmul.fp32_precision``); the setting is then read as cuBLAS's,
    ``torch.backends.cuda.matmul.fp32_precision`` ("tf32" or not)."""
    if precision != _FOLLOW_TORCH:
        return precision
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # the legacy and per-backend APIs mixed: PyTorch refuses the legacy read
        return "tf32" if torch.backends.cuda.matmul.fp32_precision == "tf32" else "tf32x3"
    return "tf32x3" if legacy == "highest" else "tf32"


def _as_channel_matrix(x: torch.Tensor) -> tuple[torch.Tensor, int, int, tuple[int, int, int]]:
    """(B,C,H,W) maps or (B,N,C) tokens -> the tensor, d, M and the (batch, channel, position)
    strides that read it as X[b, c, m]. NCHW-contiguous and channels_last maps and contiguous
    tokens are read in place; other layouts are copied to NCHW / contiguous tokens first."""
    if x.dim() == 4:
        b, c, h, w = x.shape
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return x, c, h * w, (x.stride(0), 1, c)  # channels_last: a position is c apart
        x = x.contiguous()
        return x, c, h * w, (x.stride(0), h * w, 1)
    if x.dim() == 3:
        x = x.contiguous()
        b, n, c = x.shape
        return x, c, n, (x.stride(0), 1, c)
    raise ValueError(f"isqrt_cov_triton expects (B,C,H,W) maps or (B,N,C) tokens, got shape "
                     f"{tuple(x.shape)}")


def _layout_args(m: int, strides: tuple[int, int, int]) -> tuple[tuple[int, ...], int]:
    """(M, stride_b, stride_c, stride_m) for the kernels that read the input, each divided by 4
    where 4 divides it, and a bit mask saying which (bit i for value i): the kernels multiply them
    back by a compile-time 4 (``_unpack`` in the kernel file: 4-byte loads of 14x14 maps
    otherwise)."""
    values = (m, *strides)
    quarter = [v % 4 == 0 and v != 0 for v in values]
    return (tuple(v // 4 if q else v for v, q in zip(values, quarter)),
            sum(1 << i for i, q in enumerate(quarter) if q))


class _Pair(NamedTuple):
    """An operand of a two-sum launch: ``first`` (its data pointer) for the first sum, the matrix
    ``offset`` elements on for the second."""
    first: torch.Tensor
    offset: int


def _pair(buf: torch.Tensor) -> _Pair:
    """A contiguous (2, B, d, d) buffer as a paired operand (the buffer itself, not buf[0]: a view
    costs microseconds of host time per launch)."""
    return _Pair(buf, buf.stride(0))


# The autotuner's choice per kernel and autotuning key, remembered after the first launch with that
# key. Later launches call the kernel's JIT function with it directly: Triton's Autotuner.run
# rebuilds its key from every argument on each call (a membership test per argument in a list),
# ~0.3 ms of host time per forward+backward (22 launches) on this project's 2-core CPU machine
# (0.98 vs 0.68 ms in `python tools/benchmark.py covpool-host`, BENCHMARKS.md). With direct
# launches only a plan's recording call gets here.
_CHOSEN: dict[tuple, dict] = {}
# Held from an autotuned launch to reading its ``best_config``: Triton's Autotuner keeps the config
# of its latest run on itself, so another thread's first launch in between (nn.DataParallel's
# replicas) would hand this one its config: remembered under the wrong key, and, in a plan, a grid
# computed for another config beside the compiled kernel this one launched.
_AUTOTUNE_LOCK = threading.Lock()


# Where each autotuned kernel's key arguments are: a position among the positional arguments of
# its launches, or a keyword; per (kernel, number of positional arguments).
_KEY_PLACES: dict[tuple, tuple] = {}


def _autotune_key(kernel, args, meta) -> tuple:
    """The autotuner's own key for ``kernel[grid](*args, **meta)``: the arguments it names
    (``kernel.keys``; the dtypes it adds are left out, every tensor here is float32)."""
    places = _KEY_PLACES.get((kernel, len(args)))
    if places is None:
        positions = {name: i for i, name in enumerate(kernel.arg_names[:len(args)])}
        places = _KEY_PLACES[kernel, len(args)] = tuple(positions.get(name, name)
                                                         for name in kernel.keys)
    return (kernel, *(args[p] if isinstance(p, int) else meta[p] for p in places))


def _launch_autotuned(kernel, grid, args, meta):
    """``kernel[grid](*args, **meta)`` for a ``triton.autotune`` kernel; once the autotuner has
    chosen for this key, the chosen config's launch (``_launch``)."""
    key = _autotune_key(kernel, args, meta)
    chosen = _CHOSEN.get(key)
    if chosen is None:  # the autotuner times its configs, then launches the fastest
        with _AUTOTUNE_LOCK:
            compiled = kernel[grid](*args, **meta)
            chosen = _CHOSEN[key] = kernel.best_config.all_kwargs()
        step = _STEP.get()
        if step is not None:
            step.record(kernel.fn, compiled, grid, args, {**meta, **chosen})
        return
    _launch(kernel.fn, grid, args, {**meta, **chosen})


def _launch_tuned(kernel, grid, args, meta, config=None):
    """An autotuned launch (``_launch_autotuned``), or with ``config`` (tile sizes, num_warps,
    num_stages: ``tile_configs``'s dicts) that config instead of the autotuner's choice, through
    the kernel's JIT function (``tools/benchmark.py covpool-tiles``)."""
    if config is None:
        _launch_autotuned(kernel, grid, args, meta)
    else:
        kernel.fn[grid](*args, **meta, **config)


def _launch(fn, grid, args, meta):
    """``fn[grid](*args, **meta)`` for a JIT function (no autotuner), recorded when a step
    records its launches (direct launches)."""
    compiled = fn[grid](*args, **meta)
    step = _STEP.get()
    if step is not None:
        step.record(fn, compiled, grid, args, meta)


# Direct launches (the default; ``CVKIT_ISQRT_COV_DIRECT_LAUNCH=0`` turns them off): the launches of
# a forward or backward call, recorded per plan key by the first call with that key, then replayed
# by later calls over their own buffers, without cvkit's launch sequence and Triton's JIT functions.
# Triton's argument binding, specialisation and cache lookup cost ~13 us per launch on this
# project's 2-core CPU machine and ~50 us on the H100 machine's host (`python tools/benchmark.py
# covpool-host`); what remains is the call JITFunction.run ends with (the same in Triton 3.6 and
# 3.8). On an H100 (run 9 in BENCHMARKS.md) and an H200 (run 10, whole-call replays) the output
# and gradient bits were those of JIT launches; a synchronised step at B=128, d=256 took 3.1 ms
# instead of 3.8 ms (run 9), 2.8 instead of 3.3 ms (run 10).
DIRECT_LAUNCH_ENV = "CVKIT_ISQRT_COV_DIRECT_LAUNCH"


def _direct_launch_setting() -> bool:
    value = os.environ.get(DIRECT_LAUNCH_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{DIRECT_LAUNCH_ENV}={value!r}: expected 1 (direct launches, the "
                         "default) or 0 (every launch through Triton's JIT functions)")
    return value == "1"


_DIRECT = _direct_launch_setting()
_PLANS: dict[tuple, list] = {}
_STEP: contextvars.ContextVar = contextvars.ContextVar("isqrt_cov_step", default=None)


@functools.cache
def _triton_runtime():
    """Triton's driver and knobs modules (imported on first use: cvkit's import does not load
    Triton; a replay, the hot path, gets them without an import statement)."""
    from triton import knobs
    from triton.runtime import driver
    return driver, knobs


def _extent(t: torch.Tensor | None) -> tuple[int, int]:
    """[first, end) byte addresses of the memory a tensor's elements occupy (empty for None or
    no elements)."""
    if t is None or t.numel() == 0:
        return 0, 0
    span = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + span * t.element_size()


class _StepLaunches:
    """The launches of one forward or backward call, in order. ``key`` holds everything Triton
    specialises those launches on: the shapes, strides and 16-byte alignment of the caller's
    tensors, the iteration count, output form, precision and device (every other buffer is
    allocated by the call, so its layout and alignment follow from the shapes). The call hands its
    buffers (every tensor its launches touch, views aside) to ``replayed`` before its first
    launch. The first call with a key launches through the JIT functions and records each launch:
    the compiled kernel, its grid, and its arguments as a template, each tensor argument as (its
    buffer, byte offset), the rest as they were (the plan). Later calls with the key launch the
    plan's kernels over their own buffers."""

    def __init__(self, key):
        self.key, self.plan, self.recorded, self.extents = key, _PLANS.get(key), [], None

    def __enter__(self):
        self.token = _STEP.set(self)
        return self

    def __exit__(self, exc_type, *exc):
        _STEP.reset(self.token)
        if (exc_type is None and self.plan is None and self.extents is not None
                and None not in self.recorded):
            _PLANS[self.key] = self.recorded

    def replayed(self, buffers) -> bool:
        """With a plan, launches it over ``buffers`` (in the order the recording call gave its
        own) and returns True; else keeps their extents for the recording and returns False."""
        if self.plan is None:
            self.extents = [_extent(t) for t in buffers]
            return False
        driver, knobs = _triton_runtime()
        active = driver.active
        stream = active.get_current_stream(active.get_current_device())
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        # Triton's launcher takes an int as a device pointer (3.6 and 3.8 alike)
        ptrs = [0 if t is None else t.data_ptr() for t in buffers]
        try:
            for compiled, dims, template, slots in self.plan:
                args = list(template)
                for position, buffer, offset in slots:
                    args[position] = ptrs[buffer] + offset
                compiled.run(*dims, stream, compiled.function, compiled.packed_metadata,
                             compiled.launch_metadata(dims, stream, *args), enter, leave, *args)
        except Exception as error:  # e.g. a Triton release whose launcher differs: this call and
            # every later one go through the JIT functions (each kernel writes all its outputs,
            # so launching the whole call again is safe)
            global _DIRECT
            _DIRECT = False
            _PLANS.clear()
            self.plan, self.extents = None, None
            warnings.warn(f"isqrt_cov_triton: a direct launch failed ({type(error).__name__}: "
                          f"{error}); launching through Triton's JIT functions from now on "
                          f"(set {DIRECT_LAUNCH_ENV}=0 to skip direct launches)", RuntimeWarning,
                          stacklevel=2)
            return False
        return True

    def record(self, fn, compiled, grid, args, meta):
        """Records one launch (``JITFunction.run``'s compiled kernel); a launch without one (a
        Triton hook took it over) or with a tensor outside the call's buffers makes no plan."""
        if compiled is None or self.extents is None:
            self.recorded.append(None)
            return
        bound = {**dict(zip(fn.arg_names, args)), **meta}
        dims = tuple(grid(bound) if callable(grid) else grid)
        template = [*args, *(bound.get(p.name, p.default) for p in fn.params[len(args):])]
        slots = []
        for position, arg in enumerate(template):
            if isinstance(arg, torch.Tensor):
                ptr = arg.data_ptr()
                owners = [i for i, (lo, hi) in enumerate(self.extents) if lo <= ptr < hi]
                if len(owners) != 1:
                    self.recorded.append(None)
                    return
                slots.append((position, owners[0], ptr - self.extents[owners[0]][0]))
                template[position] = None
        self.recorded.append((compiled, dims + (1,) * (3 - len(dims)), tuple(template),
                              tuple(slots)))


def _replayed(*buffers) -> bool:
    """True when the call's launches were replayed from its step's plan over ``buffers`` (every
    tensor the launches touch: the caller's and those the call allocated)."""
    step = _STEP.get()
    return step is not None and step.replayed(buffers)


def _step_launches(kind: str, tensors, *config):
    """A ``_StepLaunches`` context for a forward or backward call when direct launches are on
    (the default; compiled mode only), else a no-op context."""
    if not _DIRECT or interpreting():
        return contextlib.nullcontext()
    key = (kind, *config,
           *((t.device, t.shape, t.stride(), t.data_ptr() % 16) for t in tensors))
    return _StepLaunches(key)


def _block_for(n: int) -> int:
    """The smallest power of two >= n and >= 16: a ``tl.arange`` length that covers n."""
    return max(16, 1 << (n - 1).bit_length())


def _partials(batch: int, tiles: int, device) -> torch.Tensor:
    """A (B, slots) buffer for per-tile partial sums of a per-sample dot product, ``_block_for``
    slots (the kernels zero the slots no tile writes)."""
    return torch.empty(batch, _block_for(tiles), device=device, dtype=torch.float32)


def _dot_partials(k, batch: int, d: int, device) -> torch.Tensor:
    """The partial-sum buffer of a product launch with ``dot=``: as many slots as its most tiles
    (the smallest BLOCK among the autotuner's configs)."""
    block = min(cfg.kwargs["BLOCK"] for cfg in k._products_kernel.configs)
    nt = triton_cdiv(d, block)
    return _partials(batch, nt * (nt + 1) // 2, device)


def _products(k, out, prods, *, c_prod=1.0, c_eye=0.0, e=None, c_e=0.0, scale=None, triu=False,
              dot=None, precision="ieee", config=None):
    """out = scale * (c_prod * sum(a @ b for a, b in prods) + c_eye I + c_e e) for one or two
    products whose sum is symmetric; with paired operands (``_Pair``), two such sums in one
    launch, written to out[0] and out[1]. Right factors must be symmetric. ``dot=(m, partials)``
    (a single d×d sum only, ``partials`` from ``_dot_partials``): also the partial sums of
    <out, m> per sample, m symmetric. ``config`` (BLOCK, BLOCK_K, num_warps, num_stages) launches
    that tile config instead of the autotuner's choice (``tools/benchmark.py covpool-tiles``)."""
    ops = [m for prod in prods for m in prod]
    ops += [ops[0], ops[1]] * ((4 - len(ops)) // 2)
    ops += [e if e is not None else ops[0]]
    npair = 2 if any(isinstance(m, _Pair) for m in ops) else 1
    target = _pair(out) if npair == 2 else out  # a (2, B, d, d) buffer then
    ptrs = [m.first if isinstance(m, _Pair) else m for m in ops + [target]]
    offsets = [m.offset if isinstance(m, _Pair) else 0 for m in ops + [target]]
    batch, d = ptrs[0].shape[-3], ptrs[0].shape[-1]
    if dot is not None and (npair == 2 or triu or scale is not None):
        raise ValueError("_products: dot= needs a single unscaled d×d sum")
    if dot is not None and config is not None:  # more tiles than the autotuner's configs have
        nt = triton_cdiv(d, config["BLOCK"])
        if nt * (nt + 1) // 2 > dot[1].shape[1]:
            raise ValueError(f"_products: BLOCK={config['BLOCK']} gives more tiles at d={d} than "
                             f"the {dot[1].shape[1]} slots of the partial-sum buffer")
    dot_with, dot_part = dot if dot is not None else (ptrs[0], ptrs[0])

    def grid(meta):
        nt = triton_cdiv(d, meta["BLOCK"])
        return (npair * batch * (nt * (nt + 1) // 2),)

    args = (*ptrs[:5], scale if scale is not None else ptrs[0], ptrs[5], dot_with, dot_part,
            *offsets, c_prod, c_eye, c_e, d, batch, _batch_class(batch))
    configs = [config] if config is not None else [c.kwargs for c in k._products_kernel.configs]
    meta = dict(NPAIR=npair, NPROD=len(prods), HAS_E=e is not None, HAS_SCALE=scale is not None,
                OUT_TRIU=triu, HAS_DOT=dot is not None,
                DOT_SLOTS=dot_part.shape[1] if dot is not None else 1, PRECISION=precision,
                EVEN=all(d % c["BLOCK"] == 0 and d % c["BLOCK_K"] == 0 for c in configs))
    _launch_tuned(k._products_kernel, grid, args, meta, config)
    return out


def _covariance(k, xm, layout, mults, mean, var, a, z1, trace, sqrt_trace, precision,
                config=None):
    """A = Sigma / tr(Sigma), Z_1 = 1.5 I - 0.5 A, tr(Sigma) and its square root from the channel
    matrix ``xm`` (``_as_channel_matrix``), its channel means and variances; ``layout`` and
    ``mults`` from ``_layout_args``. ``config`` (BLOCK, BLOCK_K, num_warps, num_stages): as
    ``_products``'s."""
    batch, d = a.shape[0], a.shape[-1]

    def grid(meta):
        nt = triton_cdiv(d, meta["BLOCK"])
        return (batch * (nt * (nt + 1) // 2),)

    _launch_tuned(k._covariance_kernel, grid,
                  (xm, mean, var, a, z1, trace, sqrt_trace, d, layout[0], _batch_class(batch),
                   *layout[1:]),
                  dict(MULTS=mults, PRECISION=precision, BLOCK_D=_block_for(d)), config)
    return a


def _grad_input(k, h, xm, m, layout, mults, mean, trace, gc_part, ha_part, grad_x, precision,
                config=None):
    """dL/dX into ``grad_x`` (the layout of ``xm``, M = ``m`` positions) from dL/dA = ``h`` and the
    partial sums of <dL/dC, C> and <dL/dA, A>; ``layout`` and ``mults`` from ``_layout_args``.
    ``config`` (BLOCK_C, BLOCK_M, BLOCK_K, num_warps, num_stages): as ``_products``'s."""
    batch, d = h.shape[0], h.shape[-1]
    _launch_tuned(
        k._grad_input_kernel, lambda meta: (batch * triton_cdiv(d, meta["BLOCK_C"]) *
                                            triton_cdiv(m, meta["BLOCK_M"]),),
        (h, xm, mean, trace, gc_part, ha_part, grad_x, d, layout[0], _batch_class(batch),
         *layout[1:]),
        dict(MULTS=mults, GC_SLOTS=gc_part.shape[1], HA_SLOTS=ha_part.shape[1],
             PRECISION=precision), config)
    return grad_x


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _batch_class(batch: int) -> int:
    """Autotuning key: small batches want small tiles (more programs), large ones large tiles."""
    return int(batch >= 64)


def _saved_shapes(x_shape, iters: int, vectorize: bool):
    """Shapes of the forward's outputs: C, then what the backward needs: A (B,d,d), the channel
    means (B,d), tr Sigma and its square root (B,), the pairs (Y_k, Z_k) for k = 1..N-1 stacked
    as (N-1, 2, B, d, d), and T_k for k = 2..N as (N-1, B, d, d)."""
    batch, d = x_shape[0], x_shape[1] if len(x_shape) == 4 else x_shape[2]
    out = (batch, d * (d + 1) // 2) if vectorize else (batch, d, d)
    n = iters - 1
    return [out, (batch, d, d), (batch, d), (batch,), (batch,), (n, 2, batch, d, d),
            (n, batch, d, d)]


def _forward(x, iters, vectorize, precision):
    """Runs the forward kernels; returns C and the tensors of ``_saved_shapes``."""
    k = _kernels()
    xm, d, m, (sb, sc, sm) = _as_channel_matrix(x)
    batch = xm.shape[0]
    out, a, mean, trace, sqrt_trace, yzs, ts = (
        torch.empty(shape, device=xm.device, dtype=torch.float32)
        for shape in _saved_shapes(x.shape, iters, vectorize))
    var = torch.empty_like(mean)
    z1 = yzs[0, 1] if iters >= 2 else torch.empty_like(a)  # Z_1 = T_1 (unused for N = 1)
    saved = (a, mean, trace, sqrt_trace, yzs, ts)
    if _replayed(xm, out, a, mean, var, trace, sqrt_trace, yzs, ts, None if iters >= 2 else z1):
        return (out, *saved)
    layout, mults = _layout_args(m, (sb, sc, sm))
    _launch(k._channel_stats_kernel, (batch * triton_cdiv(d, 32),),
            (xm, mean, var, d, *layout), dict(MULTS=mults, BLOCK_C=32, BLOCK_M=64))
    _covariance(k, xm, layout, mults, mean, var, a, z1, trace, sqrt_trace, precision)

    final = dict(scale=sqrt_trace, triu=vectorize, precision=precision)
    if iters == 1:  # Y_1 = A T_1 = 1.5 A - 0.5 A A, times sqrt(tr Sigma)
        _products(k, out, [(a, a)], c_prod=-0.5, e=a, c_e=1.5, **final)
        return (out, *saved)
    _products(k, yzs[0, 0], [(a, a)], c_prod=-0.5, e=a, c_e=1.5, precision=precision)
    for step in range(2, iters + 1):
        prev = yzs[step - 2]
        t = _products(k, ts[step - 2], [(prev[1], prev[0])], c_prod=-0.5, c_eye=1.5,
                      precision=precision)
        if step == iters:
            _products(k, out, [(prev[0], t)], **final)
        else:  # Y_k = Y_{k-1} T_k and Z_k = T_k Z_{k-1} = Z_{k-1} T_k in one launch
            _products(k, yzs[step - 1], [(_pair(prev), t)], precision=precision)
    return (out, *saved)


def _backward(grad_out, x, out, a, mean, trace, sqrt_trace, yzs, ts, iters, vectorize,
              precision):
    """dL/dA by forward-mode differentiation. Y_N = g(A) for a real polynomial g (every iterate is
    a polynomial in A), and at a symmetric A the Fréchet derivative L_g(A) of a polynomial is
    self-adjoint, so dL/dA = L_g(A)[P] with the seed P = dL/dY_N: the derivative of the iteration
    along P, carried forward over the stored iterates with the tangents
        dT_k = -0.5 (dZ_{k-1} Y_{k-1} + Z_{k-1} dY_{k-1}),
        dY_k = dY_{k-1} T_k + Y_{k-1} dT_k,     dZ_k = dZ_{k-1} T_k + Z_{k-1} dT_k
    from dY_0 = P, dZ_0 = 0 (so dZ_1 = dT_1 = -P/2 and dY_1 = 1.5 P - 0.5 (P A + A P)).
    The seed is stored once, as -P/2.
    Every tangent is symmetric (the derivative of a polynomial in A along a symmetric direction),
    so each is a symmetric two-product launch, dY_k and dZ_k in one: 3 d³-products per step with
    half the tiles computed, against 5 for the reverse recursion with its non-symmetric Y P."""
    k = _kernels()
    xm, d, m, (sb, sc, sm) = _as_channel_matrix(x)
    batch = xm.shape[0]
    dev = xm.device

    def mat(*lead):
        return torch.empty(*lead, batch, d, d, device=dev, dtype=torch.float32)

    # (dY_k, dZ_k), and a second buffer to ping-pong with; for N = 1 the seed and dL/dA
    dyz = mat(2)
    spare = mat(2) if iters >= 3 else None
    dt = mat() if iters >= 2 else None
    seed_tiles = triton_cdiv(d, 32) ** 2
    gc_part = _partials(batch, seed_tiles, dev)  # <dL/dC, C>, summed by the input gradient
    ha_part = _dot_partials(k, batch, d, dev)  # <dL/dA, A>, from the launch that writes dL/dA
    grad_x = torch.empty_like(xm)
    if _replayed(grad_out, xm, out, a, mean, trace, sqrt_trace, yzs, ts, dyz, spare, dt, gc_part,
                 ha_part, grad_x):
        return grad_x
    # The seed as S = dZ_1 = -P/2 (P = sqrt(tr Sigma) sym(dL/dC) = dL/dY_N), its only copy
    s = dyz[1]
    _launch(k._grad_seed_kernel, (batch * seed_tiles,),
            (grad_out, out, sqrt_trace, s, gc_part, d),
            dict(VECTOR=vectorize, GC_SLOTS=gc_part.shape[1], BLOCK=32))
    # dY_1 = 1.5 P - 0.5 (P A + A P) = (S A + A S) - 3 S: the same numbers (P = -2 S exactly)
    h = _products(k, dyz[0], [(s, a), (a, s)], e=s, c_e=-3.0,
                  dot=(a, ha_part) if iters == 1 else None, precision=precision)
    for step in range(2, iters + 1):
        yz, t = yzs[step - 2], ts[step - 2]  # Y_{k-1}, Z_{k-1} and T_k for k = step
        _products(k, dt, [(dyz[1], yz[0]), (yz[1], dyz[0])], c_prod=-0.5, precision=precision)
        if step == iters:  # dL/dA = dY_N, into dZ_{N-1}'s buffer (dT_N holds what it gave)
            h = _products(k, dyz[1], [(dyz[0], t), (yz[0], dt)], dot=(a, ha_part),
                          precision=precision)
        else:
            dyz, spare = _products(k, spare, [(_pair(dyz), t), (_pair(yz), dt)],
                                   precision=precision), dyz
    layout, mults = _layout_args(m, (sb, sc, sm))
    return _grad_input(k, h, xm, m, layout, mults, mean, trace, gc_part, ha_part, grad_x,
                       precision)


def _device_guard(device: torch.device):
    """Makes ``device`` current while the kernels launch: Triton launches on the current CUDA
    device and stream, so a tensor on cuda:1 while cuda:0 is current would otherwise be read from
    the wrong GPU (an error, or silently wrong values). Nothing to do on the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _run_forward(x, iters, vectorize, precision):
    precision = _resolve_precision(precision)
    with _device_guard(x.device), _step_launches("forward", (x,), iters, vectorize, precision):
        return _forward(x, iters, vectorize, precision)


def _run_backward(grad_out, x, out, a, mean, trace, sqrt_trace, yzs, ts, iters, vectorize,
                  precision):
    precision = _resolve_precision(precision)
    grad_out = grad_out.contiguous().float()  # what the seed kernel reads (and the plan key sees)
    tensors = (grad_out, x, out, a, mean, trace, sqrt_trace, yzs, ts)
    with (_device_guard(x.device),
          _step_launches("backward", tensors, iters, vectorize, precision)):
        return _backward(grad_out, x, out, a, mean, trace, sqrt_trace, yzs, ts, iters, vectorize,
                         precision)


# The forward and the backward are custom operators (torch.library): opaque to torch.compile, which
# keeps them whole in its graph (no graph break, fullgraph=True works, CUDA graphs can replay the
# launches) instead of tracing into Triton's launcher. The forward returns the iterates the
# backward needs as extra outputs (3N-2 d×d matrices per sample: A, Y_1..Y_{N-1}, Z_1..Z_{N-1},
# T_2..T_N), kept rather than recomputed (GPU memory is cheaper than the products). They are saved
# through save_for_backward: autograd frees them after the backward, keeps them for
# retain_graph=True, and saved-tensor hooks (e.g. offloading to the CPU) apply.
@torch.library.custom_op("cvkit::isqrt_cov_triton", mutates_args=())
def _isqrt_cov_op(x: torch.Tensor, iters: int, vectorize: bool, precision: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor]:
    return _run_forward(x, iters, vectorize, precision)


@_isqrt_cov_op.register_fake
def _isqrt_cov_fake(x, iters, vectorize, precision):
    return tuple(x.new_empty(shape, dtype=torch.float32)
                 for shape in _saved_shapes(x.shape, iters, vectorize))


@torch.library.custom_op("cvkit::isqrt_cov_triton_backward", mutates_args=())
def _isqrt_cov_backward_op(grad_out: torch.Tensor, x: torch.Tensor, out: torch.Tensor,
                           a: torch.Tensor, mean: torch.Tensor, trace: torch.Tensor,
                           sqrt_trace: torch.Tensor, yzs: torch.Tensor, ts: torch.Tensor,
                           iters: int, vectorize: bool, precision: str) -> torch.Tensor:
    return _run_backward(grad_out, x, out, a, mean, trace, sqrt_trace, yzs, ts, iters, vectorize,
                         precision)


@_isqrt_cov_backward_op.register_fake
def _isqrt_cov_backward_fake(grad_out, x, *rest):
    return torch.empty_like(_as_channel_matrix(x)[0])  # the input's layout, as the kernel writes


def _setup_context(ctx, inputs, output):
    x, ctx.iters, ctx.vectorize, ctx.precision = inputs
    ctx.save_for_backward(x, *output)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero gradients for the iterates


def _isqrt_cov_autograd(ctx, grad_out, *_iterates):
    # only C is differentiable, so autograd calls this with its gradient (never None)
    return (_isqrt_cov_backward_op(grad_out, *ctx.saved_tensors, ctx.iters, ctx.vectorize,
                                   ctx.precision), None, None, None)


_isqrt_cov_op.register_autograd(_isqrt_cov_autograd, setup_context=_setup_context)


class _IsqrtCovFunction(torch.autograd.Function):
    """The same forward and backward in eager mode, without the custom operators' dispatch, which
    cost ~0.1 ms of host time per forward+backward on this project's 2-core machine (BENCHMARKS.md,
    covpool-host). Its one output is C; the iterates are saved, not returned (autograd's handling
    of six more outputs cost ~20 us there). torch.compile gets the operators (``_isqrt_cov``)."""

    @staticmethod
    def forward(ctx, x, iters, vectorize, precision):
        output = _run_forward(x, iters, vectorize, precision)
        ctx.iters, ctx.vectorize, ctx.precision = iters, vectorize, precision
        ctx.save_for_backward(x, *output)
        return output[0]

    @staticmethod
    @first_derivative_only("isqrt_cov_triton", "its backward is Triton kernels")
    def backward(ctx, grad_out):
        grad_x = _run_backward(grad_out, *ctx.saved_tensors, ctx.iters, ctx.vectorize,
                               ctx.precision)
        return grad_x, None, None, None


def _isqrt_cov(x, iters, vectorize, precision):
    """C: through the custom operators while torch.compile traces, through ``_IsqrtCovFunction``
    in eager mode."""
    if torch.compiler.is_compiling():
        return _isqrt_cov_op(x, iters, vectorize, precision)[0]
    return _IsqrtCovFunction.apply(x, iters, vectorize, precision)


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
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:  # as isqrt_cov
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    if not x.is_cuda and not interpreting():
        raise RuntimeError(
            f"isqrt_cov_triton needs a CUDA tensor (got one on {x.device}); to run the Triton "
            "kernels on the CPU set TRITON_INTERPRET=1, or use isqrt_cov(..., backend='torch')")
    if x.dim() not in (3, 4) or x.shape[1:].numel() == 0:
        raise ValueError(f"isqrt_cov_triton expects (B,C,H,W) maps or (B,N,C) tokens with "
                         f"channels and positions, got shape {tuple(x.shape)}")
    precision = _check_precision(precision)
    if x.shape[0] == 0:  # an empty batch gives an empty result (and a zero gradient)
        d = x.shape[1] if x.dim() == 4 else x.shape[2]
        shape = (0, d * (d + 1) // 2) if vectorize else (0, d, d)
        return x.float().sum() * 0 + torch.zeros(shape, device=x.device)
    return _isqrt_cov(x.float(), iters, vectorize, precision)
