"""Importing this module registers cvkit's modules in mmdet's registries (needs mmdet and mmcv):
``CvkitBackbone`` and ``SimpleFeaturePyramid`` in ``MODELS``, ``CvkitCocoDataset`` in ``DATASETS``.

    custom_imports = dict(imports=['cvkit.det.register'], allow_failed_imports=False)
"""
from cvkit.det.backbone import CvkitBackbone
from cvkit.det.dataset import CvkitCocoDataset
from cvkit.det.simple_fpn import SimpleFeaturePyramid

__all__ = ["CvkitBackbone", "CvkitCocoDataset", "SimpleFeaturePyramid"]
