"""ImageNet-C evaluation of a classifier: per corruption/severity top-1 error, resumable.

Results go to ``<out>/results.json`` after every (corruption, severity), written atomically, so an
interrupted run continues where it stopped; reports (:mod:`cvkit.robustness.report`) are derived
from that file.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Iterable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cvkit.atomic_write import atomic_write
from cvkit.robustness.corruptions import ALL_CORRUPTIONS, SEVERITIES, check_corruption, check_seed
from cvkit.robustness.folder import (CleanImageFolder, CorruptingCollate, EmptyFolderError,
                                     ImageNetCFolder, check_jpeg_quality, check_pixels, first_image,
                                     folder_classes, list_image_folder, read_render_marker)
from cvkit.tool_errors import OptionError

RESULTS_FILE = "results.json"


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`cvkit.atomic_write.atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def load_classifier(checkpoint, model_name: str | None = None, device: str = "cpu",
                    classes: list[str] | None = None, model_kwargs: dict | None = None):
    """(model, preset name, datamodule hyper-parameters) from a checkpoint, rebuilt as
    :func:`cvkit.tasks.evaluate.load_task` does (Lightning hyper-parameters incl. ``model_kwargs``;
    plain weights need ``model_name``, and ``model_kwargs`` where the preset lacks what they
    need). The head must have ``len(classes)`` outputs, unless the checkpoint recorded its class
    names (``dm_hp["classes"]``: hand them to the source's ``use_classes``)."""
    from cvkit.tasks.evaluate import load_task

    num_classes = None if classes is None else len(classes)
    task, dm_hp = load_task(checkpoint, model_name, num_classes=num_classes, model_kwargs=model_kwargs)
    n_head = task.hparams.num_classes
    if num_classes is not None and n_head != num_classes and "classes" not in dm_hp:
        # with the training class names recorded, the data's are mapped onto them instead
        # (the source's use_classes)
        raise ValueError(f"the evaluation data has {num_classes} classes but the head of checkpoint "
                         f"{checkpoint} has {n_head}")
    return task.model.to(device).eval(), task.hparams.model_name, dm_hp


def eval_sizes(resize: int | None, crop: int | None, dm_hp: dict) -> tuple[int, int]:
    """(resize, crop) of the evaluation: those given, else the checkpoint's training size as
    ``tools/test.py`` uses it (crop = ``image_size``, resize = ``round(crop / crop_pct)``), else
    224 and 256 (crop_pct 0.875) for plain weights. A size below 1 is an OptionError naming it."""
    from cvkit.data.transforms import CROP_PCT, IMAGE_SIZE, eval_resize

    if crop is not None:
        check_pixels(crop, "--crop")
    if resize is not None:
        check_pixels(resize, "--resize")
    crop = dm_hp.get("image_size", IMAGE_SIZE) if crop is None else crop
    if resize is None:  # crop_pct is in (0, 1]: never below the crop
        resize = eval_resize(crop, dm_hp.get("crop_pct", CROP_PCT))
    if resize < crop:
        raise OptionError(f"--resize {resize} is smaller than the crop {crop}")
    return resize, crop


class FolderSource:
    """Released layout ``<root>/<corruption>/<severity>/<class>/<img>``: centre crop only. A folder
    rendered by ``tools/make_imagenet_c.py`` is recorded with its marker (``rendered_by``)."""

    kind = "imagenet-c-folder"

    def __init__(self, root, crop: int = 224, clean_root=None, resize: int = 256,
                 classes: list[str] | None = None):
        """One class list for every folder: ``classes``, else the clean val's, else the sorted
        union of the class folders of all ``<root>/<corruption>/<severity>`` folders."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"ImageNet-C folder {str(self.root)!r} does not exist")
        self.crop, self.resize, self.clean_root = crop, resize, clean_root
        self.rendered_by = read_render_marker(self.root)
        self.classes_from = "as given"
        if classes is None and clean_root is not None:
            classes = list_image_folder(clean_root)[1]
            self.classes_from = f"those of the clean val {clean_root}"
        if classes is None:
            self.classes_from = "the union of all corruption folders' classes"
            classes = sorted({c for name in ALL_CORRUPTIONS for s in SEVERITIES
                              for c in folder_classes(self.root / name / str(s))})
            if not classes:
                raise ValueError(f"ImageNet-C folder {str(self.root)!r} has no "
                                 f"<corruption>/<severity>/<class> folders")
        self.classes = list(classes)

    def set_size(self, resize: int, crop: int) -> None:
        self.resize, self.crop = resize, crop

    def use_classes(self, trained: list[str], checkpoint) -> None:
        """Label every folder by the classes ``checkpoint`` was trained on (label order), mapped
        by name: a folder may lack some; one it was not trained on is a ValueError naming it."""
        from cvkit.tasks.evaluate import unknown_classes

        folders = [self.root / name / str(s) for name in ALL_CORRUPTIONS for s in SEVERITIES]
        folders += [] if self.clean_root is None else [Path(self.clean_root)]
        for d in folders:
            why = unknown_classes(trained, folder_classes(d), d, checkpoint)
            if why:
                raise ValueError(why)
        self.classes = list(trained)
        self.classes_from = f"those {checkpoint} was trained on"

    def check_classes(self, corruptions: Iterable[str], severities: Iterable[int]) -> None:
        """Every existing ``<corruption>/<severity>`` folder to evaluate has only class folders of
        the class list; else a ValueError naming the folder, before anything is evaluated (it was
        found only on reaching that set, after the clean val and the sets before it)."""
        known = set(self.classes)
        for c in corruptions:
            for s in severities:
                d = self.root / c / str(s)
                unknown = sorted(set(folder_classes(d)) - known)
                if unknown:
                    raise ValueError(f"{d} has class folder(s) {unknown[:5]}"
                                     f"{' ...' if len(unknown) > 5 else ''} not in the evaluation's "
                                     f"class list ({len(self.classes)} classes, {self.classes_from})")

    def clean_resize(self) -> tuple[int | None, str]:
        """The resize of the clean val that frames it as the corrupted images are framed, and how
        it was chosen. The stored images (side S) are only centre-cropped, so the region they show
        was fixed when they were made: resize R, then crop S. R is the render marker's resize for
        S-pixel images (a folder cvkit rendered), else the release's Resize(256) / CenterCrop(224)
        ratio, round(S * 256 / 224) (Hendrycks & Dietterich); whatever the model's crop, not its
        crop_pct, so clean and corrupted errors are of the same regions. (None, why): no image."""
        side = self.image_side()
        if side is None:
            return None, "no image in the folder"
        renders = (self.rendered_by or {}).get("renders", [])
        sizes = {r.get("resize") for r in renders if r.get("crop") == side}
        if len(sizes) == 1 and isinstance(next(iter(sizes)), int):
            return next(iter(sizes)), f"as its {side} px images were rendered (cvkit_render.json)"
        why = (f"; its cvkit_render.json records several resizes for {side} px images"
               if len(sizes) > 1 else "")
        return round(side * 256 / 224), f"the release's framing, 256 for 224 px images{why}"

    @functools.cached_property
    def first_image(self) -> tuple[Path, tuple[int, int]] | None:
        """The folder's first stored image and its (width, height), read once (every image of a
        folder has one size); None when it has none."""
        path = next((p for name in ALL_CORRUPTIONS for s in SEVERITIES
                     for p in [first_image(self.root / name / str(s))] if p is not None), None)
        if path is None:
            return None
        with Image.open(path) as im:
            return path, im.size

    def image_side(self) -> int | None:
        """The shorter side of the folder's images."""
        return None if self.first_image is None else min(self.first_image[1])

    def describe(self) -> dict:
        d = {"source": self.kind, "root": str(self.root.resolve()), "crop": self.crop,
             "clean_root": None if self.clean_root is None else str(Path(self.clean_root).resolve()),
             "rendered_by": self.rendered_by}
        if self.clean_root is not None:  # the clean images are resized first
            d["resize"] = self.resize
        return d

    def check_image_size(self) -> str | None:
        """Compare the crop with the first image found: a ValueError naming it when it is smaller
        than the crop, a warning (text) when larger (only its centre would be evaluated)."""
        if self.first_image is None:
            return None
        path, (w, h) = self.first_image
        render = (f"render a set at the model's size with tools/make_imagenet_c.py --val VAL "
                  f"--out DIR --resize {self.resize} --crop {self.crop}")
        if min(w, h) < self.crop:
            raise ValueError(f"image {path} is {w}x{h}, smaller than the centre crop {self.crop}: "
                             f"ImageNet-C images are centre-cropped only; {render}, or pass "
                             f"--crop {min(w, h)}")
        if (w, h) != (self.crop, self.crop):
            return (f"the images of {self.root} are {w}x{h}, the crop is {self.crop}: only their "
                    f"centre {self.crop}x{self.crop} is evaluated, at the folder's scale; to "
                    f"evaluate at the model's, {render}")
        return None

    def corrupted(self, corruption: str, severity: int) -> tuple[Dataset | None, str | None]:
        d = self.root / corruption / str(severity)
        if not d.is_dir():
            return None, f"missing folder {d}"
        try:
            return ImageNetCFolder(d, self.crop, self.classes), None
        except EmptyFolderError as e:  # empty or flat: recorded as missing, the rest continues
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
        check_seed(seed)
        if jpeg_quality is not None:
            check_jpeg_quality(jpeg_quality)
        self.dataset = CleanImageFolder(val_root, resize, crop)
        self.classes = self.dataset.classes
        self.val_root, self.resize, self.crop = Path(val_root), resize, crop
        self.seed, self.jpeg_quality = seed, jpeg_quality

    def set_size(self, resize: int, crop: int) -> None:
        self.resize, self.crop = self.dataset.resize, self.dataset.crop = resize, crop

    def use_classes(self, trained: list[str], checkpoint) -> None:
        """Label the val set by the classes ``checkpoint`` was trained on, mapped by name (it may
        lack some; one it was not trained on is a ValueError naming it)."""
        from cvkit.tasks.evaluate import unknown_classes

        why = unknown_classes(trained, self.classes, self.val_root, checkpoint)
        if why:
            raise ValueError(why)
        self.dataset = CleanImageFolder(self.val_root, self.resize, self.crop, trained)
        self.classes = self.dataset.classes

    def describe(self) -> dict:
        return {"source": self.kind, "root": str(self.val_root.resolve()), "resize": self.resize,
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
    try:
        for images, targets in loader:
            x = (images.to(device).permute(0, 3, 1, 2).float() - mean) / std
            pred = model(x).argmax(dim=1).cpu()
            wrong += int((pred != targets).sum())
            total += len(targets)
    except ValueError as e:
        # a DataLoader worker re-raises with the whole worker traceback as the message; keep the
        # original one-line message (its last line)
        msg = str(e)
        if msg.startswith("Caught ValueError in DataLoader worker"):
            raise ValueError(msg.strip().splitlines()[-1].removeprefix("ValueError: ")) from None
        raise
    return wrong / max(total, 1)


PATH_KEYS = ("root", "clean_root", "checkpoint", "config", "data_root")
"""Meta keys holding paths: compared resolved, so ``runs/x`` and ``/abs/runs/x`` are one run
(results files written with relative paths resume from any spelling of the same place)."""


def resolved_path(path) -> str | None:
    """``path`` absolute and normalised, as text; None stays None."""
    return None if path is None else str(Path(path).resolve())


def _normalised(meta: dict) -> dict:
    return {k: resolved_path(v) if k in PATH_KEYS and isinstance(v, str) else v
            for k, v in meta.items()}


# Meta keys added after results files were first written, with the value every earlier run used:
# a file without the key resumes a run that has that value (the released-folder source recorded
# no "resize", its clean images were always resized to 256; no "rendered_by", no folder had a
# render marker; COCO-C no "channel_order", it always corrupted as RGB, no "cfg_options", it had
# none)
LATER_META_KEYS = {"resize": 256, "rendered_by": None, "channel_order": "rgb", "cfg_options": {}}
# Meta keys added later whose value earlier runs did not record: a file without the key resumes
# (the checkpoint's contents were not recorded, only its path)
UNRECORDED_META_KEYS = ("checkpoint_sha256",)


def file_sha256(path) -> str:
    """SHA-256 of a file's contents (hex): a checkpoint retrained into the same path is another
    model, so its results are not resumed."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_results(path: Path, fresh: dict) -> dict:
    """The saved state in ``path``, keys it lacks taken from ``fresh``; a file that is not a JSON
    object, or whose ``meta`` / result tables are not objects, is a ValueError naming it."""
    advice = "use another --out, or --no-resume to start over"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot resume from {path}: not readable JSON ({e}); {advice}") from None
    if not isinstance(state, dict):
        raise ValueError(f"cannot resume from {path}: not a JSON object; {advice}")
    if "meta" in fresh and "meta" not in state:  # whose results they are is not recorded
        raise ValueError(f"cannot resume from {path}: it records no 'meta' (which model and "
                         f"images its results are of); {advice}")
    for key, value in fresh.items():
        state.setdefault(key, copy.deepcopy(value))
        if isinstance(value, dict) and not isinstance(state[key], dict):
            raise ValueError(f"cannot resume from {path}: {key!r} is not a JSON object; {advice}")
    return state


def resume_results(out_dir: Path, meta: dict, resume: bool, fresh: dict) -> dict:
    """The results saved in ``out_dir`` by an evaluation with the same ``meta`` (paths compared
    resolved; a different one is a ValueError naming what differs), else ``fresh``. An
    ``out_dir`` that is a file is a NotADirectoryError naming it, before any evaluation."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output folder {out_dir} is a file: give a folder")
    path = out_dir / RESULTS_FILE
    if resume and path.is_file():
        state = read_results(path, fresh)
        old = _normalised(state.get("meta") or {})
        old.update({k: v for k, v in LATER_META_KEYS.items() if k in meta and k not in old})
        old.update({k: meta[k] for k in UNRECORDED_META_KEYS if k in meta and k not in old})
        new = _normalised(meta)
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if differ:
            detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differ)
            if "checkpoint_sha256" in differ:
                detail += "; the checkpoint's contents changed (a model retrained into that file?)"
            raise ValueError(f"{path} holds results of a different evaluation ({detail}); "
                             f"use another --out or --no-resume")
        # equal: the current meta is saved with the results, so keys an older file lacked (the
        # checkpoint's digest) are checked at the next resume
        state["meta"] = meta
        return state
    return fresh


