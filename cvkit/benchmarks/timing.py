"""Timing helpers shared by the benchmark suites."""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable

import torch

from cvkit.tool_errors import NON_NEGATIVE_INT, POSITIVE_INT, check_options


def _check_counts(repeats, warmup, settle=0) -> None:
    """A ValueError naming ``repeats`` below 1 (no time to take a median of) or a negative
    ``warmup`` / ``settle``; the suites check their options first, naming the flags."""
    check_options([("repeats", repeats, *POSITIVE_INT), ("warmup", warmup, *NON_NEGATIVE_INT),
                   ("settle", settle, *NON_NEGATIVE_INT)], ValueError)


def synchronize(device: str) -> None:
    """Waits for the device (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                   device: str = "cpu") -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    _check_counts(repeats, warmup)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int = 5,
                        warmup: int = 1, device: str = "cpu",
                        settle: int = 0) -> dict[str, list[float]]:
    """Times of several functions measured round-robin: round ``i`` of every function ran
    back to back, so drift in machine load (other processes, thermal state) hits each of them
    alike and per-round ratios stay fair. Each round runs them in a new (seeded) random order, so
    no function always runs first or always follows the same one (the one before can leave
    memory mapped or caches warm that the next one profits from). ``settle`` untimed calls
    precede each timed one, so the timed call finds the state its own predecessor left, as in
    a loop that calls the same function again and again (a training loop's step k follows
    step k-1 of the same model, never another model's)."""
    _check_counts(repeats, warmup, settle)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    order, rng = list(fns), random.Random(0)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            for _ in range(settle):
                fn()
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_median_seconds(fns: dict[str, Callable[[], object]], repeats: int = 5,
                               warmup: int = 1, device: str = "cpu") -> dict[str, float]:
    """Median of :func:`interleaved_seconds` per function."""
    times = interleaved_seconds(fns, repeats=repeats, warmup=warmup, device=device)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Extra peak memory of ``fn()``: the largest total size of tensor storages created during
    the call and alive at the same time (tensors that existed before the call are not counted).

    A ``TorchDispatchMode`` sees every ATen op, forward and backward (the autograd engine runs CPU
    backward on the calling thread and propagates the mode); each new output storage is counted
    once (views and in-place results share a storage) and uncounted by a ``weakref.finalize`` when
    PyTorch frees it (torch keeps one Python object per live storage, so the finalizer fires at
    the real free). Not seen: memory that never becomes a tensor (BLAS/LAPACK-internal buffers,
    workspaces allocated inside a kernel) and tensors created by other threads (the mode is
    thread-local; cvkit's threaded CPU eigh allocates its outputs on the calling thread). On
    CUDA use ``torch.cuda.max_memory_allocated`` instead."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _LiveStorages(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = 0
            self.peak = 0
            self.seen: set[int] = set()

        def _freed(self, nbytes: int, key: int) -> None:
            self.live -= nbytes
            self.seen.discard(key)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = id(storage)
                    if key not in self.seen:
                        nbytes = storage.nbytes()
                        self.seen.add(key)
                        self.live += nbytes
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(storage, self._freed, nbytes, key)
            return out

    tracker = _LiveStorages()
    with tracker:
        fn()
    return tracker.peak
