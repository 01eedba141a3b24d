# Faster R-CNN + FPN, ECA-ResNet-50 (released per-stage kernel sizes 3,5,5,7), ECA-Net paper
# recipe. Paper: 38.0 AP (ResNet-50: 36.4).
_base_ = ['./_base_/faster-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_eca_resnet50.py']
model = dict(backbone=_base_.cvkit_backbone)
