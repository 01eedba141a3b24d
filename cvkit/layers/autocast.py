"""Running a layer's own arithmetic outside the caller's autocast (AMP)."""
from __future__ import annotations

import contextlib

import torch


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, enabled=False)``, or nothing on a device type that has no
    autocast (``meta``: shape-only forwards, e.g. of a model built under ``torch.device("meta")``;
    torch refuses to construct an autocast context there)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
