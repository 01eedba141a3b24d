"""``python tools/benchmark.py covpool-tiles --device cuda``: the Triton matrix kernels of
``isqrt_cov`` per launch kind and tile config.

The 18 product launches are 87 % of a forward+backward's GPU time at B=128, d=256 on an H100
(BENCHMARKS.md, run 7), and the autotuner only chooses among the configs in
``cvkit/kernels/isqrt_cov_kernels.py`` (each one costs compile time on every kernel variant). This
suite times the four launch kinds of a Newton-Schulz step, forward and backward, under each
config of a grid, beside the autotuner's choice, so the config list can be chosen from
measurements: time, achieved TFLOP/s (2 d^3 per product, full matrices) and bytes moved per second
(distinct matrices read and written once) against a device-to-device copy measured in the same
run. Then the same for the two other matrix kernels, one launch each per step, on a
``--size`` x ``--size`` map (14x14 as in ``covpool``): the covariance (forward) and the input
gradient (backward), each under a grid of its own. Each config's result is checked against the
autotuned launch's. It ends with three config lists chosen from the measurements, as the values
of ``CVKIT_ISQRT_COV_PRODUCT_CONFIGS`` (the fastest config of each product launch kind, at most
``--max-configs``), ``CVKIT_ISQRT_COV_COVARIANCE_CONFIGS`` and ``CVKIT_ISQRT_COV_GRADX_CONFIGS``
(the ``--max-configs`` fastest of each kernel) (``cvkit/kernels/tile_configs.py``), which make the
kernels autotune over exactly those lists in a later run.

Compiling the grids (every config for every launch kind) is most of the suite's time, so with
``--jobs N`` N worker processes compile them first, in parallel; the timing process then finds
each kernel in Triton's on-disk cache.

On the CPU it runs only under ``TRITON_INTERPRET=1`` (times meaningless; for tests).
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations
from multiprocessing import get_context

import torch

from cvkit.benchmarks import command_line, machine_description
from cvkit.benchmarks.timing import median_seconds
from cvkit.kernels.interpret import interpreting
from cvkit.kernels.isqrt_cov import (PRECISIONS, _as_channel_matrix, _covariance, _dot_partials,
                                     _grad_input, _kernels, _layout_args, _pair, _partials,
                                     _products, triton_cdiv)
from cvkit.kernels.tile_configs import (COVARIANCE_ENV_VAR, ENV_VAR, ENV_VARS, FIELDS,
                                        GRADX_BLOCKS, GRADX_ENV_VAR, GRADX_FIELDS, PRODUCT_BLOCKS,
                                        parse_tile_config)

# BLOCK, BLOCK_K, num_warps, num_stages. Run 7's grid, and since run 9: 32-wide tiles (36 of the
# 64 tiles of a d = 256 matrix are on or above the diagonal, against 10 of 16 64-wide ones: less
# work mirrored away; smaller than a Hopper warpgroup MMA, so the older MMA path) and a k-step of
# 128 (two steps of the k-loop at d = 256, the least pipeline fill).
DEFAULT_CONFIGS = ("64,32,4,2", "64,32,4,3", "64,32,4,4", "64,64,4,2", "64,64,4,3",
                   "64,32,8,3", "64,64,8,3", "128,32,8,2", "128,32,8,3", "128,64,8,2",
                   "32,32,4,3", "32,64,4,3", "64,128,4,2")

# The covariance kernel's grid (BLOCK, BLOCK_K, num_warps, num_stages; BLOCK_K steps along the
# positions): the kernel file's two configs (the products') first. At M = 196 (a 14x14 map) a
# k-step of 16, 32 or 64 spans 208, 224 or 256 positions; 32-, 64- and 128-wide tiles compute 36 of
# 64, 10 of 16 and 3 of 4 tiles of a d = 256 matrix.
DEFAULT_COVARIANCE_CONFIGS = ("64,32,4,4", "64,64,4,2", "64,32,4,3", "64,16,4,4", "32,32,4,3",
                              "32,64,4,2", "128,32,8,3", "128,64,8,2")
# The input gradient's grid (BLOCK_C, BLOCK_M, BLOCK_K, num_warps, num_stages): the kernel file's
# three configs first; position tiles of 16, 32, 64 and 128 (208, 224, 256 and 256 columns for
# M = 196), channel tiles of 64 to 256, k-steps of 32 and 64 channels.
DEFAULT_GRADX_CONFIGS = ("64,64,32,4,3", "128,64,32,8,3", "128,32,32,4,3", "64,32,32,4,3",
                         "128,32,64,4,3", "128,16,32,4,3", "256,32,32,8,3", "128,128,32,8,3")
# Every config of these two grids compiled for sm_90 at tf32x3 within a block's shared memory
# (Triton 3.8 on the CPU, ``compile_for_hopper`` of tests/test_kernels_compile_hopper.py); none
# has been timed on a GPU yet.

# kind -> (products per sum, sums per launch, matrices read, matrices written, launches per
# forward+backward at N = 5: Y_1 and the final forward launch counted as T_k-like, dY_1 and
# the final backward launch as dT_k-like)
KINDS = {
    "forward T_k = 1.5 I - 0.5 Z Y": (1, 1, 2, 1, 6),
    "forward (Y_k, Z_k) = (Y, Z) T_k": (1, 2, 3, 2, 3),
    "backward dT_k = -0.5 (dZ Y + Z dY)": (2, 1, 4, 1, 6),
    "backward (dY_k, dZ_k)": (2, 2, 6, 2, 3),
}

# The two kernels with one launch each per step: kind -> (the option giving its grid, its
# tile-config variable, its tile sizes, d x d and d x M matrices read and written: the covariance
# reads X and writes A and Z_1, the input gradient reads dL/dA and X and writes dL/dX)
KERNEL_KINDS = {
    "covariance Sigma = Xc Xc^T / M, A, Z_1": ("--covariance-configs", COVARIANCE_ENV_VAR,
                                               PRODUCT_BLOCKS, 2, 1),
    "input gradient dL/dX": ("--gradx-configs", GRADX_ENV_VAR, GRADX_BLOCKS, 1, 2),
}

ALWAYS_PRINTED = ("device", "batch", "dim", "size", "precision")
"""Options the report's command names even at their defaults (with every one that differs)."""


