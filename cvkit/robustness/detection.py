"""COCO-C (Michaelis et al. 2019): a detector's bbox AP on every corruption and severity, mPC, rPC.

For each (corruption, severity) the config's test pipeline gets a :class:`CorruptImage` transform
right after ``LoadImageFromFile`` and the detector is evaluated by cvkit's detection test path
(:func:`cvkit.tasks.detection.evaluate_detector`: Lightning's ``Trainer.test`` over mmdet's datasets
and pipelines, scored by the config's ``CocoMetric``). Results are saved after every set (atomic),
so a rerun resumes; paths in the saved settings are compared resolved, as for classifiers.

``CocoMetric`` rounds AP to 3 decimals (mmdet exposes no unrounded value), so mPC and rPC are
means of rounded APs.

``channel_order``: ``"rgb"`` (default) corrupts the image as RGB; ``"bgr"`` passes mmcv's BGR array
to the corruption as is, as the published COCO-C protocol does (mmdetection's
``tools/analysis_tools/test_robustness.py`` and its ``Corrupt`` transform): frost, snow, spatter
and jpeg_compression (PIL's YCbCr conversion assumes RGB) differ, the noises in which draw lands
on which channel, and only ``"bgr"`` gives mPC comparable with published COCO-C tables.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from cvkit.robustness.corruptions import ALL_CORRUPTIONS, SEVERITIES, check_corruption
from cvkit.robustness.evaluate import (RESULTS_FILE, atomic_write_text, file_sha256, resolved_path,
                                       resume_results)
from cvkit.robustness.metrics import coco_c_summary
from cvkit.tool_errors import OptionError


def _test_pipelines(cfg) -> list[list]:
    """The pipelines of the test datasets, inside dataset wrappers too (where images load)."""
    from cvkit.tasks.detection import leaf_datasets

    datasets = leaf_datasets(cfg.test_dataloader["dataset"])
    if any("pipeline" not in dataset for dataset in datasets):
        raise ValueError("the config's test_dataloader.dataset has no pipeline to insert the corruption into")
    return list({id(d["pipeline"]): d["pipeline"] for d in datasets}.values())  # each one once


CHANNEL_ORDERS = ("rgb", "bgr")


def check_channel_order(channel_order) -> str:
    """``"rgb"`` or ``"bgr"`` (see the module docstring); else an OptionError naming it."""
    if channel_order not in CHANNEL_ORDERS:
        raise OptionError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return channel_order


def with_corruption(cfg, corruption: str, severity: int, seed: int = 0, channel_order: str = "rgb"):
    """A copy of ``cfg`` whose test pipeline corrupts each loaded image."""
    check_corruption(corruption, severity)
    check_channel_order(channel_order)
    cfg = copy.deepcopy(cfg)
    for pipeline in _test_pipelines(cfg):
        at = next((i for i, t in enumerate(pipeline) if "LoadImage" in str(t.get("type", ""))), None)
        if at is None:
            raise ValueError("the config's test pipeline has no LoadImageFromFile step")
        pipeline.insert(at + 1, dict(type="CorruptImage", corruption=corruption, severity=severity,
                                     seed=seed, channel_order=channel_order))
    return cfg


def lightning_devices(device: str) -> tuple[str, int | list[int]]:
    """``--device`` as Lightning's ``(accelerator, devices)``: ``cpu`` -> ``('cpu', 1)``, ``cuda`` ->
    ``('gpu', 1)`` (the first visible GPU), ``cuda:N`` -> ``('gpu', [N])`` (GPU N itself)."""
    name, _, index = str(device).partition(":")
    if name == "cpu" and not index:
        return "cpu", 1
    if name == "cuda" and not index:
        return "gpu", 1
    if name == "cuda" and index.isdigit():
        return "gpu", [int(index)]
    raise OptionError(f"--device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def evaluate_detector(config, checkpoint, out_dir, corruptions: Iterable[str] = ALL_CORRUPTIONS,
                      severities: Iterable[int] = SEVERITIES, seed: int = 0, device: str = "cpu",
                      data_root: str | None = None, metric: str = "bbox_mAP", resume: bool = True,
                      progress: bool = True, channel_order: str = "rgb",
                      trust_checkpoint: bool = False, cfg_options: Mapping[str, Any] | None = None) -> dict:
    """bbox AP (fraction, as ``CocoMetric`` reports it) per corruption/severity; returns the state
    ``{meta, clean_AP, AP: {c: {sev: ap}}, summary}`` and saves it to ``<out>/results.json``.
    ``channel_order``: the image's channel order as the corruption sees it (module docstring);
    ``trust_checkpoint``: read ``checkpoint`` with ``weights_only=False`` (mmengine Runner
    checkpoints; only for files you trust); ``cfg_options``: mmengine dotted overrides
    (``{'test_dataloader.dataset.indices': 10}``) merged into the config before every set, the
    clean one included, and recorded in ``meta`` (a rerun with other overrides is not resumed)."""
    from tqdm.auto import tqdm

    import cvkit.robustness.mmdet_transform  # noqa: F401  registers CorruptImage
    from cvkit.tasks.detection import evaluate_detector as coco_test
    from cvkit.tasks.detection import load_det_config

    corruptions, severities = list(corruptions), list(severities)
    for c in corruptions:
        for s in severities:
            check_corruption(c, s)
    check_channel_order(channel_order)
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not exist")
    accelerator, devices = lightning_devices(device)
    cfg_options = dict(cfg_options or {})
    cfg = load_det_config(config, cfg_options)
    out_dir = Path(out_dir)
    # paths recorded resolved (and compared resolved by resume_results: a rerun spelling them
    # relative or absolute resumes the same evaluation); a Config built in memory has no file and
    # is recorded by the digest of its contents
    config_file = (config if isinstance(config, (str, os.PathLike))
                   else getattr(config, "filename", None))
    meta = {"task": "detection", "config": resolved_path(config_file),
            "checkpoint": resolved_path(checkpoint), "seed": seed, "metric": metric,
            "data_root": resolved_path(data_root), "channel_order": channel_order,
            "cfg_options": json.loads(json.dumps(cfg_options, default=repr)),  # as read back
            "checkpoint_sha256": file_sha256(checkpoint)}
    if config_file is None:
        text = json.dumps(cfg.to_dict(), sort_keys=True, default=repr)
        meta["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    state = resume_results(out_dir, meta, resume, {"meta": meta, "clean_AP": None, "AP": {}})
    path = out_dir / RESULTS_FILE

    def run(c):
        metrics = coco_test(c, str(checkpoint), data_root=data_root, accelerator=accelerator,
                            devices=devices, trust_checkpoint=trust_checkpoint)
        for key in (metric, f"coco/{metric}"):
            if key in metrics:
                return float(metrics[key])
        raise ValueError(f"metric {metric!r} not in the evaluator's results {sorted(metrics)}")

    def save():
        state["summary"] = coco_c_summary(
            {c: [state["AP"].get(c, {}).get(str(s)) for s in SEVERITIES] for c in state["AP"]},
            state["clean_AP"] or 0.0)
        atomic_write_text(path, json.dumps(state, indent=1))

    if state["clean_AP"] is None:
        state["clean_AP"] = run(cfg)
        save()
    todo = [(c, s) for c in corruptions for s in severities if str(s) not in state["AP"].get(c, {})]
    for c, s in tqdm(todo, desc="COCO-C", disable=not progress, unit="set"):
        state["AP"].setdefault(c, {})[str(s)] = run(with_corruption(cfg, c, s, seed, channel_order))
        save()
    save()
    return state
