"""Triton kernels of iSQRT-COV (Li et al., CVPR 2018: covariance, trace normalisation, coupled
Newton–Schulz, post-compensation, triu vectorisation) and of its backward.

Not imported directly: ``cvkit.kernels.isqrt_cov`` loads this file once per Triton mode (compiled or
``TRITON_INTERPRET=1``), because ``@triton.jit`` reads that variable when it decorates (Triton 3.x).

All d×d matrices are contiguous (B, d, d) float32 buffers. Every Newton–Schulz iterate is a
polynomial in A, so iterates are symmetric and commute; every sum of products built here is
symmetric too (the backward's tangents are derivatives of such polynomials along a symmetric
direction), so ``_products_kernel`` computes only the tiles on and above the diagonal and writes
each off-diagonal tile twice (itself and its transpose).
"""

import triton
import triton.language as tl

from cvkit.kernels.interpret import interpreting
from cvkit.kernels.tile_configs import (COVARIANCE_ENV_VAR, ENV_VAR, GRADX_ENV_VAR,
                                        configs_from_env)

INTERPRET = interpreting()
TINY_TRACE: tl.constexpr = tl.constexpr(1e-30)  # the same threshold as cvkit.layers.covpool


def _configs(cuda_configs, interpret_config, override=None):
    """A short autotune list on the GPU; one config under the interpreter (no timing there);
    ``override`` (parsed ``tile_configs`` dicts) replaces either."""
    if override:
        return [triton.Config({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
                              num_warps=c["num_warps"], num_stages=c["num_stages"])
                for c in override]
    if INTERPRET:
        return [triton.Config(interpret_config, num_warps=4, num_stages=1)]
    return [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s in cuda_configs]


# Triton's own library functions (tl.cdiv, tl.sum, ...) are @triton.jit functions decorated when
# triton is imported, so they stay compiled-mode objects if TRITON_INTERPRET=1 is set later, and
# the interpreter refuses to call them. The kernels below therefore use only builtins and these
# (tl.full for tl.zeros).
@triton.jit
def _cdiv(a, b):
    return (a + b - 1) // b


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis):
    return tl.reduce(x, axis, _add)


@triton.jit
def _load(ptrs, mask, EVEN: tl.constexpr):
    """A tile, zero outside ``mask``; no mask at all when EVEN says the tile is whole."""
    if EVEN:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store(ptrs, value, mask, EVEN: tl.constexpr):
    if EVEN:
        tl.store(ptrs, value)
    else:
        tl.store(ptrs, value, mask=mask)


# Output tile BLOCK×BLOCK (square, so a tile's mirror is a tile), reduction step BLOCK_K. Under the
# interpreter, 32×32 tiles keep the program count (its cost) low; d > 32 gives several tiles.
# Two configs each: every config is compiled per kernel variant and precision (seconds apiece).
# The variables of ``tile_configs`` replace the lists: CVKIT_ISQRT_COV_PRODUCT_CONFIGS the product
# configs, which the covariance kernel shares unless CVKIT_ISQRT_COV_COVARIANCE_CONFIGS is set, and
# CVKIT_ISQRT_COV_GRADX_CONFIGS the input gradient's. The product configs are those `covpool-tiles`
# chose on an H100 (BENCHMARKS.md, run 7) and again on an H200 (run 10); the autotuner took the
# first for every one-product launch there, the second for every two-product launch.
_PRODUCT_CUDA = [({"BLOCK": 64, "BLOCK_K": 32}, 4, 4),
                 ({"BLOCK": 64, "BLOCK_K": 64}, 4, 2)]
_PRODUCT_INTERPRET = {"BLOCK": 32, "BLOCK_K": 32}
_PRODUCT_CONFIGS = _configs(_PRODUCT_CUDA, _PRODUCT_INTERPRET, configs_from_env(ENV_VAR))
_COVARIANCE_OVERRIDE = configs_from_env(COVARIANCE_ENV_VAR)
_COVARIANCE_CONFIGS = (_configs(_PRODUCT_CUDA, _PRODUCT_INTERPRET, _COVARIANCE_OVERRIDE)
                       if _COVARIANCE_OVERRIDE else _PRODUCT_CONFIGS)
