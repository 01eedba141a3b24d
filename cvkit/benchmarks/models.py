"""Training-step time of cvkit presets beside torchvision's resnet50, measured round-robin.

One step = forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4) on a fixed
batch. Targets (issue 4): eca_resnet50 <= 1.10x and resnet50_gcp <= 1.15x torchvision resnet50.

In each round every model (in a new random order) runs an untimed step and then its timed one,
so the timed step finds the allocator as the same model's previous step left it, as in a training
loop: on the CPU much of a step is page faults of freshly mapped activation memory, and how much
depends on what ran just before. Ratios are per round (each model's step over torchvision's step
of the same round), reported as the median over rounds with the lowest and highest round beside
it. A second, independent torchvision resnet50 is timed as a control: its ratio should be 1 and
shows how far this machine's noise moves a ratio.

A third torchvision row, resnet50 with its last stage at stride 1 (``replace_stride_with_dilation``:
14x14 maps at 224 px, the iSQRT-COV layout) and the usual average-pool head, is the cost of the GCP
backbone alone: what resnet50_gcp would take if its covariance head were free.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from cvkit.benchmarks import check_int_options, command_line, machine_description
from cvkit.benchmarks.timing import interleaved_seconds
from cvkit.tool_errors import OptionError, check_device

DEFAULT_MODELS = ("resnet50", "eca_resnet50", "resnet50_gcp")
TARGETS = {"eca_resnet50": 1.10, "resnet50_gcp": 1.15}
BASELINE = "torchvision resnet50"
CONTROL = "torchvision resnet50, second instance (control: noise floor)"
STRIDE1_REFERENCE = "torchvision resnet50, last stage stride 1 (GCP layout, GAP head)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="cvkit presets to time beside torchvision's resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (steps per model)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true",
                        help="run every model (torchvision's too) in channels_last")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")


ALWAYS_PRINTED = ("models", "batch", "size", "repeats", "device")
"""Options the report's command names even at their defaults (with every one that differs)."""


def command(args: argparse.Namespace) -> str:
    """The report's command line (from ``args``, not ``sys.argv``: ``main(argv)`` runs it too)."""
    return command_line("models", args, add_arguments, ALWAYS_PRINTED)


def check_args(args: argparse.Namespace) -> None:
    """An OptionError for a bad option, before any model is built or timed: a model name that is
    no cvkit preset, a batch/size/repeats below 1, a negative warmup/threads, a device the machine
    lacks."""
    from cvkit.models.registry import get_preset

    check_int_options(args, positive=("batch", "size", "repeats"),
                      non_negative=("warmup", "threads"))
    for name in args.models:
        try:
            get_preset(name)
        except OptionError as e:
            raise OptionError(f"--models: {e}") from None
    check_device(args.device)


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def run(args: argparse.Namespace) -> str:
    import torchvision

    import cvkit

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,), device=args.device)
    models = {BASELINE: torchvision.models.resnet50(),
              CONTROL: torchvision.models.resnet50(),
              STRIDE1_REFERENCE: torchvision.models.resnet50(
                  replace_stride_with_dilation=[False, False, True])}
    for name in args.models:
        models[name] = cvkit.create_model(name)
    steps = {}
    for name, model in models.items():
        model = model.to(args.device, memory_format=fmt).train()
        steps[name] = _step_fn(model, x, y)
    times = interleaved_seconds(steps, repeats=args.repeats, warmup=args.warmup,
                                device=args.device, settle=1)
    lines = [
        f"Training step (forward + backward + SGD), batch {args.batch} at {args.size}², "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.device}; {args.repeats} "
        f"rounds after {args.warmup} warm-up; in each round every model, in a new random order, "
        f"runs one untimed step and then its timed step (so it finds memory as its own previous "
        f"step left it, as in training). Ratio: per round, over "
        f"{BASELINE}'s step of the same round; median over rounds, and the lowest and highest; "
        f"the verdict uses the median ratio.",
        "",
        f"| model | step (s), median | × {BASELINE}, median | lowest – highest round | "
        f"ratio of median steps | target |",
        "|---|---|---|---|---|---|",
    ]
    base_median = statistics.median(times[BASELINE])
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[BASELINE])]
        ratio = statistics.median(ratios)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"≤ {target:.2f}× — {'met' if ratio <= target else 'NOT met'}"
        of_medians = statistics.median(t) / base_median
        lines.append(f"| {name} | {statistics.median(t):.3f} | {ratio:.3f} | "
                     f"{min(ratios):.3f} – {max(ratios):.3f} | {of_medians:.3f} | {verdict} |")
    lines += ["", f"Command: `{command(args)}`", f"Machine: {machine_description(args.device)}"]
    return "\n".join(lines)
