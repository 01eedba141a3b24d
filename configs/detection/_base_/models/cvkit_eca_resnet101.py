# cvkit's ECA-ResNet-101 as an mmdet backbone (settings as cvkit_resnet50.py) with the released
# checkpoint's per-stage ECA kernel sizes, which the paper's detectors use too.
_base_ = './cvkit_resnet50.py'
cvkit_backbone = dict(
    model_name='eca_resnet101',
    model_kwargs=dict(eca_k_size=(3, 3, 5, 7)),
    init_cfg=dict(checkpoint='checkpoints/eca_resnet101_imagenet.pth'))
