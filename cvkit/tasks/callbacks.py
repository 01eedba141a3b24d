"""Lightning pieces the training tasks need that Lightning does not ship as such: atomic checkpoint
writes, a ``last.ckpt`` that always holds the latest state, and the end-of-fit report
(summary.json, curves.png)."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from cvkit.atomic_write import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint with :func:`cvkit.atomic_write.atomic_write` (a temporary file in the
    target folder, fsynced, then ``os.replace``d), so a crash never leaves a half-written
    ``last.ckpt``.

    Lightning's own save (``_atomic_save``) stages the bytes through fsspec's local transaction,
    which writes the temp file in the system temp dir and ``shutil.move``s it: across filesystems
    that is a copy into the final name, not atomic. Hence this subclass.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None
                        ) -> None:
        with atomic_write(path) as f:
            torch.save(checkpoint, f)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is kept and appended to."""

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class AppendingCSVLogger(CSVLogger):
    """CSVLogger for a resumed fit: the rows go after the run's earlier ones in ``metrics.csv``
    (Lightning's CSVLogger deletes the file and with it the training history)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _stops_mid_epoch(trainer: Trainer) -> bool:
    """At ``on_train_batch_end``: fit ends after this batch (max_steps, max_time, should_stop) and
    the epoch is not finished."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch or loop._num_ready_batches_reached():
        return False
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    return bool(trainer.should_stop and trainer.fit_loop._can_stop_early)


class KeepLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose ``last.ckpt`` always holds the latest state.

    Lightning 2.6 rewrites ``last`` only at steps where it also saved a top-k checkpoint, so with a
    monitored metric that did not improve, ``last.ckpt`` (and ``--ckpt_path last``) fell back to
    the last improvement. Here ``last.ckpt`` is also written at the end of every training epoch,
    at the batch where fit stops mid-epoch (max_steps / max_time: a true mid-epoch checkpoint, so a
    resumed run continues that epoch) and at the end of fit. At the start of fit, temporary files
    left in the folder by a save that was killed (``atomic_write``'s ``.NAME.*.tmp``) are removed.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for tmp in Path(self.dirpath).glob(".*.ckpt.*.tmp"):
                rank_zero_warn(f"removing {tmp}: a checkpoint write that never finished")
                tmp.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if _stops_mid_epoch(trainer):
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_now(trainer)  # after the epoch's validation (it runs before this hook)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_now(trainer)

    def _save_last_now(self, trainer: Trainer) -> None:
        # skipped when not fitting, sanity checking, or a save already happened at this step
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _scalar(v: Any) -> Optional[float]:
    if v is None:
        return None
    return float(v.detach().cpu()) if torch.is_tensor(v) else float(v)


class TrainingReport(Callback):
    """Keeps the loss / accuracy / LR history (saved in checkpoints, so a resumed run's curves are
    whole) and at the end of ``fit`` writes ``summary.json`` and ``curves.png`` into the run folder.
    """

    def __init__(self, summary_name: str = "summary.json", plot_name: str = "curves.png",
                 log_every_n_steps: int = 10):
        self.summary_name = summary_name
        self.plot_name = plot_name
        self.log_every_n_steps = log_every_n_steps
        self.history: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "epoch": [],
                                         "val_loss": [], "val_top1": [], "val_top5": []}
        self._t0 = time.monotonic()
        self.summary_path: Optional[Path] = None
        self.plot_path: Optional[Path] = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if outputs is None or step % self.log_every_n_steps:
            return
        if self.history["step"] and self.history["step"][-1] == step:
            return  # another micro-batch of the same optimiser step (accumulate_grad_batches)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.history["step"].append(step)
        self.history["train_loss"].append(_scalar(loss))
        self.history["lr"].append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        self.history["epoch"].append(trainer.current_epoch + 1)
        for k in ("val_loss", "val_top1", "val_top5"):
            self.history[k].append(_scalar(m.get(k)))

    def run_dir(self, trainer: Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # collectives (bad-file gather, log_dir's broadcast) on every rank, the writing on rank 0
        bad = pl_module.gather_bad_files() if hasattr(pl_module, "gather_bad_files") else []
        self._write(trainer, pl_module, bad, self.run_dir(trainer))

    @rank_zero_only
    def _write(self, trainer: Trainer, pl_module: LightningModule, bad_files: list[str],
               out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt = trainer.checkpoint_callback
        h = self.history
        final = {k: h[k][-1] for k in ("val_loss", "val_top1", "val_top5") if h[k]}
        best_top1 = max((v for v in h["val_top1"] if v is not None), default=None)
        summary = {
            "model": getattr(pl_module.hparams, "model_name", None),
            "epochs": trainer.current_epoch, "global_step": trainer.global_step,
            "global_batch": getattr(pl_module, "global_batch", None),
            "lr": getattr(pl_module, "scaled_lr", None),
            "final": final, "best_val_top1": best_top1,
            "skipped_files": len(bad_files), "skipped_file_names": sorted(bad_files)[:100],
            "best_checkpoint": getattr(ckpt, "best_model_path", None) or None,
            "last_checkpoint": getattr(ckpt, "last_model_path", None) or None,
            "fit_seconds": round(time.monotonic() - self._t0, 1),
        }
        self.summary_path = out / self.summary_name
        self.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        self.plot_path = out / self.plot_name
        plot_curves(h, self.plot_path)


def plot_curves(history: dict[str, list], path: Path) -> None:
    """Loss, accuracy and LR curves in one PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(history["step"], history["train_loss"], label="train loss", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history["epoch"] and history["step"]:
        spe = max(history["step"]) / max(history["epoch"])
        ax.plot([e * spe for e in history["epoch"]], history["val_loss"], "o-", label="val loss")
    ax.legend()
    ax = axes[1]
    ax.plot(history["epoch"], [None if v is None else 100 * v for v in history["val_top1"]], "o-",
            label="val top-1")
    ax.plot(history["epoch"], [None if v is None else 100 * v for v in history["val_top5"]], "s--",
            label="val top-5")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax = axes[2]
    ax.plot(history["step"], history["lr"])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
