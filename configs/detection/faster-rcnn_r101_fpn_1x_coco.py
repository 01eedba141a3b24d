# Faster R-CNN + FPN, ResNet-101, ECA-Net paper recipe. Paper: 38.7 AP (ECA: 40.3).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='resnet101',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet101_imagenet.pth')))
