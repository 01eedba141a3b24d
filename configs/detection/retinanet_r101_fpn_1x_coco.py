# RetinaNet + FPN, ResNet-101, ECA-Net paper recipe. Paper: 37.7 AP (ECA: 39.1).
_base_ = ['./_base_/retinanet_fpn_1x_coco.py', './_base_/models/cvkit_resnet101.py']
model = dict(backbone=_base_.cvkit_backbone)
