"""ImageFolder datamodule: OpenCV decoding, bad files, missing folders, sampler order and resume."""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cls_helpers import add_bad_files, tiny_imagefolder
from cvkit.data.datamodule import (BadImageError, ClassificationDataModule, ImageFolderDataset,
                                   ResumableDataLoader, ResumableDistributedSampler, decode_image,
                                   scan_split)


@pytest.fixture()
def tiny(cls_root, tmp_path):
    return tiny_imagefolder(cls_root, tmp_path / "tiny", classes=3, train=8, val=4)


def test_decode_matches_pil_rgb(cls_root):
    path = sorted((cls_root / "train" / "circle").iterdir())[0]
    ours = decode_image(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 1.0  # same JPEG, RGB order


def test_bad_files_are_skipped_named_and_counted(tiny):
    bad = add_bad_files(tiny / "train")
    dm = ClassificationDataModule(root=str(tiny), batch_size=4, image_size=32, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 3 * 8 + 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen_bad, n_images = [], 0
        for images, targets, skipped, _ in torch.utils.data.DataLoader(
                dm.train_set, batch_size=4, collate_fn=dm.train_dataloader().collate_fn):
            seen_bad += skipped
            n_images += images.shape[0]
            assert images.shape[1:] == (3, 32, 32) and images.shape[0] == targets.shape[0]
    assert sorted(seen_bad) == sorted(map(str, bad))
    assert n_images == 3 * 8
    messages = [str(w.message) for w in caught]
    for path in bad:
        assert any(str(path) in m for m in messages), messages
    assert any("truncated JPEG" in m for m in messages)


def _jpeg(rng: np.random.Generator) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_jpeg_with_data_after_eoi_decodes_and_truncation_is_still_caught(tmp_path):
    """Bytes after the EOI marker (phone trailers, motion-photo video) are legal: PIL, libjpeg and
    torchvision read such a file, so it must not be skipped as 'truncated'. A truncated JPEG whose
    APP segment holds an embedded JPEG (an EXIF thumbnail: its own EOI) is still truncated."""
    rng = np.random.default_rng(0)
    good = _jpeg(rng)
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes(good + b"\x00" * 100 + b"MotionPhoto_Data" + bytes(range(256)) * 4)
    ours = decode_image(trailer)
    ref = np.asarray(Image.open(trailer).convert("RGB"))
    assert ours.shape == (48, 64, 3) and np.abs(ours.astype(int) - ref.astype(int)).mean() < 1.0
    thumb = _jpeg(rng)
    app15 = b"\xff\xef" + (len(thumb) + 2).to_bytes(2, "big") + thumb  # an ignored APP segment
    with_thumb = good[:2] + app15 + good[2:]
    whole = tmp_path / "with_thumb.jpg"
    whole.write_bytes(with_thumb)
    assert decode_image(whole).shape == (48, 64, 3)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(with_thumb[: len(with_thumb) - len(good) // 3])
    with pytest.raises(BadImageError, match=f"truncated JPEG file {cut}"):
        decode_image(cut)


def test_headers_over_opencv_limits_are_bad_files_named_not_crashes(tmp_path):
    """OpenCV raises cv2.error (a multi-line assertion, no file name) instead of returning None
    when a header states a size over its limits: a corrupt BMP width, or a PNG of 10^10 pixels.
    Such a file is a BadImageError naming it, skipped like any bad file."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="BMP")
    bmp = bytearray(buf.getvalue())
    bmp[18:22] = struct.pack("<i", 1 << 30)  # the width field
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR, its CRC recomputed
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for name, data in (("corrupt.bmp", bmp), ("huge.png", png)):
        (folder / name).write_bytes(bytes(data))
        with pytest.raises(BadImageError) as e:
            decode_image(folder / name)
        assert str(e.value).startswith(f"not a decodable image file {folder / name} (OpenCV: ")
        assert "\n" not in str(e.value)
    ds = ImageFolderDataset(tmp_path / "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [ds[i] for i in range(2)] == [{"bad_file": str(folder / n)}
                                              for n in ("corrupt.bmp", "huge.png")]


def test_strict_mode_raises_one_line_naming_the_file_from_a_worker(tiny):
    bad = add_bad_files(tiny / "val")
    ds = ImageFolderDataset(tiny / "val", strict=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), num_workers=1)
    with pytest.raises(BadImageError) as e:
        next(iter(loader))
    msg = str(e.value)
    assert "\n" not in msg and any(str(p) in msg for p in bad), msg


def test_missing_and_empty_split_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        scan_split(tmp_path / "nowhere" / "train")
    assert "\n" not in str(e.value) and str(tmp_path / "nowhere" / "train") in str(e.value)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    dm = ClassificationDataModule(root=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"empty/train has no images"):
        dm.setup("fit")


def test_class_folder_without_images_is_an_error_naming_it(tiny):
    """As torchvision's ImageFolder: an empty class folder (or one holding only non-image files)
    would silently be a class with no samples, shifting no index but never learnt."""
    (tiny / "train" / "zebra").mkdir()
    (tiny / "train" / "zebra" / "notes.txt").write_text("not an image")
    (tiny / "val" / "zebra").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        ClassificationDataModule(root=str(tiny)).setup("fit")
    msg = str(e.value)
    assert "\n" not in msg and str(tiny / "train" / "zebra") in msg and "hold no images" in msg


def test_hidden_folders_and_files_are_not_classes_or_images(tiny):
    """A Jupyter ``.ipynb_checkpoints`` folder, a Mac zip's ``__MACOSX`` folder and ``._x.jpg``
    resource forks were a class / undecodable samples (torchvision's ImageFolder takes them);
    the robustness tools list the same classes and the same first image."""
    from cvkit.robustness.folder import first_image, folder_classes

    train = tiny / "train"
    before = ImageFolderDataset(train)
    jpg = before.samples[0][0]
    first = first_image(train)
    for hidden in (".ipynb_checkpoints", "__MACOSX", f"{before.classes[0]}/.cache"):
        (train / hidden).mkdir()
        shutil.copy(jpg, train / hidden / "a.jpg")
    (train / before.classes[0] / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ds = ImageFolderDataset(train)
    assert ds.classes == before.classes and ds.samples == before.samples
    assert folder_classes(train) == before.classes and first_image(train) == first


def test_two_rank_batches_are_the_one_process_batch(tiny):
    """The same seeded DistributedSampler on 1 or 2 ranks: the ranks' batches of size b together
    are the 1-process batch of size 2b (what makes DDP equal a single run of the same global batch)."""
    ds = ImageFolderDataset(tiny / "train")
    one = list(ResumableDistributedSampler(ds, 1, 0, seed=3))
    r0 = list(ResumableDistributedSampler(ds, 2, 0, seed=3))
    r1 = list(ResumableDistributedSampler(ds, 2, 1, seed=3))
    b = 4
    for k in range(len(ds) // (2 * b)):
        assert sorted(r0[k * b:(k + 1) * b] + r1[k * b:(k + 1) * b]) == sorted(one[2 * k * b:2 * (k + 1) * b])


def test_loader_resumes_mid_epoch_exactly(tiny):
    """resume_at(epoch, batches) then iterate == the rest of an unbroken epoch, augmentation
    included (per-sample seeds), with worker processes."""
    def loader(progress=None):
        dm = ClassificationDataModule(root=str(tiny), batch_size=4, image_size=32, num_workers=1,
                                      seed=5, color_jitter=0.4)
        dm.setup("fit")
        dl = dm.train_dataloader()
        if progress is not None:
            dl._progress = progress
        return dl

    full = loader()
    full.sampler.set_epoch(1)
    unbroken = list(full)
    resumed = loader(progress=lambda: (1, 2))
    state = resumed.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    fresh = loader()
    fresh.resume_at(state)
    rest = list(fresh)
    assert len(rest) == len(unbroken) - 2
    for (a, ta, *_), (b, tb, *_) in zip(unbroken[2:], rest):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    # the next epoch starts from its beginning again
    fresh.sampler.set_epoch(2)
    assert len(list(fresh)) == len(unbroken)


def test_batch_larger_than_the_training_set_is_one_line(tiny):
    """drop_last with fewer images per device than a batch: every epoch had no batch, Lightning
    printed "No training batches" and the run ended with exit 0 and no checkpoint."""
    from cvkit.tool_errors import OptionError

    dm = ClassificationDataModule(root=str(tiny), batch_size=25, image_size=32, num_workers=0)
    dm.setup("fit")
    with pytest.raises(OptionError) as e:
        dm.train_dataloader()
    assert str(e.value).startswith("data.batch_size 25 is more than the 24 training images per "
                                   f"device (24 in {tiny / 'train'})"), e.value
    dm = ClassificationDataModule(root=str(tiny), batch_size=24, image_size=32, num_workers=0)
    assert len(dm.train_dataloader()) == 1


def test_num_classes_and_class_mismatch(tiny, tmp_path):
    dm = ClassificationDataModule(root=str(tiny))
    assert dm.num_classes == 3
    (tiny / "val" / "extra").mkdir()
    (tiny / "val" / "extra" / "a.jpg").write_bytes(
        next((tiny / "val").glob("*/*.jpg")).read_bytes())
    with pytest.raises(ValueError, match=r"class folders differ .*only in train: \[\], "
                                         r"only in val: \['extra'\]"):
        ClassificationDataModule(root=str(tiny)).setup("fit")
    # same number of classes, one misspelt: the message names both sides
    shutil.rmtree(tiny / "val" / "extra")
    first = sorted(p.name for p in (tiny / "val").iterdir())[0]
    (tiny / "val" / first).rename(tiny / "val" / (first + "_typo"))
    with pytest.raises(ValueError, match=rf"only in train: \['{first}'\], "
                                         rf"only in val: \['{first}_typo'\]"):
        ClassificationDataModule(root=str(tiny)).setup("fit")


def test_workers_fork_after_multithreaded_opencv_in_parent(tiny):
    """A parent that used OpenCV's thread pool (any multi-threaded cv2 call) then forks loader
    workers: without cvkit.data.datamodule.prepare_opencv_for_fork the worker hangs for ever in
    its first cv2 call (measured: the first batch never came). Run in a fresh process, with a
    deadline, so a hang fails the test instead of stalling the suite."""
    script = f"""
import cv2, numpy as np
from cvkit.data.datamodule import ClassificationDataModule
cv2.setNumThreads(2)
cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (1000, 1000))  # the parent's pool is now alive
dm = ClassificationDataModule(root={str(tiny)!r}, batch_size=4, image_size=32, num_workers=1,
                              persistent_workers=False)
dm.setup("fit")
images, targets, bad, _ = next(iter(dm.train_dataloader()))
print("batch", tuple(images.shape), len(bad))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batch (4, 3, 32, 32) 0" in done.stdout


def test_flip_is_drawn_independently_of_the_crop(tmp_path):
    """Seeded per sample (index, epoch), the flip is a fair coin whatever the crop: the crop's
    area (read from a picture whose red names the column) and the flip are uncorrelated. With
    albumentations' set_random_seed every op drew the same first number, so only crops smaller
    than about half the image were ever mirrored (correlation -0.7)."""
    from cvkit.data.transforms import train_transform

    cols = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    img = np.stack([cols, cols.T, np.full_like(cols, 128)], -1)
    (tmp_path / "c").mkdir()
    Image.fromarray(img).save(tmp_path / "c" / "g.png")
    ds = ImageFolderDataset(tmp_path, transform=train_transform(32, normalize=False), seed=0)
    flips, widths = [], []
    for epoch in range(600):
        red = ds[(0, epoch)][0][0].float()
        left, right = red[:, 0].mean(), red[:, -1].mean()
        flips.append(bool(left > right))
        widths.append(float(abs(right - left)))  # the crop's width in source columns
    flips, widths = np.array(flips), np.array(widths)
    assert 0.42 < flips.mean() < 0.58
    assert abs(np.corrcoef(flips, widths)[0, 1]) < 0.15
    assert widths[flips].max() > 200 and widths[~flips].min() < 100  # large crops are mirrored too
    again = ImageFolderDataset(tmp_path, transform=train_transform(32, normalize=False), seed=0)
    assert torch.equal(again[(0, 5)][0], ds[(0, 5)][0])  # still deterministic per (index, epoch)


def test_decode_keeps_the_stored_orientation_as_pil(tmp_path):
    """A JPEG whose EXIF says "rotate 90°" decodes as stored, as PIL (the papers' loader and the
    corruption tools) reads it: OpenCV alone would rotate it."""
    img = np.zeros((60, 120, 3), np.uint8)
    img[:, :40] = 255  # a white left third
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(img).save(path, exif=exif.tobytes(), quality=95)
    ours = decode_image(path)
    with Image.open(path) as im:
        pil = np.asarray(im.convert("RGB"))
    assert ours.shape == pil.shape == (60, 120, 3)
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 2


@pytest.mark.parametrize("option,allowed", [
    ({"mean": (0.5, 0.5)}, "3 finite values"), ({"std": (0.0, 1.0, 1.0)}, "3 values > 0"),
    ({"ratio": (0.0, 1.0)}, "0 < min <= max"), ({"ratio": (2.0, 1.0)}, "0 < min <= max"),
    ({"scale": (0.5, 1.5)}, "0 < min <= max <= 1"), ({"hflip": 2}, "in [0, 1]"),
    ({"image_size": 0}, "integer >= 1"), ({"batch_size": 0}, "integer >= 1"),
    ({"crop_pct": 0}, "in (0, 1]"), ({"seed": -1}, "integer >= 0"),
    ({"num_workers": -2}, "integer >= 0"), ({"color_jitter": -0.1}, ">= 0"),
    ({"randaugment": 12}, "in [0, 11]"), ({"randaugment_magnitude": 1.5}, "in [0, 1]"),
    ({"interpolation": "nearest"}, "'bilinear' or 'bicubic'"),
    ({"interpolation": None}, "'bilinear' or 'bicubic'"),
])
def test_bad_option_values_are_one_line_naming_the_key(option, allowed):
    """Checked when the datamodule is built, before any data is read (the root does not exist):
    each was a traceback, a NaN loss or albumentations' validation dump at the first batch."""
    from cvkit.tool_errors import OptionError

    (key, value), = option.items()
    with pytest.raises(OptionError) as e:
        ClassificationDataModule(root="/nowhere", **option)
    msg = str(e.value)
    assert msg.startswith(f"data.{key} must be ") and allowed in msg and repr(value) in msg, msg
    assert "\n" not in msg


def test_option_values_at_the_ends_of_their_ranges_are_accepted():
    ClassificationDataModule(root="/nowhere", hflip=0, crop_pct=1.0, scale=(1.0, 1.0),
                             ratio=(1.0, 1.0), image_size=1, seed=0, num_workers=0,
                             randaugment=11, randaugment_magnitude=1.0, mean=[0, 0, 0],
                             std=[1, 1, 1])
    ClassificationDataModule(root="/nowhere", hflip=1, num_workers=None, interpolation="bicubic")


def test_hparams_yaml_of_a_datamodule_built_in_python_is_plain_yaml(tmp_path):
    """The tuple defaults (scale, ratio, mean, std) are recorded as lists, as the command line
    gives them: Lightning's hparams.yaml then holds no !!python/tuple tag (yaml.safe_load reads
    it) and the recorded values rebuild the same datamodule."""
    import yaml
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    dm = ClassificationDataModule(root="/nowhere", num_workers=0)
    save_hparams_to_yaml(tmp_path / "hparams.yaml", dm.hparams)
    loaded = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert loaded["scale"] == [0.08, 1.0] and loaded["mean"] == [0.485, 0.456, 0.406]
    assert ClassificationDataModule(**loaded).hparams == dm.hparams


def test_interpolation_reaches_the_training_crop_and_the_evaluation_resize(tiny):
    """data.interpolation="bicubic": the training crop (scale 1 of the 96 px square images: the
    whole image) and the evaluation resize are torchvision's antialiased bicubic resize of the
    decoded image; the default stays bilinear (the demo's pixels)."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    kw = dict(root=str(tiny), image_size=40, crop_pct=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0),
              hflip=0.0, num_workers=0)
    for mode, given in (("bicubic", {"interpolation": "bicubic"}), ("bilinear", {})):
        dm = ClassificationDataModule(**kw, **given)
        dm.setup("fit")
        for ds, item in ((dm.train_set, (0, 0)), (dm.val_set, 0)):
            x = torch.from_numpy(decode_image(ds.samples[0][0])).permute(2, 0, 1)
            assert x.shape[1:] == (96, 96)
            expected = F.resize(x, [40, 40], interpolation=InterpolationMode(mode), antialias=True)
            assert torch.equal(ds[item][0], expected), (mode, ds.root)


def test_collate_records_where_skipped_files_were(tiny):
    """A bad file is dropped from the images, and the batch says which position it held."""
    add_bad_files(tiny / "val")  # 2 bad files at the end of the first class folder
    dm = ClassificationDataModule(root=str(tiny), batch_size=3, image_size=32, num_workers=0)
    dm.setup("test")
    names = [p for p, _ in dm.test_set.samples]
    start, skipped = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for images, targets, bad, bad_at in dm.test_dataloader():
            size = images.shape[0] + len(bad)
            assert [names[start + i] for i in bad_at] == bad
            skipped += bad
            kept = [i for i in range(size) if i not in bad_at]
            assert targets.tolist() == [dm.test_set.samples[start + i][1] for i in kept]
            start += size
    assert start == len(names) and len(skipped) == 2
