"""``python tools/benchmark.py covpool-host [--device cuda]``: host time of the Triton iSQRT-COV
forward+backward, and how much of it is Triton's kernel launcher.

A synchronised step of the Triton path took more wall-clock than GPU time on the H100 (4.0-4.8 ms
for 2.1-2.2 ms, BENCHMARKS.md run 7): the host side is worth measuring on its own.

- On the CPU (default) every launch goes through Triton's JIT launcher (argument binding,
  specialisation, cache key and lookup) to a stand-in compiled kernel that does nothing, with a
  stand-in driver: the kernels never compile. What is timed is the whole host side but the
  compiled kernel's C launcher and the driver call (a few us per launch): cvkit's launch
  sequence, autograd and Triton's launcher, on this machine's CPU. The outputs are uninitialised
  memory.
- With ``--device cuda`` the kernels run. Per step: the host time until the step returns (every
  kernel enqueued) and the wall-clock of the synchronised step. When the two are close, the GPU
  waits for the host. PyTorch's profiler shows the host side call by call (the CUDA runtime and
  driver calls too), and ``torch.cuda.set_sync_debug_mode`` names any synchronising call PyTorch
  makes in a step.

Both modes time each JIT launch on its own as well (``kernel.fn.run``: Triton's argument binding,
specialisation, cache lookup and the launch, real or stand-in), per kernel, in steps through the
JIT functions; the rest of the host time is cvkit's side. Four candidates, interleaved: cvkit as
it launches in eager mode (an ``autograd.Function``; a call's launches recorded per plan key,
then replayed over later calls' buffers below Triton's JIT functions: direct launches), the same
through the JIT functions (``CVKIT_ISQRT_COV_DIRECT_LAUNCH=0``; each kernel's tile config chosen
once per autotuning key, then launched through its JIT function), the same through the custom
operators that torch.compile puts in its graph (called eagerly here: their dispatch costs host
time), and every launch through Triton's ``Autotuner.run`` (nothing remembered, as until session
7).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
import warnings
from collections import defaultdict

import torch

import cvkit.kernels.isqrt_cov as impl
from cvkit.benchmarks import command_line, machine_description
from cvkit.benchmarks.timing import interleaved_seconds, synchronize
from cvkit.kernels.interpret import interpreting
from cvkit.kernels.tile_configs import ENV_VARS

CVKIT = "cvkit (direct launches of the recorded kernels)"
JIT = f"the same through Triton's JIT functions ({impl.DIRECT_LAUNCH_ENV}=0)"
OPERATORS = "the same through the custom operators (torch.compile's path)"
AUTOTUNER = "every launch through Triton's Autotuner.run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu: launches stop at a stand-in compiled kernel (no GPU needed); "
                             "cuda: the kernels run")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default 2 on the CPU: launch overhead does not depend "
                             "on it and a small one keeps the CPU allocator's cost of big buffers "
                             "out; 128 on CUDA, the issue's target shape)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--size", type=int, default=14, help="feature map side (M = size^2)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50,
                        help="forward+backward steps per candidate and repeat; also the steps "
                             "whose launches are timed one by one")
    parser.add_argument("--repeats", type=int, default=7,
                        help="repeats (the timed steps per candidate: repeats x steps)")
    parser.add_argument("--no-direct", action="store_true",
                        help="every candidate through Triton's JIT functions (cvkit's default, "
                             "direct launches, left out)")


ALWAYS_PRINTED = ("device", "dim", "size", "iters", "steps", "repeats")
"""Options the report's command names even at their defaults (--batch too when given)."""


def command(args: argparse.Namespace) -> str:
    """The report's command line, with the kernels' tile-config override ahead when set (it
    changes the configs the autotuner times and chooses among)."""
    return command_line("covpool-host", args, add_arguments, ALWAYS_PRINTED, env=ENV_VARS)


def _jit_functions(k) -> list[tuple[str, object]]:
    """(name, JIT function) of every kernel of the kernel module ``k`` (for an autotuned kernel,
    the JIT function below its autotuner)."""
    found = []
    for name in dir(k):
        obj = getattr(k, name)
        if name.endswith("_kernel") and hasattr(obj, "fn") and hasattr(obj, "configs"):
            found.append((name, obj.fn))
        elif name.endswith("_kernel") and hasattr(obj, "run"):
            found.append((name, obj))
    return found


def _autotuners(k) -> list:
    return [getattr(k, name) for name in dir(k)
            if name.endswith("_kernel") and hasattr(getattr(k, name), "configs")]


@contextlib.contextmanager
def _patched_runs(k, make_run):
    """Each JIT function's ``run`` replaced by ``make_run(name, previous_run)`` (an instance
    attribute over the class's method); put back as it was afterwards, so patches nest."""
    saved = []
    try:
        for name, fn in _jit_functions(k):
            saved.append((fn, vars(fn).get("run")))
            fn.run = make_run(name, fn.run)
        yield
    finally:
        for fn, previous in reversed(saved):
            if previous is None:
                del fn.run  # the class's method again
            else:
                fn.run = previous


