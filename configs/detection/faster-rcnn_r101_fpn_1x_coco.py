# Faster R-CNN + FPN, ResNet-101, ECA-Net paper recipe. Paper: 38.7 AP (ECA: 40.3).
_base_ = ['./_base_/faster-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_resnet101.py']
model = dict(backbone=_base_.cvkit_backbone)
