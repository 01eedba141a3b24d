"""Training input pipeline throughput: cvkit's (OpenCV decode + RandomResizedCrop: albumentations'
crop, torchvision's antialiased resize; flip, normalise) beside torchvision's standard ``transforms`` pipeline (PIL decode +
RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize), same folder, same DataLoader
settings (batch, workers, no pinning), timed round-robin over full passes of the folder."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from cvkit.benchmarks import check_int_options, command_line, machine_description
from cvkit.benchmarks.timing import interleaved_median_seconds
from cvkit.tool_errors import OptionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="data/classification",
                        help="ImageFolder root holding train/ (default: the embedded synthetic set)")
    parser.add_argument("--size", type=int, default=224, help="training crop size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images")


ALWAYS_PRINTED = ("root", "size", "batch_size", "workers", "repeats")
"""Options the report's command names even at their defaults (--max-images too when given)."""


def command(args: argparse.Namespace) -> str:
    """The report's command line."""
    return command_line("data", args, add_arguments, ALWAYS_PRINTED)


def check_args(args: argparse.Namespace) -> None:
    """Before any loader is built: an OptionError for a size/batch-size/repeats/max-images below 1
    or negative workers; a FileNotFoundError (bad data, exit 1) when ``--root`` lacks ``train/``
    or ``val/``."""
    check_int_options(args, positive=("size", "batch_size", "repeats", "max_images"),
                      non_negative=("workers",))
    for split in ("train", "val"):  # the timed one, and the one the data module's setup reads
        if not (Path(args.root) / split).is_dir():
            raise FileNotFoundError(f"--root {args.root}: no folder {Path(args.root) / split} "
                                    f"(expected an ImageFolder root holding train/ and val/)")


def _torchvision_loader(split: Path, size: int, batch: int, workers: int, limit, worker_init):
    from torchvision import datasets, transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = datasets.ImageFolder(str(split), transform=tf)
    if limit:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, worker_init_fn=worker_init,
                                       drop_last=True)


def _cvkit_loader(root: Path, size: int, batch: int, workers: int, limit):
    from cvkit.data.datamodule import ClassificationDataModule

    dm = ClassificationDataModule(root=str(root), batch_size=batch, image_size=size,
                                  num_workers=workers, pin_memory=False, persistent_workers=True)
    dm.setup("fit")
    if limit:
        dm.train_set.samples = dm.train_set.samples[:limit]
    if len(dm.train_set) < batch:  # the loaders drop the last incomplete batch: nothing to time
        used = f" (--max-images {limit})" if limit else ""
        raise OptionError(f"--batch-size {batch} is more than the {len(dm.train_set)} images "
                          f"used from {dm.train_set.root}{used}: no full batch to time")
    return dm, dm.train_dataloader()


def run(args: argparse.Namespace) -> str:
    from cvkit.data.datamodule import _worker_init

    check_args(args)
    root = Path(args.root)
    split = root / "train"
    ours_dm, ours = _cvkit_loader(root, args.size, args.batch_size, args.workers, args.max_images)
    ref = _torchvision_loader(split, args.size, args.batch_size, args.workers, args.max_images,
                              _worker_init if args.workers else None)
    n_images = len(ours) * args.batch_size  # > 0: _cvkit_loader checked
    assert len(ref) * args.batch_size == n_images

    def drain(loader, finish=lambda b: b):
        def fn():
            for batch in loader:
                images = finish(batch)[0]
                assert images.dtype in (torch.float32, torch.uint8) and images.shape[-1] == args.size
        return fn

    # cvkit ships uint8 from the workers and normalises the batch on the device (the GPU when
    # training there: not timed in "as loaded"); "+ CPU normalise" does it here in the main
    # process, so both end as the same float batch on the CPU
    ours_finish = lambda b: ours_dm.on_after_batch_transfer(b, 0)  # noqa: E731
    times = interleaved_median_seconds({"cvkit": drain(ours),
                                        "cvkit_cpu_norm": drain(ours, ours_finish),
                                        "torchvision": drain(ref)},
                                       repeats=args.repeats, warmup=1)
    ips = {k: n_images / v for k, v in times.items()}
    ratio = {k: v / ips["torchvision"] for k, v in ips.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "\n".join([
        f"Training input pipeline, {n_images} images per pass from `{split}`, crop {args.size}, "
        f"batch {args.batch_size}, {args.workers} workers, median of {args.repeats} interleaved passes.",
        "",
        "| pipeline | images/s | ratio |",
        "|---|---:|---:|",
        f"| cvkit as loaded: cv2.imdecode + RRC (antialiased) + flip, uint8 batches "
        f"(normalised later on the GPU) | {ips['cvkit']:.0f} | {ratio['cvkit']:.2f}x |",
        f"| cvkit + CPU normalise in the main process (CPU-only training) | "
        f"{ips['cvkit_cpu_norm']:.0f} | {ratio['cvkit_cpu_norm']:.2f}x |",
        f"| torchvision: PIL + RandomResizedCrop + flip + ToTensor + Normalize | "
        f"{ips['torchvision']:.0f} | 1.00x |",
        "",
        f"Command: `{command(args)}`",
        f"Machine: {machine_description()}; {os.cpu_count()} CPUs visible; 1-min load average at the "
        f"end {load:.1f}.",
    ])
