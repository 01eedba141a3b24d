# Mask R-CNN on ViT-S/16 with static hyper-connections, expansion 2 (Zhu et al., ICLR 2025), and
# ViTDet's simple feature pyramid. The static hyper-connection matrices get no weight decay, as the
# paper's author advises (see mask-rcnn_vit-s_simplefpn_1x_coco.py for the rest).
_base_ = './mask-rcnn_vit-s_simplefpn_1x_coco.py'
model = dict(backbone=dict(
    model_name='vit_small_patch16_hc2',
    init_cfg=dict(type='Pretrained',
                  checkpoint='checkpoints/vit_small_patch16_hc2_imagenet.pth')))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'pos_embed': dict(decay_mult=0.0),
    'cls_token': dict(decay_mult=0.0),
    'hc_attn': dict(decay_mult=0.0),
    'hc_mlp': dict(decay_mult=0.0)}))
