"""The 19 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), batched and seeded.

Parameters per severity are those of the ``imagecorruptions`` package (Michaelis et al., 2019),
which generalises the released ImageNet-C code to any image size. The code is ours: it works on a
batch ``(N, H, W, 3)`` at once, draws its randomness from a NumPy ``Generator`` made per call from
``seed`` (or one per image), and runs on current NumPy / scikit-image, where the package's
``glass_blur``, ``gaussian_blur`` (``multichannel=``) and ``fog`` (``np.float_``) fail.

Equivalence with the package (``tests/test_robustness_corruptions.py``; measured at 224x224, 150x97,
33x260 and 44x56, all severities, same random draws: at batch size 1 a legacy
``np.random.RandomState`` passed as ``seed`` is consumed in the package's order):

- bit-identical: the three noises the package seeds from NumPy, fog, frost, contrast, pixelate, jpeg;
- within one grey level (at most 8.3 % of pixels measured): the rest, where we evaluate the same
  formula differently (OpenCV's Gaussian filter, affine warp and remap instead of scipy.ndimage's,
  float32 where the package uses float64, one sparse-kernel convolution instead of shifted copies,
  the HSV round trip of brightness/saturate in closed form);
- except snow at some sizes (150x97 severity 1: up to 37 levels, 0.05 % of pixels): scipy's zoom
  maps the last output row to 149*(49/149) = 49.00000000000001, just past the input, and its
  ``mode='constant'`` returns 0 there, so the package's last snow-layer row is empty (and, as the
  layer is added again rotated by 180 degrees, the first image row); we sample the edge row.
- ``glass_blur``: the published loop ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` runs on NumPy views,
  so it is not a swap: it *copies* pixel (h', w') into (h, w), sequentially in reverse raster order.
  Each pixel is written once per iteration, so its final value is the original value at the end
  of a chain of copies that only moves to already-visited pixels; we resolve all chains at once
  (pointer chasing). This is exactly the published result for the same offset draws, not an
  approximation, at about 10 ms per 224^2 image instead of ~0.4 s.

Inputs: ``uint8`` arrays ``HxWx3`` / ``NxHxWx3``; grayscale ``HxW``, ``HxWx1`` or ``NxHxWx1`` is
replicated to RGB, corrupted, and returned in its own shape as ITU-R 601 luma (PIL's ``"L"``), so
colour effects (frost, spatter) become brightness and per-channel noise is averaged (weaker by
about a factor 1.5 in standard deviation). Images down to 1x1 work. ``torch`` uint8 tensors are
accepted and returned on their device (the maths runs on the CPU).
"""
from __future__ import annotations

