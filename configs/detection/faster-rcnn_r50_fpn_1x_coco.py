# Faster R-CNN + FPN on cvkit's ResNet-50, the ECA-Net paper's COCO recipe (Wang et al., CVPR 2020,
# Sec. 4.2, Table 7; _base_/schedules/ecanet_1x.py). Paper: 36.4 AP (ECA: 38.0).
# Only the differences from mmdet's own config are stated (in _base_/).
_base_ = ['./_base_/faster-rcnn_fpn_1x_coco.py', './_base_/models/cvkit_resnet50.py']
model = dict(backbone=_base_.cvkit_backbone)
