"""Benchmark: all 19 ImageNet-C corruptions x 5 severities on a batch of images, cvkit's batched
implementation beside the ``imagecorruptions`` package (per image, as it works) on the same images
in the same run. The package's three breakages on current NumPy / scikit-image (``multichannel=``
in ``gaussian``, ``np.float_``) are patched here, for the benchmark only.

``python tools/benchmark.py corruptions [--batch 8] [--size 224] [--repeats 3] [--corruptions NAME ...]``
"""
from __future__ import annotations

import contextlib
import sys
import warnings

import numpy as np

from cvkit.benchmarks import check_int_options, command_line, machine_description
from cvkit.benchmarks.timing import interleaved_median_seconds
from cvkit.tool_errors import OptionError


def command(args) -> str:
    """The report's command line (batch, size and repeats named even at their defaults)."""
    return command_line("corruptions", args, add_arguments, ("batch", "size", "repeats"))


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per corruption (median)")
    parser.add_argument("--corruptions", nargs="*", default=None, help="subset (default: all 19)")


MIN_SIZE = 32
"""The smallest image side the ``imagecorruptions`` package takes."""


def check_args(args) -> None:
    """An OptionError for a bad option, before anything is timed: every corruption name (so a
    misspelt last name does not fail after the others were timed), a batch/repeats below 1, an
    image side below :data:`MIN_SIZE`."""
    from cvkit.robustness.corruptions import check_corruption

    check_int_options(args, positive=("batch", "repeats"))
    if not (isinstance(args.size, int) and args.size >= MIN_SIZE):
        raise OptionError(f"--size must be an integer >= {MIN_SIZE} (the imagecorruptions package "
                          f"takes no smaller images), got {args.size!r}")
    for name in args.corruptions or ():
        try:
            check_corruption(name, 1)
        except OptionError as e:
            raise OptionError(f"--corruptions: {e}") from None


@contextlib.contextmanager
def patched_imagecorruptions():
    """Import ``imagecorruptions`` with its two API breakages patched (benchmark/test use only):
    skimage's ``gaussian(multichannel=True)`` became ``channel_axis=-1``; ``np.float_`` is gone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import imagecorruptions
        import imagecorruptions.corruptions as icc
    from skimage.filters import gaussian

    def gaussian_compat(image, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    had_float = hasattr(np, "float_")
    old_gaussian = icc.gaussian
    icc.gaussian = gaussian_compat
    if not had_float:
        np.float_ = np.float64
    try:
        yield imagecorruptions
    finally:
        icc.gaussian = old_gaussian
        if not had_float:
            del np.float_


def sample_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Natural-looking uint8 images: smooth random fields with edges (not white noise, which
    would favour no implementation but is unlike photos)."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((batch, size, size, 3)), (0, size / 16, size / 16, 0))
    field = (field - field.min()) / (field.max() - field.min())
    edges = (rng.random((batch, 1, 1, 1)) * np.arange(size)[None, :, None, None] / size) > 0.5
    return (np.clip(field * 0.8 + 0.2 * edges, 0, 1) * 255).astype(np.uint8)


def run(args) -> str:
    from cvkit.robustness.corruptions import ALL_CORRUPTIONS, corrupt

    check_args(args)
    names = args.corruptions or list(ALL_CORRUPTIONS)
    images = sample_images(args.batch, args.size)
    rows = []
    with patched_imagecorruptions() as ic:
        for name in names:
            def ours(name=name):
                for s in range(1, 6):
                    corrupt(images, name, s, seed=s)

            def reference(name=name):
                np.random.seed(0)
                for s in range(1, 6):
                    for im in images:
                        ic.corrupt(im, severity=s, corruption_name=name)

            t = interleaved_median_seconds({"cvkit": ours, "imagecorruptions": reference},
                                           repeats=args.repeats, warmup=1)
            rows.append((name, t["cvkit"], t["imagecorruptions"]))
            print(f"{name}: cvkit {t['cvkit']:.3f}s  imagecorruptions {t['imagecorruptions']:.3f}s",
                  file=sys.stderr)
    n_img = args.batch * 5
    total_ours = sum(r[1] for r in rows)
    total_ref = sum(r[2] for r in rows)
    lines = [
        f"### Corruptions: {len(names)} corruptions x 5 severities, batch of {args.batch} images "
        f"{args.size}x{args.size} (CPU)",
        "",
        "| corruption | cvkit (batched) ms/image/severity | imagecorruptions ms/image/severity | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, o, r in rows:
        lines.append(f"| {name} | {o / n_img * 1e3:.2f} | {r / n_img * 1e3:.2f} | {r / o:.1f}x |")
    lines.append(f"| **all {len(names)}** | **{total_ours / n_img * 1e3:.1f}** | "
                 f"**{total_ref / n_img * 1e3:.1f}** | **{total_ref / total_ours:.1f}x** |")
    lines += [
        "",
        f"Median of {args.repeats} interleaved rounds per corruption (each round: 5 severities on "
        f"the whole batch; cvkit one call per severity, imagecorruptions one call per image).",
        f"Command: `{command(args)}`",
        f"Machine: {machine_description()}",
    ]
    return "\n".join(lines)
