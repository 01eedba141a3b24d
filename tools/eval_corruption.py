#!/usr/bin/env python
"""Corruption robustness of a classifier (ImageNet-C: CE, mCE, relative mCE) or a detector (COCO-C).

Released ImageNet-C folder (<root>/<corruption>/<severity>/<class>/<img>; centre crop only):
    python tools/eval_corruption.py --checkpoint ckpt.pt --imagenet-c data/imagenet-c \
        --clean-val data/imagenet/val --out runs/c
On the fly from any ImageFolder val set (resize + centre crop, then corrupt, seeded):
    python tools/eval_corruption.py --checkpoint runs/demo/checkpoints/last.ckpt \
        --val data/classification/val --out runs/c
Resize and crop default to the checkpoint's training size, as tools/test.py (crop = image_size,
resize = round(image_size / crop_pct); 256 / 224 for plain weights).
Detector on COCO-style data (COCO-C: AP per corruption/severity, mPC, rPC):
    python tools/eval_corruption.py --task det --config cfg.py --checkpoint det.pth --out runs/coco-c

Results are saved after every corruption/severity; rerunning the same command resumes.
Classifier: writes results.json, summary.json, errors.csv, report.md, heatmap.png, bars.png.
Detector (--task det): writes results.json, summary.json, ap.csv, report.md, heatmap.png; the
options that only concern classifiers (--model, --model-arg, --imagenet-c, --val, --clean-val,
--resize, --crop, --jpeg-quality, --batch-size, --workers, --baseline) are refused there: the
config's test_dataloader sets batch size and workers. --coco-c-channel-order bgr corrupts mmcv's
BGR array as is, as the published COCO-C protocol does (default rgb; docs/robustness.md).
--trust-checkpoint reads an mmengine Runner checkpoint (pickled objects: only files you trust),
and --cfg-options KEY=VALUE ... overrides the config (mmengine's dotted keys, values Python
literals, e.g. test_dataloader.dataset.indices=50), as tools/test_det.py does; the overrides apply
to the clean and every corrupted set and are recorded (a rerun with others is not resumed).
--seed and --jpeg-quality concern on-the-fly corruption and are refused with --imagenet-c;
--clean-val concerns --imagenet-c (with --val the clean error is that of the --val images).
A results file is resumed only for the same checkpoint contents (a model retrained into the
same path starts over).
Reports say whether the numbers are comparable with published ones (only the released
ImageNet-C files at 224 px are, and COCO-C with --coco-c-channel-order bgr).
"""
import argparse
import sys
from pathlib import Path

from cvkit.robustness.corruptions import ALL_CORRUPTIONS, check_corruption, check_seed
from cvkit.robustness.folder import check_jpeg_quality, check_pixels
from cvkit.tool_errors import (NON_NEGATIVE_INT, POSITIVE_INT, USAGE, OptionError, check_device,
                               check_options, is_user_error, parse_cfg_options, report)


#: Options of one task only (dest -> flag): given with the other task, they are an error rather
#: than silently ignored.
CLS_ONLY = {"model": "--model", "model_arg": "--model-arg", "imagenet_c": "--imagenet-c",
            "val": "--val", "clean_val": "--clean-val", "resize": "--resize", "crop": "--crop",
            "jpeg_quality": "--jpeg-quality", "batch_size": "--batch-size", "workers": "--workers",
            "baseline": "--baseline"}
DET_ONLY = {"config": "--config", "data_root": "--data-root", "coco_c_channel_order": "--coco-c-channel-order",
            "trust_checkpoint": "--trust-checkpoint", "cfg_options": "--cfg-options"}
