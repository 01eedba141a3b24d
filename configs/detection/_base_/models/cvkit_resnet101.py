# cvkit's ResNet-101 as an mmdet backbone (settings as cvkit_resnet50.py).
_base_ = './cvkit_resnet50.py'
cvkit_backbone = dict(
    model_name='resnet101',
    init_cfg=dict(checkpoint='checkpoints/resnet101_imagenet.pth'))
