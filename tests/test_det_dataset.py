"""Bad detection input is named, and a bad sample is skipped and counted (or a strict error)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

CLASSES = ("circle", "triangle", "square", "star", "cross")


def _subset(det_root: Path, out: Path, n_images: int = 3) -> dict:
    """A small COCO file over the first ``n_images`` synthetic val images, copied to ``out``."""
    coco = json.loads((det_root / "annotations/instances_val.json").read_text())
    images = coco["images"][:n_images]
    ids = {im["id"] for im in images}
    (out / "img").mkdir(parents=True, exist_ok=True)
    for im in images:
        shutil.copy(det_root / "val" / im["file_name"], out / "img" / im["file_name"])
    return {**coco, "images": images,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def _dataset(root: Path, coco: dict | str, test_mode: bool = False, classes=CLASSES, **kwargs):
    """The dataset over ``coco`` written to ``root/ann.json`` (a str: the file's text as is)."""
    from cvkit.tasks.detection import load_det_config  # registers cvkit.det and mmdet scope
    from mmdet.registry import DATASETS

    load_det_config({})
    (root / "ann.json").write_text(coco if isinstance(coco, str) else json.dumps(coco))
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                dict(type="PackDetInputs")]
    return DATASETS.build(dict(type="CvkitCocoDataset", data_root=str(root), ann_file="ann.json",
                               data_prefix=dict(img="img/"), metainfo=dict(classes=classes),
                               pipeline=pipeline, test_mode=test_mode, **kwargs))


def test_clean_subset_loads_every_box(det_root, tmp_path):
    coco = _subset(det_root, tmp_path)
    ds = _dataset(tmp_path, coco)
    assert len(ds) == 3 and ds.bad_samples == []
    assert sum(len(ds.get_data_info(i)["instances"]) for i in range(3)) == len(coco["annotations"])


def test_box_outside_image_is_skipped_and_counted_or_strict_error(det_root, tmp_path):
    coco = _subset(det_root, tmp_path)
    bad = coco["annotations"][0]
    bad["bbox"] = [150.0, 20.0, 40.0, 30.0]  # x + w = 190 > 160
    ds = _dataset(tmp_path, coco)
    assert [k for k, _ in ds.bad_samples] == ["box"]
    assert f"annotation id {bad['id']}" in ds.bad_samples[0][1]
    assert sum(len(ds.get_data_info(i)["instances"]) for i in range(3)) == len(coco["annotations"]) - 1
    with pytest.raises(ValueError, match=rf"annotation id {bad['id']} .*outside the image"):
        _dataset(tmp_path, coco, on_bad_sample="error")


def test_missing_image_file_is_skipped_and_counted_or_strict_error(det_root, tmp_path):
    coco = _subset(det_root, tmp_path)
    gone = coco["images"][1]["file_name"]
    (tmp_path / "img" / gone).unlink()
    ds = _dataset(tmp_path, coco)
    assert len(ds) == 2 and [k for k, _ in ds.bad_samples] == ["image"]
    assert gone in ds.bad_samples[0][1]
    with pytest.raises(ValueError, match=rf"image file not found: .*{gone}"):
        _dataset(tmp_path, coco, on_bad_sample="error")


def test_missing_image_of_an_evaluation_split_is_an_error_naming_it_and_the_count(det_root,
                                                                                  tmp_path):
    """val/test (test_mode): CocoMetric scores every image of the annotation file, so a skipped
    image would lower the AP silently; the split refuses to load instead, whatever the policy."""
    coco = _subset(det_root, tmp_path)
    gone = [coco["images"][i]["file_name"] for i in (0, 2)]
    for name in gone:
        (tmp_path / "img" / name).unlink()
    for policy in ("skip", "error"):
        with pytest.raises(FileNotFoundError,
                           match=rf"2 of 3 image files .* missing \(first: .*{gone[0]}.*{gone[1]}"):
            _dataset(tmp_path, coco, test_mode=True, on_bad_sample=policy)
    assert len(_dataset(tmp_path, coco)) == 1  # training split: skipped and counted, as before


def test_empty_category_list_and_unknown_classes_are_errors(det_root, tmp_path):
    coco = _subset(det_root, tmp_path)
    with pytest.raises(ValueError, match=r"ann\.json: the COCO 'categories' list is empty"):
        _dataset(tmp_path, {**coco, "categories": []})
    renamed = [{**c, "name": "disc"} if c["name"] == "circle" else c for c in coco["categories"]]
    with pytest.raises(ValueError, match=r"classes \['circle'\] .* not among the file's categories"):
        _dataset(tmp_path, {**coco, "categories": renamed})


