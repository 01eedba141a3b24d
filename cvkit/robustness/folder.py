"""Image sources for ImageNet-C evaluation: the released folder layout and on-the-fly corruption.

The release was made as: PIL image -> ``Resize(256)`` (shorter side, bilinear) -> ``CenterCrop(224)``
-> corruption -> ``np.uint8`` -> JPEG quality 85, ``optimize=True`` (hendrycks/robustness,
``make_imagenet_c.py``). The released images are therefore already 224x224: evaluate them with a
centre crop only, never resize again. On the fly we repeat the same steps in memory; with
``jpeg_quality=85`` the JPEG step too, which makes on-the-fly and generated-folder evaluation
give identical inputs. Both use cvkit's corruptions (the ``imagecorruptions`` formulas), not the
release's pixels: a folder cvkit renders carries a :data:`RENDER_MARKER` saying so.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from cvkit.atomic_write import atomic_write
from cvkit.robustness.corruptions import ALL_CORRUPTIONS, check_corruption, check_seed, corrupt
from cvkit.tool_errors import POSITIVE_INT, check_options, is_integer

RELEASE_JPEG_QUALITY = 85

#: JSON file :func:`write_imagenet_c` writes into the root it renders: evaluating that folder
#: records it as rendered by cvkit (``meta.rendered_by``), not as the released ImageNet-C files
RENDER_MARKER = "cvkit_render.json"
RENDER_GENERATOR = "cvkit tools/make_imagenet_c.py (cvkit.robustness.folder.write_imagenet_c)"


def check_pixels(value, name: str) -> int:
    """An image size in pixels (an int >= 1); else an OptionError naming ``name`` (e.g. ``--crop``)."""
    check_options([(name, value, POSITIVE_INT[0], "a positive number of pixels")])
    return int(value)


def check_jpeg_quality(value, name: str = "jpeg_quality") -> int:
    """A JPEG quality in 1..100, libjpeg's scale (PIL clamps anything else silently, and 0 encodes
    as 1); else an OptionError naming ``name``."""
    check_options([(name, value, lambda v: is_integer(v) and 1 <= v <= 100, "an integer in 1..100")])
    return int(value)


def read_render_marker(root) -> dict | None:
    """The :data:`RENDER_MARKER` of a folder rendered by cvkit, None when it has none (the
    release); a marker that is not a JSON object is a ValueError naming it."""
    path = Path(root) / RENDER_MARKER
    if not path.is_file():
        return None
    return read_json_object(path, f"render marker {path}", "renders", list,
                            "tools/make_imagenet_c.py")


def read_json_object(path, label: str, key: str, kind: type, writer: str) -> dict:
    """The JSON object in ``path`` whose ``key`` holds a ``kind``; else a ValueError starting
    with ``label`` (the file, as the user named it) and naming ``writer``, the tool that writes
    such a file."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{label} is not readable JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise ValueError(f"{label} has no {key!r} {'list' if kind is list else 'mapping'}: "
                         f"expected a file written by {writer}")
    return obj


def _mark_rendered(out_root, settings: dict) -> None:
    """Add ``settings`` (one render's) to ``out_root``'s marker, each distinct setting once."""
    marker = read_render_marker(out_root) or {"generator": RENDER_GENERATOR, "renders": []}
    if settings not in marker["renders"]:
        marker["renders"].append(settings)
        with atomic_write(Path(out_root) / RENDER_MARKER, "w") as f:
            f.write(json.dumps(marker, indent=1))


def image_seed(seed: int, corruption: str, severity: int, index: int) -> tuple[int, int, int, int]:
    """Seed of one image's corruption: independent of batch, order and worker."""
    return (seed, ALL_CORRUPTIONS.index(corruption), severity, index)


#: :func:`image_index` of a string id lies at or above this, beyond any int64 image id
DIGEST_BASE = 1 << 64


