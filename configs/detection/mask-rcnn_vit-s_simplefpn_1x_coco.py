# Mask R-CNN on a plain ViT-S/16 with ViTDet's simple feature pyramid (Li et al., ECCV 2022,
# Sec. 3: strides 4..32 built from the last stride-16 map only). The ViT keeps global attention and
# resamples its 224-px position embedding to each input size (timm's dynamic_img_size). Optimiser as
# ViTDet (AdamW, lr 1e-4, wd 0.1, no decay on norms, position embedding and class token) on mmdet's
# 1x schedule and COCO data (_base_/mask-rcnn_fpn_1x_coco.py); not a paper result.
_base_ = './_base_/mask-rcnn_fpn_1x_coco.py'
custom_imports = dict(imports=['cvkit.det.register'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CvkitBackbone',
        model_name='vit_small_patch16',
        out_indices=(11,),  # the last of 12 blocks, stride 16, 384 channels
        frozen_stages=-1,
        norm_eval=False,
        model_kwargs=dict(dynamic_img_size=True, drop_path_rate=0.1),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vit_small_patch16_imagenet.pth')),
    neck=dict(_delete_=True, type='SimpleFeaturePyramid', in_channels=384, out_channels=256,
              scale_factors=(4.0, 2.0, 1.0, 0.5), num_outs=5))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'pos_embed': dict(decay_mult=0.0),
                                    'cls_token': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=1.0, norm_type=2))
auto_scale_lr = dict(base_batch_size=16)
