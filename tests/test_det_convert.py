"""Legacy (MMDetection 1.x) detector checkpoints -> mmdet 3, on a checkpoint shaped like the ECA-Net
Mask R-CNN release (81-way classifier with background first, 324 regression outputs, 81 mask
logits, heads outside ``roi_head``), built here from a current model by the inverse mapping."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvkit.det.convert import convert_legacy_mmdet_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/detection/mask-rcnn_eca-r50_fpn_1x_coco.py"


def _legacy_from_current(state: dict) -> dict:
    """What MMDetection 1.x saved for the same weights (written independently of the converter)."""
    legacy = {}
    for key, value in state.items():
        key = key.replace("backbone.body.model.", "backbone.", 1).replace("roi_head.", "", 1)
        if key.startswith("bbox_head.fc_cls."):
            value = torch.cat([value[-1:], value[:-1]])            # background row first
        elif key.startswith("bbox_head.fc_reg."):
            value = torch.cat([torch.full_like(value[:4], 7.0), value])  # + 4 background outputs
        elif key.startswith("mask_head.conv_logits."):
            value = torch.cat([torch.full_like(value[:1], 7.0), value])  # + background mask
        legacy["module." + key] = value.clone()
    return {"meta": {"mmdet_version": "1.0.0", "config": "mask_rcnn_r50_fpn_1x"},
            "state_dict": legacy}


@pytest.fixture(scope="module")
def detector():
    from cvkit.tasks.detection import build_detector, load_det_config

    # the release's per-stage ECA kernel sizes (the config takes them from a checkpoint)
    cfg = load_det_config(CONFIG, {"model.backbone.init_cfg": None,
                                   "model.backbone.model_kwargs": {"eca_k_size": (3, 5, 5, 7)}})
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with torch.no_grad():  # distinct values in every head row, so a misplaced row is detected
        for p in model.roi_head.parameters():
            p.copy_(torch.randn_like(p))
    return model


def test_legacy_release_shapes_and_conversion_roundtrip(detector):
    state = detector.state_dict()
    legacy = _legacy_from_current(state)["state_dict"]
    assert legacy["module.bbox_head.fc_cls.weight"].shape[0] == 81
    assert legacy["module.bbox_head.fc_reg.weight"].shape[0] == 324
    assert legacy["module.mask_head.conv_logits.weight"].shape[0] == 81
    # the release's per-stage ECA kernel sizes (3, 5, 5, 7)
    assert [legacy[f"module.backbone.layer{i}.0.eca.conv.weight"].shape[-1] for i in (1, 2, 3, 4)] \
        == [3, 5, 5, 7]

    converted = convert_legacy_mmdet_checkpoint(_legacy_from_current(state))
    assert converted["roi_head.bbox_head.fc_reg.weight"].shape[0] == 320
    assert converted["roi_head.mask_head.conv_logits.weight"].shape[0] == 80
    assert set(converted) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)
    # background, first in the legacy classifier, is the last row after conversion
    torch.testing.assert_close(converted["roi_head.bbox_head.fc_cls.weight"][-1],
                               legacy["module.bbox_head.fc_cls.weight"][0])
    detector.load_state_dict(converted, strict=True)


def test_converted_checkpoint_predicts_like_the_original(detector):
    from mmdet.testing import demo_mm_inputs

    converted = convert_legacy_mmdet_checkpoint(_legacy_from_current(detector.state_dict()))
    from cvkit.det.backbone import fit_backbone_config
    from cvkit.tasks.detection import build_detector, load_det_config

    # the plain config: the release's ECA kernel sizes come from the converted weights, as
    # DetectionTask (tools/test_det.py) reads them
    cfg = load_det_config(CONFIG, {"model.backbone.init_cfg": None})
    fit_backbone_config(cfg.model.backbone, converted, "converted.pth")
    assert tuple(cfg.model.backbone.model_kwargs["eca_k_size"]) == (3, 5, 5, 7)
    other = build_detector(cfg).eval()
    other.load_state_dict(converted, strict=True)
    batch = demo_mm_inputs(1, image_shapes=(3, 96, 96), num_items=[2], num_classes=80)
    with torch.no_grad():
        a = detector.test_step(batch)[0].pred_instances
        b = other.test_step(batch)[0].pred_instances
    torch.testing.assert_close(a.bboxes, b.bboxes)
    torch.testing.assert_close(a.scores, b.scores)


def test_mmdet_legacy_advice_rebuilds_the_converted_detector_in_init_detector(
        detector, tmp_path, monkeypatch, capsys):
    """The options ``tools/convert_checkpoint.py --kind mmdet-legacy`` prints make mmdet's
    ``init_detector`` rebuild the converted detector with the release's ECA kernel sizes although
    the config's ImageNet backbone checkpoint is present (with Eq. 12's (5, 5, 5, 7), which it
    would read while building): the advice clears that init_cfg. The command-line and the
    Python forms say the same."""
    import ast
    import itertools
    import re
    import shlex
    import sys

    from mmdet.apis import init_detector

    import cvkit

    sys.path.insert(0, str(REPO / "tools"))
    import convert_checkpoint
    import train_det

    monkeypatch.chdir(tmp_path)  # the config's init_cfg: checkpoints/eca_resnet50_imagenet.pth
    (tmp_path / "checkpoints").mkdir()
    torch.save(cvkit.create_model("eca_resnet50", eca_k_size=(5, 5, 5, 7)).state_dict(),
               tmp_path / "checkpoints/eca_resnet50_imagenet.pth")
    torch.save(_legacy_from_current(detector.state_dict()), tmp_path / "legacy.pth")
    assert convert_checkpoint.main(["--kind", "mmdet-legacy", "legacy.pth", "converted.pth"]) == 0
    out = capsys.readouterr().out
    words = shlex.split(out.split("--cfg-options ", 1)[1].splitlines()[0])
    flags = train_det.parse_cfg_options(list(itertools.takewhile(lambda w: "=" in w, words)))
    model = init_detector(str(CONFIG), "converted.pth", device="cpu", cfg_options=flags)
    net = model.backbone.body.model
    assert [getattr(net, f"layer{i}")[0].eca.conv.kernel_size[0] for i in (1, 2, 3, 4)] == [3, 5, 5, 7]
    ours = detector.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in model.state_dict().items())
    assert ast.literal_eval(re.search(r"cfg_options=(\{.*?\})", out).group(1)) == flags


def test_converter_rejects_current_layout_and_empty():
    with pytest.raises(ValueError, match="roi_head"):
        convert_legacy_mmdet_checkpoint({"roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 4)})
    with pytest.raises(ValueError, match="empty"):
        convert_legacy_mmdet_checkpoint({"state_dict": {}})
    with pytest.raises(ValueError, match=r"no detector part .*the first keys: conv1\.weight, "
                                         r"fc\.weight\): not an MMDetection detector"):
        convert_legacy_mmdet_checkpoint({"conv1.weight": torch.zeros(4, 3, 3, 3),
                                         "fc.weight": torch.zeros(10, 4)})  # a classifier's
    with pytest.raises(ValueError, match="fc_reg"):
        convert_legacy_mmdet_checkpoint({"rpn_head.rpn_cls.weight": torch.zeros(3, 4),
                                         "bbox_head.fc_reg.weight": torch.zeros(322, 4)})


# -- cascade (3 stages) and Mask Scoring R-CNN: every RoI head moves, class rows in every stage ----
MMDET_CONFIGS = Path(__import__("mmdet").__file__).parent / ".mim/configs"


def _mmdet_detector(config: str):
    """An mmdet model (random weights, every head row distinct) from one of mmdet's own configs."""
    from cvkit.tasks.detection import build_detector, load_det_config

    cfg = load_det_config(MMDET_CONFIGS / config, {"model.backbone.init_cfg": None})
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        for p in model.roi_head.parameters():
            p.copy_(torch.randn_like(p))
    return model


