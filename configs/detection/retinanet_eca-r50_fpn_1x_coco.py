# RetinaNet + FPN, ECA-ResNet-50, ECA-Net paper recipe. Paper: 37.3 AP (ResNet-50: 35.6).
_base_ = './retinanet_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet50',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet50_imagenet.pth')))