def image_index(image_id) -> int:
    """An image id (COCO-style json allows ints and strings) as the non-negative int
    :func:`image_seed` takes, the same in every process and run: a non-negative int (or integral
    float), or a string of decimal digits as its number (``"000005"``: 5; mmdet's VOC dataset
    gives such ids, which ``int(img_id)`` seeded so before string ids were allowed); any other
    string, or a negative int, as ``DIGEST_BASE`` + the first 8 bytes of the SHA-256 of its text
    (never Python's salted ``hash``). Anything else is a ValueError naming it."""
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool) and image_id >= 0:
        return int(image_id)
    if isinstance(image_id, str) and image_id.isascii() and image_id.isdigit():
        return int(image_id)
    if isinstance(image_id, (float, np.floating)) and float(image_id).is_integer() and image_id >= 0:
        return int(image_id)
    if isinstance(image_id, str):
        text = image_id
    elif isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        text = f"int:{int(image_id)}"  # negative: not a SeedSequence entropy; apart from strings
    else:
        raise ValueError(f"image id {image_id!r} ({type(image_id).__name__}): expected an int or a "
                         f"string")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return DIGEST_BASE + int.from_bytes(digest[:8], "big")


class EmptyFolderError(ValueError):
    """An image folder that is missing, flat (no class sub-folders) or holds no images."""


def list_image_folder(root) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) samples and sorted class names of an ImageFolder tree
    (:func:`cvkit.data.datamodule.scan_split`); :class:`EmptyFolderError` naming the folder."""
    from cvkit.data.datamodule import scan_split

    try:
        return scan_split(root)
    except FileNotFoundError as e:
        raise EmptyFolderError(str(e)) from None


def folder_classes(root) -> list[str]:
    """Class sub-folder names of ``root`` (:func:`cvkit.data.datamodule.find_classes`: sorted,
    hidden folders left out); [] when it has none."""
    from cvkit.data.datamodule import find_classes

    try:
        return find_classes(root)
    except (FileNotFoundError, NotADirectoryError):
        return []


def first_image(root) -> Path | None:
    """The first image of an ImageFolder tree in :func:`list_image_folder`'s order (sorted class
    folders, sorted files), found without listing the rest; None when it has none."""
    from cvkit.data.datamodule import IMG_EXTENSIONS, is_hidden

    for name in folder_classes(root):
        for dirpath, dirnames, filenames in os.walk(Path(root, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for f in sorted(filenames):
                if f.lower().endswith(IMG_EXTENSIONS) and not is_hidden(f):
                    return Path(dirpath, f)
    return None


def load_rgb(path) -> Image.Image:
    """The image at ``path`` as RGB (PIL, as the release read it); a file PIL cannot read
    (truncated, not an image, gone) is a BadImageError naming it."""
    from cvkit.data.datamodule import BadImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError and truncation errors are OSErrors
        why = "not an image PIL can identify" if isinstance(e, UnidentifiedImageError) else e
        raise BadImageError(f"cannot read image file {path}: {why}") from None


def resize_center_crop(img: Image.Image, resize: int, crop: int) -> np.ndarray:
    """The release's preprocessing: shorter side to ``resize`` (PIL bilinear), centre ``crop``."""
    img = TF.center_crop(TF.resize(img, resize, interpolation=TF.InterpolationMode.BILINEAR), crop)
    return np.asarray(img, dtype=np.uint8)


def center_crop_only(img: Image.Image, crop: int, path="") -> np.ndarray:
    """Centre crop of an already-corrupted (ImageNet-C) image; never resizes."""
    w, h = img.size
    if w < crop or h < crop:
        raise ValueError(f"image {path} is {w}x{h}, smaller than the centre crop {crop}: ImageNet-C "
                         f"images are evaluated with a centre crop only (pass --crop {min(w, h)}?)")
    return np.asarray(TF.center_crop(img, crop), dtype=np.uint8)


