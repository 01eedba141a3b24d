"""The embedded synthetic datasets: deterministic, loadable by the field's standard loaders."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvkit.data.shapes import SHAPES
from cvkit.data.synthetic import SyntheticSpec, generate

TINY = SyntheticSpec(cls_size=48, cls_train_per_class=2, cls_val_per_class=1,
                     det_size=64, det_train=3, det_val=2)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_idempotent(tmp_path):
    assert generate(tmp_path / "a", TINY) is True
    assert generate(tmp_path / "a", TINY) is False  # up to date: nothing rewritten
    generate(tmp_path / "b", TINY)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = SyntheticSpec(**{**TINY.__dict__, "seed": 1})
    generate(tmp_path / "c", other)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_stamp_without_the_data_regenerates(tmp_path):
    """data/.complete says 'complete' only while the datasets it describes are there: a deleted
    split folder is regenerated, not reported up to date."""
    assert generate(tmp_path, TINY) is True
    digest = _digest(tmp_path / "detection")
    shutil.rmtree(tmp_path / "detection")
    assert generate(tmp_path, TINY) is True
    assert _digest(tmp_path / "detection") == digest


def test_classification_set_loads_with_imagefolder(cls_root):
    from torchvision.datasets import ImageFolder

    spec = SyntheticSpec()
    for split, per_class in (("train", spec.cls_train_per_class), ("val", spec.cls_val_per_class)):
        ds = ImageFolder(cls_root / split)
        assert ds.classes == sorted(SHAPES)
        assert len(ds) == per_class * len(SHAPES)
        img, label = ds[0]
        assert img.size == (spec.cls_size, spec.cls_size) and 0 <= label < len(SHAPES)
        counts = np.bincount([t for _, t in ds.samples], minlength=len(SHAPES))
        assert (counts == per_class).all()


def test_classification_images_vary(cls_root):
    """Colour, position and background vary within a class: no class is a constant image."""
    from PIL import Image

    imgs = [np.asarray(Image.open(p), dtype=np.float32)
            for p in sorted((cls_root / "train" / "star").glob("*.jpg"))[:8]]
    assert np.std(np.stack(imgs), axis=0).mean() > 20


def test_coco_annotations_load_with_pycocotools(det_root):
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils

    coco = COCO(str(det_root / "annotations" / "instances_val.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES[:5])
    assert len(coco.getImgIds()) == SyntheticSpec().det_val
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= len(coco.getImgIds())
    for ann in anns[:50]:
        img = coco.loadImgs(ann["image_id"])[0]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        assert ann["iscrowd"] == 0
        # the polygon mask agrees with the stated area and lies inside the box
        m = coco.annToMask(ann)
        assert abs(m.sum() - ann["area"]) / ann["area"] < 0.15
        ys, xs = np.nonzero(m)
        assert xs.min() >= int(x) - 1 and xs.max() <= x + w + 1
        rle = mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"])
        assert mask_utils.area(rle).sum() > 0
        assert (det_root / "val" / img["file_name"]).is_file()


def test_coco_set_loads_with_mmdet_cocodataset(det_root):
    from mmdet.datasets import CocoDataset

    ds = CocoDataset(data_root=str(det_root), ann_file="annotations/instances_train.json",
                     data_prefix=dict(img="train/"), metainfo=dict(classes=SHAPES[:5]),
                     pipeline=[], test_mode=False)
    assert len(ds) == SyntheticSpec().det_train
    info = ds.get_data_info(0)
    assert Path(info["img_path"]).is_file()
    assert info["instances"] and all(len(i["bbox"]) == 4 for i in info["instances"])
    assert all(i["mask"] for i in info["instances"])


@pytest.mark.parametrize("args, message", [
    (["--cls-size", "5"], "--cls-size must be between 32 and 1024 pixels, got 5"),
    (["--det-val", "0"], "--det-val must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_cli_rejects_invalid_sizes_in_one_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "cvkit.data.synthetic", "--out", str(tmp_path), *args],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {message}"


def test_cli_reports_unwritable_output_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "cvkit.data.synthetic", "--out", str(blocker / "sub")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(blocker / "sub") in r.stderr and "Not a directory" in r.stderr


def test_every_shape_fits_the_image_at_the_largest_scale():
    """Regression: the aspect stretch made an L-shape larger than the image (numpy 'high - low < 0')."""
    from cvkit.data.shapes import place_shape

    for label in range(len(SHAPES)):
        for seed in range(50):
            s = place_shape(np.random.default_rng(seed), label, 48, (0.75, 0.75))
            x0, y0, x1, y1 = s.bbox_xyxy
            assert 0 <= x0 and 0 <= y0 and x1 <= 47 and y1 <= 47, (SHAPES[label], seed)
