# Faster R-CNN + FPN on ECA-ResNet-18 for the embedded synthetic set (160 px, 5 classes), sized to
# fine-tune on a CPU in minutes: narrow FPN (64 channels), small RoI head, anchors from 16 px.
# `python tools/train_det.py` runs it; pass the backbone's classification checkpoint with
# `--backbone-checkpoint` (or set init_cfg below).
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py',
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
    rpn_head=dict(
        in_channels=64, feat_channels=64,
        anchor_generator=dict(scales=[4])),  # 16..256 px anchors for 16-70 px shapes
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=5)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=600, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))
default_hooks = dict(logger=dict(interval=20))
