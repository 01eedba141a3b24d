"""``python tools/benchmark.py covpool``: iSQRT-COV forward+backward time and extra peak memory.

CPU (default): B=32, C=256, 14x14, fp32 — ``isqrt_cov(backend="torch")`` beside a straightforward
implementation of the same maths written here (explicit M x M centring matrix Ibar, autograd through
the Newton-Schulz loop, every iterate stored), and, for reference, the same with a centred
covariance. Target (issue 3): >= 2x faster and <= 1/2 the extra peak memory of the straightforward
one. ``--device cuda``: B in {32,128,256}, d in {128,256}, with the Triton kernel as a candidate,
time, peak memory and achieved TFLOP/s against a matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse

import torch

from cvkit.benchmarks import command_line, machine_description
from cvkit.benchmarks.timing import cpu_peak_memory_bytes, interleaved_median_seconds
from cvkit.kernels.isqrt_cov import DIRECT_LAUNCH_ENV
from cvkit.kernels.tile_configs import ENV_VARS
from cvkit.layers.covpool import _isqrt_cov_torch, isqrt_cov, triu_vectorize


# ----------------------------------------------------------------------------------------------
# the straightforward implementations (the baselines)
# ----------------------------------------------------------------------------------------------
def _newton_schulz_autograd(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Literal coupled Newton-Schulz (paper Eq. 2); autograd keeps every iterate."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a, eye
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z.bmm(y))
        y, z = y.bmm(t), t.bmm(z)
    return y


def _sqrt_normalise(sigma: torch.Tensor, iters: int) -> torch.Tensor:
    trace = sigma.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    return triu_vectorize(_newton_schulz_autograd(sigma / trace, iters) * trace.sqrt())


def straightforward_isqrt_cov(x: torch.Tensor, iters: int = 5) -> torch.Tensor:
    """Sigma = X Ibar X^T with the M x M centring matrix Ibar built per batch (as the official
    code does), then autograd through the loop."""
    b, c = x.shape[:2]
    feats = x.reshape(b, c, -1)
    m = feats.shape[-1]
    ibar = (torch.eye(m, dtype=x.dtype, device=x.device) - 1.0 / m) / m
    ibar = ibar.expand(b, m, m).contiguous()
    return _sqrt_normalise(feats.bmm(ibar).bmm(feats.transpose(1, 2)), iters)


def centred_autograd_isqrt_cov(x: torch.Tensor, iters: int = 5) -> torch.Tensor:
    """Centred covariance (no Ibar), autograd through the loop."""
    b, c = x.shape[:2]
    feats = x.reshape(b, c, -1)
    centred = feats - feats.mean(-1, keepdim=True)
    return _sqrt_normalise(centred.bmm(centred.transpose(1, 2)) / feats.shape[-1], iters)


def _cvkit_torch(x, iters):
    return isqrt_cov(x, iters, backend="torch")


def _cvkit_torch_ns(x, iters):
    """The torch backend's CUDA method (Newton-Schulz + hand-written adjoint), forced on the CPU
    to show why the CPU uses eigh."""
    return triu_vectorize(_isqrt_cov_torch(x, iters, method="ns"))


def _cvkit_triton(x, iters):
    return isqrt_cov(x, iters, backend="triton")


def _fwd_bwd(fn, x, weight, iters, matmul_precision="highest"):
    """One forward+backward; ``matmul_precision="high"`` runs it with TF32 matmuls (PyTorch's
    matmuls and cvkit's Triton kernels both follow ``torch.get_float32_matmul_precision``)."""
    def step():
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(matmul_precision)
        try:
            x.grad = None
            (fn(x, iters) * weight).sum().backward()
        finally:
            torch.set_float32_matmul_precision(previous)
    return step


def nominal_flops(b: int, c: int, m: int, iters: int) -> float:
    """FLOPs credited to one forward+backward, the same for every candidate: 3x the forward of
    the Newton-Schulz formulation (covariance 2BC^2M + the 3N-3 products of the cheapest
    loop, max(1, 3N-3), each 2BC^3), the usual forward+backward = 3x forward convention."""
    products = max(1, 3 * iters - 3)
    return 3.0 * (2.0 * b * c * c * m + products * 2.0 * b * c ** 3)


# ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes (default: 32 on CPU, 32 128 256 on CUDA)")
    parser.add_argument("--dim", type=int, nargs="+", default=None,
                        help="channels d (default: 256 on CPU, 128 256 on CUDA)")
    parser.add_argument("--size", type=int, default=14, help="feature map side (M = size^2)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cuda-graph", action="store_true",
                        help="time each forward+backward replayed from a CUDA graph: GPU time "
                             "without Python/launch overhead (peak memory from an eager step)")
    parser.add_argument("--no-tf32", action="store_true",
                        help="on CUDA, leave out the TF32 rows (fewer Triton kernels to compile)")


TF32_SUFFIX = ", TF32"


def _candidates(device: str, tf32: bool = True) -> dict:
    """name -> function. On CUDA the fp32 rows are followed by TF32 rows unless ``tf32`` is false
    (the same functions under ``set_float32_matmul_precision("high")``, names ending in
    TF32_SUFFIX), the option the issue allows: compare a TF32 row with the TF32 straightforward
    row."""
    cands = {"straightforward (Ibar, autograd)": straightforward_isqrt_cov,
             "centred cov, autograd": centred_autograd_isqrt_cov,
             "cvkit isqrt_cov (torch)": _cvkit_torch}
    if device == "cuda":
        cands["cvkit isqrt_cov (triton)"] = _cvkit_triton
        if tf32:
            for name in ("straightforward (Ibar, autograd)", "cvkit isqrt_cov (torch)",
                         "cvkit isqrt_cov (triton)"):
                cands[name + TF32_SUFFIX] = cands[name]
    else:
        cands["cvkit torch, NS-adjoint method (CUDA's)"] = _cvkit_torch_ns
    return cands


def _peak_bytes(step, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return cpu_peak_memory_bytes(step)


def _matmul_peak_tflops(device: str) -> dict[str, float]:
    """Achievable matmul throughput on this device, measured now: fp32 and TF32."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    out = {}
    modes = [("fp32", False), ("tf32", True)] if device == "cuda" else [("fp32", False)]
    for name, tf32 in modes:
        if device == "cuda":
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            sec = interleaved_median_seconds({name: lambda: a @ a}, repeats=5, warmup=2,
                                             device=device)[name]
        finally:
            if device == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = previous
        out[name] = 2.0 * n ** 3 / sec / 1e12
    return out


def _graphed(step):
    """``step`` captured once in a CUDA graph (after warm-up on a side stream, as PyTorch's docs
    prescribe); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _measure(device, b, c, size, iters, repeats, seed, cuda_graph=False, tf32=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, size, size, generator=gen).to(device).requires_grad_()
    weight = torch.randn(c * (c + 1) // 2, generator=gen).to(device)
    rows, steps, peaks = {}, {}, {}
    for name, fn in _candidates(device, tf32).items():
        step = _fwd_bwd(fn, x, weight, iters,
                        "high" if name.endswith(TF32_SUFFIX) else "highest")
        try:
            step()  # warm-up and availability check (e.g. the Triton kernel)
            peaks[name] = _peak_bytes(step, device)
            steps[name] = _graphed(step) if cuda_graph else step
        except (RuntimeError, ImportError, NotImplementedError) as e:
            rows[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"}
    times = interleaved_median_seconds(steps, repeats=repeats, warmup=1, device=device)
    flops = nominal_flops(b, c, size * size, iters)
    for name in steps:
        rows[name] = {"seconds": times[name], "peak": peaks[name],
                      "tflops": flops / times[name] / 1e12}
    return rows


def command(args: argparse.Namespace) -> str:
    """The report's command line, with the kernels' tile-config override and direct-launch setting
    ahead when set (they change what the Triton rows measure)."""
    return command_line("covpool", args, add_arguments, env=(*ENV_VARS, DIRECT_LAUNCH_ENV))


def run(args: argparse.Namespace) -> str:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("covpool benchmark: --device cuda but CUDA is not available")
    if args.cuda_graph and device != "cuda":
        raise SystemExit("covpool benchmark: --cuda-graph needs --device cuda")
    batches = args.batch or ([32] if device == "cpu" else [32, 128, 256])
    dims = args.dim or ([256] if device == "cpu" else [128, 256])
    peaks = _matmul_peak_tflops(device)
    peak_text = ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in peaks.items())
    base_name = "straightforward (Ibar, autograd)"
    lines = [f"Command: `{command(args)}`", "",
             f"Machine: {machine_description(device)}", "",
             f"Forward+backward of `(isqrt_cov(x) * w).sum()`, fp32, {args.size}x{args.size} map, "
             f"{args.iters} iterations; median of {args.repeats} interleaved runs"
             + (", each replayed from a CUDA graph (no Python or launch overhead)"
                if args.cuda_graph else "") + ". Peak = extra "
             f"peak memory during one forward+backward "
             + ("(`torch.cuda.max_memory_allocated`)" if device == "cuda" else
                "(live tensor storages, `cvkit.benchmarks.timing.cpu_peak_memory_bytes`)")
             + f". Matmul peak measured in this run: {peak_text}; TFLOP/s counts "
             "`nominal_flops` (3x the Newton-Schulz forward) for every candidate.", "",
             "Speed-up and memory columns compare with the straightforward row (and cvkit's "
             "PyTorch path) of the same matmul precision.", "",
             "| B | d | candidate | ms | speed-up vs straightforward | speed-up vs cvkit torch | "
             "extra peak MB | memory vs straightforward | TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in batches:
        for c in dims:
            rows = _measure(device, b, c, args.size, args.iters, args.repeats, args.seed,
                            args.cuda_graph, not args.no_tf32)
            for name, r in rows.items():
                if "error" in r:
                    lines.append(f"| {b} | {c} | {name} | not run: {r['error']} | | | | | |")
                    continue
                suffix = TF32_SUFFIX if name.endswith(TF32_SUFFIX) else ""
                base = rows.get(base_name + suffix, {})
                torch_path = rows.get("cvkit isqrt_cov (torch)" + suffix, {})
                speed = (f"{base['seconds'] / r['seconds']:.2f}x" if "seconds" in base else "")
                vs_torch = (f"{torch_path['seconds'] / r['seconds']:.2f}x"
                            if "seconds" in torch_path else "")
                mem = (f"{r['peak'] / base['peak']:.2f}" if base.get("peak") else "")
                lines.append(f"| {b} | {c} | {name} | {r['seconds'] * 1e3:.1f} | {speed} | "
                             f"{vs_torch} | {r['peak'] / 2 ** 20:.1f} | {mem} | "
                             f"{r['tflops']:.3f} |")
    return "\n".join(lines)
