"""The Lightning detection task: schedule and LR rule from the config, fine-tuning a cvkit backbone
(pretrained here on the synthetic classification set) to a real COCO AP on the synthetic detection
set, the tools, and the same config and weights through mmdet's own APIs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs/detection"
FASTER = CONFIGS / "faster-rcnn_eca-r18_fpn_shapes.py"
MASK = CONFIGS / "mask-rcnn_eca-r18_fpn_shapes.py"
BACKBONE = "eca_resnet18"

# COCO AP (IoU .5:.95) on the 80 synthetic val images after the 4-epoch CPU fine-tune below: the
# issue's floor. Measured with this recipe (docs/detection.md): bbox 0.327, segm 0.347.
BBOX_AP = 0.25
SEGM_AP = 0.25


# -- schedule and LR rule ------------------------------------------------------------------------
def test_warmup_and_steps_follow_the_config_schedule():
    from cvkit.tasks.detection import DetectionTask

    task = DetectionTask(FASTER, cfg_options={"model.backbone.init_cfg": None})
    optimizer = task.configure_optimizers()
    base = task.cfg.optim_wrapper.optimizer.lr
    warmup, steps = task.cfg.param_scheduler  # LinearLR per iteration, MultiStepLR per epoch
    assert not warmup.by_epoch and steps.by_epoch
    epochs, per_epoch = task.cfg.train_cfg.max_epochs, 30
    lrs = []
    for epoch in range(epochs):
        for _ in range(per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            task.on_train_batch_end(None, None, 0)
        task.on_train_epoch_end()
    expected = []  # mmengine's LinearLR (full lr at iteration end - 1) and MultiStepLR, written out
    ramp = warmup.end - warmup.begin - 1
    for epoch in range(epochs):
        for i in range(per_epoch):
            t = min(epoch * per_epoch + i, ramp)
            factor = warmup.start_factor + (1 - warmup.start_factor) * t / ramp
            factor *= steps.gamma ** sum(epoch >= m for m in steps.milestones)
            expected.append(base * factor)
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert lrs[-1] < lrs[warmup.end + 1]  # the step really happened


def test_linear_lr_scaling_rule_from_auto_scale_lr():
    from cvkit.tasks.detection import DetectionTask

    opts = {"model.backbone.init_cfg": None, "train_dataloader.batch_size": 8}
    task = DetectionTask(FASTER, cfg_options=opts, auto_scale_lr=True)  # base_batch_size 4
    assert task.scaled_lr() == pytest.approx(2 * task.cfg.optim_wrapper.optimizer.lr)
    task = DetectionTask(FASTER, cfg_options=opts)  # the config says enable=False
    assert task.scaled_lr() == pytest.approx(task.cfg.optim_wrapper.optimizer.lr)


# -- fine-tuning ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_backbone(cls_root, tmp_path_factory) -> Path:
    """ECA-ResNet-18 trained briefly (6 epochs at 64 px) on the synthetic classification set (10
    shapes), saved in the classification task's checkpoint layout (``state_dict: {'model.<name>'}``)."""
    import cvkit
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train = datasets.ImageFolder(cls_root / "train", transforms.Compose([
        transforms.Resize(64), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]))
    val = datasets.ImageFolder(cls_root / "val", transforms.Compose([
        transforms.Resize(64), transforms.ToTensor(), norm]))
    model = cvkit.create_model(BACKBONE, num_classes=len(train.classes))
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    epochs = 6
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, pct_start=0.15,
                                                total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item()
                      for x, y in torch.utils.data.DataLoader(val, batch_size=100))
    accuracy = correct / len(val)
    # chance is 0.10 (sd 0.015 on 400 images); a short pretraining measured ~0.20
    assert accuracy > 0.15, f"pretraining did not learn: val accuracy {accuracy:.2f} (chance 0.10)"
    path = tmp_path_factory.mktemp("pretrain") / "eca_resnet18_shapes.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def mask_rcnn_run(pretrained_backbone, det_root, tmp_path_factory):
    """Mask R-CNN (= Faster R-CNN + a mask branch) fine-tuned from the pretrained backbone with the
    config's own schedule; one run serves the bbox AP, segm AP, tool and mmdet-API checks."""
    from cvkit.tasks.detection import train_detector

    work_dir = tmp_path_factory.mktemp("mask")
    task, metrics = train_detector(MASK, str(work_dir), data_root=str(det_root),
                                   backbone_checkpoint=str(pretrained_backbone),
                                   accelerator="cpu", devices=1, logger=False)
    print("Mask R-CNN synthetic val:", json.dumps(metrics))
    return task, metrics, work_dir


