# Faster R-CNN + FPN, ECA-ResNet-101, ECA-Net paper recipe. Paper: 40.3 AP (ResNet-101: 38.7).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet101',
    # the released ECA-ResNet-101 (and the paper's detectors) use per-stage kernel sizes
    model_kwargs=dict(eca_k_size=(3, 3, 5, 7)),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet101_imagenet.pth')))
