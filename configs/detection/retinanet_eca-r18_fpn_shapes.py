# RetinaNet + FPN on ECA-ResNet-18 for the embedded synthetic set (160 px, 5 classes), sized to
# fine-tune on a CPU: narrow FPN and head, anchors from 16 px.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/shapes_detection.py',
    './_base_/shapes_schedule.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['cvkit.det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CvkitBackbone',
        model_name='eca_resnet18',
        out_indices=(1, 2, 3, 4),
        frozen_stages=1,  # stem + layer1 keep the pretrained low-level filters (and save time)
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(
        num_classes=5, in_channels=64, feat_channels=64, stacked_convs=2,
        anchor_generator=dict(octave_base_scale=2)),  # 16..256 px anchors
    test_cfg=dict(max_per_img=20))
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(logger=dict(interval=20))
