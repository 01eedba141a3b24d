# Faster R-CNN + FPN, ECA-ResNet-101, ECA-Net paper recipe. Paper: 40.3 AP (ResNet-101: 38.7).
_base_ = ['./_base_/faster-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_eca_resnet101.py']
model = dict(backbone=_base_.cvkit_backbone)
