"""Whether the current call is being captured into a deployable graph."""
from __future__ import annotations

import torch


def capturing_graph() -> bool:
    """True while ``torch.export`` (and so ONNX's dynamo exporter) or ``torch.jit.trace`` records
    the model: layers then use plain tensor operations instead of their autograd functions and
    value checks, which neither graph can hold (a traced autograd function is a Python op that
    ``torch.jit.save`` refuses; export refuses data-dependent branches). Not under
    ``torch.compile``, which handles both."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()
