#!/usr/bin/env python
"""Fine-tune an MMDetection detector with Lightning (cvkit/tasks/detection.py).

    python tools/train_det.py                      # demo: Faster R-CNN on the embedded shapes set
    python tools/train_det.py configs/detection/mask-rcnn_eca-r50_fpn_1x_coco.py \\
        --data-root data/coco --backbone-checkpoint eca_resnet50.pth.tar --devices 4 \\
        --strategy ddp --precision 16-mixed

Writes WORK_DIR/checkpoints/last.ckpt (resume with --resume), WORK_DIR/detector.pth and
WORK_DIR/config.py (for mmdet.apis.init_detector / tools/test_det.py), WORK_DIR/logs (CSV) and
WORK_DIR/metrics.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvkit.tool_errors import parse_cfg_options

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs/detection/faster-rcnn_eca-r18_fpn_shapes.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="mmdet config (default: %(default)s)")
    p.add_argument("--work-dir", default=None, help="output folder (default: work_dirs/<config name>)")
    p.add_argument("--data-root", default=None, help="dataset folder replacing the config's data_root")
    p.add_argument("--backbone-checkpoint", default=None,
                   help="classification checkpoint for the backbone (any format cvkit.load_checkpoint reads)")
    p.add_argument("--load-from", default=None, help="detector weights to start from")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="read --load-from with weights_only=False (mmengine Runner checkpoints "
                        "hold pickled objects; only for files you trust)")
    p.add_argument("--resume", default=None, help="Lightning checkpoint to resume from")
    p.add_argument("--epochs", type=int, default=None, help="override train_cfg.max_epochs")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto", help="e.g. ddp")
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train_dataloader.batch_size=4")
    args = p.parse_args(argv)

    from cvkit.tasks.detection import save_metrics, train_detector
    from cvkit.tool_errors import is_user_error, report

    config = Path(args.config)
    if config.resolve() == DEFAULT_CONFIG and args.data_root is None:
        from cvkit.data.synthetic import generate

        generate(REPO / "data")  # no-op when the embedded data exists
        args.data_root = str(REPO / "data/detection")
    work_dir = args.work_dir or str(Path("work_dirs") / config.stem)
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    try:
        task, metrics = train_detector(
            str(config), work_dir, data_root=args.data_root,
            backbone_checkpoint=args.backbone_checkpoint, load_from=args.load_from,
            resume=args.resume, cfg_options=parse_cfg_options(args.cfg_options), seed=args.seed,
            trust_checkpoint=args.trust_checkpoint,
            accelerator=args.accelerator, devices=devices, strategy=args.strategy,
            precision=args.precision, max_epochs=args.epochs)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        if not is_user_error(e):
            raise
        return report(e)
    if task.global_rank != 0:  # DDP: the other ranks ran the same main(); rank 0 reports
        return 0
    save_metrics(metrics, Path(work_dir, "metrics.json"), echo=True)  # atomically
    print(f"detector weights: {Path(work_dir, 'detector.pth')} (config: {Path(work_dir, 'config.py')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