@pytest.mark.slow
def test_fine_tuned_mask_rcnn_reaches_bbox_and_segm_ap(mask_rcnn_run, pretrained_backbone):
    task, metrics, work_dir = mask_rcnn_run
    for kind in ("bbox", "segm"):
        for suffix in ("", "_50", "_75", "_s", "_m", "_l"):
            assert f"{kind}_mAP{suffix}" in metrics
    assert metrics["bbox_mAP"] >= BBOX_AP
    assert metrics["segm_mAP"] >= SEGM_AP
    assert metrics["bbox_mAP_50"] >= metrics["bbox_mAP"]
    # the backbone really started from the classification checkpoint
    assert task.detector.backbone._loaded_from == str(pretrained_backbone)
    assert (work_dir / "checkpoints/last.ckpt").is_file() and (work_dir / "detector.pth").is_file()


# -- tools and mmdet's own APIs on the fine-tuned detector ----------------------------------------
@pytest.mark.slow
def test_test_tool_writes_metrics_json_and_pngs(mask_rcnn_run, det_root, tmp_path):
    import sys

    import cv2

    sys.path.insert(0, str(REPO / "tools"))
    import test_det

    _, metrics, work_dir = mask_rcnn_run
    out = tmp_path / "metrics.json"
    show = tmp_path / "show"
    rc = test_det.main([str(MASK), str(work_dir / "detector.pth"), "--data-root", str(det_root),
                        "--out", str(out), "--show-dir", str(show), "--accelerator", "cpu"])
    assert rc == 0
    written = json.loads(out.read_text())
    assert written["bbox_mAP"] == pytest.approx(metrics["bbox_mAP"], abs=1e-3)
    assert written["segm_mAP"] == pytest.approx(metrics["segm_mAP"], abs=1e-3)
    pngs = sorted(show.glob("*.png"))
    assert len(pngs) == 80
    drawn = cv2.imread(str(pngs[0]))
    original = cv2.imread(str(det_root / "val" / (pngs[0].stem + ".jpg")))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # predictions were drawn
    # the resumable Lightning checkpoint reads too
    rc = test_det.main([str(MASK), str(work_dir / "checkpoints/last.ckpt"), "--data-root",
                        str(det_root), "--out", str(out), "--accelerator", "cpu"])
    assert rc == 0
    assert json.loads(out.read_text())["bbox_mAP"] == pytest.approx(metrics["bbox_mAP"], abs=1e-3)


@pytest.mark.slow
def test_mmdet_init_detector_and_inference_match_the_task(mask_rcnn_run, det_root):
    from mmdet.apis import inference_detector, init_detector

    task, _, work_dir = mask_rcnn_run
    model = init_detector(str(MASK), str(work_dir / "detector.pth"), device="cpu")
    classes = tuple(task.cfg.train_dataloader.dataset.metainfo.classes)
    assert tuple(model.dataset_meta["classes"]) == classes
    ours = inference_detector(model, str(det_root / "val" / "000000.jpg")).pred_instances
    task.detector.eval()
    batch = next(iter(task.test_dataloader()))
    assert batch["data_samples"][0].img_path.endswith("000000.jpg")
    with torch.no_grad():
        theirs = task.detector.test_step(batch)[0].pred_instances
    assert len(ours) > 0
    torch.testing.assert_close(ours.bboxes, theirs.bboxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ours.scores, theirs.scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(ours.masks, theirs.masks)


def test_the_config_runs_under_mmengine_runner(det_root, tmp_path):
    from mmengine.runner import Runner

    from cvkit.tasks.detection import load_det_config, set_data_root

    cfg = load_det_config(FASTER, {
        "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1,
        "train_dataloader.dataset.indices": 4, "val_dataloader.dataset.indices": 2,
        "train_dataloader.batch_size": 2, "val_dataloader.batch_size": 2,
        "default_hooks.logger.interval": 1, "param_scheduler": []})
    set_data_root(cfg, str(det_root))
    cfg.test_dataloader = cfg.val_dataloader
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert (tmp_path / "epoch_1.pth").is_file()
    assert isinstance(runner.model.backbone.body, torch.nn.Module)
    assert type(runner.model.backbone).__name__ == "CvkitBackbone"


def test_train_tool_default_runs_on_the_embedded_data(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    import train_det

    rc = train_det.main(["--work-dir", str(tmp_path), "--epochs", "1", "--accelerator", "cpu",
                         "--cfg-options", "train_dataloader.dataset.indices=8",
                         "val_dataloader.dataset.indices=8"])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox_mAP"] <= 1.0 and not math.isnan(metrics["bbox_mAP"])
    assert (tmp_path / "detector.pth").is_file()