def evaluate_classification(model, source, out_dir, corruptions: Iterable[str] = ALL_CORRUPTIONS,
                            severities: Iterable[int] = SEVERITIES, batch_size: int = 64,
                            workers: int = 0, device: str = "cpu", resume: bool = True,
                            progress: bool = True, mean=None, std=None, meta_extra: dict | None = None) -> dict:
    """Top-1 error per corruption and severity (fractions) of ``model`` on ``source``; returns and
    saves the state dict ``{meta, clean_error, errors: {c: {sev: err}}, missing: {c: {sev: why}},
    clean_images, images: {c: {sev: n}}}`` (``n``: the images each error is over; see
    :func:`uneven_sets`). A source's ``check_classes`` runs first: a set whose class folders do not
    fit fails before anything is evaluated."""
    from tqdm.auto import tqdm

    corruptions, severities = list(corruptions), list(severities)
    for c in corruptions:
        for s in severities:
            check_corruption(c, s)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(std or cfg.get("std", (0.229, 0.224, 0.225)))
    out_dir = Path(out_dir)
    meta = {"task": "classification", **source.describe(), "mean": list(mean), "std": list(std),
            **(meta_extra or {})}
    check_classes = getattr(source, "check_classes", None)
    if check_classes is not None:
        check_classes(corruptions, severities)
    state = resume_results(out_dir, meta, resume, {"meta": meta, "clean_error": None, "errors": {},
                                                   "missing": {}, "images": {}})
    save = lambda: atomic_write_text(out_dir / RESULTS_FILE, json.dumps(state, indent=1))  # noqa: E731

    def loader(ds, collate):
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate)

    model = model.to(device).eval()
    if state["clean_error"] is None:
        clean = source.clean()
        if clean is not None:
            state["clean_error"] = top1_error(model, loader(clean, CorruptingCollate(None)), device, mean, std)
            state["clean_images"] = len(clean)
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
        state["images"].setdefault(c, {})[str(s)] = len(ds)
        if c in state["missing"]:
            state["missing"][c].pop(str(s), None)
            if not state["missing"][c]:
                del state["missing"][c]
        save()
    return state


