"""The training crop of the papers' ImageNet recipe (ECA-Net, iSQRT-COV, GCP): torchvision's
``RandomResizedCrop`` on PIL images, whose resize is bilinear with antialiasing.

albumentations samples the crop (scale, ratio, its seeding, the pipeline around it); the resize is
torchvision's antialiased resize of the crop — bilinear by default, which gives PIL's pixels
within one grey level (as :class:`cvkit.data.transforms.EvalTransform` does for evaluation), or
bicubic (timm's / DeiT's ``--train-interpolation bicubic``). albumentations' own filters do not
antialias: OpenCV's bilinear resize does not (fine texture aliases into false patterns), and its
``area_for_downscale`` switches to OpenCV's area filter when either side shrinks, which is a
near-nearest-neighbour blocky enlargement of a side that grows.
"""
from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from cvkit.data.transforms import check_interpolation

#: albumentations' (OpenCV's) ``interpolation`` flag -> the antialiased filter used instead
CV2_FILTERS = {cv2.INTER_LINEAR: "bilinear", cv2.INTER_CUBIC: "bicubic"}


def antialiased_resize(image: np.ndarray, size: tuple[int, int],
                       interpolation: str = "bilinear") -> np.ndarray:
    """HxWxC or HxW uint8 array -> ``size`` (height, width) with torchvision's antialiased
    ``interpolation`` filter ("bilinear": PIL's within one grey level; "bicubic")."""
    mode = InterpolationMode(check_interpolation(interpolation))
    if image.ndim == 2:
        return antialiased_resize(image[:, :, None], size, interpolation)[:, :, 0]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # channels-last storage
    out = F.resize(x, list(size), interpolation=mode, antialias=True)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())


class AntialiasedRandomResizedCrop(A.RandomResizedCrop):
    """``A.RandomResizedCrop`` whose crop is resized by :func:`antialiased_resize`: for the image
    targets (``image``, ``images``) ``interpolation`` picks the antialiased filter,
    ``cv2.INTER_LINEAR`` (default) bilinear or ``cv2.INTER_CUBIC`` bicubic (other flags are
    refused), and ``area_for_downscale`` is ignored; masks keep albumentations'
    ``mask_interpolation`` (nearest)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.interpolation not in CV2_FILTERS:
            raise ValueError(f"AntialiasedRandomResizedCrop resizes with cv2.INTER_LINEAR "
                             f"(bilinear) or cv2.INTER_CUBIC (bicubic), got interpolation="
                             f"{self.interpolation!r}")

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x_min, y_min, x_max, y_max = crop_coords
        return antialiased_resize(img[y_min:y_max, x_min:x_max], self.size,
                                  CV2_FILTERS[self.interpolation])

    def apply_to_images(self, images: np.ndarray, crop_coords: tuple[int, int, int, int],
                        **params: Any) -> np.ndarray:
        return np.stack([self.apply(img, crop_coords) for img in images])
