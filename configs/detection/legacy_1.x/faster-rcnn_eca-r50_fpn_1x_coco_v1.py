# The ECA-Net release of Faster R-CNN ECA-R50 (MMDetection 1.x), converted with
# tools/convert_checkpoint.py --kind mmdet-legacy, with 1.x's anchors, box coder and RoIAlign.
_base_ = ['../faster-rcnn_eca-r50_fpn_1x_coco.py', '../_base_/legacy_1x.py']
model = _base_.legacy_faster_rcnn
