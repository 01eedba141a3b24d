"""``python tools/benchmark.py covpool-host``: host time of the Triton iSQRT-COV forward+backward,
measured without a GPU.

A synchronised step of the Triton path costs more host time than GPU time on the H100 (~22 kernel
launches; BENCHMARKS.md, run 7), so the host side is worth measuring on its own. Here every Triton
JIT launch is replaced by a no-op and the kernels never compile: what is timed is cvkit's launch
sequence, the custom operators, autograd and Triton's autotuner layer, on this machine's CPU.
Triton's JIT launcher itself (argument binding, the driver call) is not included: it needs a GPU.
The outputs are uninitialised memory; only the time counts.

Two candidates, interleaved: cvkit as it launches (each kernel's tile config chosen once per
autotuning key, then launched directly), and every launch through Triton's ``Autotuner.run`` (the
remembered choices cleared before each launch).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

import torch

import cvkit.kernels.isqrt_cov as impl
from cvkit.benchmarks import machine_description
from cvkit.benchmarks.timing import interleaved_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=2,
                        help="batch size (launch overhead does not depend on it; small keeps the "
                             "CPU allocator's cost of big buffers out)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--size", type=int, default=14, help="feature map side (M = size^2)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="forward+backward steps per round")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")


@contextlib.contextmanager
def no_op_launches(k, launches: list[str]):
    """Every kernel of the kernel module ``k`` launches nothing (its JIT function's ``run`` is a
    no-op that appends the kernel's name to ``launches``), and an autotuner times every config
    alike, so it picks its first (no compilation, no GPU). The autotuners' choices and cvkit's
    remembered ones are put back as they were afterwards."""
    chosen = dict(impl._CHOSEN)
    jit_functions, autotuners = [], []
    for name in dir(k):
        obj = getattr(k, name)
        if name.endswith("_kernel") and hasattr(obj, "fn") and hasattr(obj, "configs"):
            autotuners.append(obj)
            jit_functions.append((name, obj.fn))
        elif name.endswith("_kernel") and hasattr(obj, "run"):
            jit_functions.append((name, obj))
    caches = [dict(tuner.cache) for tuner in autotuners]
    try:
        for name, fn in jit_functions:
            fn.run = (lambda kernel: lambda *args, **kwargs: launches.append(kernel))(name)
        for tuner in autotuners:
            tuner._bench = lambda *args, config, **kwargs: 1.0
        yield
    finally:
        for _, fn in jit_functions:
            del fn.run  # the class's method again
        for tuner, cache in zip(autotuners, caches):
            del tuner._bench
            tuner.cache.clear()
            tuner.cache.update(cache)
        impl._CHOSEN.clear()
        impl._CHOSEN.update(chosen)


def run(args: argparse.Namespace) -> str:
    if impl._interpreting():
        raise SystemExit("covpool-host times the compiled-mode launch path: unset TRITON_INTERPRET")
    k = impl._kernels()
    x = torch.randn(args.batch, args.dim, args.size, args.size, requires_grad=True)
    launches: list[str] = []

    def steps(forget_choices: bool):
        def go():
            for _ in range(args.steps):
                if forget_choices:
                    impl._CHOSEN.clear()
                out = impl._isqrt_cov_op(x, args.iters, True, "tf32x3")[0]
                out.backward(torch.ones_like(out))
        return go

    cands = {"cvkit (chosen config reused per key)": steps(False),
             "every launch through Triton's Autotuner.run": steps(True)}
    with no_op_launches(k, launches):
        times = interleaved_seconds(cands, repeats=args.repeats, warmup=1)
        launches.clear()
        steps(False)()
    per_step = len(launches) // args.steps
    ms = {name: statistics.median(t) / args.steps * 1e3 for name, t in times.items()}
    base = ms["every launch through Triton's Autotuner.run"]
    lines = [
        f"Host time of one Triton iSQRT-COV forward+backward without a GPU (B={args.batch}, "
        f"d={args.dim}, {args.size}x{args.size}, {args.iters} iterations, tf32x3 kernels; "
        f"{per_step} launches per step, each a no-op): cvkit's launch sequence, the custom "
        "operators, autograd and Triton's autotuner layer; not Triton's JIT launcher. Median of "
        f"{args.repeats} interleaved rounds of {args.steps} steps.",
        "",
        "| candidate | host ms per forward+backward | per launch, us "
        "| vs Autotuner.run each launch |",
        "|---|---|---|---|",
    ]
    for name, value in ms.items():
        lines.append(f"| {name} | {value:.3f} | {value * 1e3 / per_step:.1f} | "
                     f"{base / value:.2f}x |")
    lines += ["", f"Command: `python tools/benchmark.py covpool-host --batch {args.batch} --dim "
              f"{args.dim} --size {args.size} --iters {args.iters} --steps {args.steps} "
              f"--repeats {args.repeats}`", f"Machine: {machine_description('cpu')}"]
    return "\n".join(lines)
