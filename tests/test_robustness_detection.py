"""COCO-C config handling (the parts that do not need mmdet itself)."""
import pytest
from mmengine.config import Config

from cvkit.robustness.detection import with_corruption


def _cfg(wrapped=False):
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(1333, 800), keep_ratio=True),
                dict(type="PackDetInputs")]
    dataset = dict(type="CocoDataset", data_root="data/", pipeline=pipeline)
    if wrapped:
        dataset = dict(type="ClassBalancedDataset", oversample_thr=1e-3, dataset=dataset)
    return Config(dict(test_dataloader=dict(batch_size=1, dataset=dataset)))


@pytest.mark.parametrize("wrapped", [False, True])
def test_corruption_inserted_after_loading(wrapped):
    cfg = _cfg(wrapped)
    out = with_corruption(cfg, "fog", 3, seed=7)
    ds = out.test_dataloader.dataset
    ds = ds.dataset if wrapped else ds
    assert [t["type"] for t in ds.pipeline] == ["LoadImageFromFile", "CorruptImage", "Resize", "PackDetInputs"]
    assert ds.pipeline[1] == dict(type="CorruptImage", corruption="fog", severity=3, seed=7)
    orig = cfg.test_dataloader.dataset
    assert len((orig.dataset if wrapped else orig).pipeline) == 3  # the input config is untouched


def test_bad_configs():
    with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
        with_corruption(_cfg(), "fog", 0)
    cfg = _cfg()
    cfg.test_dataloader.dataset.pipeline = [dict(type="Resize", scale=(1, 1))]
    with pytest.raises(ValueError, match="no LoadImageFromFile"):
        with_corruption(cfg, "fog", 1)


def test_corrupt_image_transform_is_registered_and_seeded():
    """The pipeline step corrupts the BGR image as RGB, with the per-image seed of the classifier path."""
    import numpy as np
    from mmdet.registry import TRANSFORMS

    import cvkit.robustness.mmdet_transform  # noqa: F401
    from cvkit.robustness import corrupt
    from cvkit.robustness.folder import image_seed

    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    step = TRANSFORMS.build(dict(type="CorruptImage", corruption="frost", severity=2, seed=3))
    out = step(dict(img=np.ascontiguousarray(rgb[..., ::-1]), img_id=17))["img"]
    expected = corrupt(rgb, "frost", 2, seed=image_seed(3, "frost", 2, 17))
    np.testing.assert_array_equal(out[..., ::-1], expected)
    with pytest.raises(ValueError, match="unknown corruption"):
        TRANSFORMS.build(dict(type="CorruptImage", corruption="frosty", severity=2))


@pytest.mark.slow
def test_coco_c_end_to_end_on_synthetic_coco(tmp_path, det_root, capsys):
    """tools/eval_corruption.py --task det runs mmdet's test path on the synthetic COCO set with a
    (random-init) RetinaNet checkpoint: clean + one corrupted set, results saved, rerun resumes."""
    import importlib.util
    import json
    from pathlib import Path

    import torch

    from cvkit.tasks.detection import build_detector, load_det_config

    repo = Path(__file__).resolve().parents[1]
    config = repo / "configs/detection/retinanet_eca-r18_fpn_shapes.py"
    torch.manual_seed(0)
    ckpt = tmp_path / "det.pth"
    torch.save({"state_dict": build_detector(load_det_config(str(config))).state_dict()}, ckpt)
    spec = importlib.util.spec_from_file_location("eval_corruption", repo / "tools/eval_corruption.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = ["--task", "det", "--config", str(config), "--checkpoint", str(ckpt), "--data-root", str(det_root),
            "--corruptions", "fog", "--severities", "1", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert tool.main(args) == 0
    state = json.loads((tmp_path / "out" / "results.json").read_text())
    assert isinstance(state["clean_AP"], float) and set(state["AP"]) == {"fog"}
    assert 0.0 <= state["AP"]["fog"]["1"] <= 1.0
    assert state["summary"]["complete"] is False and "gaussian_noise" in state["summary"]["missing"]
    for name in ("summary.json", "ap.csv", "report.md", "heatmap.png"):
        assert (tmp_path / "out" / name).is_file()
    assert "fog" in (tmp_path / "out" / "ap.csv").read_text()
    state["AP"]["fog"]["1"] = 0.5  # resume: a finished set is not recomputed
    (tmp_path / "out" / "results.json").write_text(json.dumps(state))
    assert tool.main(args) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["AP"]["fog"]["1"] == 0.5