def _legacy_any_head(state: dict) -> dict:
    """MMDetection 1.x layout of ``state``: heads outside ``roi_head``; in every stage, softmax rows
    background first, class-specific regression / mask / mask-IoU rows with background rows added
    (written from the mmdet 1.x definitions, independently of the converter)."""
    legacy = {}
    for key, value in state.items():
        key = key.replace("roi_head.", "", 1)
        leaf = key.split(".")[-2]
        if leaf == "fc_cls":
            value = torch.cat([value[-1:], value[:-1]])
        elif leaf == "fc_reg" and value.shape[0] != 4:
            value = torch.cat([torch.full_like(value[:4], 7.0), value])
        elif leaf in ("conv_logits", "fc_mask_iou"):
            value = torch.cat([torch.full_like(value[:1], 7.0), value])
        legacy[key] = value.clone()
    return legacy


def _check_roundtrip(model, legacy_keys_expected: dict):
    state = model.state_dict()
    legacy = _legacy_any_head(state)
    for key, rows in legacy_keys_expected.items():
        assert legacy[key].shape[0] == rows, key
    converted = convert_legacy_mmdet_checkpoint({"state_dict": legacy}, backbone_prefix=None)
    assert set(converted) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)
    model.load_state_dict(converted, strict=True)
    return legacy, converted


