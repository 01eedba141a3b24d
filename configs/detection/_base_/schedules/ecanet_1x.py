# The ECA-Net paper's COCO schedule (Wang et al., CVPR 2020, Sec. 4.2): mmdet's 1x (12 epochs, lr
# x0.1 after epochs 8 and 11, linear warmup, SGD momentum 0.9, wd 1e-4) with lr 0.01 at a global
# batch of 8 (e.g. 4 GPUs x mmdet's 2 images). Other global batches scale the lr linearly
# (Goyal et al. 2017).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
optim_wrapper = dict(optimizer=dict(lr=0.01))
auto_scale_lr = dict(enable=True, base_batch_size=8)
