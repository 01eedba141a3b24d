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

# COCO AP (IoU .5:.95) on the 80 synthetic val images after the short CPU fine-tunes below;
# measured values are in docs/detection.md. The floor is 0.25.
FASTER_BBOX_AP = 0.25
MASK_BBOX_AP = 0.25
MASK_SEGM_AP = 0.25
FINETUNE_EPOCHS = 6


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
    """ECA-ResNet-18 trained briefly on the synthetic classification set (10 shapes), saved in the
    classification task's checkpoint layout (``state_dict: {'model.<name>': ...}``)."""
    import cvkit
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train = datasets.ImageFolder(cls_root / "train", transforms.Compose([
        transforms.Resize(64), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]))
    val = datasets.ImageFolder(cls_root / "val", transforms.Compose([
        transforms.Resize(64), transforms.ToTensor(), norm]))
    model = cvkit.create_model(BACKBONE, num_classes=len(train.classes))
    loader = torch.utils.data.DataLoader(train, batch_size=50, shuffle=True)
    epochs = 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * len(loader))
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
    assert accuracy > 0.5, f"pretraining did not learn: val accuracy {accuracy:.2f} (chance 0.10)"
    path = tmp_path_factory.mktemp("pretrain") / "eca_resnet18_shapes.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _fine_tune(config: Path, backbone: Path, det_root: Path, work_dir: Path):
    from cvkit.tasks.detection import train_detector

    return train_detector(config, str(work_dir), data_root=str(det_root),
                          backbone_checkpoint=str(backbone), accelerator="cpu", devices=1,
                          max_epochs=FINETUNE_EPOCHS, logger=False)


@pytest.fixture(scope="module")
def faster_rcnn_run(pretrained_backbone, det_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("faster")
    task, metrics = _fine_tune(FASTER, pretrained_backbone, det_root, work_dir)
    return task, metrics, work_dir


@pytest.mark.slow
def test_faster_rcnn_fine_tune_reaches_bbox_ap(faster_rcnn_run, pretrained_backbone):
    task, metrics, work_dir = faster_rcnn_run
    print("Faster R-CNN synthetic val:", json.dumps(metrics))
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l"):
        assert key in metrics
    assert metrics["bbox_mAP"] >= FASTER_BBOX_AP
    assert metrics["bbox_mAP_50"] >= metrics["bbox_mAP"]
    # the backbone really started from the classification checkpoint
    assert task.detector.backbone._loaded_from == str(pretrained_backbone)
    assert (work_dir / "checkpoints/last.ckpt").is_file() and (work_dir / "detector.pth").is_file()


@pytest.mark.slow
def test_mask_rcnn_fine_tune_reaches_segm_ap(pretrained_backbone, det_root, tmp_path):
    _, metrics = _fine_tune(MASK, pretrained_backbone, det_root, tmp_path)
    print("Mask R-CNN synthetic val:", json.dumps(metrics))
    assert metrics["bbox_mAP"] >= MASK_BBOX_AP
    assert metrics["segm_mAP"] >= MASK_SEGM_AP
    assert {"segm_mAP_50", "segm_mAP_75", "segm_mAP_s", "segm_mAP_m", "segm_mAP_l"} <= set(metrics)


# -- tools and mmdet's own APIs on the fine-tuned detector ----------------------------------------
@pytest.mark.slow
def test_test_tool_writes_metrics_json_and_pngs(faster_rcnn_run, det_root, tmp_path):
    import cv2
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    import test_det

    _, metrics, work_dir = faster_rcnn_run
    out = tmp_path / "metrics.json"
    show = tmp_path / "show"
    rc = test_det.main([str(FASTER), str(work_dir / "detector.pth"), "--data-root", str(det_root),
                        "--out", str(out), "--show-dir", str(show), "--accelerator", "cpu"])
    assert rc == 0
    assert json.loads(out.read_text())["bbox_mAP"] == pytest.approx(metrics["bbox_mAP"], abs=1e-3)
    pngs = sorted(show.glob("*.png"))
    assert len(pngs) == 80
    drawn = cv2.imread(str(pngs[0]))[:, :, ::-1]
    original = cv2.imread(str(det_root / "val" / (pngs[0].stem + ".jpg")))[:, :, ::-1]
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # boxes were drawn
    # the Lightning checkpoint reads too
    rc = test_det.main([str(FASTER), str(work_dir / "checkpoints/last.ckpt"), "--data-root",
                        str(det_root), "--out", str(out), "--accelerator", "cpu"])
    assert rc == 0
    assert json.loads(out.read_text())["bbox_mAP"] == pytest.approx(metrics["bbox_mAP"], abs=1e-3)


@pytest.mark.slow
def test_mmdet_init_detector_and_inference_match_the_task(faster_rcnn_run, det_root):
    from mmdet.apis import inference_detector, init_detector

    task, _, work_dir = faster_rcnn_run
    cfg = task.cfg  # the config file, with the data moved to det_root
    model = init_detector(str(FASTER), str(work_dir / "detector.pth"), device="cpu")
    assert tuple(model.dataset_meta["classes"]) == tuple(cfg.train_dataloader.dataset.metainfo.classes)
    image = str(det_root / "val" / "000000.jpg")
    ours = inference_detector(model, image).pred_instances
    task.detector.eval()
    batch = next(iter(task.test_dataloader()))
    with torch.no_grad():
        theirs = task.detector.test_step(batch)[0].pred_instances
    torch.testing.assert_close(ours.bboxes, theirs.bboxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ours.scores, theirs.scores, atol=1e-4, rtol=1e-4)
    assert len(ours) > 0


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
