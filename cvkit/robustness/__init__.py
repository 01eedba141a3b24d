"""Corruption robustness: the 19 ImageNet-C corruptions (batched, seeded), CE / mCE / relative mCE,
COCO-C mPC / rPC, evaluation over ImageNet-C folders or on the fly, reports.

``from cvkit.robustness import CORRUPTIONS, HELD_OUT, ALEXNET_ERRORS, corrupt, mce, relative_mce``
"""
from cvkit.robustness.corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, HELD_OUT, SEVERITIES, Corrupt,
                                          corrupt, corruption_params)
from cvkit.robustness.metrics import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, coco_c_summary,
                                      corruption_error, mce, relative_corruption_error, relative_mce,
                                      summarize)

__all__ = [
    "ALL_CORRUPTIONS", "CORRUPTIONS", "HELD_OUT", "SEVERITIES", "Corrupt", "corrupt", "corruption_params",
    "ALEXNET_CLEAN_ERROR", "ALEXNET_ERRORS", "coco_c_summary", "corruption_error", "mce",
    "relative_corruption_error", "relative_mce", "summarize",
]
