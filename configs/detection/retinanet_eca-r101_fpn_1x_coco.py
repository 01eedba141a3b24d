# RetinaNet + FPN, ECA-ResNet-101, ECA-Net paper recipe. Paper: 39.1 AP (ResNet-101: 37.7).
_base_ = ['./_base_/retinanet_fpn_1x_coco.py', './_base_/models/cvkit_eca_resnet101.py']
model = dict(backbone=_base_.cvkit_backbone)
