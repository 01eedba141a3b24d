"""Generate cvkit's embedded synthetic datasets (deterministic, seeded).

    python -m cvkit.data.synthetic --out data

writes
    data/classification/{train,val}/<class>/<n>.jpg      ImageNet's ImageFolder layout
    data/detection/{train,val}/<n>.jpg                    COCO images
    data/detection/annotations/instances_{train,val}.json COCO boxes, polygon masks, areas, iscrowd
    data/.complete                                        manifest; present only when all is written

Everything is written into a temporary folder and moved into place at the end, so an interrupted run
never leaves a half-written dataset that looks complete. A second run with the same settings does
nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cvkit.data.shapes import SHAPES, classification_image, detection_image

MANIFEST = ".complete"
SIZE_RANGE = (32, 1024)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Defaults give ~23 MB: small enough for CPU tests, big enough to learn from."""

    seed: int = 0
    generator_version: int = 3  # bump when shapes.py changes what it draws: forces regeneration
    cls_size: int = 96
    cls_train_per_class: int = 500
    cls_val_per_class: int = 40
    det_size: int = 160
    det_classes: int = 5
    det_train: int = 400
    det_val: int = 80
    jpeg_quality: int = 92

    def validate(self) -> None:
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        for name in ("cls_size", "det_size"):
            v = getattr(self, name)
            if not SIZE_RANGE[0] <= v <= SIZE_RANGE[1]:
                raise ValueError(f"--{name.replace('_', '-')} must be between {SIZE_RANGE[0]} and "
                                 f"{SIZE_RANGE[1]} pixels, got {v}")
        for name in ("cls_train_per_class", "cls_val_per_class", "det_train", "det_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.det_classes <= len(SHAPES):
            raise ValueError(f"--det-classes must be between 1 and {len(SHAPES)}, got {self.det_classes}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must be between 1 and 100, got {self.jpeg_quality}")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _save_jpeg(array: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def write_classification(root: Path, spec: SyntheticSpec) -> None:
    """ImageFolder layout: ``root/{train,val}/<shape>/<index>.jpg``."""
    for split_id, (split, per_class) in enumerate(
            (("train", spec.cls_train_per_class), ("val", spec.cls_val_per_class))):
        for label, name in enumerate(SHAPES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = classification_image(_rng(spec.seed, 0, split_id, label, i), label, spec.cls_size)
                _save_jpeg(img, folder / f"{i:05d}.jpg", spec.jpeg_quality)


def write_detection(root: Path, spec: SyntheticSpec) -> None:
    """COCO layout: images in ``root/{train,val}/``, annotations in ``root/annotations/``."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"}
                  for i in range(spec.det_classes)]
    for split_id, (split, count) in enumerate((("train", spec.det_train), ("val", spec.det_val))):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(count):
            img, placed = detection_image(_rng(spec.seed, 1, split_id, i), spec.det_size,
                                          spec.det_classes)
            file_name = f"{i:06d}.jpg"
            _save_jpeg(img, root / split / file_name, spec.jpeg_quality)
            images.append({"id": i + 1, "file_name": file_name,
                           "width": spec.det_size, "height": spec.det_size})
            for shape in placed:
                x0, y0, x1, y1 = shape.bbox_xyxy
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": shape.label + 1,
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": round(shape.area, 2), "iscrowd": 0,
                    "segmentation": [[round(float(v), 2) for v in shape.polygon.reshape(-1)]],
                })
        coco = {"info": {"description": f"cvkit synthetic shapes ({split})", "version": "1.0"},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def generate(out: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec(), force: bool = False) -> bool:
    """Write both datasets under ``out``. Returns False (and does nothing) when already generated."""
    spec.validate()
    out = Path(out)
    manifest = out / MANIFEST
    if not force and manifest.is_file() and all((out / n).is_dir()
                                                 for n in ("classification", "detection")):
        try:
            if json.loads(manifest.read_text()) == asdict(spec):
                return False
        except json.JSONDecodeError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=out))
    try:
        write_classification(tmp / "classification", spec)
        write_detection(tmp / "detection", spec)
        manifest.unlink(missing_ok=True)
        for name in ("classification", "detection"):
            shutil.rmtree(out / name, ignore_errors=True)
            (tmp / name).rename(out / name)
        manifest.write_text(json.dumps(asdict(spec)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvkit.data.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="output folder (default: data)")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    cli_fields = [f for f in asdict(SyntheticSpec()) if f != "generator_version"]
    for field in cli_fields:
        default = getattr(SyntheticSpec(), field)
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(**{f: getattr(args, f) for f in cli_fields})
    try:
        made = generate(args.out, spec, force=args.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the synthetic datasets to {args.out!r}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"{'generated' if made else 'up to date:'} synthetic datasets in {args.out}/ "
          f"(classification: {len(SHAPES)} classes, detection: {spec.det_classes} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
