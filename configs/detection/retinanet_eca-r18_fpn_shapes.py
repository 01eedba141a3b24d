# RetinaNet + FPN on ECA-ResNet-18 for the embedded synthetic set (160 px, 5 classes), sized to
# fine-tune on a CPU: narrow FPN and head (_base_/models/shapes_eca_resnet18_fpn.py), anchors
# from 16 px.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/models/shapes_eca_resnet18_fpn.py',
    './_base_/shapes_detection.py',
    './_base_/shapes_schedule.py',
]
model = dict(
    backbone=_base_.cvkit_backbone,
    neck=_base_.shapes_neck,
    bbox_head=dict(
        num_classes=5, in_channels=64, feat_channels=64, stacked_convs=2,
        anchor_generator=dict(octave_base_scale=2)),  # 16..256 px anchors
    test_cfg=dict(max_per_img=20))
optim_wrapper = dict(optimizer=dict(lr=0.01))
