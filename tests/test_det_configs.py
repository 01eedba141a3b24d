"""Every config in configs/detection/ builds its detector and trains one step on mmdet's demo inputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs/detection"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))


def test_the_folder_has_the_issue_configs():
    names = {p.stem for p in CONFIGS}
    for family in ("faster-rcnn", "mask-rcnn", "retinanet"):
        for backbone in ("r50", "r101", "eca-r50", "eca-r101"):
            assert f"{family}_{backbone}_fpn_1x_coco" in names
    assert {"retinanet_eca-mobilenetv2_fpn_1x_coco", "mask-rcnn_vit-s_simplefpn_1x_coco",
            "mask-rcnn_vit-s-hc2_simplefpn_1x_coco", "faster-rcnn_eca-r18_fpn_shapes",
            "mask-rcnn_eca-r18_fpn_shapes", "retinanet_eca-r18_fpn_shapes"} <= names


HEAVY = ("r101", "vit")  # ResNet-101 / ViT detectors take tens of seconds per step on 2 CPU cores
PARAMS = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if any(h in p.stem for h in HEAVY)
                       else []) for p in CONFIGS]


@pytest.mark.parametrize("config", PARAMS)
def test_config_builds_and_backpropagates_a_loss(config):
    from mmdet.testing import demo_mm_inputs

    from cvkit.tasks.detection import build_detector, load_det_config

    cfg = load_det_config(config, {"model.backbone.init_cfg": None})
    if cfg.model.get("roi_head"):  # fewer RoIs: the 80-class RoI head dominates a CPU step
        cfg.merge_from_dict({"model.train_cfg.rcnn.sampler.num": 32,
                             "model.train_cfg.rpn_proposal.max_per_img": 100})
    assert cfg.model.backbone.type == "CvkitBackbone"
    assert "cvkit.det.register" in cfg.custom_imports.imports
    torch.manual_seed(0)
    detector = build_detector(cfg)
    detector.train()
    with_mask = cfg.model.type == "MaskRCNN"
    num_classes = 5 if "shapes" in config.stem else 80
    batch = demo_mm_inputs(2, image_shapes=(3, 64, 96), num_items=[3, 2], num_classes=num_classes,
                           with_mask=with_mask)
    data = detector.data_preprocessor(batch, True)
    losses = detector(**data, mode="loss")
    loss, log_vars = detector.parse_losses(losses)
    assert torch.isfinite(loss)
    if with_mask:
        assert "loss_mask" in log_vars
    loss.backward()
    backbone_grads = [p.grad for p in detector.backbone.parameters() if p.requires_grad]
    assert backbone_grads and all(g is not None for g in backbone_grads[-4:])
    assert any(g.abs().sum() > 0 for g in backbone_grads if g is not None)
    detector.eval()
    with torch.no_grad():
        out = detector.test_step(batch)
    assert len(out) == 2 and out[0].pred_instances.bboxes.shape[-1] == 4


LEGACY = sorted((CONFIG_DIR / "legacy_1.x").glob("*_v1.py"))


@pytest.mark.parametrize("config", LEGACY, ids=[p.stem for p in LEGACY])
def test_legacy_configs_take_mmdets_own_1x_settings(config):
    """The configs for converted MMDetection 1.x releases have, in every head, the anchors, box
    coder, RoIAlign, box losses and proposal settings of mmdet's own configs/legacy_1.x (the
    independent reference), on the cvkit detector of the same name; the R-50 ones build with
    them (legacy anchors at +0.5 px, unaligned RoIAlign)."""
    from mmengine.config import Config

    from cvkit.tasks.detection import build_detector, load_det_config

    family = config.stem.split("_")[0]
    cfg = load_det_config(config, {"model.backbone.init_cfg": None})
    base = load_det_config(CONFIG_DIR / config.name.replace("_v1.py", ".py"),
                           {"model.backbone.init_cfg": None})
    import mmdet

    mmdet_configs = Path(mmdet.__file__).parent / ".mim" / "configs"  # the installed package's
    mmdet = Config.fromfile(mmdet_configs / "legacy_1.x" / f"{family}_r50_fpn_1x_coco_v1.py").model
    paths = ({"retinanet": [("bbox_head", k) for k in ("anchor_generator", "bbox_coder", "loss_bbox")]}
             .get(family) or
             [("rpn_head", k) for k in ("anchor_generator", "bbox_coder", "loss_bbox")]
             + [("roi_head", "bbox_roi_extractor", "roi_layer"), ("roi_head", "bbox_head", "bbox_coder"),
                ("roi_head", "bbox_head", "loss_bbox"), ("train_cfg", "rpn_proposal", "max_per_img"),
                ("train_cfg", "rcnn", "assigner", "match_low_quality")]
             + ([("roi_head", "mask_roi_extractor", "roi_layer")] if family == "mask-rcnn" else []))

    def at(node, path):
        for key in path:
            node = node[key]
        return node.to_dict() if hasattr(node, "to_dict") else node

    for path in paths:
        assert at(cfg.model, path) == at(mmdet, path), path
    assert cfg.model.backbone == base.model.backbone  # the same cvkit detector otherwise
    if "r101" not in config.stem:
        detector = build_detector(cfg)
        anchors = (detector.bbox_head if family == "retinanet" else detector.rpn_head).prior_generator
        assert type(anchors).__name__ == "LegacyAnchorGenerator" and anchors.center_offset == 0.5
        if family != "retinanet":
            assert not detector.roi_head.bbox_roi_extractor.roi_layers[0].aligned