def command(args: argparse.Namespace) -> str:
    """The report's command line, with the tile-config overrides ahead when set (the autotuned
    rows choose among their configs)."""
    return command_line("covpool-tiles", args, add_arguments, ALWAYS_PRINTED, env=ENV_VARS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"],
                        help="cuda (cpu only under TRITON_INTERPRET=1, for tests)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--size", type=int, default=14,
                        help="feature map side of the covariance and input-gradient launches "
                             "(M = size^2; default 14, as covpool's)")
    parser.add_argument("--precision", default="tf32x3", choices=PRECISIONS)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar=FIELDS,
                        help="product tile configs to time (default: a grid of %d)"
                             % len(DEFAULT_CONFIGS))
    parser.add_argument("--covariance-configs", nargs="+",
                        default=list(DEFAULT_COVARIANCE_CONFIGS), metavar=FIELDS,
                        help="covariance tile configs to time (default: a grid of %d)"
                             % len(DEFAULT_COVARIANCE_CONFIGS))
    parser.add_argument("--gradx-configs", nargs="+", default=list(DEFAULT_GRADX_CONFIGS),
                        metavar=GRADX_FIELDS,
                        help="input-gradient tile configs to time (default: a grid of %d)"
                             % len(DEFAULT_GRADX_CONFIGS))
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes that compile the grids before timing (default: up to 8 "
                             "on cuda, none on cpu; 0 or 1: compile while timing)")
    parser.add_argument("--max-configs", type=int, default=2,
                        help="most configs in each chosen list (default 2, as the product list "
                             "in the kernel file)")
    parser.add_argument("--seed", type=int, default=0)


