# The ECA-Net release of Mask R-CNN ECA-R101 (MMDetection 1.x), converted with
# tools/convert_checkpoint.py --kind mmdet-legacy, with 1.x's anchors, box coder and RoIAlign.
_base_ = ['../mask-rcnn_eca-r101_fpn_1x_coco.py', '../_base_/legacy_1x.py']
model = _base_.legacy_mask_rcnn
