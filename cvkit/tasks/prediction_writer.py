"""``tools/train.py predict`` writes its predictions: ``<run>/predict/predictions.csv``.

Lightning's ``Trainer.predict`` returns the predictions to its caller; LightningCLI discards them.
:class:`PredictionCSVWriter` (Lightning's ``BasePredictionWriter``) writes one row per image of
the predict set (the datamodule's ``test_split``), in folder order: the image's path, its folder's
class, the top-k classes and their probabilities. Under DDP every rank's rows are gathered to rank
0 (the DistributedSampler's padding repeats are dropped). The file is written atomically.
"""
from __future__ import annotations

import csv
import io
import math
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
        self.path, self.top_k = path, top_k
        self.written: Optional[Path] = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        dataset = trainer.predict_dataloaders.dataset
        probs = _concat(predictions[0] if predictions and isinstance(predictions[0], list)
                        else predictions)
        indices = [int(i) for batch in _flatten_batches(batch_indices) for i in batch]
        rows = dict(zip(indices, probs.float().cpu())) if probs is not None else {}
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = {i: p for part in gathered for i, p in part.items()}
        if not trainer.is_global_zero:
            return
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / FILE_NAME
        with atomic_write(path, "w") as f:
            f.write(format_rows(dataset.samples, dataset.classes, rows, self.top_k))
        self.written = path
        print(f"wrote {len(rows)} predictions to {path}")


def format_rows(samples: Sequence[tuple[str, int]], classes: Sequence[str],
                rows: dict[int, torch.Tensor], top_k: int) -> str:
    """The CSV text: a header, then one row per sample index in ``rows`` (in index order)."""
    k = min(top_k, len(classes))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "target", "pred", "prob", f"top{k}"])
    for i in sorted(rows):
        path, label = samples[i]
        p = rows[i]
        if not all(math.isfinite(v) for v in p.tolist()):  # a skipped image
            writer.writerow([path, classes[label], "", "", ""])
            continue
        values, best = p.topk(k)
        top = " ".join(f"{classes[c]}:{v:.6f}" for v, c in zip(values.tolist(), best.tolist()))
        writer.writerow([path, classes[label], classes[int(best[0])], f"{values[0]:.6f}", top])
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