def jpeg_roundtrip(img: np.ndarray, quality: int = RELEASE_JPEG_QUALITY) -> np.ndarray:
    """Encode/decode as the release saved its files (PIL, ``optimize=True``)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, optimize=True)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def labels_by_name(samples: list[tuple[str, int]], found: list[str], classes: list[str],
                   root) -> list[tuple[str, int]]:
    """``samples`` labelled by their index in ``found`` (a folder's own sorted classes), relabelled
    by their class name's index in ``classes`` (the evaluation's); the folder may lack classes of
    it, a class outside it is a ValueError naming the folder."""
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root} has class folder(s) {unknown[:5]} not in the evaluation's "
                         f"class list ({len(classes)} classes)")
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[found[t]]) for p, t in samples]


class CleanImageFolder(Dataset):
    """ImageFolder val set -> (uint8 HxWx3 crop, target, index), resized + centre-cropped."""

    def __init__(self, root, resize: int = 256, crop: int = 224, classes: list[str] | None = None):
        """``classes``: the class list of the whole evaluation (the labels' order), onto which the
        folder's classes are mapped by name (see :func:`labels_by_name`); else the folder's own."""
        self.samples, self.classes = list_image_folder(root)
        if classes is not None:
            self.samples, self.classes = labels_by_name(self.samples, self.classes, classes, root), list(classes)
        self.resize, self.crop = resize, crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        return resize_center_crop(load_rgb(path), self.resize, self.crop), target, index


class ImageNetCFolder(Dataset):
    """One ``<root>/<corruption>/<severity>/`` ImageFolder of pre-rendered images -> (uint8
    centre crop, target, index)."""

    def __init__(self, root, crop: int = 224, classes: list[str] | None = None):
        """``classes``: the class list of the whole evaluation; this folder's class folders are
        mapped onto it by name (it may lack some), a class outside it is an error."""
        self.samples, found = list_image_folder(root)
        if classes is not None:
            self.samples = labels_by_name(self.samples, found, classes, root)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        return center_crop_only(load_rgb(path), self.crop, path), target, index


class CorruptingCollate:
    """Collate (uint8 image, target, index) items into a batch and corrupt it in one batched call,
    each image with its own seed (:func:`image_seed`); optionally the release's JPEG step."""

    def __init__(self, corruption: str | None = None, severity: int = 1, seed: int = 0,
                 jpeg_quality: int | None = None):
        if corruption is not None:
            check_corruption(corruption, severity)
        self.corruption, self.severity, self.seed, self.jpeg_quality = corruption, severity, seed, jpeg_quality

    def __call__(self, items):
        images = np.stack([it[0] for it in items])
        targets = torch.tensor([it[1] for it in items])
        if self.corruption is not None:
            seeds = [image_seed(self.seed, self.corruption, self.severity, it[2]) for it in items]
            images = corrupt(images, self.corruption, self.severity, seed=seeds)
            if self.jpeg_quality is not None:
                images = np.stack([jpeg_roundtrip(im, self.jpeg_quality) for im in images])
        return torch.from_numpy(images), targets


def _save_atomic(img: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "jpeg":
        Image.fromarray(img).save(tmp, format="JPEG", quality=quality, optimize=True)
    else:
        Image.fromarray(img).save(tmp, format="PNG")
    tmp.replace(path)


def _worker_init() -> None:
    import cv2
    cv2.setNumThreads(1)


def render_names(samples, classes, val_root, fmt: str) -> list[Path]:
    """Where each image of an ImageFolder goes in a rendered set: ``<class>/<its path under the
    class folder>`` with the format's suffix (``.png``; ``.jpg`` unless already .jpg / .jpeg).
    Two sources landing on one name (``x.png`` beside ``x.jpg``) are a ValueError naming both:
    the second would overwrite the first and the set hold fewer images than the clean one."""
    names, seen = [], {}
    for path, target in samples:
        name = Path(classes[target]) / Path(path).relative_to(Path(val_root) / classes[target])
        if fmt == "png":
            name = name.with_suffix(".png")
        elif name.suffix.lower() not in (".jpg", ".jpeg"):
            name = name.with_suffix(".jpg")
        if name in seen:
            raise ValueError(f"{seen[name]} and {path} would both be rendered as {name} "
                             f"(--format {fmt}): rename one of them")
        seen[name] = path
        names.append(name)
    return names


def _render_chunk(task) -> int:
    (samples, names, out_root, corruption, severity, start, resize, crop, seed, fmt, quality) = task
    images = np.stack([resize_center_crop(load_rgb(p), resize, crop) for p, _ in samples])
    seeds = [image_seed(seed, corruption, severity, start + i) for i in range(len(samples))]
    out = corrupt(images, corruption, severity, seed=seeds)
    for name, img in zip(names, out):
        dest = Path(out_root) / corruption / str(severity) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(img, dest, fmt, quality)
    return len(samples)


def write_imagenet_c(val_root, out_root, corruptions=ALL_CORRUPTIONS, severities=(1, 2, 3, 4, 5),
                     resize: int = 256, crop: int = 224, seed: int = 0, fmt: str = "jpeg",
                     quality: int = RELEASE_JPEG_QUALITY, workers: int | None = None,
                     chunk: int = 32, progress: bool = True) -> int:
    """Render an ImageNet-C-style tree ``<out>/<corruption>/<severity>/<class>/<file>`` (sub-folders
    under a class kept: :func:`render_names`) from an ImageFolder val set, as the release was made
    (resize, centre crop, corrupt, JPEG q85 ``optimize=True``; ``fmt='png'`` for a lossless copy). Image i of every set uses seed
    :func:`image_seed`, so the result equals on-the-fly corruption. Parallel over ``workers``
    processes (default: all cores). Returns the number of images written. A set already holding
    images of the other format is refused (ValueError naming it) before anything is written.
    ``out_root`` gets a :data:`RENDER_MARKER` recording the generator and settings."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    import cvkit

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"format must be 'jpeg' or 'png', got {fmt!r}")
    for c in corruptions:
        for s in severities:
            check_corruption(c, s)
    check_seed(seed)
    check_pixels(resize, "resize")
    check_pixels(crop, "crop")
    if fmt == "jpeg":
        check_jpeg_quality(quality, "quality")
    check_options([("workers", workers, lambda v: v is None or POSITIVE_INT[0](v),
                    POSITIVE_INT[1] + " or None (all cores)")], error=ValueError)
    if Path(out_root).exists() and not Path(out_root).is_dir():
        raise NotADirectoryError(f"output folder {out_root} is a file: give a folder")
    samples, classes = list_image_folder(val_root)
    names = render_names(samples, classes, val_root, fmt)
    other = (".png",) if fmt == "jpeg" else (".jpg", ".jpeg")
    for c in corruptions:
        for s in severities:
            d = Path(out_root) / c / str(s)
            found = next((p for p in d.rglob("*") if p.suffix.lower() in other), None)
            if found is not None:
                raise ValueError(f"{d} already holds {found.suffix} images (e.g. {found}): rendering "
                                 f"--format {fmt} there would leave both and the evaluation would count "
                                 f"both; use another --out or delete {d}")
    _mark_rendered(out_root, {"cvkit_version": cvkit.__version__, "seed": seed, "resize": resize,
                              "crop": crop, "format": fmt,
                              "jpeg_quality": quality if fmt == "jpeg" else None})
    tasks = [(samples[i:i + chunk], names[i:i + chunk], str(out_root), c, s, i, resize, crop, seed,
              fmt, quality)
             for c in corruptions for s in severities for i in range(0, len(samples), chunk)]
    workers = workers or os.cpu_count() or 1  # None: all cores
    done = 0
    with tqdm(total=len(tasks) * 1, desc="ImageNet-C render", unit="chunk", disable=not progress) as bar:
        if workers == 1:
            for t in tasks:
                done += _render_chunk(t)
                bar.update()
        else:
            # spawn, not fork: a forked child of a process whose OpenCV/OpenMP thread pools are
            # running can deadlock. Each worker imports cvkit once (seconds), then renders chunks.
            with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
                for n in pool.imap_unordered(_render_chunk, tasks):
                    done += n
                    bar.update()
    return done
