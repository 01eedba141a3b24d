# mmdet's COCO boxes, read by CvkitCocoDataset (bad samples named, skipped and counted; registered
# by the backbone fragment's custom_imports).
_base_ = 'mmdet::_base_/datasets/coco_detection.py'
train_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
val_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
test_dataloader = dict(dataset=dict(type='CvkitCocoDataset'))
