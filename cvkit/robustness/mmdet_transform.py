"""``CorruptImage``: an mmdet/mmcv pipeline transform applying an ImageNet-C corruption (COCO-C).

Registered in mmdet's ``TRANSFORMS`` on import (this module imports mmcv/mmdet, so only the
detection path imports it). Insert it right after ``LoadImageFromFile``: the full-resolution image
is corrupted before resizing, as in Michaelis et al. 2019 (COCO-C).
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from cvkit.robustness.corruptions import check_corruption, corrupt
from cvkit.robustness.folder import image_seed


@TRANSFORMS.register_module(force=True)
class CorruptImage(BaseTransform):
    """Corrupt ``results['img']`` (BGR uint8, as mmcv loads it) with ``corruption`` at ``severity``;
    the seed is ``(seed, corruption index, severity, img_id)``, so every image is reproducible."""

    def __init__(self, corruption: str, severity: int, seed: int = 0):
        check_corruption(corruption, severity)
        self.corruption, self.severity, self.seed = corruption, severity, seed

    def transform(self, results: dict) -> dict:
        img = results["img"]
        key = results.get("img_id", results.get("sample_idx", 0))
        rgb = np.ascontiguousarray(img[..., ::-1]) if img.ndim == 3 and img.shape[2] == 3 else img
        out = corrupt(rgb, self.corruption, self.severity,
                      seed=image_seed(self.seed, self.corruption, self.severity, int(key)))
        results["img"] = np.ascontiguousarray(out[..., ::-1]) if out.ndim == 3 and out.shape[2] == 3 else out
        return results

    def __repr__(self) -> str:
        return f"CorruptImage(corruption={self.corruption!r}, severity={self.severity}, seed={self.seed})"
