"""The iSQRT-COV Triton kernels compile for a Hopper GPU (sm_90: H100 / H200) on this CPU-only
machine: ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` runs Triton's whole pipeline and
ptxas without a device. The interpreter tests check the kernels' numbers, not that they compile;
this catches a kernel that no longer compiles (a Triton upgrade, a config over the shared memory
of a block) before a GPU session, and pins the lowering the benchmarks rely on: tensor-core
precisions on warpgroup MMA (``wgmma``), ``ieee`` on FMA (docs/kernels.md)."""
from __future__ import annotations

import pytest
import triton
from triton.backends.compiler import GPUTarget

HOPPER = GPUTarget("cuda", 90, 32)
SMEM_PER_BLOCK = 227 * 1024  # the most shared memory one block may use on sm_90


@pytest.fixture(scope="module")
def kernels():
    """The kernel file in compiled mode, as the launch path loads it (``isqrt_cov._kernels``,
    cached per mode), whatever TRITON_INTERPRET says here."""
    from cvkit.kernels import isqrt_cov

    mp = pytest.MonkeyPatch()
    mp.delenv("TRITON_INTERPRET", raising=False)
    try:
        module = isqrt_cov._kernels()
    finally:
        mp.undo()
    assert not module.INTERPRET
    return module


def compile_for_hopper(kernel, config, **constexprs):
    """Compile ``kernel`` (an autotuned or plain @triton.jit kernel) with one tile ``config``
    (a triton.Config, or None) and the given constexpr values. Argument types by the kernels'
    naming: UPPER-case runtime arguments but M are float32 pointers (16-byte aligned, as the launch
    path's buffers are), ``c_*`` are floats, the rest int32 (``d`` a multiple of 16)."""
    fn = kernel.fn if hasattr(kernel, "configs") else kernel  # an Autotuner wraps its JITFunction
    values = dict(constexprs, **(config.kwargs if config is not None else {}))
    signature, given, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            given[(i,)] = values.pop(name)
        elif name.isupper() and name != "M":  # M: the position count
            signature[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.startswith("c_"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name == "d":
                attrs[(i,)] = [["tt.divisibility", 16]]
    assert not values, f"not constexpr arguments of {fn.__name__}: {sorted(values)}"
    options = {} if config is None else dict(num_warps=config.num_warps,
                                             num_stages=config.num_stages)
    compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature,
                                                        constexprs=given, attrs=attrs),
                              target=HOPPER, options=options)
    assert compiled.metadata.shared <= SMEM_PER_BLOCK, (fn.__name__, compiled.metadata.shared)
    return compiled.asm["ptx"]


def uses_wgmma(ptx: str) -> bool:
    return "wgmma.mma_async" in ptx


PRODUCT_VARIANTS = {  # the forward's pair launch, unmasked (d = 256); the backward's last launch
    "pair": dict(NPAIR=2, NPROD=1, HAS_E=False, HAS_SCALE=False, OUT_TRIU=False, HAS_DOT=False,
                 DOT_SLOTS=16, EVEN=True),
    "two-sum, dot, masked": dict(NPAIR=1, NPROD=2, HAS_E=True, HAS_SCALE=False, OUT_TRIU=False,
                                 HAS_DOT=True, DOT_SLOTS=64, EVEN=False),
    "final, scaled triu": dict(NPAIR=1, NPROD=1, HAS_E=False, HAS_SCALE=True, OUT_TRIU=True,
                               HAS_DOT=False, DOT_SLOTS=16, EVEN=True),
}


@pytest.mark.parametrize("variant, precision, config_index", [
    ("pair", "tf32x3", 0), ("two-sum, dot, masked", "tf32x3", 1), ("final, scaled triu", "ieee", 0),
])
def test_product_kernel_compiles_for_hopper(kernels, variant, precision, config_index):
    ptx = compile_for_hopper(kernels._products_kernel,
                             kernels._products_kernel.configs[config_index],
                             PRECISION=precision, **PRODUCT_VARIANTS[variant])
    assert uses_wgmma(ptx) == (precision != "ieee")
    assert "mma.sync" not in ptx  # neither the pre-Hopper MMA nor, for ieee, any tensor core


@pytest.mark.parametrize("precision", ["tf32x3", "ieee"])
def test_covariance_and_input_gradient_kernels_compile_for_hopper(kernels, precision):
    # a 14x14 map: M = 196 and the batch and channel strides passed divided by 4 (MULTS bits
    # 0-2, as the launch path passes them for a contiguous (B, d, 196) input; stride_m is 1)
    ptx = compile_for_hopper(kernels._covariance_kernel, kernels._covariance_kernel.configs[1],
                             MULTS=0b0111, PRECISION=precision, BLOCK_D=256)
    assert uses_wgmma(ptx) == (precision != "ieee")
    ptx = compile_for_hopper(kernels._grad_input_kernel, kernels._grad_input_kernel.configs[-1],
                             MULTS=0b0111, GC_SLOTS=64, HA_SLOTS=16, PRECISION=precision)
    assert uses_wgmma(ptx) == (precision != "ieee")


def test_elementwise_kernels_compile_for_hopper(kernels):
    compile_for_hopper(kernels._channel_stats_kernel, None, MULTS=0b0111, BLOCK_C=32, BLOCK_M=64)
    compile_for_hopper(kernels._grad_seed_kernel, None, VECTOR=True, GC_SLOTS=64, BLOCK=32)
