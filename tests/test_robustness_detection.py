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
