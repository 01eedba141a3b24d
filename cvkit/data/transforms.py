"""Image-classification transforms on albumentations (OpenCV kernels, uint8 HxWx3 RGB in).

Train: RandomResizedCrop + horizontal flip, the ImageNet recipe of ECA-Net / iSQRT-COV / GCP
(optional extras, off by default: colour jitter, a RandAugment-like policy); the crop is resized
with torchvision's antialiased bilinear resize, as the papers' PIL RandomResizedCrop
(:mod:`cvkit.data.resized_crop`). Eval: resize the
shorter side to ``size / crop_pct`` (256 for 224 at the usual crop_pct 0.875) then centre crop
``size``, with torchvision's antialiased bilinear resize: the pixels the papers (and the released
checkpoints) were evaluated on, to within one grey level.

``interpolation="bicubic"`` resizes both with torchvision's antialiased bicubic filter instead
(timm's ``--train-interpolation`` / ``--interpolation``, the DeiT recipe's choice); "bilinear"
(default) gives the same pixels as before the option existed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the papers' evaluation size: centre crop 224 of the image resized to 256 (224 / 0.875)
IMAGE_SIZE, CROP_PCT = 224, 0.875
#: the number of ops :func:`randaugment_like` picks from (the most ``num_ops`` can be)
RANDAUGMENT_OPS = 11
#: the resize filters of ``data.interpolation`` (torchvision's antialiased ones); first = default
INTERPOLATIONS = ("bilinear", "bicubic")


def check_interpolation(interpolation: str) -> str:
    """``interpolation`` if it is one of :data:`INTERPOLATIONS`, else a ValueError naming them."""
    if not (isinstance(interpolation, str) and interpolation in INTERPOLATIONS):
        raise ValueError(f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, "
                         f"got {interpolation!r}")
    return interpolation


def eval_resize(size: int, crop_pct: float = CROP_PCT) -> int:
    """The shorter side the image is resized to before the centre crop ``size``:
    ``round(size / crop_pct)``."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return int(round(size / crop_pct))


def _to_tensor(mean: Sequence[float], std: Sequence[float], normalize: bool) -> list:
    """CHW tensor; uint8 unless ``normalize`` (then float32, (x/255 - mean) / std).

    The datamodule keeps images uint8 until they reach the device (4x less to copy between
    worker processes and to the GPU) and normalises there: :func:`normalize_batch`.
    """
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    ops = [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)] if normalize else []
    return ops + [ToTensorV2()]


def normalize_batch(images, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD):
    """uint8 (B,3,H,W) -> float32 (x/255 - mean) / std, on the tensor's device; float passes."""
    import torch

    if images.dtype != torch.uint8:
        return images
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    inv_s = 1.0 / (torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1) * 255)
    return images.float().sub_(m).mul_(inv_s)  # in place: one float buffer


def randaugment_like(num_ops: int = 2, magnitude: float = 0.5):
    """A RandAugment-style policy (Cubuk et al. 2020: ``num_ops`` ops picked uniformly, one global
    ``magnitude`` in [0, 1]) built from albumentations ops; not bit-identical to the paper's list."""
    import albumentations as A

    m = float(magnitude)
    ops = [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.3 * m, 0.3 * m), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.3 * m, 0.3 * m)}, p=1.0),
        A.Equalize(p=1.0),
        A.Posterize(num_bits=(max(1, int(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9 * m, contrast_limit=0.9 * m, p=1.0),
        A.Sharpen(alpha=(0.0, 0.9 * m), p=1.0),
        A.HueSaturationValue(hue_shift_limit=0, sat_shift_limit=int(90 * m), val_shift_limit=0, p=1.0),
    ]
    return A.SomeOf(ops, n=num_ops, p=1.0)


def train_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                    color_jitter: float = 0.0, randaugment: int = 0, randaugment_magnitude: float = 0.5,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    normalize: bool = True, interpolation: str = "bilinear"):
    """Training pipeline; ``randaugment`` is the number of policy ops per image (0 = off);
    ``interpolation``: the crop's antialiased resize filter, "bilinear" or "bicubic"."""
    import albumentations as A

    from cvkit.data.resized_crop import CV2_FILTERS, AntialiasedRandomResizedCrop

    check_interpolation(interpolation)
    flag = next(f for f, name in CV2_FILTERS.items() if name == interpolation)
    ops = [AntialiasedRandomResizedCrop(size=(size, size), scale=tuple(scale), ratio=tuple(ratio),
                                        interpolation=flag, p=1.0)]
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        cj = float(color_jitter)
        ops.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=1.0))
    if randaugment > 0:
        ops.append(randaugment_like(randaugment, randaugment_magnitude))
    return A.Compose(ops + _to_tensor(mean, std, normalize))


class EvalTransform:
    """torchvision's ImageNet evaluation transform, ``Resize(resize)`` (shorter side, antialiased,
    ``interpolation`` "bilinear" or "bicubic") + ``CenterCrop(size)``, on a uint8 HxWx3 array;
    called as albumentations' pipelines are (``tf(image=img)["image"]``), giving a CHW tensor
    (uint8, or float32 normalised).

    The papers evaluated with torchvision's PIL transforms. OpenCV's resize (albumentations') does
    not antialias a downscale: on ImageNet-sized photos its crop differs from PIL's by 1-6 grey
    levels on average; torchvision's tensor resize matches PIL to one grey level, and is faster.
    """

    def __init__(self, size: int, resize: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, normalize: bool = True,
                 interpolation: str = "bilinear") -> None:
        self.size, self.resize = size, resize
        self.mean, self.std, self.normalize = tuple(mean), tuple(std), normalize
        self.interpolation = check_interpolation(interpolation)

    def __call__(self, *, image) -> dict:
        import torch
        import torchvision.transforms.v2.functional as F
        from torchvision.transforms import InterpolationMode

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mode = InterpolationMode(self.interpolation)  # "bilinear" / "bicubic" are its values
        x = F.center_crop(F.resize(x, [self.resize], interpolation=mode, antialias=True),
                          [self.size])
        if self.normalize:
            x = normalize_batch(x[None], self.mean, self.std)[0]
        return {"image": x.contiguous()}

    def __repr__(self) -> str:
        return (f"EvalTransform(resize={self.resize}, center_crop={self.size}, "
                f"interpolation={self.interpolation!r}, normalize={self.normalize})")


def eval_transform(size: int = IMAGE_SIZE, crop_pct: float = CROP_PCT,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   normalize: bool = True, interpolation: str = "bilinear") -> EvalTransform:
    """Resize the shorter side to :func:`eval_resize`, centre crop ``size`` (:class:`EvalTransform`)."""
    return EvalTransform(size, eval_resize(size, crop_pct), mean, std, normalize, interpolation)
