"""Triton kernels (GPU, or the Triton interpreter on the CPU with TRITON_INTERPRET=1).

``isqrt_cov_triton(x, iters=5, vectorize=True, precision=None)``: iSQRT-COV forward and backward;
``cvkit.layers.covpool.isqrt_cov(..., backend="triton" | "auto")`` dispatches here. See
docs/kernels.md.
"""
from cvkit.kernels.isqrt_cov import isqrt_cov_triton

__all__ = ["isqrt_cov_triton"]
