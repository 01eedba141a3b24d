"""ImageNet-C evaluation of a classifier: per corruption/severity top-1 error, resumable.

Results go to ``<out>/results.json`` after every (corruption, severity), written atomically, so an
interrupted run continues where it stopped; reports (:mod:`cvkit.robustness.report`) are derived
from that file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from cvkit.robustness.corruptions import ALL_CORRUPTIONS, SEVERITIES, _check
from cvkit.robustness.folder import (CleanImageFolder, CorruptingCollate, ImageNetCFolder,
                                     list_image_folder)

RESULTS_FILE = "results.json"


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + ``os.replace`` (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_classifier(checkpoint, model_name: str | None = None, device: str = "cpu"):
    """A cvkit model from a checkpoint file (any format ``cvkit.load_checkpoint`` reads). The preset
    name comes from ``model_name`` or from a cvkit/Lightning checkpoint's ``hyper_parameters``."""
    import cvkit

    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if model_name is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - reported with the file name
            raise ValueError(f"cannot read checkpoint {str(path)!r}: {e}") from None
        hp = obj.get("hyper_parameters", {}) if isinstance(obj, dict) else {}
        model_name = hp.get("model_name") or hp.get("model")
        if not isinstance(model_name, str):
            raise ValueError(f"checkpoint {str(path)!r} does not name its model (no "
                             f"hyper_parameters.model_name): pass --model")
    model = cvkit.create_model(model_name, checkpoint_path=path)
    return model.to(device).eval(), model_name


class FolderSource:
    """Released layout ``<root>/<corruption>/<severity>/<class>/<img>``: centre crop only."""

    kind = "imagenet-c-folder"

    def __init__(self, root, crop: int = 224, clean_root=None, resize: int = 256,
                 classes: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"ImageNet-C folder {str(self.root)!r} does not exist")
        self.crop, self.resize, self.clean_root = crop, resize, clean_root
        if classes is None and clean_root is not None:
            classes = list_image_folder(clean_root)[1]
        self.classes = classes

    def describe(self) -> dict:
        return {"source": self.kind, "root": str(self.root), "crop": self.crop,
                "clean_root": None if self.clean_root is None else str(self.clean_root)}

    def corrupted(self, corruption: str, severity: int) -> tuple[Dataset | None, str | None]:
        d = self.root / corruption / str(severity)
        if not d.is_dir():
            return None, f"missing folder {d}"
        try:
            if self.classes is None:
                self.classes = list_image_folder(d)[1]
            return ImageNetCFolder(d, self.crop, self.classes), None
        except ValueError as e:
            return None, str(e)

    def collate(self, corruption, severity):
        return CorruptingCollate(None)

    def clean(self) -> Dataset | None:
        if self.clean_root is None:
            return None
        return CleanImageFolder(self.clean_root, self.resize, self.crop, self.classes)


class OnTheFlySource:
    """Any ImageFolder val set, corrupted in memory: resize + centre crop, corrupt (seeded per
    image), optionally the release's JPEG step."""

    kind = "on-the-fly"

    def __init__(self, val_root, resize: int = 256, crop: int = 224, seed: int = 0,
                 jpeg_quality: int | None = None):
        self.dataset = CleanImageFolder(val_root, resize, crop)
        self.classes = self.dataset.classes
        self.val_root, self.resize, self.crop = Path(val_root), resize, crop
        self.seed, self.jpeg_quality = seed, jpeg_quality

    def describe(self) -> dict:
        return {"source": self.kind, "root": str(self.val_root), "resize": self.resize,
                "crop": self.crop, "seed": self.seed, "jpeg_quality": self.jpeg_quality}

    def corrupted(self, corruption, severity):
        return self.dataset, None

    def collate(self, corruption, severity):
        return CorruptingCollate(corruption, severity, self.seed, self.jpeg_quality)

    def clean(self):
        return self.dataset


@torch.no_grad()
def top1_error(model, loader, device, mean, std) -> float:
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    wrong = total = 0
    for images, targets in loader:
        x = (images.to(device).permute(0, 3, 1, 2).float() - mean) / std
        pred = model(x).argmax(dim=1).cpu()
        wrong += int((pred != targets).sum())
        total += len(targets)
    return wrong / max(total, 1)


def _load_state(out_dir: Path, meta: dict, resume: bool) -> dict:
    path = out_dir / RESULTS_FILE
    if resume and path.is_file():
        state = json.loads(path.read_text())
        if state.get("meta") != meta:
            raise ValueError(f"{path} holds results of a different evaluation ({state.get('meta')}); "
                             f"use another --out or --no-resume")
        return state
    return {"meta": meta, "clean_error": None, "errors": {}, "missing": {}}


def evaluate_classification(model, source, out_dir, corruptions: Iterable[str] = ALL_CORRUPTIONS,
                            severities: Iterable[int] = SEVERITIES, batch_size: int = 64,
                            workers: int = 0, device: str = "cpu", resume: bool = True,
                            progress: bool = True, mean=None, std=None, meta_extra: dict | None = None) -> dict:
    """Top-1 error per corruption and severity (fractions) of ``model`` on ``source``; returns and
    saves the state dict ``{meta, clean_error, errors: {c: {sev: err}}, missing: {c: {sev: why}}}``."""
    from tqdm.auto import tqdm

    corruptions, severities = list(corruptions), list(severities)
    for c in corruptions:
        for s in severities:
            _check(c, s)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(std or cfg.get("std", (0.229, 0.224, 0.225)))
    out_dir = Path(out_dir)
    meta = {"task": "classification", **source.describe(), "mean": list(mean), "std": list(std),
            **(meta_extra or {})}
    state = _load_state(out_dir, meta, resume)
    save = lambda: atomic_write_text(out_dir / RESULTS_FILE, json.dumps(state, indent=1))  # noqa: E731

    def loader(ds, collate):
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate)

    model = model.to(device).eval()
    if state["clean_error"] is None:
        clean = source.clean()
        if clean is not None:
            state["clean_error"] = top1_error(model, loader(clean, CorruptingCollate(None)), device, mean, std)
            save()
    todo = [(c, s) for c in corruptions for s in severities if str(s) not in state["errors"].get(c, {})]
    bar = tqdm(todo, desc="ImageNet-C", disable=not progress, unit="set")
    for c, s in bar:
        bar.set_postfix_str(f"{c} s{s}")
        ds, why = source.corrupted(c, s)
        if ds is None:
            state["missing"].setdefault(c, {})[str(s)] = why
            save()
            continue
        err = top1_error(model, loader(ds, source.collate(c, s)), device, mean, std)
        state["errors"].setdefault(c, {})[str(s)] = err
        if c in state["missing"]:
            state["missing"][c].pop(str(s), None)
            if not state["missing"][c]:
                del state["missing"][c]
        save()
    return state


def error_table(state: dict) -> dict[str, list[float | None]]:
    """{corruption: [e1..e5]} with None for severities not evaluated (state -> metrics input)."""
    return {c: [state["errors"].get(c, {}).get(str(s)) for s in SEVERITIES]
            for c in ALL_CORRUPTIONS if c in state["errors"] or c in state["missing"]}
