# cvkit's ECA-ResNet-50 as an mmdet backbone (settings as cvkit_resnet50.py). The per-stage ECA
# kernel sizes come from the checkpoint (the released one has (3, 5, 5, 7), which the paper's
# detectors use; one trained with configs/classification/eca_resnet50.yaml has Eq. 12's
# (5, 5, 5, 7)), and from a detector checkpoint when one is loaded instead.
_base_ = './cvkit_resnet50.py'
cvkit_backbone = dict(
    model_name='eca_resnet50',
    init_cfg=dict(checkpoint='checkpoints/eca_resnet50_imagenet.pth'))
