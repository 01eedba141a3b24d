#!/usr/bin/env python
"""Evaluate a classification checkpoint on an image folder and write top-1 / top-5 as JSON.

    python tools/test.py --checkpoint runs/demo/checkpoints/last.ckpt --data data/classification/val
    python tools/test.py --checkpoint eca_resnet50.pth --model eca_resnet50 --data /data/imagenet/val
    python tools/test.py --checkpoint demo.pth --model eca_resnet18 --model-arg global_pool=gcp \
        --image-size 48 --crop-pct 1.0 --data data/classification/val

Plain weights record no training image size: it is 224 (resize 256) unless --image-size /
--crop-pct give the model's (the demo's: 48 px, crop_pct 1.0).

--model-arg KEY=VALUE (repeatable) passes a model argument plain weights need (values are Python
literals, else strings), as in tools/convert_checkpoint.py.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from cvkit.data.transforms import INTERPOLATIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="cvkit/Lightning .ckpt, or plain weights with --model")
    p.add_argument("--data", required=True, help="ImageFolder split (<class>/<image>) or a root holding val/")
    p.add_argument("--model", default=None, help="preset name, for plain weight files")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a model argument for --model (repeatable), e.g. global_pool=gcp")
    p.add_argument("--output", default=None, help="JSON file (default: <checkpoint>.eval.json)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None, help="default: as trained")
    p.add_argument("--crop-pct", type=float, default=None, help="default: as trained")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help="resize filter (default: as trained; bilinear for plain weights)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default=None, help="e.g. bf16-mixed")
    args = p.parse_args(argv)
    from cvkit.models.factory import parse_model_args
    from cvkit.tasks.evaluate import evaluate
    from cvkit.tool_errors import is_user_error, report

    output = args.output or str(Path(args.checkpoint).with_suffix(".eval.json"))
    try:
        result = evaluate(args.checkpoint, args.data, output, model_name=args.model,
                          batch_size=args.batch_size, image_size=args.image_size,
                          crop_pct=args.crop_pct, num_workers=args.workers,
                          accelerator=args.accelerator, precision=args.precision,
                          model_kwargs=parse_model_args(args.model_arg),
                          interpolation=args.interpolation)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        if not is_user_error(e):
            raise
        return report(e)
    print(json.dumps(result, indent=2))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
