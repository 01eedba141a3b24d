"""ImageFolder classification data for Lightning: OpenCV decoding, albumentations training
transforms (evaluation: torchvision's resize, as the papers),
resumable distributed sampling, bad files skipped and counted.

Layout (ImageNet's): ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``.

Determinism: every training sample is augmented with its own seed derived from (seed, epoch, index),
and the epoch order comes from a ``DistributedSampler`` seeded the same way on one process or many.
A run resumed from a checkpoint therefore sees exactly the batches an unbroken run sees: the train
loader is *stateful* (Lightning saves its ``state_dict`` in the checkpoint) and reports the position
of Lightning's fit loop — the next epoch after a finished one (``limit_train_batches`` counted), or
the first batch not yet consumed of an unfinished one — so the resumed run starts there.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from cvkit.data.transforms import (CROP_PCT, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD,
                                   INTERPOLATIONS, RANDAUGMENT_OPS, eval_transform,
                                   normalize_batch, train_transform)
from cvkit.tool_errors import (FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, PROBABILITY,
                               OptionError, check_options)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# a JPEG marker: 0xFF then a byte that is not stuffing (00), a restart marker (D0-D7) or fill (FF)
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


class BadImageError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, not an image).

    Raised in a DataLoader worker, PyTorch re-raises it in the main process as
    ``BadImageError("Caught BadImageError in DataLoader worker ...<traceback>")``; only the last
    line of that text (our own message) is kept, so the error still reads as one line naming the file.
    """

    def __init__(self, msg: str = ""):
        lines = [ln.strip() for ln in str(msg).strip().splitlines() if ln.strip()]
        if len(lines) > 1:
            msg = lines[-1].split("BadImageError: ", 1)[-1]
        super().__init__(msg)


def _jpeg_reaches_eoi(data: bytes) -> bool:
    """Walk a JPEG's segments from SOI (skipping each by its length, so an EXIF thumbnail's own EOI
    is not taken for the image's): True when they reach the EOI marker, False when the data ends
    first. Bytes after the EOI (phones append trailers, video) are allowed, as by libjpeg and PIL."""
    pos = 2
    while (m := _JPEG_MARKER.search(data, pos)) is not None:
        marker = data[m.start() + 1]
        if marker == 0xD9:
            return True
        if marker in (0x01, 0xD8):  # no length field
            pos = m.end()
            continue
        if m.end() + 2 > len(data):
            return False
        pos = m.end() + int.from_bytes(data[m.end():m.end() + 2], "big")
    return False


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file with OpenCV into an RGB uint8 HxWx3 array.

    Raises BadImageError naming the file when it is not a decodable image or is a truncated JPEG
    (OpenCV would silently return a partly grey image; PIL raises, and so do we).
    """
    import cv2

    path = str(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadImageError(f"cannot read image file {path}: {e.strerror}") from None
    if buf.size >= 2 and buf[0] == 0xFF and buf[1] == 0xD8:  # JPEG: must reach its EOI marker
        # fast path: the EOI is at the end; else walk the segments (data may follow the EOI)
        if b"\xff\xd9" not in buf[-64:].tobytes() and not _jpeg_reaches_eoi(buf.tobytes()):
            raise BadImageError(f"truncated JPEG file {path}")
    # the stored pixels, as PIL (the papers' loader, cvkit's corruption tools) reads them: OpenCV
    # would apply the EXIF orientation (a rotated photo would differ between the two)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    except cv2.error as e:  # a header over OpenCV's size limits (corrupt, or a huge image) raises
        why = ((e.err or str(e)).strip().splitlines() or ["cv2.error"])[-1]
        raise BadImageError(f"not a decodable image file {path} (OpenCV: {why})") from None
    if img is None:
        raise BadImageError(f"not a decodable image file {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def is_hidden(name: str) -> bool:
    """Not data: hidden entries (``.ipynb_checkpoints``, macOS ``._x.JPEG`` resource forks) and
    the ``__MACOSX`` folder of a zip made on a Mac. torchvision's ImageFolder takes them as
    classes / images (an extra class the model must predict, undecodable files)."""
    return name.startswith(".") or name == "__MACOSX"


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class sub-folder names of ``root`` (torchvision's order), hidden folders left out."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))


def class_mismatch(trained: list[str], here: list[str], data, checkpoint) -> str | None:
    """Why the class folders ``here`` of ``data`` cannot be labelled as ``checkpoint`` was trained
    (``trained``, label order), or None when they are the same list."""
    if trained == here:
        return None
    i = next((i for i, (a, b) in enumerate(zip(trained, here)) if a != b),
             min(len(trained), len(here)))  # one list continues the other
    return (f"the class folders of {data} are not the classes {checkpoint} was trained on: label "
            f"{i} is {here[i] if i < len(here) else None!r} there, "
            f"{trained[i] if i < len(trained) else None!r} in training "
            f"({len(set(trained) - set(here))} training classes missing)")


def scan_split(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples, classes) of an ImageFolder split; one-line errors for a missing or empty folder."""
    from torchvision.datasets.folder import make_dataset

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"split folder {root} does not exist")
    classes = find_classes(root)

    def is_image(path: str) -> bool:
        rel = Path(path).relative_to(root).parts
        return path.lower().endswith(IMG_EXTENSIONS) and not any(map(is_hidden, rel))

    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)},
                           is_valid_file=is_image, allow_empty=True) if classes else []
    if not samples:
        raise FileNotFoundError(f"split folder {root} has no images in class sub-folders "
                                f"(expected {root}/<class>/<image>{IMG_EXTENSIONS[0]})")
    return samples, classes


