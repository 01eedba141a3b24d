"""COCO detection dataset that names bad input instead of failing deep inside a run (or silently).

mmdet's ``CocoDataset`` silently drops boxes that lie entirely outside their image, keeps boxes that
stick out, trains on nothing when the category list is empty or names none of the configured
classes, and stops a multi-hour run at the first unreadable image. ``CvkitCocoDataset`` (registered
in mmdet's ``DATASETS``) checks the annotation file when it loads and, per ``on_bad_sample``:

* ``'skip'`` (default): drops each bad annotation / image, counts it (``bad_samples``) and logs one
  summary naming the first offenders; an image that fails while training (unreadable, corrupt) is
  logged with its path, counted (``runtime_skips``) and replaced by another sample, up to
  ``max_runtime_skips`` (then the run stops with the count and the last error);
* ``'error'``: raises at the first bad sample, naming the file, annotation id and problem.

An image that fails to load in an evaluation split, with ``'error'``, or past
``max_runtime_skips`` is a :class:`cvkit.data.datamodule.BadImageError` (a ValueError) naming the
file: the tools report it as one ``error:`` line, exit 1.

An empty category list, configured classes missing from the file or listed in another order than
the file's (mmdet's ``CocoDataset`` and ``CocoMetric`` number labels in the file's category order,
so the names would be wrong), or an annotation file that is missing or not valid JSON are always
errors; so are missing image files of an evaluation split (``test_mode=True``: val/test),
whatever ``on_bad_sample`` says: ``CocoMetric`` evaluates every image of the annotation file, so a
skipped image would silently lower the AP (all its objects missed). The error gives how many are
missing and names the first ones. Boxes outside their image are skipped there as in training.
"""
from __future__ import annotations

import json
import logging
import os.path as osp
import re
from collections import Counter

from mmengine.logging import print_log
from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS

BAD_SAMPLE_POLICIES = ("skip", "error")
_SHOWN = 5  # offenders named in the summary


class _CheckedCOCO(COCO):
    """pycocotools' index plus a clear error for a missing file or an empty category list."""

    def __init__(self, annotation_file: str):
        if not osp.isfile(annotation_file):
            raise FileNotFoundError(f"COCO annotation file not found: {annotation_file!r}")
        try:
            super().__init__(annotation_file)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # both ValueErrors: a user error
            raise ValueError(f"{annotation_file}: not a valid JSON file ({e}) - is it truncated, "
                             "e.g. by an interrupted copy or download?") from e
        except AssertionError as e:  # pycocotools asserts the top level is a JSON object
            kind = re.search(r"<class '(\w+)'>", str(e))
            raise ValueError(f"{annotation_file}: not a COCO annotation file (its JSON is a "
                             f"{kind.group(1) if kind else 'value'}, not an object with 'images', "
                             "'annotations' and 'categories')") from e
        if not self.dataset.get("categories"):
            raise ValueError(f"{annotation_file}: the COCO 'categories' list is empty - a detector "
                             "needs at least one category")