# The input gradient's tiles span channels (BLOCK_C) and positions (BLOCK_M). 128x64 with 8 warps
# won on the H100 in run 7 (137 us per step at B = 128, d = 256). A 14x14 map (M = 196, the GCP
# layout) fills 196 of 256 columns of 64-wide position tiles and 196 of 224 of 32-wide ones: the
# third config, added after run 8, won for tf32x3 in run 9 (105 us).
_GRADX_CONFIGS = _configs(
    [({"BLOCK_C": 64, "BLOCK_M": 64, "BLOCK_K": 32}, 4, 3),
     ({"BLOCK_C": 128, "BLOCK_M": 64, "BLOCK_K": 32}, 8, 3),
     ({"BLOCK_C": 128, "BLOCK_M": 32, "BLOCK_K": 32}, 4, 3)],
    {"BLOCK_C": 32, "BLOCK_M": 32, "BLOCK_K": 32}, configs_from_env(GRADX_ENV_VAR))


@triton.jit
def _n_tiles(d, BLOCK: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Output tiles per d×d matrix: all of them, or those on and above the diagonal."""
    nt = _cdiv(d, BLOCK)
    if SYMMETRIC:
        return nt * (nt + 1) // 2
    else:
        return nt * nt


@triton.jit
def _tile_coords(pid, d, BLOCK: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Program id -> (batch, tile row, tile column). SYMMETRIC enumerates only tiles with
    row <= column: t = r(r+1)/2 + c (c <= r) is read back with a float square root, then corrected
    by one step either way, and (c, r) is returned."""
    nt = _cdiv(d, BLOCK)
    ntiles = _n_tiles(d, BLOCK, SYMMETRIC)
    b = pid // ntiles
    t = pid % ntiles
    if SYMMETRIC:
        r = ((tl.sqrt(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
        r = tl.where((r + 1) * (r + 2) // 2 <= t, r + 1, r)
        r = tl.where(r * (r + 1) // 2 > t, r - 1, r)
        ti = t - r * (r + 1) // 2
        tj = r
    else:
        ti = t // nt
        tj = t % nt
    return b.to(tl.int64), ti, tj, t


@triton.jit
def _store_partial(PART, b, t, n, value, SLOTS: tl.constexpr):
    """PART[b, t] = value, one partial sum of a per-sample dot product per tile t < n; the program
    of tile 0 also zeroes PART[b, n:SLOTS], so a reader sums all SLOTS whatever the tile size (the
    autotuner's choice) was. A fixed order, unlike atomic adds: the same bits on every run."""
    tl.store(PART + b * SLOTS + t, value)
    if t == 0:
        slots = tl.arange(0, SLOTS)
        tl.store(PART + b * SLOTS + slots, tl.full((SLOTS,), 0.0, tl.float32), mask=slots >= n)


@triton.jit
def _sum_partials(PART, b, SLOTS: tl.constexpr):
    return _sum(tl.load(PART + b * SLOTS + tl.arange(0, SLOTS)), axis=0)


@triton.autotune(configs=_PRODUCT_CONFIGS,
                 key=["d", "batch_class", "NPAIR", "NPROD", "HAS_E", "HAS_SCALE", "OUT_TRIU",
                      "HAS_DOT", "PRECISION"])
@triton.jit
def _products_kernel(A1, B1, A2, B2, E, SCALE, OUT, DOT_WITH, DOT_PART, pair_a1, pair_b1, pair_a2,
                     pair_b2, pair_e, pair_out, c_prod, c_eye, c_e, d, batch, batch_class,
                     NPAIR: tl.constexpr, NPROD: tl.constexpr, HAS_E: tl.constexpr,
                     HAS_SCALE: tl.constexpr, OUT_TRIU: tl.constexpr, HAS_DOT: tl.constexpr,
                     DOT_SLOTS: tl.constexpr, PRECISION: tl.constexpr, EVEN: tl.constexpr,
                     BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """OUT = scale_b * (c_prod * (A1 B1 [+ A2 B2]) + c_eye I [+ c_e E]), a symmetric result.

    One kernel serves every matrix product of the forward and backward, with the element-wise
    part of each step as its epilogue (e.g. T = 1.5 I - 0.5 Z Y, or dY_1 = 1.5 P - 0.5 (PA + AP)).
    Only tiles on and above the diagonal are computed; diagonal tiles are made exactly symmetric,
    off-diagonal tiles are stored with their transposes. OUT_TRIU: write the row-major upper
    triangle incl. the diagonal, (B, d(d+1)/2), instead of a d×d matrix. NPAIR = 2 runs two such
    sums in one launch (e.g. Y_k = Y_{k-1} T_k and Z_k = Z_{k-1} T_k): the second reads each
    operand pair_<name> elements further on (0 for a shared operand). HAS_DOT: also the partial
    sums of <OUT, DOT_WITH> per sample (DOT_WITH symmetric, so an off-diagonal tile counts twice)
    into DOT_PART (B, DOT_SLOTS), for the input gradient's <dL/dA, A> without a launch of its own.
    EVEN: BLOCK and BLOCK_K divide d (e.g. d = 256), so no load or store needs a mask.
    """
    pid = tl.program_id(0)
    if NPAIR == 2:  # sample-major: a sample's tiles of both sums run side by side, so the operands
        # they share (T_k, dT_k) come from the L2 cache for the second sum (a pair-major order
        # read them from memory twice: ~34 MB per shared operand at B = 128, d = 256)
        ntiles = _n_tiles(d, BLOCK, True)
        pair = ((pid // ntiles) % 2).to(tl.int64)
        pid = (pid // (2 * ntiles)) * ntiles + pid % ntiles
        A1 += pair * pair_a1
        B1 += pair * pair_b1
        A2 += pair * pair_a2
        B2 += pair * pair_b2
        E += pair * pair_e
        OUT += pair * pair_out
    b, ti, tj, t = _tile_coords(pid, d, BLOCK, True)
    base = b * d * d
    rm = ti * BLOCK + tl.arange(0, BLOCK)
    rn = tj * BLOCK + tl.arange(0, BLOCK)
    rk = tl.arange(0, BLOCK_K)
    # Row block of each left factor, column block of each right factor. Every right factor here
    # is symmetric (an iterate, or a backward matrix P, Q), so on the tensor cores (tf32, tf32x3)
    # its column block is read as the row block rn, contiguous along k, and transposed on chip:
    # 16-byte loads and the K-major layout TF32 wgmma needs (H100: tf32x3 4.8 -> 3.4 ms per
    # forward+backward at B=128, d=256). The FMA path (ieee) keeps plain column blocks: with the
    # transposed tile it went 4.5 -> 8.6 ms (docs/kernels.md).
    a_offs = base + rm[:, None] * d + rk[None, :]
    if PRECISION == "ieee":
        b_offs = base + rk[:, None] * d + rn[None, :]
    else:
        b_offs = base + rn[:, None] * d + rk[None, :]
    acc = tl.full((BLOCK, BLOCK), 0.0, tl.float32)
    for k0 in range(0, d, BLOCK_K):
        a_mask = (rm[:, None] < d) & (rk[None, :] < d - k0)
        if PRECISION == "ieee":
            b_mask = (rk[:, None] < d - k0) & (rn[None, :] < d)
        else:
            b_mask = (rn[:, None] < d) & (rk[None, :] < d - k0)
        b1 = _load(B1 + b_offs, b_mask, EVEN)
        if PRECISION != "ieee":
            b1 = tl.trans(b1)
        acc = tl.dot(_load(A1 + a_offs, a_mask, EVEN), b1, acc, input_precision=PRECISION)
        if NPROD >= 2:
            b2 = _load(B2 + b_offs, b_mask, EVEN)
            if PRECISION != "ieee":
                b2 = tl.trans(b2)
            acc = tl.dot(_load(A2 + a_offs, a_mask, EVEN), b2, acc, input_precision=PRECISION)
        a_offs += BLOCK_K
        if PRECISION == "ieee":
            b_offs += BLOCK_K * d
        else:
            b_offs += BLOCK_K
    if ti == tj:  # rounding makes acc[i, j] and acc[j, i] differ slightly: average them
        acc = 0.5 * (acc + tl.trans(acc))
    mask = (rm[:, None] < d) & (rn[None, :] < d)
    offs = rm[:, None] * d + rn[None, :]
    out = c_prod * acc + tl.where(rm[:, None] == rn[None, :], c_eye, 0.0)
    if HAS_E:
        out += c_e * _load(E + base + offs, mask, EVEN)
    if HAS_SCALE:
        out = out * tl.load(SCALE + b)
    if HAS_DOT:
        part = _sum(_sum(out * _load(DOT_WITH + base + offs, mask, EVEN), axis=1), axis=0)
        _store_partial(DOT_PART, b, t, _n_tiles(d, BLOCK, True),
                       tl.where(ti == tj, part, 2.0 * part), DOT_SLOTS)
    if OUT_TRIU:
        # Row-major upper triangle incl. diagonal: (r, c), r <= c -> r*d - r(r-1)/2 + (c - r).
        r = rm[:, None]
        c = rn[None, :]
        idx = r * d - r * (r - 1) // 2 + (c - r)
        tl.store(OUT + b * (d * (d + 1) // 2) + idx, out, mask=mask & (r <= c))
    else:
        _store(OUT + base + offs, out, mask, EVEN)
        if ti != tj:
            mirror = (rn[:, None] < d) & (rm[None, :] < d)
            _store(OUT + base + rn[:, None] * d + rm[None, :], tl.trans(out), mirror, EVEN)


@triton.jit
def _channel_stats_kernel(X, MEAN, VAR, d, M, stride_b, stride_c, stride_m, MULTS: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    """Per channel: mean over the M positions and the biased variance (two passes, so the
    variance has no cancellation); tr(Sigma) is the sum of the variances."""
    M, stride_b, stride_c, stride_m = _unpack(M, stride_b, stride_c, stride_m, MULTS)
    pid = tl.program_id(0)
    ncb = _cdiv(d, BLOCK_C)
    b = (pid // ncb).to(tl.int64)
    rc = (pid % ncb) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmm = tl.arange(0, BLOCK_M)
    base = X + b * stride_b + rc[:, None] * stride_c
    total = tl.full((BLOCK_C,), 0.0, tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + rmm
        mask = (rc[:, None] < d) & (mm[None, :] < M)
        total += _sum(tl.load(base + mm[None, :] * stride_m, mask=mask, other=0.0), axis=1)
    mean = total / M
    sq = tl.full((BLOCK_C,), 0.0, tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + rmm
        mask = (rc[:, None] < d) & (mm[None, :] < M)
        xc = tl.load(base + mm[None, :] * stride_m, mask=mask, other=0.0) - mean[:, None]
        xc = tl.where(mask, xc, 0.0)
        sq += _sum(xc * xc, axis=1)
    tl.store(MEAN + b * d + rc, mean, mask=rc < d)
    tl.store(VAR + b * d + rc, sq / M, mask=rc < d)


@triton.jit
def _unpack(M, stride_b, stride_c, stride_m, MULTS: tl.constexpr):
    """The position count and strides, each passed divided by 4 where bit i of MULTS is set
    (``isqrt_cov._layout_args``). Triton specialises an int argument only on divisibility by 16,
    so a 14x14 map (M = 196, channel stride 196) would otherwise compile to 4-byte loads;
    multiplying by a compile-time 4 here proves 16-byte alignment, so loads and stores vectorise."""
    return (M * (1 + 3 * (MULTS & 1)), stride_b * (1 + 3 * ((MULTS >> 1) & 1)),
            stride_c * (1 + 3 * ((MULTS >> 2) & 1)), stride_m * (1 + 3 * ((MULTS >> 3) & 1)))


@triton.jit
def _load_centred(X, MEAN, b, rows, cols, d, M, stride_b, stride_c, stride_m):
    """X[b, rows, cols] - mean[b, rows]; zero outside the matrix."""
    mask = (rows[:, None] < d) & (cols[None, :] < M)
    x = tl.load(X + b * stride_b + rows[:, None] * stride_c + cols[None, :] * stride_m, mask=mask,
                other=0.0)
    mu = tl.load(MEAN + b * d + rows, mask=rows < d, other=0.0)
    return tl.where(mask, x - mu[:, None], 0.0)


@triton.autotune(configs=_COVARIANCE_CONFIGS,
                 key=["d", "M", "batch_class", "MULTS", "PRECISION"])
@triton.jit
def _covariance_kernel(X, MEAN, VAR, A_OUT, Z1_OUT, TRACE, SQRT_TRACE, d, M, batch_class,
                       stride_b, stride_c, stride_m, MULTS: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Sigma = Xc Xc^T / M on centred features (Eq. 1, no M×M centring matrix), then in the
    epilogue A = Sigma / tr(Sigma) (the pre-normalisation) and Z_1 = T_1 = 1.5 I - 0.5 A (the first
    Newton–Schulz step needs no product). Only upper tiles are computed (Sigma is symmetric)."""
    M, stride_b, stride_c, stride_m = _unpack(M, stride_b, stride_c, stride_m, MULTS)
    b, ti, tj, t = _tile_coords(tl.program_id(0), d, BLOCK, True)
    rm = ti * BLOCK + tl.arange(0, BLOCK)
    rn = tj * BLOCK + tl.arange(0, BLOCK)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK, BLOCK), 0.0, tl.float32)
    for k0 in range(0, M, BLOCK_K):
        xi = _load_centred(X, MEAN, b, rm, k0 + rk, d, M, stride_b, stride_c, stride_m)
        xj = _load_centred(X, MEAN, b, rn, k0 + rk, d, M, stride_b, stride_c, stride_m)
        acc = tl.dot(xi, tl.trans(xj), acc, input_precision=PRECISION)
    acc = tl.where(ti == tj, 0.5 * (acc + tl.trans(acc)), acc)
    rd = tl.arange(0, BLOCK_D)
    trace = _sum(tl.load(VAR + b * d + rd, mask=rd < d, other=0.0), axis=0)
    # An all-constant sample (trace 0) gives C = 0, the limit as Sigma -> 0, and zero gradients
    # (as cvkit's PyTorch path): divide by 1 instead and post-compensate with 0.
    ok = trace > TINY_TRACE
    trace = tl.where(ok, trace, 1.0)
    a = acc / (M * trace)
    z1 = tl.where(rm[:, None] == rn[None, :], 1.5, 0.0) - 0.5 * a
    base = b * d * d
    mask = (rm[:, None] < d) & (rn[None, :] < d)
    offs = rm[:, None] * d + rn[None, :]
    mirror = (rn[:, None] < d) & (rm[None, :] < d) & (ti != tj)
    offs_t = rn[:, None] * d + rm[None, :]
    tl.store(A_OUT + base + offs, a, mask=mask)
    tl.store(A_OUT + base + offs_t, tl.trans(a), mask=mirror)
    tl.store(Z1_OUT + base + offs, z1, mask=mask)
    tl.store(Z1_OUT + base + offs_t, tl.trans(z1), mask=mirror)
    if t == 0:
        tl.store(TRACE + b, trace)
        tl.store(SQRT_TRACE + b, tl.where(ok, tl.sqrt(trace), 0.0))


@triton.jit
def _grad_seed_kernel(G, C, SQRT_TRACE, S_OUT, GC_PART, d, VECTOR: tl.constexpr,
                      GC_SLOTS: tl.constexpr, BLOCK: tl.constexpr):
    """S = -P/2 with P = sqrt(tr Sigma) * sym(dL/dC): the triu scatter (VECTOR) or (G + G^T)/2, and
    the post-compensation scale, in one pass. S is the backward's first tangent dZ_1 = dT_1 and
    its only copy of the seed (P = -2 S; scaling by a power of two is exact). Only the symmetric
    part of dL/dC reaches the input, and with a symmetric seed every tangent of the backward is
    symmetric too. Also the partial sums of <G, C> per sample into GC_PART: <sym(G), C> over the
    whole matrix, which equals <G, C> over the stored triangle (off-diagonal entries halved and
    counted twice) or over a symmetric C."""
    b, ti, tj, t = _tile_coords(tl.program_id(0), d, BLOCK, False)
    r = (ti * BLOCK + tl.arange(0, BLOCK))[:, None]
    col = (tj * BLOCK + tl.arange(0, BLOCK))[None, :]
    mask = (r < d) & (col < d)
    if VECTOR:
        lo = tl.minimum(r, col)
        hi = tl.maximum(r, col)
        idx = b * (d * (d + 1) // 2) + lo * d - lo * (lo - 1) // 2 + (hi - lo)
        g = tl.load(G + idx, mask=mask, other=0.0)
        g = tl.where(r == col, g, 0.5 * g)
        c = tl.load(C + idx, mask=mask, other=0.0)
    else:
        g = 0.5 * (tl.load(G + b * d * d + r * d + col, mask=mask, other=0.0)
                   + tl.load(G + b * d * d + col * d + r, mask=mask, other=0.0))
        c = tl.load(C + b * d * d + r * d + col, mask=mask, other=0.0)
    _store_partial(GC_PART, b, t, _n_tiles(d, BLOCK, False), _sum(_sum(g * c, axis=1), axis=0),
                   GC_SLOTS)
    tl.store(S_OUT + b * d * d + r * d + col, g * (-0.5 * tl.load(SQRT_TRACE + b)), mask=mask)


@triton.autotune(configs=_GRADX_CONFIGS, key=["d", "M", "batch_class", "MULTS", "PRECISION"])
@triton.jit
def _grad_input_kernel(H, X, MEAN, TRACE, GC_PART, HA_PART, GX, d, M, batch_class, stride_b,
                       stride_c, stride_m, MULTS: tl.constexpr, GC_SLOTS: tl.constexpr,
                       HA_SLOTS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """dL/dX = (2/M) G_Sigma Xc with G_Sigma = H / t + s I, s = <G, C>/(2t) - <H, A>/t
    (t = tr Sigma, H = dL/dA from the Newton–Schulz backward; the two dots summed from the
    partial sums of the seed and the last backward launch): the product and the trace term in one
    pass, written in the input's own layout. Xc already has zero row means, so the centring needs
    no extra term."""
    M, stride_b, stride_c, stride_m = _unpack(M, stride_b, stride_c, stride_m, MULTS)
    pid = tl.program_id(0)
    ncb = _cdiv(d, BLOCK_C)
    nmb = _cdiv(M, BLOCK_M)
    b = (pid // (ncb * nmb)).to(tl.int64)
    rest = pid % (ncb * nmb)
    rc = (rest // nmb) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmm = (rest % nmb) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_C, BLOCK_M), 0.0, tl.float32)
    for k0 in range(0, d, BLOCK_K):
        kk = k0 + rk
        h = tl.load(H + b * d * d + rc[:, None] * d + kk[None, :],
                    mask=(rc[:, None] < d) & (kk[None, :] < d), other=0.0)
        acc = tl.dot(h, _load_centred(X, MEAN, b, kk, rmm, d, M, stride_b, stride_c, stride_m), acc,
                     input_precision=PRECISION)
    t = tl.load(TRACE + b)
    s = _sum_partials(GC_PART, b, GC_SLOTS) / (2.0 * t) - _sum_partials(HA_PART, b, HA_SLOTS) / t
    xc = _load_centred(X, MEAN, b, rc, rmm, d, M, stride_b, stride_c, stride_m)
    out = (2.0 / (M * t)) * acc + (2.0 * s / M) * xc
    mask = (rc[:, None] < d) & (rmm[None, :] < M)
    tl.store(GX + b * stride_b + rc[:, None] * stride_c + rmm[None, :] * stride_m, out, mask=mask)
