"""The papers' layers: ECA, iSQRT-COV covariance pooling, hyper-connections, frac-connections."""
from __future__ import annotations

from cvkit._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "EcaModule": "cvkit.layers.eca",
    "eca_kernel_size": "cvkit.layers.eca",
    "CovariancePooling": "cvkit.layers.covpool",
    "isqrt_cov": "cvkit.layers.covpool",
    "HyperConnections": "cvkit.layers.hyper_connections",
    "FracConnections": "cvkit.layers.hyper_connections",
})

