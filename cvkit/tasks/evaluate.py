"""Evaluate a classification checkpoint on an image folder: top-1 / top-5 (``tools/test.py``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch


def load_task(checkpoint: str | os.PathLike, model_name: Optional[str] = None,
              num_classes: Optional[int] = None, model_kwargs: Optional[dict] = None):
    """A ClassificationTask from a cvkit/Lightning checkpoint (hyper-parameters inside), or from
    plain model weights (any format ``cvkit.load_checkpoint`` reads) plus ``model_name`` and
    ``model_kwargs`` (model keywords the weights need, e.g. ``{"global_pool": "gcp"}``; the tools'
    ``--model-arg``). Loaded with ``weights_only=True``."""
    from cvkit.models.checkpoint import CheckpointError, load_failure
    from cvkit.tasks.classification import ClassificationTask, ModelKwargsError, model_kwargs_error
    from cvkit.tool_errors import OptionError

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file and why
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: "
                              f"{load_failure(e, path)}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if _is_detection_checkpoint(ckpt):
        raise ValueError(f"{path} is a detector checkpoint (tools/train_det.py), not a classifier: "
                         f"evaluate it with tools/test_det.py CONFIG {path} (under corruptions: "
                         f"tools/eval_corruption.py --task det --config CONFIG --checkpoint {path})")
    if hp is not None and "model_name" in hp:
        if model_kwargs:
            raise OptionError(f"{path} is a training checkpoint: it rebuilds its own model; "
                             f"--model-arg ({', '.join(model_kwargs)}) is for plain weights")
        hp = {k: v for k, v in hp.items() if not k.startswith("_")}
        hp.pop("pretrained_path", None)
        task = ClassificationTask(**hp)
        task.load_state_dict(ckpt["state_dict"], strict=True)
        dm_hp = dict(ckpt.get("datamodule_hyper_parameters", {}))
        classes = recorded_classes(ckpt)
        if classes is not None:  # the training classes in label order (checkpoints since 2026-11-28)
            dm_hp["classes"] = classes
        return task, dm_hp
    if model_name is None:
        raise OptionError(f"{path} holds plain model weights: pass --model <preset name>")
    try:
        task = ClassificationTask(model_name, num_classes=num_classes or 1000,
                                  model_kwargs={**(model_kwargs or {}), "checkpoint_path": str(path)})
    except ModelKwargsError as e:  # name the tools' option and the user's keywords only
        if not model_kwargs:  # none given: not an option's fault
            raise ValueError(f"cannot build {model_name!r} for {path}: {e.reason}") from None
        raise model_kwargs_error(model_name, model_kwargs, e, "--model-arg") from None
    return task, {}


def recorded_classes(ckpt: dict) -> list[str] | None:
    """The class names in label order that a checkpoint's datamodule recorded
    (``ClassificationDataModule.state_dict``). Lightning keys the state by the datamodule's class
    name, so a subclass's is found by its content: the one entry holding a ``classes`` list."""
    found = [v["classes"] for v in ckpt.values()
             if isinstance(v, dict) and isinstance(v.get("classes"), list)
             and all(isinstance(c, str) for c in v["classes"])]
    return list(found[0]) if len(found) == 1 else None


def unknown_classes(trained: list[str], here, data, checkpoint) -> str | None:
    """Why class folders ``here`` of ``data`` cannot be mapped by name onto the classes
    ``checkpoint`` was trained on (some are not among them), or None when all are."""
    unknown = sorted(set(here) - set(trained))
    if not unknown:
        return None
    return (f"{data} has class folder(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that "
            f"{checkpoint} was not trained on ({len(unknown)} of {len(set(here))}; its "
            f"{len(trained)} classes begin {trained[:3]})")


