# Mask R-CNN + FPN on cvkit's ResNet-50, the ECA-Net paper's COCO recipe (Sec. 4.2, Table 8): 1x
# schedule, SGD lr 0.01 at a global batch of 8. Paper: box 37.2 / mask 34.1 AP (ECA: 39.0 / 35.6).
# Only the differences from mmdet's own config are stated (in _base_/).
_base_ = ['./_base_/mask-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_resnet50.py']
model = dict(backbone=_base_.cvkit_backbone)