def parse_config(text: str, option: str = "--configs",
                 blocks: tuple[str, ...] = PRODUCT_BLOCKS) -> dict:
    """"64,32,4,3" -> the launch keywords of ``_products(..., config=)`` (``blocks``: the tile
    sizes the option's configs give)."""
    try:
        return parse_tile_config(text, f"covpool-tiles {option}", blocks)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _grids(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """Launch kind -> {config text: launch keywords}: the product grid for each product kind, the
    covariance's and the input gradient's for theirs."""
    grids = dict.fromkeys(KINDS, {text: parse_config(text) for text in args.configs})
    for kind, (option, _, blocks, _, _) in KERNEL_KINDS.items():
        grids[kind] = {text: parse_config(text, option, blocks)
                       for text in getattr(args, option[2:].replace("-", "_"))}
    return grids


def _launches(k, batch, d, size, precision, gen, device):
    """kind -> launch(config), returning the launch's output. The product operands are powers of
    one symmetric matrix with eigenvalues in [-1, 1], as the iterates and tangents are polynomials
    in A: every product the kernel computes is then symmetric, as it assumes (random symmetric
    operands would not commute, and configs with different tiles would disagree). The covariance
    and the input gradient read random size x size maps (the input gradient with zero partial
    sums: its rows show the product alone; the trace term is the same for every config). Timing
    does not depend on the values."""
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
    xm, _, positions, strides = _as_channel_matrix(
        torch.randn(batch, d, size, size, generator=gen).to(device))
    layout, mults = _layout_args(positions, strides)
    feats = xm.flatten(2)
    mean, var = feats.mean(-1), feats.var(-1, unbiased=False)
    a_out, z1_out = torch.empty_like(t), torch.empty_like(t)
    trace = var.sum(-1)  # the input gradient's; the covariance writes its own below
    trace_out, sqrt_trace = torch.empty_like(trace), torch.empty_like(trace)
    gc_part = _partials(batch, triton_cdiv(d, 32) ** 2, device).zero_()  # the seed's tiles
    ha_part = _dot_partials(k, batch, d, device).zero_()
    grad_x = torch.empty_like(xm)
    calls += [
        lambda cfg: _covariance(k, xm, layout, mults, mean, var, a_out, z1_out, trace_out,
                                sqrt_trace, precision, cfg),
        lambda cfg: _grad_input(k, powers[0], xm, positions, layout, mults, mean, trace, gc_part,
                                ha_part, grad_x, precision, cfg),
    ]
    return dict(zip([*KINDS, *KERNEL_KINDS], calls))


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


# Worker processes of ``precompile``: each builds the launches once, then compiles (launches once)
# the (config, kind) pairs it is given; the kernels land in Triton's on-disk cache.
_WORKER_LAUNCHES: dict = {}


def _init_worker(batch, d, size, precision, seed, device):
    gen = torch.Generator().manual_seed(seed)
    _WORKER_LAUNCHES.update(_launches(_kernels(), batch, d, size, precision, gen, device))


def _compile_one(task) -> bool:
    kind, config = task
    try:
        _WORKER_LAUNCHES[kind](config)
    except _compile_errors():
        return False  # reported by the timing process, which meets the same error
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return True


def precompile(args: argparse.Namespace, grids: dict[str, dict[str, dict]], jobs: int) -> str:
    """Compiles every (launch kind, config) of ``grids`` (``_grids``) in ``jobs`` processes
    (spawned: CUDA does not survive a fork); returns a line for the report."""
    tasks = [(kind, config) for kind, grid in grids.items() for config in grid.values()]
    t0 = time.perf_counter()
    try:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(args.batch, args.dim, args.size, args.precision,
                                           args.seed, args.device)) as pool:
            built = sum(pool.map(_compile_one, tasks))
    except Exception as e:  # only a head start: the timing process compiles what is missing
        return (f"Compiling in {jobs} processes failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:100] if str(e) else ''}); compiled while timing.")
    return (f"Compiled before timing in {jobs} processes: {built} of {len(tasks)} launches "
            f"(configs x launch kinds) in {time.perf_counter() - t0:.0f} s.")


