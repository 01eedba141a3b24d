"""The training crop of the papers' ImageNet recipe (ECA-Net, iSQRT-COV, GCP): torchvision's
``RandomResizedCrop`` on PIL images, whose resize is bilinear with antialiasing.

albumentations samples the crop (scale, ratio, its seeding, the pipeline around it); the resize is
torchvision's antialiased bilinear resize of the crop, which gives PIL's pixels within one grey
level (as :class:`cvkit.data.transforms.EvalTransform` does for evaluation). albumentations' own
filters do not: OpenCV's bilinear resize does not antialias (fine texture aliases into false
patterns), and its ``area_for_downscale`` switches to OpenCV's area filter when either side
shrinks, which is a near-nearest-neighbour blocky enlargement of a side that grows.
"""
from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
import torchvision.transforms.v2.functional as F


def antialiased_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWxC or HxW array -> ``size`` (height, width), bilinear with antialiasing (PIL's filter)."""
    if image.ndim == 2:
        return antialiased_resize(image[:, :, None], size)[:, :, 0]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # channels-last storage
    return np.ascontiguousarray(F.resize(x, list(size), antialias=True).permute(1, 2, 0).numpy())


class AntialiasedRandomResizedCrop(A.RandomResizedCrop):
    """``A.RandomResizedCrop`` whose crop is resized by :func:`antialiased_resize`: the image
    targets (``image``, ``images``) ignore ``interpolation`` and ``area_for_downscale``; masks
    keep albumentations' ``mask_interpolation`` (nearest)."""

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x_min, y_min, x_max, y_max = crop_coords
        return antialiased_resize(img[y_min:y_max, x_min:x_max], self.size)

    def apply_to_images(self, images: np.ndarray, crop_coords: tuple[int, int, int, int],
                        **params: Any) -> np.ndarray:
        return np.stack([self.apply(img, crop_coords) for img in images])
