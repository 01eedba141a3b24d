# Faster R-CNN + FPN, ECA-ResNet-101, ECA-Net paper recipe. Paper: 40.3 AP (ResNet-101: 38.7).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet101',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet101_imagenet.pth')))
