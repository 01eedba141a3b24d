# cvkit's ECA-ResNet-101 as an mmdet backbone (settings as cvkit_resnet50.py). The per-stage ECA
# kernel sizes come from the checkpoint (the released one has (3, 3, 5, 7), which the paper's
# detectors use), and from a detector checkpoint when one is loaded instead.
_base_ = './cvkit_resnet50.py'
cvkit_backbone = dict(
    model_name='eca_resnet101',
    init_cfg=dict(checkpoint='checkpoints/eca_resnet101_imagenet.pth'))