class _StandInDriver:
    """Triton's active driver while the CPU is measured: device 0, stream 0, an sm_90 target (what
    the binder and the cache key need; nothing reaches a GPU)."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)


class _StandInKernel:
    """Stands in for a compiled kernel in a JIT function's cache (one per cache key, as Triton
    compiles one): ``JITFunction.run`` finds it and calls its ``run``, which does nothing but
    append (itself, the launch's arguments) to ``launches`` when that is a list."""
    function = packed_metadata = None

    def __init__(self, name: str, key, launches: list | None):
        self.name, self.key, self.launches = name, key, launches

    def launch_metadata(self, *args):
        return None

    def run(self, *args):
        if self.launches is not None:
            self.launches.append((self, args))


@contextlib.contextmanager
def stand_in_launches(k, launches: list | None = None):
    """Every launch of the kernel module ``k`` goes through Triton's real JIT path (argument
    binding, specialisation, cache key and lookup; Triton 3.6 and 3.8 alike) down to a stand-in
    compiled kernel per cache key (``_StandInKernel``): no compilation, no GPU. An autotuner
    times every config alike, so it picks its first. Triton's driver, the JIT functions' caches,
    the autotuners' choices and cvkit's remembered choices and launch plans are put back as they
    were afterwards."""
    from triton.runtime import driver

    chosen, plans = dict(impl._CHOSEN), dict(impl._PLANS)
    autotuners = _autotuners(k)
    tuner_caches = [dict(tuner.cache) for tuner in autotuners]
    disk_caching = [tuner.cache_results for tuner in autotuners]
    previous_driver = driver._active
    jit_caches = []
    driver.set_active(_StandInDriver())
    try:
        for name, fn in _jit_functions(k):
            jit_caches.append((fn, fn.device_caches))
            fn.device_caches = defaultdict(fn.create_binder)  # none of the real compiled kernels

            def compile_stand_in(key, signature, device, *rest, _fn=fn, _name=name):
                kernel = _StandInKernel(_name, key, launches)
                _fn.device_caches[device][0][key] = kernel  # as _do_compile caches a kernel
                return kernel
            fn._do_compile = compile_stand_in
        for tuner in autotuners:
            tuner._bench = lambda *args, config, **kwargs: 1.0
            # no stand-in timings in Triton's disk cache of autotuning results (when
            # TRITON_CACHE_AUTOTUNING=1): a real run on a GPU would take its choices from there
            tuner.cache_results = False
        yield
    finally:
        driver.set_active(previous_driver)
        for fn, caches in jit_caches:
            fn.device_caches = caches
            vars(fn).pop("_do_compile", None)
        for tuner, cache, cache_results in zip(autotuners, tuner_caches, disk_caching):
            vars(tuner).pop("_bench", None)
            tuner.cache_results = cache_results
            tuner.cache.clear()
            tuner.cache.update(cache)
        impl._CHOSEN.clear()
        impl._CHOSEN.update(chosen)
        impl._PLANS.clear()
        impl._PLANS.update(plans)


@contextlib.contextmanager
def timed_launches(k, seconds: dict[str, list[float]]):
    """Every JIT launch of the kernel module ``k`` (real, or inside ``stand_in_launches``) timed on
    the host: ``seconds[kernel name]`` gets one entry per launch."""
    def timed(name, previous):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            result = previous(*args, **kwargs)
            seconds[name].append(time.perf_counter() - t0)
            return result
        return run
    with _patched_runs(k, timed):
        yield


class _Forgetful(dict):
    """In place of ``isqrt_cov._CHOSEN``: remembers no choice, so every launch goes through
    Triton's ``Autotuner.run``."""

    def __setitem__(self, key, value):
        pass


def step_times(steps: dict, repeats: int, device: str) -> dict[str, tuple[list, list]]:
    """Per candidate, the host seconds until each step returned and the seconds until the device
    finished it (the same on the CPU): ``interleaved_seconds``, one step per candidate and round
    from an idle device, each step also timed until it returns."""
    until_return: dict[str, list[float]] = {name: [] for name in steps}

    def timed(name, step):
        def run():
            t0 = time.perf_counter()
            step()
            until_return[name].append(time.perf_counter() - t0)
        return run
    wall = interleaved_seconds({name: timed(name, step) for name, step in steps.items()},
                               repeats=repeats, warmup=1, device=device)
    return {name: (until_return[name][1:], wall[name]) for name in steps}  # [0]: the warm-up


def run(args: argparse.Namespace) -> str:
    if interpreting():
        raise SystemExit("covpool-host times the compiled-mode launch path: unset TRITON_INTERPRET")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("covpool-host --device cuda: no CUDA device here (the default, --device "
                         "cpu, times the launch path down to stand-in compiled kernels instead)")
    batch = args.batch or (128 if args.device == "cuda" else 2)
    k = impl._kernels()
    x = torch.randn(batch, args.dim, args.size, args.size, device=args.device,
                    requires_grad=True)
    grad = None

    def through_operators(*args):
        return impl._isqrt_cov_op(*args)[0]

    def step_of(remember: bool, function=impl._isqrt_cov, direct: bool = False):
        def step():
            nonlocal grad
            chosen, was_direct = impl._CHOSEN, impl._DIRECT
            if not remember:
                impl._CHOSEN = _Forgetful()
            impl._DIRECT = direct
            try:
                out = function(x, args.iters, True, "tf32x3")
                if grad is None:
                    grad = torch.ones_like(out)
                out.backward(grad)
            finally:
                impl._CHOSEN, impl._DIRECT = chosen, was_direct
        return step

    direct = not args.no_direct
    steps = {CVKIT: step_of(True, direct=True), JIT: step_of(True),
             OPERATORS: step_of(True, through_operators, direct=direct), AUTOTUNER: step_of(False)}
    if args.no_direct:
        del steps[CVKIT]
    seconds: dict[str, list[float]] = defaultdict(list)
    stand_in = stand_in_launches(k) if args.device == "cpu" else contextlib.nullcontext()
    with stand_in:  # the warm-up step compiles and autotunes on a GPU
        times = step_times(steps, args.repeats * args.steps, args.device)
        with timed_launches(k, seconds):
            for _ in range(args.steps):
                steps[JIT]()  # direct launches skip the JIT functions' run
        synchronize(args.device)
        extra = host_profile(steps.get(CVKIT, steps[JIT]), args.device)  # the default's path
    return _report(args, batch, times, seconds) + "\n\n" + extra


def host_profile(step, device: str, steps: int = 5) -> str:
    """The host side of ``steps`` steps as PyTorch's profiler sees it (the CUDA runtime and driver
    calls too, on a GPU: a synchronising call shows by name), and on a GPU the synchronising calls
    PyTorch itself reports (``torch.cuda.set_sync_debug_mode``) during one step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                      max_name_column_width=45)
    lines = [f"Host-side profile of {steps} steps (torch.profiler, by self CPU time; the profiler "
             "adds its own overhead):", "", "```", table.rstrip(), "```"]
    if device == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        syncs = [str(w.message).splitlines()[0] for w in caught
                 if "synchroniz" in str(w.message).lower()]
        lines += ["", f"Synchronising calls PyTorch reports in one step: {len(syncs)}"
                  + "".join(f"\n- {m}" for m in sorted(set(syncs)))]
    return "\n".join(lines)


def _report(args, batch: int, times, seconds) -> str:
    per_step = sum(len(v) for v in seconds.values()) // args.steps
    host = {name: statistics.median(t[0]) * 1e3 for name, t in times.items()}
    wall = {name: statistics.median(t[1]) * 1e3 for name, t in times.items()}
    cpu = args.device == "cpu"
    lines = [
        f"Host time of one Triton iSQRT-COV forward+backward on {args.device} (B={batch}, "
        f"d={args.dim}, {args.size}x{args.size}, {args.iters} iterations, tf32x3 kernels; "
        f"{per_step} launches per step"
        + (", each through Triton's JIT launcher to a stand-in compiled kernel that does "
           "nothing): cvkit's launch sequence, autograd and Triton's launcher, not the compiled "
           "kernel's C launcher and the driver call" if cpu else
           "): until the step returns with every kernel enqueued, and until the GPU finished it")
        + f". Medians of {args.repeats} x {args.steps} steps per candidate, the candidates "
        "interleaved step by step (a new random order each round), each step from an idle "
        "device.",
        "",
        "| candidate | host ms until the step returns | wall-clock ms, synchronised "
        "| host per launch, us | host vs Autotuner.run each launch |",
        "|---|---|---|---|---|",
    ]
    for name in times:
        lines.append(f"| {name} | {host[name]:.3f} | {wall[name]:.3f} | "
                     f"{host[name] * 1e3 / per_step:.1f} | {host[AUTOTUNER] / host[name]:.2f}x |")
    launcher = ("Triton's JIT launcher down to the stand-in kernel" if cpu else
                "Triton's JIT launcher")
    lines += ["", f"Where the host time of a step through the JIT functions goes ({args.steps} "
              f"more steps, each launch timed on its own: {launcher}, per kernel; the rest is "
              "cvkit's side and autograd; a launch that waits for the GPU shows as the slowest):",
              "",
              "| part | launches per step | median us per launch | slowest launch, us "
              "| ms per step |", "|---|---|---|---|---|"]
    in_launches = 0.0
    for name, values in sorted(seconds.items()):
        total = sum(values) / args.steps * 1e3
        in_launches += total
        lines.append(f"| {name} | {len(values) // args.steps} | "
                     f"{statistics.median(values) * 1e6:.1f} | {max(values) * 1e6:.1f} | "
                     f"{total:.3f} |")
    lines += [f"| all launches | {per_step} | | | {in_launches:.3f} |",
              f"| the rest (host ms until return {host[JIT]:.3f} minus the launches) | | | | "
              f"{host[JIT] - in_launches:.3f} |"]
    lines += ["", f"Command: `{command(args)}`",
              f"Machine: {machine_description(args.device)}; CPU: {_cpu_name()}, "
              f"{os.cpu_count()} cores"]
    return "\n".join(lines)


def _cpu_name() -> str:
    """The CPU's model name (host time depends on it more than on the GPU)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
