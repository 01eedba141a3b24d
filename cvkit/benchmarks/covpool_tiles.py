"""``python tools/benchmark.py covpool-tiles --device cuda``: the Triton product kernel of
``isqrt_cov`` per launch kind and tile config.

The 18 product launches are 84 % of a forward+backward's GPU time at B=128, d=256 on an H100
(BENCHMARKS.md, run 6), and the autotuner only chooses among the configs in
``cvkit/kernels/isqrt_cov_kernels.py`` (each one costs compile time on every kernel variant). This
suite times the four launch kinds of a Newton-Schulz step, forward and backward, under each
config of a grid, beside the autotuner's choice, so the config list can be chosen from
measurements: time, achieved TFLOP/s (2 d^3 per product, full matrices) and bytes moved per second
(distinct matrices read and written once) against a device-to-device copy measured in the same
run. Each config's result is checked against the autotuned launch's.

On the CPU it runs only under ``TRITON_INTERPRET=1`` (times meaningless; for tests).
"""
from __future__ import annotations

import argparse
import os

import torch

from cvkit.benchmarks import machine_description
from cvkit.benchmarks.timing import median_seconds
from cvkit.kernels.isqrt_cov import PRECISIONS, _kernels, _pair, _products

# BLOCK, BLOCK_K, num_warps, num_stages
DEFAULT_CONFIGS = ("64,32,4,2", "64,32,4,3", "64,32,4,4", "64,64,4,2", "64,64,4,3",
                   "64,32,8,3", "64,64,8,3", "128,32,8,2", "128,32,8,3", "128,64,8,2")

# kind -> (products per sum, sums per launch, matrices read, matrices written, launches per
# forward+backward at N = 5: Y_1 and the final forward launch counted as T_k-like, dY_1 and
# the final backward launch as dT_k-like)
KINDS = {
    "forward T_k = 1.5 I - 0.5 Z Y": (1, 1, 2, 1, 6),
    "forward (Y_k, Z_k) = (Y, Z) T_k": (1, 2, 3, 2, 3),
    "backward dT_k = -0.5 (dZ Y + Z dY)": (2, 1, 4, 1, 6),
    "backward (dY_k, dZ_k)": (2, 2, 6, 2, 3),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"],
                        help="cuda (cpu only under TRITON_INTERPRET=1, for tests)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--precision", default="tf32x3", choices=PRECISIONS)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        metavar="BLOCK,BLOCK_K,WARPS,STAGES",
                        help="tile configs to time (default: a grid of %d)" % len(DEFAULT_CONFIGS))
    parser.add_argument("--seed", type=int, default=0)


def parse_config(text: str) -> dict:
    """"64,32,4,3" -> the launch keywords of ``_products(..., config=)``."""
    try:
        block, block_k, warps, stages = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"covpool-tiles: --configs takes BLOCK,BLOCK_K,WARPS,STAGES, got {text!r}")
    return {"BLOCK": block, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages}


def _launches(k, batch, d, precision, gen, device):
    """kind -> launch(config). The operands are powers of one symmetric matrix with eigenvalues
    in [-1, 1], as the iterates and tangents are polynomials in A: every product the kernel
    computes is then symmetric, as it assumes (random symmetric operands would not commute, and
    configs with different tiles would disagree). Timing does not depend on the values."""
    m = torch.randn(batch, d, d, generator=gen)
    a = ((m + m.transpose(1, 2)) / (8 * d) ** 0.5).to(device)
    powers = [a]
    for _ in range(5):
        powers.append(powers[-1] @ a)
    yz, dyz = torch.stack(powers[0:2]), torch.stack(powers[2:4])
    t, dt = powers[4], powers[5]
    one, two = torch.empty_like(t), torch.empty_like(yz)
    kw = {"precision": precision}
    calls = [
        lambda cfg: _products(k, one, [(yz[1], yz[0])], c_prod=-0.5, c_eye=1.5, config=cfg, **kw),
        lambda cfg: _products(k, two, [(_pair(yz), t)], config=cfg, **kw),
        lambda cfg: _products(k, one, [(dyz[1], yz[0]), (yz[1], dyz[0])], c_prod=-0.5,
                              config=cfg, **kw),
        lambda cfg: _products(k, two, [(_pair(dyz), t), (_pair(yz), dt)], config=cfg, **kw),
    ]
    return dict(zip(KINDS, calls))