class ImageFolderDataset(Dataset):
    """ImageFolder with OpenCV decoding. An index may be ``(index, epoch)`` (from
    ResumableDistributedSampler): the transform is then seeded by (seed, epoch, index).

    A bad file gives ``{"bad_file": path}`` (collated away and reported by
    :func:`collate_skip_bad`) after a warning naming it, or raises BadImageError when ``strict``.
    A class folder without images is an error naming it (as torchvision's ImageFolder): it would
    be a class the model can never learn.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable] = None,
                 strict: bool = False, seed: int = 0):
        self.root = Path(root)
        self.samples, self.classes = scan_split(self.root)
        counts = np.bincount([t for _, t in self.samples], minlength=len(self.classes))
        empty = [str(self.root / c) for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise FileNotFoundError(f"class folder(s) {', '.join(empty[:5])} hold no images "
                                    f"({'/'.join(IMG_EXTENSIONS)}): add images or remove the folder")
        self.transform = transform
        self.strict = strict
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, None)
        path, target = self.samples[index]
        try:
            img = decode_image(path)
        except BadImageError as e:
            if self.strict:
                raise
            warnings.warn(f"skipping {e} (set strict=True to stop instead)", stacklevel=1)
            return {"bad_file": path}
        if self.transform is not None:
            if epoch is not None and hasattr(self.transform, "set_random_state"):
                seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
                # one stream shared by every op: albumentations' set_random_seed(seed) gives each op
                # its own generator from the same seed, so their first draws are equal (the flip
                # was tied to the crop's area: no large crop was ever mirrored)
                self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            img = self.transform(image=img)["image"]
        return img, target


def collate_skip_bad(batch: list) -> tuple[Any, Any, list[str], list[int]]:
    """Collate ``(image, target)`` pairs, dropping skipped files; returns (images, targets, bad,
    bad_at): the skipped files' paths and their positions in the batch (what keeps predictions
    attributable: ``ClassificationTask.predict_step`` gives them NaN rows)."""
    bad_at = [i for i, b in enumerate(batch) if isinstance(b, dict)]
    bad = [batch[i]["bad_file"] for i in bad_at]
    good = [b for b in batch if not isinstance(b, dict)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad, bad_at
    images, targets = default_collate(good)
    return images, targets, bad, bad_at


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (the one Lightning would insert) that yields ``(index, epoch)``
    and can start an epoch after ``skip`` already-consumed samples of this rank."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0
        self.iter_epoch = 0  # the epoch of the pass in progress

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        epoch = self.iter_epoch = self.epoch
        return iter([(i, epoch) for i in indices[skip:]])


class ResumableDataLoader(DataLoader):
    """The training loader. It reports its position (epoch, batches consumed) as ``state_dict`` so
    Lightning treats it as resumable; the position is restored by the datamodule, whose state
    Lightning loads *before* the first training iterator is created (a loader's own
    ``load_state_dict`` comes after ``configure_optimizers`` may already have created it)."""

    def __init__(self, *args, progress: Optional[Callable[[], tuple[int, int]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._progress() if self._progress is not None else (0, 0)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """No-op: see the class docstring and ClassificationDataModule.load_state_dict."""

    def resume_at(self, state: dict[str, int]) -> None:
        """Make the next pass start at ``state`` (as returned by ``state_dict``)."""
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip = state["batches"] * self.batch_size


def default_num_workers(devices: int = 1) -> int:
    """CPU cores per device, at most 8 (leaves nothing idle, does not oversubscribe)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // max(1, devices)))


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one decoder thread per worker; the workers are the parallelism
    torch.set_num_threads(1)