def test_classes_in_another_order_than_the_file_are_an_error_naming_both(det_root, tmp_path):
    """mmdet's CocoDataset and CocoMetric number labels in the file's category order: config
    classes in another order would name every label wrongly. A subset in the file's order loads."""
    coco = _subset(det_root, tmp_path)
    in_file_order = r"\['circle', 'triangle', 'square', 'star', 'cross'\]"
    with pytest.raises(ValueError, match=r"ann\.json: .*classes .* \['cross', 'star', 'square', "
                                         r"'triangle', 'circle'\] are not in the file's category "
                                         rf"order {in_file_order}"):
        _dataset(tmp_path, coco, classes=CLASSES[::-1])
    ds = _dataset(tmp_path, coco, classes=("triangle", "star"))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image = {}
    for a in coco["annotations"]:
        if names[a["category_id"]] in ("triangle", "star"):
            by_image.setdefault(a["image_id"], []).append(names[a["category_id"]])
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        shown = [ds.metainfo["classes"][inst["bbox_label"]] for inst in info["instances"]]
        assert shown == by_image.get(info["img_id"], [])


def test_invalid_annotation_json_is_a_value_error_naming_the_file(det_root, tmp_path):
    text = json.dumps(_subset(det_root, tmp_path))
    with pytest.raises(ValueError, match=r"ann\.json: not a valid JSON file \(Expecting"):
        _dataset(tmp_path, text[:len(text) // 2])  # truncated, as by an interrupted copy
    # valid JSON that is not an object: was pycocotools' bare AssertionError, naming no file
    with pytest.raises(ValueError, match=r"ann\.json: not a COCO annotation file \(its JSON is a "
                                         r"list, not an object"):
        _dataset(tmp_path, json.dumps([1, 2]))


def test_missing_annotation_file_is_named(tmp_path):
    from cvkit.tasks.detection import load_det_config
    from mmdet.registry import DATASETS

    load_det_config({})
    with pytest.raises(FileNotFoundError, match="nope.json"):
        DATASETS.build(dict(type="CvkitCocoDataset", data_root=str(tmp_path), ann_file="nope.json",
                            metainfo=dict(classes=CLASSES), pipeline=[]))


def test_unreadable_image_while_training_is_skipped_counted_then_strict(det_root, tmp_path):
    coco = _subset(det_root, tmp_path)
    broken = coco["images"][0]["file_name"]
    (tmp_path / "img" / broken).write_bytes(b"not a jpeg")
    ds = _dataset(tmp_path, coco, max_runtime_skips=1000)
    samples = [ds[0] for _ in range(3)]  # index 0 is broken: another image comes back each time
    assert all(broken not in s["data_samples"].img_path for s in samples)
    assert ds.runtime_skips >= 3
    # a BadImageError (a ValueError: the tools' one-line "error:") naming the file
    from cvkit.data.datamodule import BadImageError

    strict = _dataset(tmp_path, coco, on_bad_sample="error")
    with pytest.raises(BadImageError, match=rf"{broken}.* failed to load"):
        strict[0]
    evaluation = _dataset(tmp_path, coco, test_mode=True)
    with pytest.raises(BadImageError, match=rf"{broken}.* failed to load"):
        evaluation[0]
    capped = _dataset(tmp_path, coco, max_runtime_skips=1)
    with pytest.raises(BadImageError, match=rf"2 samples failed to load .*{broken}"):
        for _ in range(3):
            capped[0]


def test_unreadable_image_of_an_evaluation_split_is_one_error_line_in_test_det(
        det_root, tmp_path, capsys):
    """tools/test_det.py on a test split with an unreadable image: one ``error:`` line naming
    the file, exit 1 (it was a RuntimeError: two tracebacks)."""
    import sys

    import torch

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "tools"))
    import test_det

    from cvkit.tasks.detection import build_detector, load_det_config

    config = repo / "configs/detection/faster-rcnn_eca-r18_fpn_shapes.py"
    coco = _subset(det_root, tmp_path / "coco" / "val", n_images=2)
    broken = coco["images"][1]["file_name"]
    (tmp_path / "coco/val/img" / broken).write_bytes(b"not a jpeg")
    for im in coco["images"]:  # the config's layout: DATA_ROOT/val/<file>
        shutil.move(tmp_path / "coco/val/img" / im["file_name"], tmp_path / "coco/val")
    (tmp_path / "coco/annotations").mkdir()
    (tmp_path / "coco/annotations/instances_val.json").write_text(json.dumps(coco))
    ckpt = tmp_path / "detector.pth"
    torch.save({"state_dict": build_detector(load_det_config(config)).state_dict()}, ckpt)
    rc = test_det.main([str(config), str(ckpt), "--data-root", str(tmp_path / "coco"),
                        "--accelerator", "cpu"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 1 and len(lines) == 1, err[-2000:]
    assert f"val/{broken}' failed to load" in lines[0], lines
    assert "Traceback" not in err


def test_unknown_backbone_in_config_is_named():
    from cvkit.tasks.detection import build_detector, load_det_config

    cfg = load_det_config(Path(__file__).resolve().parents[1]
                          / "configs/detection/faster-rcnn_eca-r18_fpn_shapes.py",
                          {"model.backbone.model_name": "eca_resnet_nonexistent"})
    with pytest.raises(ValueError, match="unknown cvkit backbone model_name='eca_resnet_nonexistent'"):
        build_detector(cfg)
    cfg = load_det_config(cfg, {"model.backbone.type": "NoSuchBackbone"})
    with pytest.raises(ValueError, match="NoSuchBackbone"):
        build_detector(cfg)
