"""Albumentations pipelines: eval = resize shorter side + centre crop, train = seeded RRC etc."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cvkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


def reference_eval(img: np.ndarray, size: int, crop_pct: float) -> np.ndarray:
    """Independent reference: resize shorter side to round(size / crop_pct), crop the centre."""
    h, w = img.shape[:2]
    short = int(round(size / crop_pct))
    nh, nw = (short, int(round(w * short / h))) if h <= w else (int(round(h * short / w)), short)
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = r[top:top + size, left:left + size].astype(np.float32) / 255.0
    return ((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@pytest.mark.parametrize("hw", [(300, 400), (400, 300), (256, 256)])
def test_eval_transform_resize_256_centre_crop_224(hw):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    out = eval_transform(224, crop_pct=0.875)(image=img)["image"]
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), reference_eval(img, 224, 0.875), atol=2e-2)


def test_eval_transform_sizes_configurable():
    img = np.zeros((96, 128, 3), np.uint8)
    assert eval_transform(64, crop_pct=1.0)(image=img)["image"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(64, crop_pct=1.5)


def test_train_transform_seeded_and_random():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    tf = train_transform(64, color_jitter=0.4, randaugment=2)
    tf.set_random_seed(7)
    a = tf(image=img)["image"]
    tf.set_random_seed(7)
    b = tf(image=img)["image"]
    c = tf(image=img)["image"]
    assert a.shape == (3, 64, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_transform_is_a_crop_of_the_image():
    """With scale=ratio=1 and no flip/jitter the RRC is the whole image resized: compare to cv2."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    tf = train_transform(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
    out = tf(image=img)["image"].numpy()
    ref = cv2.resize(img, (40, 40), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    ref = ((ref - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(out, ref, atol=2e-2)


def test_normalisation_is_imagenets_on_the_device_and_in_the_pipeline():
    """The torchvision/timm ImageNet constants, written out here (not imported from the code under
    test); the datamodule's on-device normalize_batch equals the pipeline's own Normalize."""
    from cvkit.data.transforms import normalize_batch

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    img = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    expected = ((img / 255.0 - mean) / std).transpose(2, 0, 1)
    normalised = eval_transform(32, crop_pct=1.0)(image=img)["image"].numpy()
    raw = eval_transform(32, crop_pct=1.0, normalize=False)(image=img)["image"]
    assert raw.dtype == torch.uint8
    on_device = normalize_batch(raw[None])[0].numpy()
    np.testing.assert_allclose(normalised, expected, atol=1e-5)
    np.testing.assert_allclose(on_device, expected, atol=1e-5)
