# Mask R-CNN + FPN on ECA-ResNet-18 for the embedded synthetic set (160 px, 5 classes, polygon
# masks), sized to fine-tune on a CPU: the Faster R-CNN pieces of
# _base_/models/shapes_eca_resnet18_fpn.py plus a small mask branch.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/models/shapes_eca_resnet18_fpn.py',
    './_base_/shapes_instance.py',
    './_base_/shapes_schedule.py',
]
model = dict(
    _base_.shapes_rcnn, backbone=_base_.cvkit_backbone, neck=_base_.shapes_neck,
    roi_head=dict(
        _base_.shapes_rcnn.roi_head,
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64, num_classes=5)))
