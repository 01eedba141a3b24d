# Mask R-CNN + FPN, ECA-ResNet-101, ECA-Net paper recipe. Paper: box 41.3 / mask 37.4 AP.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet101',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet101_imagenet.pth')))
