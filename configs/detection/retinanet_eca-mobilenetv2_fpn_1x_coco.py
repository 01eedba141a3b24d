# RetinaNet + FPN on ECA-MobileNetV2 (k=1 below 96 channels, else 3, as the released checkpoint),
# ECA-Net paper's detection recipe (1x, SGD lr 0.01 at a global batch of 8). Not in the paper's
# tables: a light detector for the same backbone family.
_base_ = './retinanet_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        model_name='eca_mobilenetv2',
        out_indices=(2, 3, 4),  # strides 8, 16, 32 (C3..C5)
        frozen_stages=-1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_mobilenetv2_imagenet.pth')),
    neck=dict(in_channels=[32, 96, 320], start_level=0))
