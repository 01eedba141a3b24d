"""Shared fixtures: the embedded synthetic datasets (generated once, deterministically)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``data/`` with both synthetic datasets (`make test` generates them; this is a no-op then)."""
    from cvkit.data.synthetic import generate

    generate(REPO / "data")
    return REPO / "data"


@pytest.fixture(scope="session")
def cls_root(data_root: Path) -> Path:
    """ImageFolder root with ``train/`` and ``val/``."""
    return data_root / "classification"


@pytest.fixture(scope="session")
def det_root(data_root: Path) -> Path:
    """COCO root with ``annotations/instances_{train,val}.json`` and ``{train,val}/`` images."""
    return data_root / "detection"


@pytest.fixture(scope="session")
def pretrained_backbone(cls_root, tmp_path_factory) -> Path:
    """The detection tests' backbone (one per session: the fine-tune and COCO-C tests share it,
    through :func:`mask_rcnn_run`):
    ECA-ResNet-18 trained briefly (6 epochs at 64 px, 120 images per class) on the synthetic
    classification set (10 shapes), saved in the classification task's checkpoint layout
    (``state_dict: {'model.<name>'}``)."""
    import collections

    import cvkit
    import torch
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train = datasets.ImageFolder(cls_root / "train", transforms.Compose([
        transforms.Resize(64), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]))
    val = datasets.ImageFolder(cls_root / "val", transforms.Compose([
        transforms.Resize(64), transforms.ToTensor(), norm]))
    model = cvkit.create_model("eca_resnet18", num_classes=len(train.classes))
    # the first 120 images of each class (the generator draws image i of a class from its own
    # seed, so these are the same images whatever the set's size): keeps this fixture's cost fixed
    taken, first = collections.Counter(), []
    for i, (_, label) in enumerate(train.samples):
        taken[label] += 1
        if taken[label] <= 120:
            first.append(i)
    train = torch.utils.data.Subset(train, first)
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


@pytest.fixture(scope="session")
def mask_rcnn_run(pretrained_backbone, det_root, tmp_path_factory):
    """Mask R-CNN (= Faster R-CNN + a mask branch; configs/detection/mask-rcnn_eca-r18_fpn_shapes.py)
    fine-tuned on the CPU from the pretrained backbone with the config's own schedule: (task,
    metrics, work_dir holding ``detector.pth`` and ``measured.json``). One run per session serves
    the bbox / segm AP, tool and mmdet-API checks and COCO-C (a detector that detects)."""
    import json
    import time

    from cvkit.tasks.detection import train_detector

    config = REPO / "configs/detection/mask-rcnn_eca-r18_fpn_shapes.py"
    work_dir = tmp_path_factory.mktemp("mask")
    start = time.perf_counter()
    task, metrics = train_detector(config, str(work_dir), data_root=str(det_root),
                                   backbone_checkpoint=str(pretrained_backbone),
                                   accelerator="cpu", devices=1, logger=False)
    (work_dir / "measured.json").write_text(json.dumps(
        {"config": config.name, "fine_tune_seconds": round(time.perf_counter() - start, 1),
         "metrics": metrics}, indent=1))
    return task, metrics, work_dir
