"""PNG images of a detector's predictions (boxes, class names, scores, masks) via mmdet's
``DetLocalVisualizer``."""
from __future__ import annotations

import os
import os.path as osp
from typing import Sequence

_VISUALIZER_NAME = "cvkit_show"


def _visualizer(dataset_meta: dict):
    from mmdet.visualization import DetLocalVisualizer

    if DetLocalVisualizer.check_instance_created(_VISUALIZER_NAME):
        vis = DetLocalVisualizer.get_instance(_VISUALIZER_NAME)
    else:
        vis = DetLocalVisualizer.get_instance(_VISUALIZER_NAME, vis_backends=None)
    vis.dataset_meta = dataset_meta
    return vis


def draw_predictions(data_samples: Sequence, dataset_meta: dict, out_dir: str,
                     score_thr: float = 0.3) -> list[str]:
    """Draw each sample's ``pred_instances`` on its image (``img_path``) into ``out_dir/<name>.png``.

    Returns the written paths.
    """
    import mmcv

    os.makedirs(out_dir, exist_ok=True)
    vis = _visualizer(dataset_meta)
    written = []
    for sample in data_samples:
        img_path = sample.metainfo["img_path"]
        image = mmcv.imread(img_path, channel_order="rgb")
        out_file = osp.join(out_dir, osp.splitext(osp.basename(img_path))[0] + ".png")
        vis.add_datasample(osp.basename(img_path), image, data_sample=sample.cpu(), draw_gt=False,
                           show=False, pred_score_thr=score_thr, out_file=out_file)
        written.append(out_file)
    return written
