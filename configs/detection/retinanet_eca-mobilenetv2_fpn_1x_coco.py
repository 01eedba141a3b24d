# RetinaNet + FPN on ECA-MobileNetV2, the ECA-Net paper's detection recipe (1x, SGD lr 0.01 at a
# global batch of 8). Not in the paper's tables: a light detector for the same backbone family.
_base_ = ['./_base_/retinanet_fpn_1x_coco.py', './_base_/models/cvkit_eca_mobilenetv2.py']
model = dict(
    backbone=_base_.cvkit_backbone,
    neck=dict(in_channels=[32, 96, 320], start_level=0))
