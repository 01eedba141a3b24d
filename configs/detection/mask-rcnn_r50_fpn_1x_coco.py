# Mask R-CNN + FPN on cvkit's ResNet-50, the ECA-Net paper's COCO recipe (Sec. 4.2, Table 8): 1x
# schedule, SGD lr 0.01 at a global batch of 8. Paper: box 37.2 / mask 34.1 AP (ECA: 39.0 / 35.6).
# Only the differences from mmdet's own config are stated here.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cvkit.det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CvkitBackbone',
        model_name='resnet50',
        out_indices=(1, 2, 3, 4),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_imagenet.pth')))

optim_wrapper = dict(optimizer=dict(lr=0.01))
auto_scale_lr = dict(enable=True, base_batch_size=8)
train_dataloader = dict(batch_size=2, dataset=dict(type='CvkitCocoDataset'))
val_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
test_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
