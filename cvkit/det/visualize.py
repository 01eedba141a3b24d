"""PNG images of a detector's predictions (boxes, class names, scores, masks) via mmdet's
``DetLocalVisualizer``."""
from __future__ import annotations

import os
import os.path as osp
from typing import Mapping, Sequence

_VISUALIZER_NAME = "cvkit_show"


def _visualizer(dataset_meta: dict):
    from mmdet.visualization import DetLocalVisualizer

    if DetLocalVisualizer.check_instance_created(_VISUALIZER_NAME):
        vis = DetLocalVisualizer.get_instance(_VISUALIZER_NAME)
    else:
        vis = DetLocalVisualizer.get_instance(_VISUALIZER_NAME, vis_backends=None)
    vis.dataset_meta = dataset_meta
    return vis


def png_names(img_paths: Sequence[str], img_prefix: str | None = None) -> dict[str, str]:
    """The PNG file (relative to the output folder) for each image: its path relative to
    ``img_prefix`` (sub-folders kept; images outside it, or no prefix: relative to the folder all
    of them share) with the extension replaced by ``.png``, or ``.png`` appended where replacing
    it would collide (``x.jpg`` and ``x.png`` give ``x.jpg.png`` and ``x.png.png``).
    Distinct images always get distinct names."""
    paths = list(dict.fromkeys(osp.abspath(p) for p in img_paths))
    prefix = osp.abspath(img_prefix) if img_prefix else None
    if prefix is None or any(osp.commonpath([prefix, p]) != prefix for p in paths):
        prefix = osp.commonpath([osp.dirname(p) for p in paths]) if paths else ""
    rel = {p: osp.relpath(p, prefix) for p in paths}
    long = {p: r + ".png" for p, r in rel.items()}  # unique: the relative paths are
    short = {p: osp.splitext(r)[0] + ".png" for p, r in rel.items()}
    names = dict(short)
    while True:  # each round moves at least one image to its (unique) long name
        owners: dict[str, list[str]] = {}
        for p, name in names.items():
            owners.setdefault(osp.normcase(name), []).append(p)
        clashes = [p for same in owners.values() if len(same) > 1 for p in same
                   if names[p] != long[p]]
        if not clashes:
            break
        for p in clashes:
            names[p] = long[p]
    return {orig: names[osp.abspath(orig)] for orig in img_paths}


def draw_predictions(data_samples: Sequence, dataset_meta: dict, out_dir: str,
                     score_thr: float = 0.3, names: Mapping[str, str] | None = None) -> list[str]:
    """Draw each sample's ``pred_instances`` on its image (``img_path``) into
    ``out_dir/<names[img_path]>`` (sub-folders created). ``names``: the PNG names of every image of
    the dataset (:func:`png_names` of all its paths and its image prefix), so that images of one
    name in different folders, or of one stem with different extensions, do not overwrite each
    other across batches; default: :func:`png_names` of this batch's paths.

    Returns the written paths.
    """
    import mmcv

    paths = [sample.metainfo["img_path"] for sample in data_samples]
    if names is None or any(p not in names for p in paths):
        names = {**png_names(paths), **(names or {})}
    vis = _visualizer(dataset_meta)
    written = []
    for sample, img_path in zip(data_samples, paths):
        image = mmcv.imread(img_path, channel_order="rgb")
        out_file = osp.join(out_dir, names[img_path])
        os.makedirs(osp.dirname(out_file) or ".", exist_ok=True)
        vis.add_datasample(osp.basename(img_path), image, data_sample=sample.cpu(), draw_gt=False,
                           show=False, pred_score_thr=score_thr, out_file=out_file)
        written.append(out_file)
    return written