def prepare_opencv_for_fork() -> None:
    """Run OpenCV single-threaded in this (the parent) process before it forks loader workers.

    OpenCV's thread pool does not survive ``fork``: a worker forked while the parent's pool threads
    are alive (after any multi-threaded cv2 call in the parent) hangs for ever in its first cv2
    call, ``cv2.setNumThreads`` included (its pool's condition variables still count the parent's
    waiting threads). Shrinking the parent's pool to one thread joins those threads first. The
    parent of a training run decodes nothing itself (workers do), so this costs it nothing."""
    import cv2

    cv2.setNumThreads(1)


class ClassificationDataModule(LightningDataModule):
    """ImageFolder train/val data with the ImageNet recipes' augmentation.

    Args:
        root: folder holding ``train/`` and ``val/`` (ImageNet's layout).
        batch_size: per-device batch; the global batch is batch_size x devices x accumulation.
        image_size: training crop and evaluation crop size.
        crop_pct: evaluation centre-crop fraction (resize shorter side to image_size / crop_pct).
        scale, ratio, hflip, color_jitter, randaugment: training augmentation (randaugment = number
            of policy ops per image, 0 = off). The defaults are the papers' recipe (RandomResizedCrop
            + flip; no colour jitter, no RandAugment).
        num_workers: loader processes per device (None: CPU cores / devices, at most 8).
        pin_memory: None = when CUDA is available.
        mean, std: normalisation, applied on the device (batches travel as uint8): 3 values, one
            per RGB channel (images are decoded as RGB).
        strict: stop on a bad image file instead of skipping it with a warning.
        seed: sampler order and per-sample augmentation seed; None (default): the run's seed
            (``tools/train.py`` gives ``seed_everything``, so ``--seed_everything N`` changes the
            data order and augmentation too), 0 outside the command line.
        interpolation: the resize filter of the training crop and of the evaluation resize,
            torchvision's antialiased "bilinear" (default: the papers' PIL pipeline, within one
            grey level) or "bicubic" (timm's ``--interpolation bicubic``, DeiT's recipe).

    A value out of range is a one-line :class:`~cvkit.tool_errors.OptionError` naming
    ``data.<key>`` and the allowed values, when the datamodule is built.
    """

    def __init__(self, root: str = "data/classification", train_split: str = "train",
                 val_split: str = "val", test_split: Optional[str] = None, batch_size: int = 64,
                 image_size: int = IMAGE_SIZE, crop_pct: float = CROP_PCT,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, color_jitter: float = 0.0, randaugment: int = 0,
                 randaugment_magnitude: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 num_workers: Optional[int] = None, pin_memory: Optional[bool] = None,
                 persistent_workers: bool = True, strict: bool = False,
                 seed: Optional[int] = None, interpolation: str = "bilinear"):
        def rgb(test):
            return lambda v: len(v) == 3 and all(test(x) for x in v)

        check_options(("data." + key, value, test, allowed) for key, value, test, allowed in [
            ("batch_size", batch_size, *POSITIVE_INT),
            ("image_size", image_size, *POSITIVE_INT),
            ("crop_pct", crop_pct, *FRACTION),
            ("scale", scale, lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
             "[min, max] area fractions with 0 < min <= max <= 1"),
            ("ratio", ratio, lambda v: len(v) == 2 and 0 < v[0] <= v[1] < float("inf"),
             "[min, max] aspect ratios with 0 < min <= max"),
            ("hflip", hflip, *PROBABILITY),
            ("color_jitter", color_jitter, lambda v: 0 <= v < float("inf"), ">= 0 (0 = off)"),
            ("randaugment", randaugment, lambda v: 0 <= v <= RANDAUGMENT_OPS and v == int(v),
             f"an integer in [0, {RANDAUGMENT_OPS}] (ops per image, 0 = off)"),
            ("randaugment_magnitude", randaugment_magnitude, lambda v: 0 <= v <= 1, "in [0, 1]"),
            ("mean", mean, rgb(lambda x: abs(x) < float("inf")), "3 finite values (R, G, B)"),
            ("std", std, rgb(lambda x: 0 < x < float("inf")), "3 values > 0 (R, G, B)"),
            ("num_workers", num_workers, lambda v: v is None or NON_NEGATIVE_INT[0](v),
             "null (automatic) or an integer >= 0"),
            ("seed", seed, lambda v: v is None or NON_NEGATIVE_INT[0](v),
             "null (the run's seed_everything) or an integer >= 0"),
            ("interpolation", interpolation, lambda v: isinstance(v, str) and v in INTERPOLATIONS,
             " or ".join(map(repr, INTERPOLATIONS)) + " (the antialiased resize filter)"),
        ])
        seed = 0 if seed is None else seed  # recorded resolved (save_hyperparameters reads it)
        # recorded as lists, as the command line gives them: a tuple default would be written to
        # hparams.yaml as a !!python/tuple tag, which yaml.safe_load refuses
        scale, ratio, mean, std = (list(v) for v in (scale, ratio, mean, std))
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.seed = seed
        self.strict = strict
        self.train_set: Optional[ImageFolderDataset] = None
        self.val_set: Optional[ImageFolderDataset] = None
        self.test_set: Optional[ImageFolderDataset] = None
        self._train_loader: Optional[ResumableDataLoader] = None
        self._resume: Optional[dict[str, int]] = None
        self._trained_classes: Optional[list[str]] = None  # of a restored checkpoint

    # -- datasets -------------------------------------------------------------------------------
    def _split(self, name: str, train: bool) -> ImageFolderDataset:
        hp = self.hparams
        if train:
            tf = train_transform(hp.image_size, hp.scale, hp.ratio, hp.hflip, hp.color_jitter,
                                 hp.randaugment, hp.randaugment_magnitude, normalize=False,
                                 interpolation=hp.interpolation)
        else:
            tf = eval_transform(hp.image_size, hp.crop_pct, normalize=False,
                                interpolation=hp.interpolation)
        return ImageFolderDataset(self.root / name, tf, strict=self.strict, seed=self.seed)

    @property
    def num_classes(self) -> int:
        ds = self.train_set or self.val_set or self._split(self.hparams.val_split, train=False)
        return len(ds.classes)

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._split(hp.train_split, train=True)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._split(hp.val_split, train=False)
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = self._split(hp.test_split or hp.val_split, train=False)
        if self.train_set is not None and self.val_set is not None \
                and self.train_set.classes != self.val_set.classes:
            train, val = set(self.train_set.classes), set(self.val_set.classes)
            raise ValueError(f"class folders differ between {self.train_set.root} and "
                             f"{self.val_set.root}: only in {hp.train_split}: {sorted(train - val)[:5]}, "
                             f"only in {hp.val_split}: {sorted(val - train)[:5]}")
        self._check_trained_classes()  # a checkpoint's classes read before this setup

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Images travel as uint8 and are normalised here, on the device (Lightning hook)."""
        images, *rest = batch
        return (normalize_batch(images, self.hparams.mean, self.hparams.std), *rest)

    # -- loaders --------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        world, _ = self._world()
        workers = default_num_workers(world) if hp.num_workers is None else hp.num_workers
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        kw: dict[str, Any] = dict(batch_size=self.batch_size, num_workers=workers, pin_memory=pin,
                                  collate_fn=collate_skip_bad,
                                  # own generator: creating an iterator leaves the global RNG alone
                                  generator=torch.Generator().manual_seed(self.seed))
        if workers > 0:
            prepare_opencv_for_fork()
            kw.update(persistent_workers=hp.persistent_workers, worker_init_fn=_worker_init)
        return kw

    def _progress(self) -> tuple[int, int]:
        """Where the next training pass starts, from Lightning's fit loop: (epoch, batches of it
        already consumed); after the epoch's last batch (``limit_train_batches`` counted) that is
        the next epoch's start."""
        loader = self._train_loader
        epoch = loader.sampler.iter_epoch if loader is not None else 0
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.trainer.num_training_batches:
            return epoch + 1, 0
        return epoch, done

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the class names in label order (what ``tools/test.py`` checks
        a val folder against) and where the training pass stands (for mid-epoch resume)."""
        state: dict[str, Any] = {}
        if self.train_set is not None:
            state["classes"] = list(self.train_set.classes)
        if self._train_loader is not None and getattr(self, "trainer", None) is not None:
            state["train_position"] = self._train_loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Where a resumed training pass starts, and the class names the checkpoint was trained
        on: a folder whose classes are others (or in another order: labels would mean other
        classes) is an error, as in ``tools/test.py``, for ``fit`` / ``validate`` / ``test``
        with ``--ckpt_path``."""
        self._resume = state_dict.get("train_position")
        classes = state_dict.get("classes")
        self._trained_classes = list(classes) if isinstance(classes, list) else None
        self._check_trained_classes()

    def _check_trained_classes(self) -> None:
        if self._trained_classes is None:
            return
        for split in (self.train_set, self.val_set, self.test_set):
            ckpt = getattr(getattr(self, "trainer", None), "ckpt_path", None)
            why = split and class_mismatch(self._trained_classes, split.classes, split.root,
                                           ckpt or "the --ckpt_path checkpoint")
            if why:
                raise ValueError(why)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        world, rank = self._world()
        sampler = ResumableDistributedSampler(self.train_set, num_replicas=world, rank=rank,
                                              shuffle=True, seed=self.seed)
        if len(sampler) < self.batch_size:  # drop_last: no batch at all, a run that trains nothing
            raise OptionError(
                f"data.batch_size {self.batch_size} is more than the {len(sampler)} training images "
                f"per device ({len(self.train_set)} in {self.train_set.root}"
                f"{f' over {world} devices' if world > 1 else ''}): an epoch would have no batch "
                f"(the last partial batch is dropped); give a smaller --data.batch_size")
        loader = ResumableDataLoader(self.train_set, sampler=sampler, drop_last=True,
                                     progress=self._progress, **self._loader_kwargs())
        if self._resume:
            loader.resume_at(self._resume)
            self._resume = None
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return DataLoader(self.val_set, shuffle=False, **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return DataLoader(self.test_set, shuffle=False, **self._loader_kwargs())

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
