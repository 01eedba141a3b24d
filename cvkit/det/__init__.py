"""MMDetection integration: cvkit's backbones, neck and dataset as mmdet modules.

Importing this package imports nothing of mmdet or mmcv (``cvkit.det.convert`` needs only torch);
the names below load on first use. mmdet learns about cvkit's modules when
:mod:`cvkit.det.register` is imported, which an mmdet config asks for with

    custom_imports = dict(imports=['cvkit.det.register'], allow_failed_imports=False)

and :func:`cvkit.tasks.detection.load_det_config` (hence ``tools/*_det.py``) does itself.

- ``CvkitBackbone`` (MODELS): any cvkit model through ``features_only`` (cvkit/det/backbone.py)
- ``SimpleFeaturePyramid`` (MODELS): ViTDet's neck for single-scale ViTs (cvkit/det/simple_fpn.py)
- ``CvkitCocoDataset`` (DATASETS): COCO with bad-sample checks, skip-and-count (cvkit/det/dataset.py)
- :func:`convert_legacy_mmdet_checkpoint`: MMDetection 1.x detectors to mmdet 3, torch only
  (cvkit/det/convert.py)
- COCO evaluation as the detection task runs it: scored over the evaluated images, AP 0 without a
  detection (cvkit/det/coco_metric.py)
"""
from __future__ import annotations

from cvkit._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "CvkitBackbone": "cvkit.det.backbone",
    "CvkitCocoDataset": "cvkit.det.dataset",
    "SimpleFeaturePyramid": "cvkit.det.simple_fpn",
    "convert_legacy_mmdet_checkpoint": "cvkit.det.convert",
})

