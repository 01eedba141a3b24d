"""``CorruptImage``: an mmdet/mmcv pipeline transform applying an ImageNet-C corruption (COCO-C).

Registered in mmdet's ``TRANSFORMS`` on import (this module imports mmcv/mmdet, so only the
detection path imports it). Insert it right after ``LoadImageFromFile``: the full-resolution image
is corrupted before resizing, as in Michaelis et al. 2019 (COCO-C). ``channel_order="bgr"`` follows
their published protocol, which corrupts mmcv's BGR array as if it were RGB
(:mod:`cvkit.robustness.detection`).
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from cvkit.robustness.corruptions import check_corruption, corrupt
from cvkit.robustness.detection import check_channel_order
from cvkit.robustness.folder import image_index, image_seed


@TRANSFORMS.register_module(force=True)
class CorruptImage(BaseTransform):
    """Corrupt ``results['img']`` (BGR uint8, as mmcv loads it) with ``corruption`` at ``severity``;
    the seed is ``(seed, corruption index, severity, image_index(img_id))``, so every image is
    reproducible across processes and runs (string ids, allowed in COCO-style json, by a SHA-256
    digest; int ids as they are: :func:`cvkit.robustness.folder.image_index`).
    ``channel_order="rgb"`` corrupts it as RGB (swapped there and back), ``"bgr"`` as it is (the
    published COCO-C protocol)."""

    def __init__(self, corruption: str, severity: int, seed: int = 0, channel_order: str = "rgb"):
        check_corruption(corruption, severity)
        self.corruption, self.severity, self.seed = corruption, severity, seed
        self.channel_order = check_channel_order(channel_order)

    def transform(self, results: dict) -> dict:
        img = results["img"]
        key = results.get("img_id", results.get("sample_idx", 0))
        try:
            index = image_index(key)
        except ValueError as e:
            raise ValueError(f"CorruptImage: {results.get('img_path', 'an image')}: {e}") from None
        swap = self.channel_order == "rgb" and img.ndim == 3 and img.shape[2] == 3
        out = corrupt(np.ascontiguousarray(img[..., ::-1]) if swap else img, self.corruption, self.severity,
                      seed=image_seed(self.seed, self.corruption, self.severity, index))
        results["img"] = np.ascontiguousarray(out[..., ::-1]) if swap else out
        return results

    def __repr__(self) -> str:
        return (f"CorruptImage(corruption={self.corruption!r}, severity={self.severity}, seed={self.seed}, "
                f"channel_order={self.channel_order!r})")