def _is_detection_checkpoint(ckpt) -> bool:
    """A Lightning checkpoint of :class:`cvkit.tasks.detection.DetectionTask`: its mmdet config
    in the hyper-parameters and the detector's weights under ``detector.``."""
    if not isinstance(ckpt, dict):
        return False
    hp, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    return (isinstance(hp, dict) and "config" in hp and "model_name" not in hp
            and isinstance(state, dict) and any(str(k).startswith("detector.") for k in state))


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike,
             output: Optional[str | os.PathLike] = None, model_name: Optional[str] = None,
             batch_size: int = 64, image_size: Optional[int] = None,
             crop_pct: Optional[float] = None, num_workers: Optional[int] = None,
             accelerator: str = "auto", precision: Optional[str] = None,
             model_kwargs: Optional[dict] = None,
             interpolation: Optional[str] = None) -> dict[str, Any]:
    """Top-1 / top-5 (percent) of ``checkpoint`` on the ImageFolder split ``data``
    (``data/<class>/<image>``; a folder holding ``val/`` is accepted too). Writes JSON to ``output``
    when given. Image size, crop and resize filter (``interpolation``, "bilinear" or "bicubic")
    default to the ones the checkpoint was trained with (plain weights: 224, 0.875, bilinear).
    ``model_name`` / ``model_kwargs``: for plain weights (see :func:`load_task`). A size below 1,
    a crop_pct outside (0, 1] or negative workers is an OptionError naming the tool's option."""
    from lightning.pytorch import Trainer

    from cvkit.data.datamodule import ClassificationDataModule, class_mismatch, find_classes
    from cvkit.data.transforms import CROP_PCT, IMAGE_SIZE
    from cvkit.tasks.classification import head_mismatch
    from cvkit.tool_errors import (FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, check_options,
                                   option_errors)

    check_options((key, value, *rule) for key, value, rule in [
        ("--batch-size", batch_size, POSITIVE_INT), ("--image-size", image_size, POSITIVE_INT),
        ("--crop-pct", crop_pct, FRACTION), ("--workers", num_workers, NON_NEGATIVE_INT),
    ] if value is not None)  # None: as trained / automatic
    data = Path(data)
    if _is_dataset_root(data):
        data = data / "val"
    split_classes = find_classes(data) if data.is_dir() else []
    task, dm_hp = load_task(checkpoint, model_name, num_classes=len(split_classes) or None,
                            model_kwargs=model_kwargs)
    dm = ClassificationDataModule(
        root=str(data.parent), val_split=data.name, test_split=data.name, batch_size=batch_size,
        image_size=dm_hp.get("image_size", IMAGE_SIZE) if image_size is None else image_size,
        crop_pct=dm_hp.get("crop_pct", CROP_PCT) if crop_pct is None else crop_pct,
        mean=dm_hp.get("mean", (0.485, 0.456, 0.406)), std=dm_hp.get("std", (0.229, 0.224, 0.225)),
        interpolation=dm_hp.get("interpolation", "bilinear") if interpolation is None else interpolation,
        num_workers=num_workers, persistent_workers=False)
    dm.setup("test")
    why = head_mismatch(task.hparams.num_classes, dm.test_set, f"the head of {checkpoint}")
    if why:
        raise ValueError(why)
    trained = dm_hp.get("classes")
    why = None if trained is None else class_mismatch(trained, dm.test_set.classes, data, checkpoint)
    if why:  # labels would mean other classes
        raise ValueError(why)
    with option_errors():  # an unknown accelerator or precision
        trainer = Trainer(accelerator=accelerator, devices=1, logger=False, precision=precision,
                          enable_checkpointing=False, enable_model_summary=False)
    metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    bad = task.gather_bad_files()
    result = {"checkpoint": str(checkpoint), "data": str(data), "images": len(dm.test_set) - len(bad),
              "top1": 100 * metrics["test_top1"], "top5": 100 * metrics["test_top5"],
              "loss": metrics["test_loss"], "skipped_files": len(bad)}
    if output is not None:
        from cvkit.atomic_write import atomic_write

        with atomic_write(output, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return result


def _is_dataset_root(data: Path) -> bool:
    """``data`` holds splits (``val/<class>/<image>``), not classes: its ``val`` holds folders.
    Files beside the splits (an ImageNet root's ``LOC_synset_mapping.txt``, a README) do not
    matter; a split with a class named ``val`` holds images there."""
    from cvkit.data.datamodule import find_classes

    val = data / "val"
    return val.is_dir() and bool(find_classes(val))