@DATASETS.register_module()
class CvkitCocoDataset(CocoDataset):
    """``CocoDataset`` with load-time validation and skip-and-count handling of bad samples.

    Args:
        on_bad_sample: ``'skip'`` or ``'error'`` (see the module docstring).
        box_tolerance: pixels a box may extend past its image (rounding in real annotations)
            before it counts as outside.
        check_files: check at load time that every image file exists.
        max_runtime_skips: how many images may fail while loading in one process before the run
            stops (None: 1 % of the dataset, at least 10).
        **kwargs: ``CocoDataset``'s arguments (``ann_file``, ``data_root``, ``pipeline``, ...).
    """

    def __init__(self, *args, on_bad_sample: str = "skip", box_tolerance: float = 1.0,
                 check_files: bool = True, max_runtime_skips: int | None = None, **kwargs):
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample={on_bad_sample!r} is not one of {BAD_SAMPLE_POLICIES}")
        self.on_bad_sample = on_bad_sample
        self.box_tolerance = float(box_tolerance)
        self.check_files = check_files
        self.max_runtime_skips = max_runtime_skips
        self.bad_samples: list[tuple[str, str]] = []  # (kind, description)
        self.runtime_skips = 0
        self._file_categories: dict[int, str] = {}
        self.COCOAPI = self._load_coco  # CocoDataset.load_data_list calls self.COCOAPI(path)
        super().__init__(*args, **kwargs)

    def _load_coco(self, path: str) -> _CheckedCOCO:
        coco = _CheckedCOCO(path)
        self._file_categories = {c["id"]: c.get("name") for c in coco.dataset["categories"]}
        return coco

    # -- load-time checks ---------------------------------------------------------------------
    def _bad(self, kind: str, description: str) -> None:
        if self.on_bad_sample == "error":
            raise ValueError(f"{self.ann_file}: {description}")
        self.bad_samples.append((kind, description))

    def load_data_list(self) -> list[dict]:
        self.bad_samples = []
        self._missing_test_images: list[str] = []
        data_list = super().load_data_list()
        if self._missing_test_images:
            gone = self._missing_test_images
            raise FileNotFoundError(
                f"{self.ann_file}: {len(gone)} of {len(data_list)} image files of this evaluation "
                f"split are missing (first: {', '.join(repr(p) for p in gone[:_SHOWN])}); "
                "CocoMetric scores every image of the annotation file, so a skipped image would "
                "count as all its objects missed - restore the files or remove those images from "
                "the annotation file")
        missing = [c for c, cat_id in zip(self.metainfo["classes"], self._configured_cat_ids())
                   if cat_id is None]
        if missing:
            raise ValueError(f"{self.ann_file}: classes {missing} of the dataset config (metainfo) "
                             f"are not among the file's categories {self._file_categories}")
        classes = list(self.metainfo["classes"])
        label_order = [self._file_categories[cat_id] for cat_id in self.cat_ids]
        if label_order != classes:
            # mmdet's CocoDataset and CocoMetric both number labels in the file's category order
            raise ValueError(f"{self.ann_file}: the dataset config's classes (metainfo) {classes} "
                             f"are not in the file's category order {label_order}; labels follow "
                             "the file's order, so the names would be wrong - list metainfo "
                             "classes in the file's order")
        data_list = [d for d in data_list if not d.pop("_bad_image", False)]
        self._log_summary()
        return data_list

    def _configured_cat_ids(self) -> list[int | None]:
        by_name = {name: cid for cid, name in self._file_categories.items()}
        return [by_name.get(c) for c in self.metainfo["classes"]]

    def parse_data_info(self, raw_data_info: dict) -> dict:
        img = raw_data_info["raw_img_info"]
        path = osp.join(self.data_prefix["img"], img["file_name"])
        width, height = img.get("width"), img.get("height")
        if not width or not height:
            raise ValueError(f"{self.ann_file}: image id {img.get('id')} ({img.get('file_name')}) "
                             "has no width/height")
        good = []
        for ann in raw_data_info["raw_ann_info"]:
            problem = self._box_problem(ann, width, height)
            if problem:
                self._bad("box", f"annotation id {ann.get('id')} of image {path!r} ({width}x{height}): "
                                 f"{problem}")
            else:
                good.append(ann)
        info = super().parse_data_info({**raw_data_info, "raw_ann_info": good})
        if self.check_files and not osp.isfile(path):
            if self.test_mode:  # collected: load_data_list raises once, naming all of them
                self._missing_test_images.append(path)
            else:
                self._bad("image", f"image file not found: {path!r} (image id {img.get('id')})")
            info["_bad_image"] = True
        return info

    def _box_problem(self, ann: dict, width: float, height: float) -> str | None:
        box = ann.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            return f"bbox {box!r} is not [x, y, w, h]"
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0):
            return f"bbox {box} has non-positive width/height"
        t = self.box_tolerance
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            return f"bbox {box} (x, y, w, h) lies outside the image"
        return None

    def _log_summary(self) -> None:
        if not self.bad_samples:
            return
        counts = Counter(kind for kind, _ in self.bad_samples)
        shown = "; ".join(d for _, d in self.bad_samples[:_SHOWN])
        print_log(f"CvkitCocoDataset {self.ann_file}: skipped {counts.get('box', 0)} annotations "
                  f"and {counts.get('image', 0)} images (on_bad_sample='skip'). First: {shown}",
                  logger="current", level=logging.WARNING)

    # -- run-time failures --------------------------------------------------------------------
    def prepare_data(self, idx: int):
        try:
            return super().prepare_data(idx)
        except Exception as e:  # noqa: BLE001 - any failure of one sample is reported with its path
            # a ValueError (cvkit.tool_errors: the tools' one-line "error:", exit 1); it also
            # reads as one line when a DataLoader worker re-raises it in the main process
            from cvkit.data.datamodule import BadImageError

            path = self.get_data_info(idx).get("img_path", f"index {idx}")
            why = " ".join(f"{type(e).__name__}: {e}".split())
            if self.on_bad_sample == "error" or self.test_mode:
                raise BadImageError(f"sample {path!r} failed to load: {why}") from e
            self.runtime_skips += 1
            limit = self.max_runtime_skips
            if limit is None:
                limit = max(10, len(self) // 100)
            print_log(f"CvkitCocoDataset: skipped sample {path!r} ({type(e).__name__}: {e}); "
                      f"{self.runtime_skips} skipped in this process", logger="current",
                      level=logging.WARNING)
            if self.runtime_skips > limit:
                raise BadImageError(f"CvkitCocoDataset: {self.runtime_skips} samples failed to "
                                    f"load (limit {limit}); last: {path!r}: {why}") from e
            return None  # BaseDataset.__getitem__ then draws another sample
