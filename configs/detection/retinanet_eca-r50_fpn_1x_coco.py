# RetinaNet + FPN, ECA-ResNet-50, ECA-Net paper recipe. Paper: 37.3 AP (ResNet-50: 35.6).
_base_ = './retinanet_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet50',
    # the released ECA-ResNet-50 (and the paper's detectors) use per-stage kernel sizes
    model_kwargs=dict(eca_k_size=(3, 5, 5, 7)),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet50_imagenet.pth')))
