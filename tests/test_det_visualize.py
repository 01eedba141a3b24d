"""--show-dir PNGs: one per image, named by the image's path under the image prefix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _samples(paths):
    from mmengine.structures import InstanceData
    from mmdet.structures import DetDataSample

    import cv2

    samples = []
    for i, path in enumerate(paths):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((40 + i, 50, 3), 30 * i, np.uint8))
        sample = DetDataSample(metainfo=dict(img_path=str(path), ori_shape=(40 + i, 50)))
        pred = InstanceData()
        pred.bboxes = torch.tensor([[5.0, 5.0, 30.0, 30.0]])
        pred.labels, pred.scores = torch.tensor([0]), torch.tensor([0.9])
        sample.pred_instances = pred
        samples.append(sample)
    return samples


def test_images_of_one_name_in_two_folders_or_with_two_extensions_get_their_own_pngs(tmp_path):
    """'a/img.jpg' and 'b/img.jpg' (COCO file names with sub-folders), and 'x.jpg' and 'x.png',
    each get their own PNG (the basename alone overwrote one with the other, silently); other
    images keep NAME.png."""
    from cvkit.det.visualize import draw_predictions, png_names

    import cv2

    imgs = tmp_path / "images"
    paths = [imgs / "a/img.jpg", imgs / "b/img.jpg", imgs / "x.jpg", imgs / "x.png", imgs / "y.jpg"]
    samples = _samples(paths)
    out = tmp_path / "vis"
    written = draw_predictions(samples[:2], {"classes": ("a", "b")}, str(out))  # one batch
    assert sorted(Path(p).relative_to(out).as_posix() for p in written) == ["a/img.png",
                                                                            "b/img.png"]
    names = png_names([str(p) for p in paths], str(imgs) + "/")  # the whole split, as the task
    assert [names[str(p)] for p in paths] == ["a/img.png", "b/img.png", "x.jpg.png", "x.png.png",
                                              "y.png"]
    out = tmp_path / "vis2"
    for i in range(0, len(samples), 2):  # batches of 2: x.jpg and x.png in different batches
        draw_predictions(samples[i:i + 2], {"classes": ("a", "b")}, str(out), names=names)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(names.values())
    for path in paths:  # each PNG is its own image's (sizes differ)
        assert cv2.imread(str(out / names[str(path)])).shape[:2] == cv2.imread(str(path)).shape[:2]
