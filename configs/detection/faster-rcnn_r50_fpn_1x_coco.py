# Faster R-CNN + FPN on cvkit's ResNet-50, the ECA-Net paper's COCO recipe (Wang et al., CVPR 2020,
# Sec. 4.2, Table 7): MMDetection 1x schedule (12 epochs, lr x0.1 after epochs 8 and 11, linear
# warmup), SGD lr 0.01 at a global batch of 8 (e.g. 4 GPUs x 2 images). Paper: 36.4 AP (ECA: 38.0).
# Only the differences from mmdet's own config are stated here.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cvkit.det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CvkitBackbone',
        model_name='resnet50',
        out_indices=(1, 2, 3, 4),  # layer1..layer4 (strides 4..32), mmdet's C2..C5
        frozen_stages=1,           # stem + layer1, as mmdet's ResNet
        norm_eval=True,
        # an ImageNet checkpoint in any format cvkit.load_checkpoint reads (cvkit/Lightning .ckpt,
        # timm, torchvision, official ECA-Net .pth.tar)
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_imagenet.pth')))

optim_wrapper = dict(optimizer=dict(lr=0.01))
# lr 0.01 is for 8 images per step; other global batches scale it linearly (Goyal et al. 2017)
auto_scale_lr = dict(enable=True, base_batch_size=8)
train_dataloader = dict(batch_size=2, dataset=dict(type='CvkitCocoDataset'))
val_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
test_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