def modelled_step(times: dict[str, dict[str, float]], text: str) -> float:
    """Seconds of the 18 product launches of a step with config ``text`` for every launch kind
    (``times[kind][config]``; inf where it lacks a kind: did not compile, or was wrong)."""
    return sum(KINDS[kind][4] * per_config.get(text, float("inf"))
               for kind, per_config in times.items())


def modelled_list(times: dict[str, dict[str, float]], texts) -> float:
    """Seconds of the 18 product launches of a step if the autotuner picks, per launch kind, the
    fastest config of the list ``texts``."""
    return sum(KINDS[kind][4] * min((per_config[t] for t in texts if t in per_config),
                                    default=float("inf"))
               for kind, per_config in times.items())


def choose(times: dict[str, dict[str, float]], max_configs: int = 2) -> list[str]:
    """A config list for the autotuner from ``times[kind][config]`` (seconds; only configs that
    compiled and agreed with the autotuned launch; "autotuned" itself is not a config): the
    fastest config of each launch kind, or, if those are more than ``max_configs`` (each config
    is compiled per kernel variant and precision), the ``max_configs`` configs with the least
    modelled step time. Ordered by their own modelled step time (a config missing a kind last)."""
    winners = []
    for per_config in times.values():
        valid = {text: sec for text, sec in per_config.items() if text != "autotuned"}
        if valid:
            best = min(valid, key=valid.get)
            if best not in winners:
                winners.append(best)
    if len(winners) > max_configs:
        candidates = sorted({t for per_config in times.values() for t in per_config}
                            - {"autotuned"})
        winners = list(min(combinations(candidates, max_configs),
                           key=lambda texts: modelled_list(times, texts)))
    return sorted(winners, key=lambda text: modelled_step(times, text))


def fastest(times: dict[str, float], max_configs: int = 2) -> list[str]:
    """The config list of a kernel with one launch per step from ``times[config]`` (seconds; as
    ``choose``'s): its ``max_configs`` fastest configs, fastest first."""
    return sorted((t for t in times if t != "autotuned"), key=times.get)[:max_configs]


def _time_configs(launch, configs: dict[str, dict], timer, kind: str, flops: float, moved: float,
                  bandwidth: float, lines: list[str]) -> tuple[dict[str, float], set[str]]:
    """Times ``launch`` autotuned (also the reference values) and under each config, a table row
    each into ``lines``; returns the seconds of the rows that compiled and agreed with the
    autotuned launch (the "autotuned" row among them) and the configs that did not compile."""
    ref = launch(None).clone()
    rows = {"autotuned": lambda: launch(None)}
    rows.update({text: (lambda cfg: lambda: launch(cfg))(cfg) for text, cfg in configs.items()})
    times, failed = {}, set()
    for text, fn in rows.items():
        try:
            diff = ((fn() - ref).norm() / ref.norm()).item()
            sec = timer(fn)
        except _compile_errors() as e:
            lines.append(f"| {kind} | {text} | does not compile: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | |")
            failed.add(text)
            continue
        wrong = diff >= 1e-4
        lines.append(f"| {kind} | {text} | {sec * 1e6:.1f} | {flops / sec / 1e12:.1f} | "
                     f"{moved / sec / 1e9:.0f} | {moved / sec / bandwidth:.2f} | "
                     f"{diff:.1e}{' WRONG' if wrong else ''} |")
        if not wrong:
            times[text] = sec
    return times, failed


