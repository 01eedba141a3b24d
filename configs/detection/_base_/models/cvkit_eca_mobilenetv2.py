# cvkit's ECA-MobileNetV2 (k=1 below 96 channels, else 3, as the released checkpoint) as an mmdet
# backbone: C3..C5 (32, 96, 320 channels), nothing frozen, BN statistics frozen.
_base_ = './cvkit_resnet50.py'
cvkit_backbone = dict(
    model_name='eca_mobilenetv2',
    out_indices=(2, 3, 4),  # strides 8, 16, 32
    frozen_stages=-1,
    init_cfg=dict(checkpoint='checkpoints/eca_mobilenetv2_imagenet.pth'))
