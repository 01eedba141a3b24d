"""Running a layer's own arithmetic outside the caller's autocast (AMP)."""
from __future__ import annotations

import contextlib

import torch


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, enabled=False)``, or nothing on a device type that has no
    autocast (``meta``: shape-only forwards, e.g. of a model built under ``torch.device("meta")``;
    torch refuses to construct an autocast context there).

    Under ``torch.compile`` the context is opened without asking: Dynamo in PyTorch 2.11 cannot
    trace ``torch.amp.is_autocast_available`` (a C function; a graph break, an error with
    ``fullgraph=True``: seen on a GPU machine, BENCHMARKS.md run 10), and compiled tensors are on
    a real device."""
    if torch.compiler.is_compiling() or torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
