# Mask R-CNN + FPN, ResNet-101, ECA-Net paper recipe. Paper: box 39.4 / mask 35.9 AP.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='resnet101',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet101_imagenet.pth')))