def test_cascade_mask_rcnn_every_stage_converted():
    model = _mmdet_detector("cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py")
    expected = {}
    for i in range(3):
        expected |= {f"bbox_head.{i}.fc_cls.weight": 81, f"bbox_head.{i}.fc_cls.bias": 81,
                     f"bbox_head.{i}.fc_reg.weight": 4,  # class-agnostic in cascade stages
                     f"mask_head.{i}.conv_logits.weight": 81, f"mask_head.{i}.conv_logits.bias": 81}
    legacy, converted = _check_roundtrip(model, expected)
    for i in range(3):  # legacy row 0 (background) is last; class 1 is row 0
        cls = converted[f"roi_head.bbox_head.{i}.fc_cls.weight"]
        torch.testing.assert_close(cls[-1], legacy[f"bbox_head.{i}.fc_cls.weight"][0])
        torch.testing.assert_close(cls[0], legacy[f"bbox_head.{i}.fc_cls.weight"][1])
        logits = converted[f"roi_head.mask_head.{i}.conv_logits.weight"]
        assert logits.shape[0] == 80
        torch.testing.assert_close(logits, legacy[f"mask_head.{i}.conv_logits.weight"][1:])


def test_mask_scoring_rcnn_mask_iou_head_moved_and_background_dropped():
    model = _mmdet_detector("ms_rcnn/ms-rcnn_r50_fpn_1x_coco.py")
    legacy, converted = _check_roundtrip(model, {
        "bbox_head.fc_cls.weight": 81, "bbox_head.fc_reg.weight": 324,
        "mask_head.conv_logits.weight": 81, "mask_iou_head.fc_mask_iou.weight": 81})
    assert not any(k.startswith("mask_iou_head.") for k in converted)
    torch.testing.assert_close(converted["roi_head.mask_iou_head.fc_mask_iou.bias"],
                               legacy["mask_iou_head.fc_mask_iou.bias"][1:])


def test_unsupported_class_ordered_layers_are_refused_by_key():
    rpn = {"rpn_head.rpn_cls.weight": torch.zeros(3, 4)}
    with pytest.raises(ValueError, match=r"'semantic_head\.conv_logits\.weight'.*HTC"):
        convert_legacy_mmdet_checkpoint({**rpn, "bbox_head.fc_cls.weight": torch.zeros(81, 4),
                                         "semantic_head.conv_logits.weight": torch.zeros(183, 4)})
    with pytest.raises(ValueError, match=r"'bbox_head\.cls_convs\.0\.weight'.*SSD"):
        convert_legacy_mmdet_checkpoint({"bbox_head.cls_convs.0.weight": torch.zeros(324, 4)})
    # a stage whose class rows disagree with the classifier is named, not truncated silently
    with pytest.raises(ValueError, match=r"mask_head\.1\.conv_logits\.weight has 21 outputs, "
                                         r"expected 81"):
        convert_legacy_mmdet_checkpoint({**rpn, "bbox_head.0.fc_cls.weight": torch.zeros(81, 4),
                                         "mask_head.1.conv_logits.weight": torch.zeros(21, 4)})
    with pytest.raises(ValueError, match="fc_cls layers disagree"):
        convert_legacy_mmdet_checkpoint({**rpn, "bbox_head.0.fc_cls.weight": torch.zeros(81, 4),
                                         "bbox_head.1.fc_cls.weight": torch.zeros(21, 4)})
