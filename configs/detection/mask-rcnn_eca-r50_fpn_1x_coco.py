# Mask R-CNN + FPN, ECA-ResNet-50, ECA-Net paper recipe. Paper: box 39.0 / mask 35.6 AP.
# The official release of this detector (MMDetection 1.x) loads after
#   python tools/convert_checkpoint.py --kind mmdet-legacy <release.pth> <out.pth>
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='eca_resnet50',
    # the released ECA-ResNet-50 (and the paper's detectors) use per-stage kernel sizes
    model_kwargs=dict(eca_k_size=(3, 5, 5, 7)),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/eca_resnet50_imagenet.pth')))
