# Mask R-CNN + FPN, ECA-ResNet-50, ECA-Net paper recipe. Paper: box 39.0 / mask 35.6 AP.
# The official release of this detector (MMDetection 1.x) loads after
#   python tools/convert_checkpoint.py --kind mmdet-legacy <release.pth> <out.pth>
# and is evaluated with legacy_1.x/mask-rcnn_eca-r50_fpn_1x_coco_v1.py (1.x's anchors, RoIAlign).
_base_ = ['./_base_/mask-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_eca_resnet50.py']
model = dict(backbone=_base_.cvkit_backbone)
