# RetinaNet + FPN, ResNet-101, ECA-Net paper recipe. Paper: 37.7 AP (ECA: 39.1).
_base_ = './retinanet_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='resnet101',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet101_imagenet.pth')))
