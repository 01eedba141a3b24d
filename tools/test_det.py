#!/usr/bin/env python
"""Evaluate a detector: COCO bbox / segm AP (AP, AP50, AP75, APs/m/l) as JSON.

    python tools/test_det.py CONFIG CHECKPOINT [--out metrics.json] [--show-dir vis/]

CHECKPOINT: WORK_DIR/detector.pth or WORK_DIR/checkpoints/last.ckpt from tools/train_det.py, or an
mmdet checkpoint (mmengine Runner checkpoints need --trust-checkpoint: they hold pickled objects).
--show-dir writes one PNG per image with the predicted boxes, classes, scores and masks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvkit.tool_errors import parse_cfg_options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None,
                   help="write the metrics JSON here (also printed; by global rank 0 only)")
    p.add_argument("--show-dir", default=None, help="write PNGs of the predictions here")
    p.add_argument("--show-score-thr", type=float, default=0.3)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default=1, type=int)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load with weights_only=False (only for checkpoints you trust)")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from cvkit.tasks.detection import evaluate_detector
    from cvkit.tool_errors import is_user_error, report

    try:  # the metrics are printed and written (atomically) by global rank 0 only
        if args.out and Path(args.out).is_dir():  # found now, not after the whole evaluation
            raise IsADirectoryError(f"--out {args.out}: it is a directory (give a file name)")
        evaluate_detector(
            args.config, args.checkpoint, data_root=args.data_root, show_dir=args.show_dir,
            show_score_thr=args.show_score_thr, cfg_options=parse_cfg_options(args.cfg_options),
            trust_checkpoint=args.trust_checkpoint, accelerator=args.accelerator,
            devices=args.devices, precision=args.precision, out=args.out, echo=True)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        if not is_user_error(e):
            raise
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
