"""Small ImageFolder copies of the synthetic classification set, for the classification tests."""
from __future__ import annotations

import shutil
from pathlib import Path


def tiny_imagefolder(src: Path, dst: Path, classes: int = 4, train: int = 16, val: int = 8) -> Path:
    """Copy the first ``train`` / ``val`` images of the first ``classes`` classes of ``src``."""
    for split, n in (("train", train), ("val", val)):
        for cls_dir in sorted((src / split).iterdir())[:classes]:
            out = dst / split / cls_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls_dir.iterdir())[:n]:
                shutil.copy(f, out / f.name)
    return dst


def add_bad_files(split_dir: Path) -> list[Path]:
    """A truncated JPEG and a text file named .jpg inside the first class folder."""
    cls_dir = sorted(p for p in split_dir.iterdir() if p.is_dir())[0]
    good = sorted(cls_dir.iterdir())[0].read_bytes()
    truncated = cls_dir / "zz_truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    not_image = cls_dir / "zz_notes.jpg"
    not_image.write_text("this is not an image\n")
    return [truncated, not_image]