#: Options of on-the-fly corruption, refused with --imagenet-c (its images are already corrupted)
ON_THE_FLY_ONLY = {"seed": "--seed", "jpeg_quality": "--jpeg-quality"}
CLS_DEFAULTS = {"batch_size": 64, "workers": 2}  # resize / crop: the checkpoint's (eval_sizes)
DET_DEFAULTS = {"coco_c_channel_order": "rgb", "trust_checkpoint": False, "cfg_options": []}
SEED = 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["cls", "det"], default="cls")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="cvkit preset (default: from the checkpoint)")
    p.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="model keyword plain weights need, e.g. global_pool=gcp (repeatable)")
    p.add_argument("--config", default=None, help="mmdet config (--task det)")
    p.add_argument("--data-root", default=None, help="COCO-style root overriding the config's (--task det)")
    p.add_argument("--coco-c-channel-order", choices=["rgb", "bgr"], default=None,
                   help="--task det: corrupt the image as rgb (default) or mmcv's bgr array as is, as the "
                        "published COCO-C protocol does (comparable with its tables)")
    p.add_argument("--trust-checkpoint", action="store_true", default=None,
                   help="--task det: read --checkpoint with weights_only=False (mmengine Runner "
                        "checkpoints hold pickled objects; only for files you trust)")
    p.add_argument("--cfg-options", nargs="*", default=None, metavar="KEY=VALUE",
                   help="--task det: config overrides as tools/test_det.py takes them (mmengine's "
                        "dotted keys, values Python literals), e.g. test_dataloader.dataset.indices=50 "
                        "model.test_cfg.rcnn.score_thr=0.3; applied to every set (clean and corrupted) "
                        "and recorded in results.json (meta.cfg_options)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--imagenet-c", default=None, help="released ImageNet-C root")
    src.add_argument("--val", default=None, help="ImageFolder val root, corrupted on the fly")
    p.add_argument("--clean-val", default=None, help="clean val root for the clean error (with --imagenet-c)")
    p.add_argument("--resize", type=int, default=None,
                   help="default: round(crop / the checkpoint's crop_pct), 256 for plain weights")
    p.add_argument("--crop", type=int, default=None,
                   help="default: the checkpoint's image_size, 224 for plain weights")
    p.add_argument("--seed", type=int, default=None, help=f"corruption seed (default {SEED}; not with --imagenet-c)")
    p.add_argument("--jpeg-quality", type=int, default=None,
                   help="on the fly: JPEG round trip (1..100) as the release (85) so results equal a "
                        "generated folder")
    p.add_argument("--corruptions", nargs="+", default=list(ALL_CORRUPTIONS), metavar="NAME")
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (classifier only)")
    p.add_argument("--workers", type=int, default=None, help="default 2 (classifier only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("--baseline", default=None,
                   help="results.json of a previous run: bars against it, and CE / mCE normalised "
                        "by its errors (relative ones by its clean error) beside AlexNet's")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_task_options(args) -> None:
    """Refuse an option of the other task or source, a missing one and a bad value (one line,
    naming it); fill in the defaults."""
    wrong = DET_ONLY if args.task == "cls" else CLS_ONLY
    given = [flag for dest, flag in wrong.items() if getattr(args, dest) is not None]
    if given:
        raise OptionError(f"{given[0]} does not apply to --task {args.task}"
                          + (" (the config's test_dataloader sets it)"
                             if given[0] in ("--batch-size", "--workers") else ""))
    if args.task == "det" and not args.config:
        raise OptionError("--task det needs --config (an mmdet config file)")
    if args.task == "cls" and not (args.imagenet_c or args.val):
        raise OptionError("give --imagenet-c ROOT (released folder) or --val ROOT (on the fly)")
    if args.val and args.clean_val is not None:
        raise OptionError("--clean-val does not apply to --val (the clean error is that of the --val "
                          "images); it is for --imagenet-c")
    if args.imagenet_c:
        given = [flag for dest, flag in ON_THE_FLY_ONLY.items() if getattr(args, dest) is not None]
        if given:
            raise OptionError(f"{given[0]} does not apply to --imagenet-c (its images are already "
                              f"corrupted; it is for --val, on the fly)")
    for flag in ("--resize", "--crop"):
        value = getattr(args, flag[2:])
        if value is not None:
            check_pixels(value, flag)
    if args.jpeg_quality is not None:
        check_jpeg_quality(args.jpeg_quality, "--jpeg-quality")
    check_options([("--batch-size", args.batch_size, lambda v: v is None or POSITIVE_INT[0](v),
                    POSITIVE_INT[1]),
                   ("--workers", args.workers, lambda v: v is None or NON_NEGATIVE_INT[0](v),
                    NON_NEGATIVE_INT[1] + " (0: load in the main process)")])
    for dest, value in {**(CLS_DEFAULTS if args.task == "cls" else DET_DEFAULTS), "seed": SEED}.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        if args.seed is not None:
            check_seed(args.seed, "--seed")
        for c in args.corruptions:
            for s in args.severities:
                check_corruption(c, s)
        check_task_options(args)
        from cvkit.models.factory import parse_model_args
        model_kwargs = parse_model_args(args.model_arg or [])
        cfg_options = parse_cfg_options(args.cfg_options) if args.task == "det" else {}
    except ValueError as e:
        return report(e, USAGE)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda"):  # checked before any work (torch and Lightning give tracebacks)
        try:
            check_device(device)
        except OptionError as e:
            return report(e, USAGE)
    try:
        if args.task == "det":
            from cvkit.robustness.detection import evaluate_detector
            state = evaluate_detector(args.config, args.checkpoint, args.out, corruptions=args.corruptions,
                                      severities=args.severities, seed=args.seed, device=device,
                                      data_root=args.data_root, resume=not args.no_resume,
                                      progress=not args.no_progress,
                                      channel_order=args.coco_c_channel_order,
                                      trust_checkpoint=args.trust_checkpoint, cfg_options=cfg_options)
            from cvkit.robustness.report import write_detection_reports
            files = write_detection_reports(state, args.out)
            print(Path(files["markdown"]).read_text())
            return 0
        from cvkit.data.transforms import CROP_PCT
        from cvkit.robustness.evaluate import (FolderSource, OnTheFlySource, describe_uneven,
                                               eval_sizes, evaluate_classification, file_sha256,
                                               load_classifier, uneven_sets)
        from cvkit.robustness.report import read_baseline, write_reports
        baseline = read_baseline(args.baseline) if args.baseline else None
        if args.imagenet_c:
            source = FolderSource(args.imagenet_c, crop=args.crop, clean_root=args.clean_val, resize=args.resize)
        else:
            source = OnTheFlySource(args.val, args.resize, args.crop, args.seed, args.jpeg_quality)
        model, name, dm_hp = load_classifier(args.checkpoint, args.model, device, source.classes,
                                             model_kwargs)
        if "classes" in dm_hp:  # labels as trained, the folders' class names mapped onto them
            source.use_classes(dm_hp["classes"], args.checkpoint)
        resize, crop = eval_sizes(args.resize, args.crop, dm_hp)
        how = ("from --resize / --crop" if args.resize is not None or args.crop is not None else
               f"as trained: image_size {dm_hp['image_size']}, crop_pct {dm_hp.get('crop_pct', CROP_PCT)}"
               if "image_size" in dm_hp else "the default for plain weights")
        source.set_size(resize, crop)
        note = source.check_image_size() if args.imagenet_c else None  # suggests the model's size
        if args.imagenet_c and args.resize is None:  # the clean val framed as the corrupted images
            framed, framing = source.clean_resize()
            if framed is not None and framed >= crop:
                resize = framed
                how += f"; clean resize: {framing}"
                source.set_size(resize, crop)
        print(f"image size: resize {resize}{' (the clean val)' if args.imagenet_c else ''}, "
              f"centre crop {crop} ({how})")
        if note:
            print(f"warning: {note}", file=sys.stderr)
        state = evaluate_classification(model, source, args.out, args.corruptions, args.severities,
                                        args.batch_size, args.workers, device, not args.no_resume,
                                        not args.no_progress, mean=dm_hp.get("mean"), std=dm_hp.get("std"),
                                        meta_extra={"model": name,
                                                    "checkpoint": str(Path(args.checkpoint).resolve()),
                                                    "checkpoint_sha256": file_sha256(args.checkpoint),
                                                    **({"model_kwargs": model_kwargs}
                                                       if model_kwargs else {})})
        files = write_reports(state, args.out, baseline, baseline_name=args.baseline)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        if not is_user_error(e):
            raise
        return report(e)
    for c, sevs in state["missing"].items():
        for s, why in sevs.items():
            print(f"warning: {c} severity {s} not evaluated: {why}", file=sys.stderr)
    expected, uneven = uneven_sets(state)
    for line in describe_uneven(expected, uneven, state.get("clean_images") is not None):
        print(f"warning: {line}", file=sys.stderr)
    print(Path(files["markdown"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
