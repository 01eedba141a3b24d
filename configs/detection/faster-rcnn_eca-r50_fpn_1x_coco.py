# Faster R-CNN + FPN, ECA-ResNet-50 (released per-stage kernel sizes 3,5,5,7), ECA-Net paper
# recipe. Paper: 38.0 AP (ResNet-50: 36.4).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet50',
    # the released ECA-ResNet-50 (and the paper's detectors) use per-stage kernel sizes
    model_kwargs=dict(eca_k_size=(3, 5, 5, 7)),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet50_imagenet.pth')))
