# cvkit's ResNet-50 as an mmdet backbone with mmdet's ResNet-50 settings (C2..C5, stem + layer1
# frozen, BN statistics frozen), initialised from an ImageNet classification checkpoint.
# A detector config puts it in with `model = dict(backbone=_base_.cvkit_backbone)`; the backbone
# fragments beside this file inherit it and state only what differs.
custom_imports = dict(imports=['cvkit.det.register'], allow_failed_imports=False)

cvkit_backbone = dict(
    _delete_=True,  # replaces mmdet's ResNet dict instead of merging into it
    type='CvkitBackbone',
    model_name='resnet50',
    out_indices=(1, 2, 3, 4),  # layer1..layer4 (strides 4..32), mmdet's C2..C5
    frozen_stages=1,           # stem + layer1, as mmdet's ResNet
    norm_eval=True,
    # an ImageNet checkpoint in any format cvkit.load_checkpoint reads (cvkit/Lightning .ckpt,
    # timm, torchvision, official ECA-Net .pth.tar)
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_imagenet.pth'))