def run(args: argparse.Namespace) -> str:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("covpool-tiles: --device cuda but CUDA is not available")
    if device == "cpu" and not interpreting():
        raise SystemExit("covpool-tiles: the CPU runs the kernels only under TRITON_INTERPRET=1")
    grids = _grids(args)
    tasks = sum(len(grid) for grid in grids.values())
    jobs = args.jobs if args.jobs is not None else (
        min(8, os.cpu_count() or 1, tasks) if device == "cuda" else 0)
    compiled_line = precompile(args, grids, jobs) if jobs > 1 else ""
    gen = torch.Generator().manual_seed(args.seed)
    k = _kernels()
    b, d, m = args.batch, args.dim, args.size ** 2
    launches = _launches(k, b, d, args.size, args.precision, gen, device)
    timer = _timer(device)
    bandwidth = _copy_bandwidth(device)
    matrix_bytes = b * d * d * 4
    table = ["| launch | config | us | TFLOP/s | GB/s | of copy bandwidth | "
             "max rel diff vs autotuned |", "|---|---|---|---|---|---|---|"]
    lines = [
        f"Command: `{command(args)}`", "",
        f"Machine: {machine_description(device)}", "",
        f"One product launch of `isqrt_cov`'s Triton kernel per row (B={b}, d={d}, "
        f"{args.precision}), median of "
        + ("`triton.testing.do_bench`" if device == "cuda" else "one interpreted run") +
        ". TFLOP/s: 2 d^3 per product "
        "(full matrices; the kernel computes the upper tiles only). GB/s: distinct matrices read "
        f"and written once; a 1 GiB device-to-device copy moved {bandwidth / 1e9:.0f} GB/s "
        "(read + written) in this run. Config = BLOCK, BLOCK_K, warps, stages."
        + (" " + compiled_line if compiled_line else ""), "", *table]
    times: dict[str, dict[str, float]] = {}
    failed: set[str] = set()  # product configs that do not compile for some launch kind
    for kind, (nprod, nsum, reads, writes, _) in KINDS.items():
        times[kind], kind_failed = _time_configs(
            launches[kind], grids[kind], timer, kind, 2.0 * d ** 3 * b * nprod * nsum,
            (reads + writes) * matrix_bytes, bandwidth, lines)
        failed |= kind_failed
    product_grid = grids[next(iter(KINDS))]  # the same for every product launch kind
    modelled = {text: modelled_step(times, text) for text in ["autotuned", *product_grid]}
    lines += ["", "The 18 product launches of a forward+backward (N = 5) modelled per config as "
              + ", ".join(f"{v[4]} x {name}" for name, v in KINDS.items()) + ":", "",
              "| config | modelled product time per step, ms |", "|---|---|"]
    for text, sec in sorted(modelled.items(), key=lambda kv: kv[1]):
        lines.append(f"| {text} | {sec * 1e3:.3f} |" if sec != float("inf") else
                     f"| {text} | {'does not compile' if text in failed else 'wrong'} "
                     "for some launch kind |")
    chosen = {ENV_VAR: choose(times, args.max_configs)}
    lines += ["", f"Chosen for the products (at most {args.max_configs} configs: the fastest of "
              "each launch kind, or the set with the least modelled time): modelled "
              f"{modelled_list(times, chosen[ENV_VAR]) * 1e3:.3f} ms per step with the autotuner "
              "picking per launch kind.", "",
              f"The covariance kernel (one launch per forward: Sigma = Xc Xc^T / M of a "
              f"{args.size}x{args.size} map, M = {m}, then A = Sigma / tr(Sigma) and Z_1) and the "
              "input-gradient kernel (one launch per backward: dL/dX = (2/M) G_Sigma Xc, here with "
              "zero partial sums) per row, timed and checked as above. TFLOP/s: 2 d^2 M per "
              "sample (full matrices); GB/s: X read and A, Z_1 written once (covariance), dL/dA "
              "and X read and dL/dX written once (input gradient). Config = BLOCK, BLOCK_K (the "
              "step along the positions), warps, stages for the covariance; BLOCK_C, BLOCK_M, "
              "BLOCK_K, warps, stages for the input gradient.", "", *table]
    for kind, (_, variable, _, square, maps) in KERNEL_KINDS.items():
        kernel_times, _ = _time_configs(
            launches[kind], grids[kind], timer, kind, 2.0 * d * d * m * b,
            (square * d * d + maps * d * m) * b * 4, bandwidth, lines)
        chosen[variable] = fastest(kernel_times, args.max_configs)
    lines += ["", f"Chosen for these: at most {args.max_configs} configs each, the fastest that "
              "compiled and agreed, fastest first. The variables make the kernels autotune over "
              "these lists (`cvkit/kernels/tile_configs.py`):", ""]
    lines += [f"{variable}={';'.join(chosen[variable])}" for variable in ENV_VARS]
    return "\n".join(lines)
