# Faster R-CNN + FPN on ECA-ResNet-18 for the embedded synthetic set (160 px, 5 classes), sized to
# fine-tune on a CPU in minutes (_base_/models/shapes_eca_resnet18_fpn.py).
# `python tools/train_det.py` runs it; pass the backbone's classification checkpoint with
# `--backbone-checkpoint` (or set model.backbone.init_cfg).
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py',
    './_base_/models/shapes_eca_resnet18_fpn.py',
    './_base_/shapes_detection.py',
    './_base_/shapes_schedule.py',
]
model = dict(_base_.shapes_rcnn, backbone=_base_.cvkit_backbone, neck=_base_.shapes_neck)
