# Mask R-CNN + FPN, ResNet-101, ECA-Net paper recipe. Paper: box 39.4 / mask 35.9 AP.
_base_ = ['./_base_/mask-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_resnet101.py']
model = dict(backbone=_base_.cvkit_backbone)
