# RetinaNet + FPN on cvkit's ResNet-50, the ECA-Net paper's COCO recipe (Sec. 4.2, Table 7): 1x
# schedule, SGD lr 0.01 at a global batch of 8. Paper: 35.6 AP (ECA: 37.3).
# Only the differences from mmdet's own config are stated (in _base_/).
_base_ = ['./_base_/retinanet_fpn_1x_coco.py', './_base_/models/cvkit_resnet50.py']
model = dict(backbone=_base_.cvkit_backbone)