def _compile_errors() -> tuple[type, ...]:
    """What Triton raises for a config that does not fit or build (shared memory, registers)."""
    from triton.compiler import errors as compiler_errors
    from triton.runtime import errors as runtime_errors

    names = ((runtime_errors, "OutOfResources"), (runtime_errors, "PTXASError"),
             (compiler_errors, "CompilationError"))
    return tuple(getattr(mod, name) for mod, name in names if hasattr(mod, name))


def _timer(device):
    if device == "cuda":
        from triton.testing import do_bench
        return lambda fn: do_bench(fn, warmup=10, rep=40, return_mode="median") / 1e3
    return lambda fn: median_seconds(fn, repeats=1, warmup=0)


def _copy_bandwidth(device) -> float:
    """Bytes read + written per second by a large device-to-device copy, measured now."""
    if device != "cuda":
        return float("nan")
    src = torch.empty(2 ** 28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _timer(device)(lambda: dst.copy_(src))


def run(args: argparse.Namespace) -> str:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("covpool-tiles: --device cuda but CUDA is not available")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise SystemExit("covpool-tiles: the CPU runs the kernels only under TRITON_INTERPRET=1")
    configs = {text: parse_config(text) for text in args.configs}
    gen = torch.Generator().manual_seed(args.seed)
    k = _kernels()
    b, d = args.batch, args.dim
    launches = _launches(k, b, d, args.precision, gen, device)
    timer = _timer(device)
    bandwidth = _copy_bandwidth(device)
    matrix_bytes = b * d * d * 4
    lines = [
        f"Command: `python tools/benchmark.py covpool-tiles --device {device} --batch {b} "
        f"--dim {d} --precision {args.precision}"
        + ("" if list(args.configs) == list(DEFAULT_CONFIGS)
           else " --configs " + " ".join(args.configs)) + "`", "",
        f"Machine: {machine_description(device)}", "",
        f"One product launch of `isqrt_cov`'s Triton kernel per row (B={b}, d={d}, "
        f"{args.precision}), median of "
        + ("`triton.testing.do_bench`" if device == "cuda" else "one interpreted run") +
        ". TFLOP/s: 2 d^3 per product "
        "(full matrices; the kernel computes the upper tiles only). GB/s: distinct matrices read "
        f"and written once; a 1 GiB device-to-device copy moved {bandwidth / 1e9:.0f} GB/s "
        "(read + written) in this run. Config = BLOCK, BLOCK_K, warps, stages.", "",
        "| launch | config | us | TFLOP/s | GB/s | of copy bandwidth | max rel diff vs autotuned |",
        "|---|---|---|---|---|---|---|"]
    modelled: dict[str, float] = {}
    compile_errors = _compile_errors()
    for kind, launch in launches.items():
        nprod, nsum, reads, writes, count = KINDS[kind]
        flops = 2.0 * d ** 3 * b * nprod * nsum
        moved = (reads + writes) * matrix_bytes
        ref = launch(None).clone()  # the autotuner's choice, also the reference values
        rows = {"autotuned": lambda: launch(None)}
        rows.update({text: (lambda cfg: lambda: launch(cfg))(cfg) for text, cfg in configs.items()})
        for text, fn in rows.items():
            try:
                diff = ((fn() - ref).norm() / ref.norm()).item()
                sec = timer(fn)
            except compile_errors as e:
                lines.append(f"| {kind} | {text} | does not compile: "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | |")
                modelled[text] = float("inf")
                continue
            flag = "" if diff < 1e-4 else " WRONG"
            lines.append(f"| {kind} | {text} | {sec * 1e6:.1f} | {flops / sec / 1e12:.1f} | "
                         f"{moved / sec / 1e9:.0f} | {moved / sec / bandwidth:.2f} | "
                         f"{diff:.1e}{flag} |")
            modelled[text] = modelled.get(text, 0.0) + count * sec
    lines += ["", "The 18 product launches of a forward+backward (N = 5) modelled per config as "
              + ", ".join(f"{v[4]} x {name}" for name, v in KINDS.items()) + ":", "",
              "| config | modelled product time per step, ms |", "|---|---|"]
    for text, sec in sorted(modelled.items(), key=lambda kv: kv[1]):
        lines.append(f"| {text} | {sec * 1e3:.3f} |" if sec != float("inf")
                     else f"| {text} | does not compile for every launch |")
    return "\n".join(lines)
