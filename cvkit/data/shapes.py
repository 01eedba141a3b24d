"""Procedural shape images: the generator behind cvkit's embedded synthetic datasets.

Each shape is a polygon (so an instance mask is exact), drawn with a random colour, scale, position and
rotation over a random textured background. Everything is driven by a ``numpy.random.Generator`` so
a seed reproduces an image bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = (
    "circle", "triangle", "square", "star", "cross",
    "diamond", "arrow", "heart", "crescent", "lshape",
)


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return radius * np.stack([np.cos(t), np.sin(t)], 1)


def unit_polygon(name: str) -> np.ndarray:
    """Vertices (N, 2) of shape ``name``, scaled so that they lie inside the unit circle."""
    poly = _raw_polygon(name)
    return poly / np.linalg.norm(poly, axis=1).max()


def _raw_polygon(name: str) -> np.ndarray:
    if name == "circle":
        return _regular(40)
    if name == "triangle":
        return _regular(3, phase=-np.pi / 2)
    if name == "square":
        return _regular(4, phase=np.pi / 4) / np.sqrt(2) * 1.4
    if name == "star":
        outer, inner = _regular(5, 1.0, -np.pi / 2), _regular(5, 0.42, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], 1).reshape(-1, 2)
    if name == "cross":
        a, b = 1.0, 0.33
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                         [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
    if name == "diamond":
        return np.array([[0, -1.0], [0.5, 0], [0, 1.0], [-0.5, 0]])
    if name == "arrow":
        return np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.7], [1, 0],
                         [0.2, 0.7], [0.2, 0.25], [-1, 0.25]])
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        return (pts - pts.mean(0)) / np.abs(pts).max()
    if name == "crescent":
        t = np.linspace(-np.pi / 2, np.pi / 2, 24)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = np.stack([0.45 * np.cos(t[::-1]) + 0.05, np.sin(t[::-1])], 1)
        return np.concatenate([outer, inner]) - np.array([0.3, 0])
    if name == "lshape":
        return np.array([[-0.8, -1], [-0.2, -1], [-0.2, 0.4], [0.8, 0.4], [0.8, 1], [-0.8, 1]])
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")


def _random_colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """An RGB colour at least 160 (Euclidean, 0-255) from ``avoid``, so shapes stay visible."""
    for _ in range(100):
        c = rng.integers(0, 256, 3)
        if avoid is None or np.linalg.norm(c - avoid) > 160:
            return c
    return 255 - np.asarray(avoid).astype(int)


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A uint8 (size, size, 3) background: gradient, stripes, checkerboard or blotchy noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c1, c2 = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        w = (np.cos(angle) * xx + np.sin(angle) * yy)
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-6)
    elif kind == 1:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 10)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    elif kind == 2:
        n = rng.integers(3, 9)
        w = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    else:
        coarse = rng.random((6, 6)).astype(np.float32)
        w = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC), dtype=np.float32) / 255
    contrast = rng.uniform(0.05, 0.25)  # keep the background calmer than the shapes
    w = 0.5 + (w - 0.5) * contrast
    img = c1 * (1 - w[..., None]) + c2 * w[..., None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class PlacedShape:
    """A drawn shape: its class index and its polygon in pixel coordinates (x, y)."""

    label: int
    polygon: np.ndarray

    @property
    def bbox_xyxy(self) -> tuple[float, float, float, float]:
        x0, y0 = self.polygon.min(0)
        x1, y1 = self.polygon.max(0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def place_shape(rng: np.random.Generator, label: int, size: int, scale: tuple[float, float],
                shapes: tuple[str, ...] = SHAPES) -> PlacedShape:
    """Scale, rotate and translate shape ``shapes[label]`` so it lies fully inside the image."""
    poly = unit_polygon(shapes[label])
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    radius = rng.uniform(*scale) * size / 2
    pts = poly @ rot.T * radius * np.array([rng.uniform(0.8, 1.2), 1.0])
    span = (pts.max(0) - pts.min(0)).max()
    if span > size - 4:  # never larger than the image (the aspect stretch can exceed the circle)
        pts *= (size - 4) / span  # one pixel to spare: the placement range below stays >= 0
    lo, hi = pts.min(0), pts.max(0)
    margin = 1.0
    cx = rng.uniform(margin - lo[0], size - 1 - margin - hi[0])
    cy = rng.uniform(margin - lo[1], size - 1 - margin - hi[1])
    return PlacedShape(label, pts + np.array([cx, cy]))


def draw(image: np.ndarray, shapes: list[PlacedShape], rng: np.random.Generator) -> np.ndarray:
    """Draw ``shapes`` in random colours (contrasting with the local background) onto ``image``."""
    pil = Image.fromarray(image)
    canvas = ImageDraw.Draw(pil)
    for s in shapes:
        x0, y0, x1, y1 = (int(v) for v in s.bbox_xyxy)
        local = image[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1].reshape(-1, 3).mean(0)
        colour = tuple(int(v) for v in _random_colour(rng, local))
        canvas.polygon([tuple(p) for p in s.polygon], fill=colour)
    return np.asarray(pil)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def classification_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One large shape of class ``label`` (0.5-0.9 of the image across) on a textured background,
    uint8 (size, size, 3)."""
    image = textured_background(rng, size)
    return draw(image, [place_shape(rng, label, size, (0.5, 0.9))], rng)


def detection_image(rng: np.random.Generator, size: int, num_classes: int, max_objects: int = 4
                    ) -> tuple[np.ndarray, list[PlacedShape]]:
    """1..max_objects shapes of the first ``num_classes`` kinds, boxes never overlapping (masks stay exact)."""
    image = textured_background(rng, size)
    placed: list[PlacedShape] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            cand = place_shape(rng, int(rng.integers(num_classes)), size, (0.18, 0.45))
            if all(_iou(cand.bbox_xyxy, p.bbox_xyxy) == 0.0 for p in placed):
                placed.append(cand)
                break
    return draw(image, placed, rng), placed
