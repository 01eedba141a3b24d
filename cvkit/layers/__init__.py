"""The papers' layers: ECA, iSQRT-COV covariance pooling, hyper-connections, frac-connections."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EcaModule": "cvkit.layers.eca",
    "eca_kernel_size": "cvkit.layers.eca",
    "CovariancePooling": "cvkit.layers.covpool",
    "isqrt_cov": "cvkit.layers.covpool",
    "HyperConnections": "cvkit.layers.hyper_connections",
    "FracConnections": "cvkit.layers.hyper_connections",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cvkit.layers' has no attribute {name!r}")


__all__ = list(_EXPORTS)
