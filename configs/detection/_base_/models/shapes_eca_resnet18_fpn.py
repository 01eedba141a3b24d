# ECA-ResNet-18 with a narrow FPN (64 channels) and heads sized for the embedded synthetic set
# (160 px, 5 classes, 16-70 px shapes) to fine-tune on a CPU in minutes. The detector configs put
# the pieces into mmdet's models: `cvkit_backbone` and `shapes_neck` (all), `shapes_rcnn`
# (Faster / Mask R-CNN: RPN, box head and their sampling / NMS sizes).
_base_ = './cvkit_resnet50.py'
cvkit_backbone = dict(
    model_name='eca_resnet18',
    # frozen_stages=1 (inherited): stem + layer1 keep the pretrained low-level filters (and save time)
    norm_eval=False,
    # random init; tools/train_det.py --backbone-checkpoint FILE or
    # --cfg-options model.backbone.init_cfg.checkpoint=FILE sets a Pretrained one
    init_cfg=None)
shapes_neck = dict(in_channels=[64, 128, 256, 512], out_channels=64)
shapes_rcnn = dict(
    rpn_head=dict(
        in_channels=64, feat_channels=64,
        anchor_generator=dict(scales=[4])),  # 16..256 px anchors for 16-70 px shapes
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=5)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=600, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))
