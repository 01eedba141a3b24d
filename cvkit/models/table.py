"""The model table: every preset's parameters and GFLOPs at 224², beside the papers' figures.

    python -m cvkit.models.table                     # print the Markdown table
    python -m cvkit.models.table --update docs/models.md   # replace the table between markers

Counting method (one for every row): ``torch.utils.flop_counter.FlopCounterMode`` on one
forward pass of a 1x3x224x224 image in eval mode, FLOPs / 2 = multiply-accumulates, which is what
the papers call FLOPs. It counts convolutions, matrix products and attention (not element-wise
operations, BN, pooling). The model runs on the meta device (shapes only): there the iSQRT-COV
square root takes its Newton–Schulz form, whose max(1, 3N−3) d×d products the counter sees (12·d³
MACs for 5 iterations, 0.20 G for d = 256; on the CPU it runs as ``eigh``, which the counter does
not see), and attention its math form, which the counter counts (the CPU's fused attention kernel
it does not). Parameters: all parameters, classifier included (1000 classes).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def count_macs(model: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs`` (FLOPs / 2, as the
    counter counts them; run it on the meta device to count the forms above)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def measure(name: str) -> tuple[int, float]:
    """(number of parameters, GMACs at 224²) of preset ``name``."""
    import cvkit

    with torch.device("meta"):
        model = cvkit.create_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, torch.zeros(1, 3, 224, 224))
    return params, macs / 1e9


def _fmt(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(names: list[str] | None = None) -> str:
    from cvkit.models.registry import PRESETS

    names = names or sorted(PRESETS, key=_sort_key)
    rows = ["| preset | params | GMACs @224² | paper params (M) | paper GFLOPs | "
            "paper top-1 (%) | source |", "|---|---|---|---|---|---|---|"]
    for name in names:
        params, gmacs = measure(name)
        paper = PRESETS[name].paper
        rows.append(f"| `{name}` | {params:,} | {gmacs:.2f} | {_fmt(paper.get('params_m'))} | "
                    f"{_fmt(paper.get('gflops'))} | {_fmt(paper.get('top1'))} | "
                    f"{paper.get('source', '')} |")
    return "\n".join(rows)


def _sort_key(name: str):
    family = 0 if "resnet" in name else 1 if "mobilenet" in name else 2
    size = re.search(r"resnet(\d+)", name)
    vit = {"tiny": 0, "small": 1, "base": 2}
    order = int(size.group(1)) if size else next((v for k, v in vit.items() if k in name), 0)
    return family, order, name.startswith("eca_"), "gcp" in name, name


def update(path: Path, table: str) -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", type=Path, help="Markdown file whose marked table to replace")
    parser.add_argument("--models", nargs="*", help="presets (default: all)")
    args = parser.parse_args(argv)
    table = markdown(args.models)
    if args.update:
        update(args.update, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
