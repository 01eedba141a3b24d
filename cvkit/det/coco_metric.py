"""mmdet's ``CocoMetric`` as cvkit's detection task uses it: scored over the images of the
evaluated dataset (a subset too), and AP 0 rather than no result when there is not a single
detection. Needs mmdet (imported on use)."""
from __future__ import annotations

import warnings


def restrict_to_dataset_images(evaluator, dataset) -> None:
    """Make each ``CocoMetric`` of ``evaluator`` score only the images of ``dataset``: with an
    ``ann_file`` it scores every image of that file (its ``img_ids``, set lazily from its COCO
    api), so a subset (``dataset.indices``) would count every other image as all missed."""
    from mmdet.evaluation import CocoMetric

    metrics = [m for m in evaluator.metrics
               if isinstance(m, CocoMetric) and getattr(m, "_coco_api", None) is not None]
    if not metrics:
        return
    ids = set()
    for i in range(len(dataset)):
        img_id = dataset.get_data_info(i).get("img_id")
        if img_id is None:
            return
        ids.add(img_id)
    for metric in metrics:
        every = metric._coco_api.get_img_ids()
        kept = [i for i in every if i in ids]
        if kept and len(kept) < len(every):  # a subset (none in common: not this metric's file)
            metric.img_ids = kept


_COCO_ITEMS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
_PROPOSAL_ITEMS = ("AR@100", "AR@300", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000")


def coco_metric_keys(metric) -> list[str]:
    """The keys (with the metric's prefix) a ``CocoMetric`` reports, as mmdet names them."""
    keys = []
    for kind in metric.metrics:
        if kind == "proposal_fast":
            keys += [f"AR@{n}" for n in metric.proposal_nums]
        elif kind == "proposal":
            keys += list(metric.metric_items or _PROPOSAL_ITEMS)
        else:
            keys += [f"{kind}_{item}" for item in (metric.metric_items or _COCO_ITEMS)]
    return [f"{metric.prefix}/{k}" if metric.prefix else k for k in keys]


def fill_empty_coco_results(evaluator, raw: dict) -> dict:
    """mmdet's ``CocoMetric`` returns nothing (and logs an error) when there is not a single
    detection: its keys are AP 0.0 here, with a warning, instead of an empty result. (Metrics
    computed otherwise, e.g. LVIS's, name their keys otherwise and are left as they are.)"""
    from mmdet.evaluation import CocoMetric

    raw = dict(raw)
    for metric in evaluator.metrics:
        if (not isinstance(metric, CocoMetric) or metric.format_only
                or type(metric).compute_metrics is not CocoMetric.compute_metrics):
            continue
        missing = [k for k in coco_metric_keys(metric) if k not in raw]
        if missing:
            warnings.warn(f"the detector made no detections on the evaluated images: "
                          f"{', '.join(missing)} reported as 0.0", stacklevel=2)
            raw.update({k: 0.0 for k in missing})
    return raw
