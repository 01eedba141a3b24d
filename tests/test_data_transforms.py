"""Transforms: eval = torchvision's resize of the shorter side + centre crop, train = seeded RRC etc."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvkit.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, RANDAUGMENT_OPS, eval_transform,
                                   randaugment_like, train_transform)


def reference_eval(img: np.ndarray, size: int, crop_pct: float) -> np.ndarray:
    """The papers' evaluation pipeline, torchvision's PIL transforms: Resize(round(size /
    crop_pct)) (shorter side, bilinear) + CenterCrop(size), as uint8 HxWx3."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(int(round(size / crop_pct)), T.InterpolationMode.BILINEAR),
                    T.CenterCrop(size)])
    return np.asarray(tf(Image.fromarray(img)))


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Fine detail that aliases when downscaled without a filter: a chirp (rising frequency) over
    smooth noise, plus a few sharp-edged blocks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chirp = np.sin(xx * xx / (3.0 * w) + yy / 7.0)
    smooth = rng.standard_normal((h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    img = 128 + 70 * chirp[..., None] + 30 * smooth
    for _ in range(6):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        img[y:y + 40, x:x + 40] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (256, 256), (180, 240)])
def test_eval_transform_is_torchvisions_pil_pipeline(hw):
    """Resize 256 + centre crop 224 gives the pixels torchvision's PIL pipeline gives (what the
    papers evaluated with): at most one grey level apart, almost all equal. OpenCV's resize
    without antialiasing was several grey levels off on average for a downscale."""
    img = photo_like(*hw)
    raw = eval_transform(224, crop_pct=0.875, normalize=False)(image=img)["image"]
    assert raw.shape == (3, 224, 224) and raw.dtype == torch.uint8
    diff = np.abs(raw.permute(1, 2, 0).numpy().astype(int) - reference_eval(img, 224, 0.875))
    assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())
    out = eval_transform(224, crop_pct=0.875)(image=img)["image"]
    expected = (raw.numpy().transpose(1, 2, 0) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_eval_transform_takes_array_views():
    """A channel-reversed or cropped view (negative or gapped strides) is read as its values."""
    img = photo_like(120, 160)
    view = img[10:110, ::-1][:, :, ::-1]
    out = eval_transform(64, crop_pct=1.0, normalize=False)(image=view)["image"]
    ref = eval_transform(64, crop_pct=1.0, normalize=False)(image=view.copy())["image"]
    assert torch.equal(out, ref)


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


@pytest.mark.parametrize("hw", [(333, 333), (150, 400), (400, 150), (60, 80)])
def test_train_crop_is_resized_as_the_papers_pil_crop(hw):
    """With scale=1 and the image's own aspect ratio the crop is the whole image: resized to the
    output as the papers' PIL RandomResizedCrop resizes it (bilinear, antialiased), within one
    grey level, whether both sides shrink, one shrinks and one grows, or both grow. OpenCV's
    bilinear resize (albumentations' default) was 3-6 grey levels off on average here (up to
    76: the chirp aliases), its area filter up to 66 where one side grows."""
    from PIL import Image

    img = photo_like(*hw)
    aspect = hw[1] / hw[0]
    tf = train_transform(112, scale=(1.0, 1.0), ratio=(aspect, aspect), hflip=0.0, normalize=False)
    ours = tf(image=img)["image"]
    assert ours.shape == (3, 112, 112) and ours.dtype == torch.uint8
    pil = np.asarray(Image.fromarray(img).resize((112, 112), Image.BILINEAR)).astype(int)
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil)
    assert diff.max() <= 1 and diff.mean() < 0.2, (diff.max(), diff.mean())
    normalised = train_transform(112, scale=(1.0, 1.0), ratio=(aspect, aspect), hflip=0.0)
    expected = ((ours.numpy().transpose(1, 2, 0) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
    np.testing.assert_allclose(normalised(image=img)["image"].numpy(),
                               expected.transpose(2, 0, 1), atol=1e-5)


def test_train_crop_takes_albumentations_region():
    """The crop is the region albumentations' own RandomResizedCrop samples with the same seed
    (only the resize differs): on a smooth, non-square image, whose pixels name their position
    (red = column, green = row), both give the same picture within the filters' difference."""
    import albumentations as A

    rows, cols = np.mgrid[0:180, 0:300]
    img = np.stack([cols * 255 // 299, rows * 255 // 179, np.full_like(rows, 128)], -1).astype(np.uint8)
    ours = train_transform(64, hflip=0.0, normalize=False)
    stock = A.Compose([A.RandomResizedCrop(size=(64, 64), p=1.0)])
    for seed in range(10):
        ours.set_random_seed(seed)
        stock.set_random_seed(seed)
        a = ours(image=img)["image"].permute(1, 2, 0).numpy().astype(int)
        b = stock(image=img)["image"].astype(int)
        assert np.abs(a - b).mean() < 1.0, (seed, np.abs(a - b).mean())


def test_train_crop_of_a_grayscale_array():
    """A 2-D (grayscale) array stays 2-D, as with albumentations' own crop."""
    from cvkit.data.resized_crop import AntialiasedRandomResizedCrop

    img = np.random.default_rng(0).integers(0, 256, (90, 120), dtype=np.uint8)
    out = AntialiasedRandomResizedCrop(size=(32, 48), p=1.0)(image=img)["image"]
    assert out.shape == (32, 48) and out.dtype == np.uint8


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


def test_randaugment_ops_is_the_number_of_policy_ops():
    """data.randaugment is checked against RANDAUGMENT_OPS (more ops per image than the policy
    holds failed at the first image); every op can be drawn at once."""
    assert len(randaugment_like().transforms) == RANDAUGMENT_OPS
    img = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert train_transform(32, randaugment=RANDAUGMENT_OPS)(image=img)["image"].shape == (3, 32, 32)


# -- data.interpolation ---------------------------------------------------------------------------
def _sha256(*tensors) -> str:
    import hashlib

    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()


def test_bilinear_default_keeps_the_pixels_of_before_the_option():
    """SHA-256 of the uint8 outputs (3 seeded training crops, one evaluation crop, 48 px as the
    demo) recorded with the code before ``interpolation`` existed (commit 10d23e9, torchvision
    0.29.1): the default, and "bilinear" given, are those pixels bit for bit."""
    img = photo_like(150, 200)
    for kwargs in ({}, {"interpolation": "bilinear"}):
        tf = train_transform(48, normalize=False, **kwargs)
        crops = []
        for seed in range(3):
            tf.set_random_seed(seed)
            crops.append(tf(image=img)["image"])
        assert _sha256(*crops) == "1fdaea55ee5bdb64e9f319d04aa67a51eaa2dbd7f48e0a6f582816d6b15a77c3"
        ev = eval_transform(48, crop_pct=0.875, normalize=False, **kwargs)(image=img)["image"]
        assert _sha256(ev) == "cb872adce71f1b4c85da7de340f9de65f69ea9765336d03a42dba1c8fddbfbe7"


@pytest.mark.parametrize("hw", [(150, 200), (60, 80)])
def test_bicubic_is_torchvisions_antialiased_bicubic_in_train_and_eval(hw):
    """interpolation="bicubic": the whole-image training crop (scale 1, the image's aspect) and the
    evaluation resize are torchvision's antialiased bicubic resize exactly, PIL's BICUBIC within
    one grey level (timm's bicubic pipelines), and several grey levels from the bilinear pixels."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode
    import torchvision.transforms.v2.functional as F

    img = photo_like(*hw)
    x = torch.from_numpy(img).permute(2, 0, 1)
    aspect = hw[1] / hw[0]
    crop = dict(scale=(1.0, 1.0), ratio=(aspect, aspect), hflip=0.0, normalize=False)
    ours = train_transform(48, interpolation="bicubic", **crop)(image=img)["image"]
    assert torch.equal(ours, F.resize(x, [48, 48], interpolation=InterpolationMode.BICUBIC,
                                      antialias=True))
    pil = np.asarray(Image.fromarray(img).resize((48, 48), Image.BICUBIC)).astype(int)
    assert np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1
    bilinear = train_transform(48, **crop)(image=img)["image"]
    assert (ours.int() - bilinear.int()).abs().float().mean() > 1.0

    ev = eval_transform(40, crop_pct=0.875, normalize=False, interpolation="bicubic")(image=img)
    pil_tf = T.Compose([T.Resize(46, InterpolationMode.BICUBIC), T.CenterCrop(40)])  # 40 / 0.875
    ref = pil_tf(Image.fromarray(img))
    diff = np.abs(ev["image"].permute(1, 2, 0).numpy().astype(int) - np.asarray(ref).astype(int))
    assert diff.max() <= 1, diff.max()
    bilinear = eval_transform(40, crop_pct=0.875, normalize=False)(image=img)["image"]
    assert (ev["image"].int() - bilinear.int()).abs().float().mean() > 1.0


def test_unknown_interpolation_is_a_clear_error():
    import cv2

    from cvkit.data.resized_crop import AntialiasedRandomResizedCrop

    for make in (lambda: train_transform(32, interpolation="nearest"),
                 lambda: eval_transform(32, interpolation="nearest")):
        with pytest.raises(ValueError, match=r"interpolation must be one of 'bilinear', "
                                             r"'bicubic', got 'nearest'"):
            make()
    with pytest.raises(ValueError, match="INTER_LINEAR .* or cv2.INTER_CUBIC"):
        AntialiasedRandomResizedCrop(size=(8, 8), interpolation=cv2.INTER_AREA)
