"""MMDetection integration: importing this package registers cvkit's pieces in mmdet's registries.

    custom_imports = dict(imports=['cvkit.det'], allow_failed_imports=False)   # in an mmdet config

- ``CvkitBackbone`` (MODELS): any cvkit model through ``features_only`` (cvkit/det/backbone.py)
- ``SimpleFeaturePyramid`` (MODELS): ViTDet's neck for single-scale ViTs (cvkit/det/simple_fpn.py)
- ``CvkitCocoDataset`` (DATASETS): COCO with bad-sample checks, skip-and-count (cvkit/det/dataset.py)
- :func:`convert_legacy_mmdet_checkpoint`: MMDetection 1.x detectors to mmdet 3 (cvkit/det/convert.py)

Unlike ``cvkit`` itself, this package needs mmdet, mmcv and mmengine.
"""
from cvkit.det.backbone import CvkitBackbone
from cvkit.det.convert import convert_legacy_mmdet_checkpoint
from cvkit.det.dataset import CvkitCocoDataset
from cvkit.det.simple_fpn import SimpleFeaturePyramid

__all__ = ["CvkitBackbone", "CvkitCocoDataset", "SimpleFeaturePyramid",
           "convert_legacy_mmdet_checkpoint"]