def error_table(state: dict) -> dict[str, list[float | None]]:
    """{corruption: [e1..e5]} with None for severities not evaluated (state -> metrics input)."""
    return {c: [state["errors"].get(c, {}).get(str(s)) for s in SEVERITIES]
            for c in ALL_CORRUPTIONS if c in state["errors"] or c in state.get("missing", {})}


def uneven_sets(state: dict) -> tuple[int | None, dict[str, dict[str, int]]]:
    """(expected image count, {corruption: {severity: count}} of the evaluated sets holding another
    count). Expected: the clean val's when it was evaluated (the release and cvkit's renders hold
    one corrupted copy of every clean image), else the largest set's. A short set (a partial
    download or extraction, an interrupted render) has an error over fewer images than the rest."""
    counts = {c: {s: n for s, n in sevs.items() if s in state["errors"].get(c, {})}
              for c, sevs in (state.get("images") or {}).items()}
    found = [n for sevs in counts.values() for n in sevs.values()]
    expected = state.get("clean_images") or max(found, default=None)
    if expected is None:
        return None, {}
    uneven = {c: {s: n for s, n in sevs.items() if n != expected} for c, sevs in counts.items()}
    return expected, {c: sevs for c, sevs in uneven.items() if sevs}


def describe_uneven(expected: int, uneven: dict[str, dict[str, int]], clean: bool) -> list[str]:
    """One line per set of :func:`uneven_sets`, e.g. ``fog severity 2 has 5 images, the clean val
    30: its error is over those only``."""
    ref = "the clean val" if clean else "the largest set"
    return [f"{c} severity {s} has {n} image{'' if n == 1 else 's'}, {ref} {expected}: its error "
            "is over those only"
            + (" (images missing: a partial download or extraction, or an interrupted render?)"
               if n < expected else "")
            for c in ALL_CORRUPTIONS if c in uneven for s, n in sorted(uneven[c].items())]