import functools
import io
import math
import warnings
from importlib import resources
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from cvkit.tool_errors import NON_NEGATIVE_INT, OptionError, check_options

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
"""The 15 benchmark corruptions in the paper's canonical order."""
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out (validation) corruptions; never part of mCE."""
ALL_CORRUPTIONS = CORRUPTIONS + HELD_OUT
SEVERITIES = (1, 2, 3, 4, 5)

# ----------------------------------------------------------------------------------- parameters
# Published per-severity parameters (imagecorruptions 1.1.2 / hendrycks/robustness make_imagenet_c).
_PARAMS = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],  # sigma, delta, iters
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],  # radius, alias blur
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],  # radius, sigma
    "zoom_blur": [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                  np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)],
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],  # strength, wibble decay
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],  # image, frost weights
    # loc, scale, zoom, threshold, blur radius, blur sigma, blend
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    # loc, scale, sigma, threshold, intensity/blur, mud (1) or water (0)
    "spatter": [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                (0.67, 0.4, 1, 0.65, 1.5, 1)],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],  # scale, shift of HSV saturation
    "jpeg_compression": [25, 18, 15, 10, 7],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "elastic_transform": [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],  # alpha
}


def corruption_params(name: str, severity: int):
    """The published parameters of corruption ``name`` at ``severity`` (validated)."""
    check_corruption(name, severity)
    return _PARAMS[name][severity - 1]


def check_corruption(name: str, severity) -> None:
    """An OptionError naming an unknown corruption or a severity outside 1..5."""
    if name not in _PARAMS:
        raise OptionError(f"unknown corruption {name!r}; expected one of: {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise OptionError(f"severity must be an integer in 1..5, got {severity!r} (corruption {name!r})")


def check_seed(seed, name: str = "seed") -> int:
    """A corruption seed: a non-negative int (NumPy's SeedSequence entropy); else a ValueError
    naming ``name`` (e.g. ``--seed`` for a tool)."""
    check_options([(name, seed, NON_NEGATIVE_INT[0], "a non-negative integer")])
    return int(seed)


# -------------------------------------------------------------------------------- random draws
class _Draws:
    """Random draws with a leading batch axis: one generator for the whole batch, or one per image
    (then image i of a batch equals that image corrupted alone with its own seed)."""

    def __init__(self, n: int, seed):
        if isinstance(seed, list):
            if len(seed) != n:
                raise ValueError(f"seed list has {len(seed)} entries for a batch of {n} images")
            self.gens = [np.random.default_rng(s) for s in seed]
            self.shared = False
        elif isinstance(seed, (np.random.Generator, np.random.RandomState)):
            self.gens, self.shared = [seed], True
        else:
            self.gens, self.shared = [np.random.default_rng(seed)], True
        self.n = n

    def _call(self, method: str, shape, *args):
        shape = tuple(shape)
        if self.shared:
            return getattr(self.gens[0], method)(*args, size=(self.n, *shape))
        return np.stack([getattr(g, method)(*args, size=shape) for g in self.gens])

    def normal(self, loc, scale, shape):
        return self._call("normal", shape, loc, scale)

    def uniform(self, low, high, shape):
        return self._call("uniform", shape, low, high)

    def random(self, shape):
        return self._call("random_sample" if self._legacy else "random", shape)

    def poisson(self, lam: np.ndarray) -> np.ndarray:
        if self.shared:
            return self.gens[0].poisson(lam)
        return np.stack([g.poisson(l) for g, l in zip(self.gens, lam)])

    def integers(self, low, high, shape=()):
        """Integers in [low, high); ``high`` may be an array of length N (one bound per image)."""
        high = np.broadcast_to(np.asarray(high), (self.n,))
        if self.shared:
            g = self.gens[0]
            if self._legacy:
                if not shape:  # scalar calls, as the package makes them
                    return np.array([g.randint(low, h) for h in high])
                return g.randint(low, high[0], size=(self.n, *shape))
            return g.integers(low, high.reshape((self.n,) + (1,) * len(shape)), size=(self.n, *shape))
        return np.stack([np.asarray(g.integers(low, h, size=tuple(shape))) for g, h in zip(self.gens, high)])

    @property
    def _legacy(self) -> bool:
        return isinstance(self.gens[0], np.random.RandomState)


# ------------------------------------------------------------------------------------- helpers
_BORDERS = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT}


def _stacked(x: np.ndarray, fn) -> np.ndarray:
    """Apply a 2-D OpenCV filter ``fn`` to every image of (N, H, W[, C]), all channels at once
    (one call per image: 2x faster than stacking the batch as channels of one image)."""
    return np.stack([fn(np.ascontiguousarray(im)).reshape(im.shape) for im in x])


def _gaussian(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """``skimage.filters.gaussian`` as the package calls it (scipy's Gaussian filter, 'nearest'
    border unless given, truncate 4) over the H and W axes of (N, H, W[, C]); ``sigma`` a number
    or (sigma_h, sigma_w). OpenCV builds the same sampled kernel (radius int(truncate*sigma+0.5))
    and is 2-3x faster; float64 input gives scipy's result to 1e-15, float32 to 1e-6."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    ksize = (2 * int(truncate * sx + 0.5) + 1, 2 * int(truncate * sy + 0.5) + 1)
    return _stacked(x, lambda a: cv2.GaussianBlur(a, ksize, sigmaX=sx, sigmaY=sy,
                                                  borderType=_BORDERS[mode]))


def _zoom_size(n: int, factor: float) -> tuple[int, int, int]:
    """(crop length, crop start, output length) of the package's ``clipped_zoom`` on one axis."""
    crop = int(np.ceil(n / float(factor)))
    return crop, (n - crop) // 2, int(round(crop * factor))


def _clipped_zoom(img: np.ndarray, factor: float, crop_to_input: bool = False) -> np.ndarray:
    """The package's ``clipped_zoom``: the centre ceil(H/z) x ceil(W/z) crop zoomed by z with
    ``scipy.ndimage.zoom(order=1)`` (corner-aligned grid: out i <- crop i*(c-1)/(o-1)), output
    round(c*z) per side (cut to H x W if ``crop_to_input``). Computed as one affine warp of a
    single image (H, W[, C]); OpenCV 5 interpolates float images at exact coordinates."""
    h, w = img.shape[:2]
    ch, th, oh = _zoom_size(h, factor)
    cw, tw, ow = _zoom_size(w, factor)
    sy = (ch - 1) / (oh - 1) if oh > 1 else 0.0
    sx = (cw - 1) / (ow - 1) if ow > 1 else 0.0
    if crop_to_input:
        oh, ow = h, w
    m = np.array([[sx, 0, tw], [0, sy, th]], dtype=np.float64)
    out = cv2.warpAffine(img, m, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out.reshape((oh, ow) + img.shape[2:])


def _motion_offsets(radius: int, angle: float, h: int, w: int):
    """Kernel weights and (dy, dx) pixel offsets of the package's ``_motion_blur`` line."""
    width = radius * 2 + 1
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    offsets = []
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= h or abs(dx) >= w:  # simulated motion left the image
            break
        offsets.append((dy, dx))
    return offsets


def _motion_blur(img: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """Sum of edge-clamped shifted copies along a line at ``angle`` weighted by a half Gaussian
    (the package's ImageMagick-free ``motion_blur``), as one sparse-kernel correlation with
    replicated borders. ``img``: (H, W) or (H, W, C); returns float32."""
    h, w = img.shape[:2]
    width = radius * 2 + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    k = k / k.sum()
    offsets = _motion_offsets(radius, angle, h, w)
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    kernel = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for (dy, dx), kv in zip(offsets, k):  # shifted[y, x] = img[y - dy, x - dx]
        kernel[r - dy, r - dx] += kv
    src = img.astype(np.float32)
    if src.ndim == 3 and src.shape[2] > 4:
        return np.stack([cv2.filter2D(src[..., c], -1, kernel, borderType=cv2.BORDER_REPLICATE)
                         for c in range(src.shape[2])], -1)
    out = cv2.filter2D(src, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    return out.reshape(img.shape)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """Anti-aliased disk kernel of defocus blur (as published)."""
    if radius <= 8:
        coords, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        coords, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(coords, coords)
    disk = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def _gray601(x: np.ndarray) -> np.ndarray:
    """cv2's float RGB->gray (0.299, 0.587, 0.114), per image."""
    return np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in x])


@functools.lru_cache(maxsize=None)
def _frost_image(index: int) -> np.ndarray:
    """Frost texture ``index`` (BGR) shipped inside the imagecorruptions package."""
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    with warnings.catch_warnings():  # the package's own imports (pkg_resources, scipy namespace)
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message="Please import `map_coordinates`",
                                category=DeprecationWarning)
        path = resources.files("imagecorruptions") / "frost" / names[index]
    data = np.frombuffer(path.read_bytes(), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


@functools.lru_cache(maxsize=64)
def _frost_resized(index: int, h: int, w: int) -> np.ndarray:
    """Frost texture scaled (as published: to cover the image, then x1.1) for an h x w image, RGB."""
    frost = _frost_image(index)
    fh, fw = frost.shape[:2]
    scale = 1.0
    if fh < h and fw >= w:
        scale = h / fh
    elif fh >= h and fw < w:
        scale = w / fw
    elif fh < h and fw < w:
        scale = max(h / fh, w / fw)
    scale *= 1.1
    size = (int(np.ceil(fw * scale)), int(np.ceil(fh * scale)))
    return cv2.resize(frost, dsize=size, interpolation=cv2.INTER_CUBIC)[..., [2, 1, 0]]


def _next_power_of_2(x: int) -> int:
    return 1 if x == 0 else 2 ** (x - 1).bit_length()


def _plasma_fractal(n: int, mapsize: int, wibbledecay: float, draws: _Draws) -> np.ndarray:
    """Diamond-square height maps in [0, 1], one per image: (N, mapsize, mapsize)."""
    maps = np.zeros((n, mapsize, mapsize), dtype=np.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * draws.uniform(-wibble, wibble, a.shape[1:])

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, shift=-1, axis=1)
        sq += np.roll(sq, shift=-1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(sq)
        dr = maps[:, half:mapsize:step, half:mapsize:step]
        ul = maps[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + (ul + np.roll(ul, -1, axis=2))
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(lt)
        tt = dr + np.roll(dr, 1, axis=2) + (ul + np.roll(ul, -1, axis=1))
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(tt)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def glass_sources(n: int, h: int, w: int, dx: np.ndarray, dy: np.ndarray, delta: int):
    """One iteration of glass blur's local pixel shuffle, exactly as the published loop computes it.

    The loop visits (h, w) for h = H-delta..delta+1 and w = W-delta..delta+1 (reverse raster) and
    executes ``x[h, w], x[h+dy, w+dx] = x[h+dy, w+dx], x[h, w]`` on NumPy views, i.e. copies the
    *current* pixel (h+dy, w+dx) into (h, w). A source already visited holds its new value, which
    came from its own source: we follow these chains (they only move forward in visiting order)
    for all pixels at once by pointer doubling. ``dx``, ``dy``: (N, nh, nw) offsets in
    [-delta, delta) for the visited rows/columns in visiting order. Returns flat indices
    ``(targets, sources)`` into the (N*H*W) pixels: ``out[targets] = x[sources]``.
    """
    nh, nw = h - 2 * delta, w - 2 * delta
    if nh <= 0 or nw <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rows = np.arange(h - delta, delta, -1, dtype=np.int32)[:, None]  # visiting order
    cols = np.arange(w - delta, delta, -1, dtype=np.int32)[None, :]
    dx, dy = dx.astype(np.int32), dy.astype(np.int32)
    sh, sw = rows + dy, cols + dx  # source pixel of every visited pixel, (N, nh, nw)
    inside = (sh >= delta + 1) & (sh <= h - delta) & (sw >= delta + 1) & (sw <= w - delta)
    before = inside & ((dy > 0) | ((dy == 0) & (dx > 0)))  # source visited earlier
    # Visited pixels in their own grid, rows/columns ascending: (h, w) -> (h-delta-1, w-delta-1).
    k_img = (np.arange(n, dtype=np.int32) * (nh * nw))[:, None, None]
    k_self = k_img + (rows - delta - 1) * nw + (cols - delta - 1)
    k_src = k_img + (sh - delta - 1) * nw + (sw - delta - 1)
    jump = np.empty(n * nh * nw, dtype=np.int32)
    jump[k_self.ravel()] = np.where(before, k_src, k_self).ravel()
    while True:  # pointer doubling: every chain of copies to its first link
        nxt = jump[jump]
        if np.array_equal(nxt, jump):
            break
        jump = nxt
    img = np.arange(n, dtype=np.int64)[:, None, None] * h
    src_flat = ((img + sh) * w + sw)[:, ::-1, ::-1].ravel()  # ascending grid order
    targets = ((img + np.arange(delta + 1, h - delta + 1)[:, None]) * w
               + np.arange(delta + 1, w - delta + 1)).ravel()
    return targets, src_flat[jump]


def glass_shuffle(x: np.ndarray, dx: np.ndarray, dy: np.ndarray, delta: int) -> np.ndarray:
    """Apply one shuffle iteration (:func:`glass_sources`) to ``x`` (N, H, W, C)."""
    n, h, w, c = x.shape
    targets, sources = glass_sources(n, h, w, dx, dy, delta)
    flat = x.reshape(n * h * w, c)
    out = flat.copy()
    out[targets] = np.take(flat, sources, axis=0)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------- corruptions
# Each takes x: uint8 (N, H, W, 3), the severity's parameters and the draws; returns an array
# in [0, 255] (float, truncated to uint8 like the package's ``np.uint8(...)``) or uint8.

def _gaussian_noise(x, c, draws):
    x = x / 255.
    return np.clip(x + draws.normal(0.0, c, x.shape[1:]), 0, 1) * 255


def _shot_noise(x, c, draws):
    x = x / 255.
    return np.clip(draws.poisson(x * c) / float(c), 0, 1) * 255


def _impulse_noise(x, c, draws):
    # skimage.util.random_noise(mode='s&p', amount=c): Bernoulli(c) flips, half salt, half pepper.
    x = x / 255.
    flipped = draws.random(x.shape[1:]) <= c
    salted = draws.random(x.shape[1:]) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return np.clip(x, 0, 1) * 255


def _speckle_noise(x, c, draws):
    x = x / 255.
    return np.clip(x + x * draws.normal(0.0, c, x.shape[1:]), 0, 1) * 255


def _gaussian_blur(x, c, draws):
    return np.clip(_gaussian((x / 255.).astype(np.float32), c), 0, 1) * 255


def _glass_blur(x, c, draws):
    sigma, delta, iterations = c
    n, h, w, _ = x.shape
    nh, nw = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    offsets = draws.integers(-delta, delta, (iterations, nh, nw, 2))  # (N, it, nh, nw, [dx, dy])
    y = (_gaussian((x / 255.).astype(np.float32), sigma) * 255).astype(np.uint8)
    index = np.arange(n * h * w)  # output pixel -> pixel of y, composed over the iterations
    for i in range(iterations):
        targets, sources = glass_sources(n, h, w, offsets[:, i, ..., 0], offsets[:, i, ..., 1], delta)
        index[targets] = index[sources]
    y = np.take(y.reshape(n * h * w, -1), index, axis=0).reshape(y.shape)
    return np.clip(_gaussian((y / 255.).astype(np.float32), sigma), 0, 1) * 255


def _defocus_blur(x, c, draws):
    kernel = _disk(radius=c[0], alias_blur=c[1])
    return np.clip(_stacked((x / 255.).astype(np.float32), lambda a: cv2.filter2D(a, -1, kernel)), 0, 1) * 255


def _motion_blur_batch(x, c, draws):
    angles = draws.uniform(-45, 45, ())
    return np.clip(np.stack([_motion_blur(im, c[0], c[1], a) for im, a in zip(x, angles)]), 0, 255)


def _zoom_blur(x, c, draws):
    img = (x / 255.).astype(np.float32)
    out = np.zeros_like(img)
    for i, im in enumerate(img):
        for factor in c:
            out[i] += _clipped_zoom(im, float(factor), crop_to_input=True)
    return np.clip((img + out) / (len(c) + 1), 0, 1) * 255


def _snow(x, c, draws):
    n, h, w, _ = x.shape
    x = np.array(x, dtype=np.float32) / 255.
    layer = draws.normal(c[0], c[1], (h, w))
    layer = np.stack([_clipped_zoom(im.astype(np.float32), c[2]) for im in layer]).astype(np.float64)
    layer[layer < c[3]] = 0
    layer = np.clip(layer, 0, 1)
    angles = draws.uniform(-135, -45, ())
    layer = np.stack([_motion_blur(im, c[4], c[5], a) for im, a in zip(layer, angles)])
    layer = np.round(layer.astype(np.float64) * 255).astype(np.uint8) / 255.
    layer = layer[:, :h, :w, None]
    gray = _gray601(x)[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + layer[:, ::-1, ::-1], 0, 1) * 255


def _frost(x, c, draws):
    n, h, w, _ = x.shape
    index = draws.integers(0, 5)  # the package picks among the first five textures
    textures = [_frost_resized(int(i), h, w) for i in index]
    top = draws.integers(0, np.array([t.shape[0] - h for t in textures]))
    left = draws.integers(0, np.array([t.shape[1] - w for t in textures]))
    frost = np.stack([t[a:a + h, b:b + w] for t, a, b in zip(textures, top, left)])
    return np.clip(c[0] * x + c[1] * frost, 0, 255)


def _fog(x, c, draws):
    n, h, w, _ = x.shape
    mapsize = _next_power_of_2(int(max(h, w, 3)))
    x = x / 255.
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x += c[0] * _plasma_fractal(n, mapsize, c[1], draws)[:, :h, :w, None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _brightness(x, c, draws):
    """HSV value + c (skimage round trip in closed form: with H and S fixed every channel scales
    with V; black pixels, S = 0, become grey V')."""
    x = x / 255.
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(v > 0, x * (v_new / v), v_new)
    return np.clip(out, 0, 1) * 255


def _saturate(x, c, draws):
    """HSV saturation S' = clip(S*a + b) in closed form: channels are V - (V - ch) * S'/S; grey
    pixels (S = 0, hue 0 in skimage) become (V, V(1-S'), V(1-S'))."""
    x = x / 255.
    v = x.max(axis=-1, keepdims=True)
    delta = v - x.min(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, delta / v, 0.0)
        s_new = np.clip(s * c[0] + c[1], 0, 1)
        out = np.where(delta > 0, v - (v - x) * (s_new / s), v * (1 - s_new))
    out[..., :1] = np.where(delta > 0, out[..., :1], v)
    return np.clip(out, 0, 1) * 255


def _contrast(x, c, draws):
    x = x / 255.
    means = np.stack([im.mean(axis=(0, 1), keepdims=True) for im in x])
    return np.clip((x - means) * c + means, 0, 1) * 255


def _elastic_transform(x, c, draws):
    n, h, w, ch = x.shape
    img = np.array(x, dtype=np.float32) / 255.
    sigma = np.array((h, w)) * 0.01
    max_d = h * 0.005  # the package uses the height for both directions
    du = draws.uniform(-max_d, max_d, (h, w))
    dv = draws.uniform(-max_d, max_d, (h, w))
    dx = (_gaussian(du, sigma, mode="reflect", truncate=3) * c).astype(np.float32)
    dy = (_gaussian(dv, sigma, mode="reflect", truncate=3) * c).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # scipy.ndimage.map_coordinates(order=1, mode='reflect') == cv2.remap(INTER_LINEAR,
    # BORDER_REFLECT) at exact float coordinates (OpenCV 5), shared by the 3 channels.
    out = np.stack([cv2.remap(im, xx + ddx, yy + ddy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                    for im, ddx, ddy in zip(img, dx, dy)])
    return np.clip(out.reshape(img.shape), 0, 1) * 255


def _pixelate(x, c, draws):
    n, h, w, _ = x.shape
    small = (max(1, int(w * c)), max(1, int(h * c)))
    return np.stack([np.asarray(Image.fromarray(im).resize(small, Image.BOX).resize((w, h), Image.NEAREST))
                     for im in x])


def _jpeg_compression(x, c, draws):
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=c)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def _spatter(x, c, draws):
    n, h, w, _ = x.shape
    xf = np.array(x, dtype=np.float32) / 255.
    liquid = draws.normal(c[0], c[1], (h, w))
    liquid = _gaussian(liquid, c[2])
    liquid[liquid < c[3]] = 0
    out = np.empty(x.shape, np.float32 if c[5] == 0 else np.float64)
    if c[5] == 0:  # water drops: pale turquoise, edges from Canny + distance transform
        kernel = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        colour = np.array([175 / 255., 238 / 255., 238 / 255.], np.float32)
        for i in range(n):
            layer = (liquid[i] * 255).astype(np.uint8)
            dist = 255 - cv2.Canny(layer, 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
            dist = cv2.equalizeHist(dist)
            dist = cv2.filter2D(dist, cv2.CV_8U, kernel)
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            m = layer * dist
            peak = np.max(m)
            m = m / peak if peak > 0 else m  # an all-dry layer (tiny images) adds nothing
            m *= c[4]
            out[i] = np.clip(xf[i] + m[..., None] * colour, 0, 1) * 255
        return out
    mask = np.where(liquid > c[3], 1, 0).astype(np.float32)  # mud: brown blots
    mask = _gaussian(mask.astype(np.float64), c[4]).astype(np.float32)  # as scipy: double inside
    mask[mask < 0.8] = 0
    colour = np.array([63 / 255., 42 / 255., 20 / 255.]) * mask[..., None]
    xf *= (1 - mask[..., None])
    return np.clip(xf + colour, 0, 1) * 255


_FUNCS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur_batch,
    "zoom_blur": _zoom_blur, "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
    "contrast": _contrast, "elastic_transform": _elastic_transform, "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression, "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur, "spatter": _spatter, "saturate": _saturate,
}


# ----------------------------------------------------------------------------------- public API
def corrupt(img, name: str, severity: int = 1, seed: int | Sequence[int] | list | np.random.Generator | None = None):
    """Apply ImageNet-C corruption ``name`` at ``severity`` (1..5).

    ``img``: uint8 ``HxWx3`` or ``NxHxWx3`` (NumPy array or torch tensor); grayscale ``HxW``,
    ``HxWx1``, ``NxHxWx1`` is corrupted as RGB and returned as luma in its own shape.
    ``seed``: an int / SeedSequence entropy tuple / ``np.random.Generator`` drives the whole batch;
    a *list* with one seed per image makes every image independent of the batch it is in. ``None``
    draws fresh entropy. Returns uint8 of the input's shape (and type/device).
    """
    check_corruption(name, severity)
    if isinstance(img, torch.Tensor):
        out = corrupt(img.detach().cpu().numpy(), name, severity, seed)
        return torch.from_numpy(out).to(img.device)
    x = np.asarray(img)
    if x.dtype != np.uint8:
        raise ValueError(f"corrupt() expects uint8 images in [0, 255], got dtype {x.dtype} "
                         f"(shape {x.shape})")
    shape = x.shape
    if x.ndim == 2:
        batch, gray = x[None, ..., None], True
    elif x.ndim == 3 and shape[-1] in (1, 3):
        batch, gray = x[None], shape[-1] == 1
    elif x.ndim == 4 and shape[-1] in (1, 3):
        batch, gray = x, shape[-1] == 1
    else:
        raise ValueError(f"corrupt() expects an image HxW, HxWx1, HxWx3 or a batch NxHxWx(1|3), "
                         f"got shape {shape}")
    if min(batch.shape[1:3]) < 1 or batch.shape[0] < 1:
        raise ValueError(f"corrupt() got an empty image or batch of shape {shape}")
    if gray:
        batch = np.repeat(batch, 3, axis=-1)
    batch = np.ascontiguousarray(batch)
    out = _FUNCS[name](batch, _PARAMS[name][severity - 1], _Draws(batch.shape[0], seed))
    if out.dtype != np.uint8:
        out = np.clip(out, 0, 255).astype(np.uint8)  # truncation, like the package's np.uint8()
    if gray:
        out = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in out])[..., None]
    return out.reshape(shape)


class Corrupt:
    """Pipeline transform: ``Corrupt("fog", 3, seed=0)(img)`` on uint8 ``HxWx3`` images.

    Int ``seed``, in the main process: the k-th call uses seed ``(seed, k)``, a reproducible stream.
    In a DataLoader worker the k-th call of that worker uses a stream keyed by ``seed``, the
    worker's torch seed (``get_worker_info().seed``: the loader's base seed + worker id) and k:
    workers never repeat each other, nor epochs; reproducible only under the same torch seed (or
    loader ``generator``), worker count and batch order, and different from ``num_workers=0``.
    ``index=`` ties the draw to a dataset index instead: ``(seed, index)`` everywhere, whatever
    the workers or order."""

    def __init__(self, name: str, severity: int, seed: int | None = None):
        check_corruption(name, severity)
        self.name, self.severity, self.seed, self._calls = name, severity, seed, 0

    def __call__(self, img, index: int | None = None):
        key = self._calls if index is None else index
        self._calls += 1
        seed = None
        if self.seed is not None:
            seed = (self.seed, key)
            worker = torch.utils.data.get_worker_info()
            if index is None and worker is not None:  # spawn_key: apart from every (seed, k)
                seed = np.random.SeedSequence(self.seed, spawn_key=(worker.seed, key))
        return corrupt(img, self.name, self.severity, seed=seed)

    def __repr__(self) -> str:
        return f"Corrupt({self.name!r}, severity={self.severity}, seed={self.seed})"
