# MMDetection 1.x conventions, for detectors trained with it (the ECA-Net releases), converted by
# tools/convert_checkpoint.py --kind mmdet-legacy: anchors centred at +0.5 px, box deltas with the
# +1 pixel width, RoIAlign without the half-pixel alignment (sampling ratio 2), and 1.x's box
# losses and proposal settings. Values of mmdet's own configs/legacy_1.x/*_v1.py; mmdet 2.0 changed
# all of them (its compatibility notes): the converted weights score their AP with these only.
# Each legacy_1.x/*_v1.py config takes its detector's model fragment (the last three).
legacy_rpn_head = dict(
    anchor_generator=dict(type='LegacyAnchorGenerator', center_offset=0.5),
    bbox_coder=dict(type='LegacyDeltaXYWHBBoxCoder'),
    loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0))
legacy_bbox_roi_extractor = dict(
    roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2, aligned=False))
legacy_mask_roi_extractor = dict(
    roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2, aligned=False))
legacy_bbox_head = dict(
    bbox_coder=dict(type='LegacyDeltaXYWHBBoxCoder'),
    loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
legacy_two_stage_train_cfg = dict(
    rpn_proposal=dict(max_per_img=2000), rcnn=dict(assigner=dict(match_low_quality=True)))
legacy_retina_head = dict(
    anchor_generator=dict(type='LegacyAnchorGenerator', center_offset=0.5),
    bbox_coder=dict(type='LegacyDeltaXYWHBBoxCoder'),
    loss_bbox=dict(type='SmoothL1Loss', beta=0.11, loss_weight=1.0))
legacy_faster_rcnn = dict(
    rpn_head=legacy_rpn_head,
    roi_head=dict(bbox_roi_extractor=legacy_bbox_roi_extractor, bbox_head=legacy_bbox_head),
    train_cfg=legacy_two_stage_train_cfg)
legacy_mask_rcnn = dict(
    rpn_head=legacy_rpn_head,
    roi_head=dict(bbox_roi_extractor=legacy_bbox_roi_extractor,
                  mask_roi_extractor=legacy_mask_roi_extractor, bbox_head=legacy_bbox_head),
    train_cfg=legacy_two_stage_train_cfg)
legacy_retinanet = dict(bbox_head=legacy_retina_head)
