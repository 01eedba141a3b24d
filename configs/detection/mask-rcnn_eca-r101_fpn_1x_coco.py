# Mask R-CNN + FPN, ECA-ResNet-101, ECA-Net paper recipe. Paper: box 41.3 / mask 37.4 AP.
_base_ = ['./_base_/mask-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_eca_resnet101.py']
model = dict(backbone=_base_.cvkit_backbone)
