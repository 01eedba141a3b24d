# RetinaNet + FPN, ECA-ResNet-50, ECA-Net paper recipe. Paper: 37.3 AP (ResNet-50: 35.6).
_base_ = ['./_base_/retinanet_fpn_1x_coco.py', './_base_/models/cvkit_eca_resnet50.py']
model = dict(backbone=_base_.cvkit_backbone)
