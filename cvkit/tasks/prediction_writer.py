"""``tools/train.py predict`` writes its predictions: ``<run>/predict/predictions.csv``.

Lightning's ``Trainer.predict`` returns the predictions to its caller; LightningCLI discards them.
:class:`PredictionCSVWriter` (Lightning's ``BasePredictionWriter``) writes one row per image of
the predict set (the datamodule's ``test_split``), in folder order: the image's path, its folder's
class, the top-k classes and their probabilities. Under DDP each rank reduces its share to its
top-k rows and rank 0 gathers them (Lightning's predict sampler splits the set without repeats).
The file is written atomically.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from cvkit.atomic_write import atomic_write

FILE_NAME = "predictions.csv"


class PredictionCSVWriter(BasePredictionWriter):
    """Rows ``path, target, pred, prob, top{k}`` (``top{k}``: the k best classes and their
    probabilities, ``name:p`` separated by spaces), one per image, written to ``path`` (default:
    ``<trainer.log_dir>/predictions.csv``). A skipped (undecodable) image keeps its row with
    empty predictions, as ``ClassificationTask.predict_step`` keeps its NaN row."""

    def __init__(self, path: Optional[str] = None, top_k: int = 5):
        super().__init__(write_interval="epoch")
        if not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"PredictionCSVWriter: top_k must be an integer >= 1, got {top_k!r}")
        self.path, self.top_k = path, top_k
        self.written: Optional[Path] = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        # on every rank: trainer.log_dir broadcasts (a collective all ranks must join)
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / FILE_NAME
        dataset = trainer.predict_dataloaders.dataset
        probs = _concat(predictions[0] if predictions and isinstance(predictions[0], list)
                        else predictions)
        indices = [int(i) for batch in _flatten_batches(batch_indices) for i in batch]
        k = min(self.top_k, len(dataset.classes))
        rows = top_rows(indices, probs, k)
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size if trainer.is_global_zero else None
            torch.distributed.gather_object(rows, gathered, dst=0)
            if trainer.is_global_zero:
                rows = {i: r for part in gathered for i, r in part.items()}
        if not trainer.is_global_zero:
            return
        with atomic_write(path, "w") as f:
            f.write(format_rows(dataset.samples, dataset.classes, rows, k))
        self.written = path
        print(f"wrote {len(rows)} predictions to {path}")


def top_rows(indices: Sequence[int], probs: Optional[torch.Tensor],
             k: int) -> dict[int, Optional[list[tuple[int, float]]]]:
    """{sample index: [(class, probability)] of its k best classes, or None for a row that is not
    finite (a skipped image's NaN row)}: plain Python values, small to send between ranks."""
    if probs is None:
        return {}
    probs = probs.float().cpu()
    finite = torch.isfinite(probs).all(1).tolist()
    values, best = probs.nan_to_num(0.0).topk(k, dim=1)
    return {i: list(zip(c, v)) if ok else None
            for i, ok, c, v in zip(indices, finite, best.tolist(), values.tolist())}


def format_rows(samples: Sequence[tuple[str, int]], classes: Sequence[str],
                rows: dict[int, Optional[list[tuple[int, float]]]], k: int) -> str:
    """The CSV text (:func:`top_rows`' rows): a header, then one row per sample index, in order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "target", "pred", "prob", f"top{k}"])
    for i in sorted(rows):
        path, label = samples[i]
        top = rows[i]
        if top is None:  # a skipped image (or a model output that is not finite)
            writer.writerow([path, classes[label], "", "", ""])
            continue
        writer.writerow([path, classes[label], classes[top[0][0]], f"{top[0][1]:.6f}",
                         " ".join(f"{classes[c]}:{v:.6f}" for c, v in top)])
    return out.getvalue()


def _flatten_batches(batch_indices: Sequence[Any]) -> list:
    """Lightning gives one list of per-batch index lists per dataloader (or, for one dataloader,
    sometimes the per-batch lists themselves)."""
    if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], (list, tuple)):
        return [b for loader in batch_indices for b in loader]
    return list(batch_indices)


def _concat(predictions: Sequence[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    parts = [p for p in predictions if p is not None]
    return torch.cat(parts) if parts else None
