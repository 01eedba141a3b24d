#!/usr/bin/env python
"""Render an ImageNet-C-style folder from an ImageFolder validation set, the way the release was
made: resize (shorter side) 256, centre crop 224, corrupt, JPEG quality 85; parallel over cores.
The corruptions are cvkit's (the imagecorruptions formulas), not the release's pixels: the folder
gets a cvkit_render.json marker (generator, seed, sizes, format, JPEG quality), and evaluating it
records it as rendered by cvkit, not comparable with published mCEs.

    python tools/make_imagenet_c.py --val data/imagenet/val --out data/imagenet-c
    python tools/make_imagenet_c.py --val data/classification/val --out runs/demo-c --resize 48 --crop 48 \
        --corruptions fog snow --severities 1 3 --format png

At a model's size (crop = its training image_size, resize = round(image_size / crop_pct); the
`make demo` model: 48 and 48) for tools/eval_corruption.py --imagenet-c. A set that already holds
images of the other format is refused (both would be evaluated): use another --out or delete it.
--quality (1..100) applies to --format jpeg only.
"""
import argparse
import sys

from cvkit.robustness.corruptions import ALL_CORRUPTIONS, check_corruption, check_seed
from cvkit.robustness.folder import RELEASE_JPEG_QUALITY, check_jpeg_quality, check_pixels, write_imagenet_c
from cvkit.tool_errors import POSITIVE_INT, OptionError, check_options, is_user_error, report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val", required=True, help="ImageFolder validation root (<val>/<class>/<img>)")
    p.add_argument("--out", required=True, help="output root (<out>/<corruption>/<severity>/<class>/<img>)")
    p.add_argument("--corruptions", nargs="+", default=list(ALL_CORRUPTIONS), metavar="NAME")
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jpeg", "png"], default="jpeg",
                   help="jpeg (as released, quality --quality) or png (lossless)")
    p.add_argument("--quality", type=int, default=None,
                   help=f"JPEG quality, 1..100 (default {RELEASE_JPEG_QUALITY}, the release's)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = p.parse_args(argv)
    try:
        check_seed(args.seed, "--seed")
        for c in args.corruptions:
            for s in args.severities:
                check_corruption(c, s)
        check_options([("--workers", args.workers, lambda v: v is None or POSITIVE_INT[0](v),
                        POSITIVE_INT[1] + " (default: all cores)")])
        check_pixels(args.resize, "--resize")
        check_pixels(args.crop, "--crop")
        if args.resize < args.crop:  # the centre crop would pad the image with black borders
            raise OptionError(f"--resize {args.resize} is smaller than --crop {args.crop}")
        if args.quality is not None:
            if args.format == "png":
                raise OptionError("--quality does not apply to --format png (lossless)")
            check_jpeg_quality(args.quality, "--quality")
        args.quality = RELEASE_JPEG_QUALITY if args.quality is None else args.quality
        n = write_imagenet_c(args.val, args.out, args.corruptions, args.severities, args.resize,
                             args.crop, args.seed, args.format, args.quality, args.workers)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        if not is_user_error(e):
            raise
        return report(e)
    print(f"wrote {n} images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
