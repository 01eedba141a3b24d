# The embedded synthetic COCO set with masks: the pipelines of shapes_detection.py, loading the
# polygon masks too; bbox and segm AP.
_base_ = './shapes_detection.py'


def _with_masks(pipeline):
    return [dict(step, with_mask=True) if step['type'] == 'LoadAnnotations' else step
            for step in pipeline]


train_pipeline = _with_masks(_base_.train_pipeline)
test_pipeline = _with_masks(_base_.test_pipeline)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
