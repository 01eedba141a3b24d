# RetinaNet + FPN on COCO with the ECA-Net paper's schedule, for any cvkit backbone fragment
# (_base_/models/cvkit_*.py): mmdet's own model, data, runtime and test-time augmentation,
# CvkitCocoDataset.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './datasets/coco_detection.py',
    './schedules/ecanet_1x.py',
    'mmdet::_base_/default_runtime.py',
    'mmdet::retinanet/retinanet_tta.py',
]
