"""The training command line (``tools/train.py``): LightningCLI over ClassificationTask and
ClassificationDataModule, with cvkit's defaults — run folder = ``trainer.default_root_dir`` holding
CSV + TensorBoard logs of ``fit`` (a resumed fit appends; ``validate``/``test``/``predict`` log
into ``<run>/<subcommand>/``; ``predict`` writes ``<run>/predict/predictions.csv``),
``checkpoints/`` (best + ``last.ckpt``, written atomically), ``summary.json`` and ``curves.png``;
``model.num_classes`` follows the data folder.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from jsonargparse import ArgumentError, lazy_instance
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cvkit import tool_errors
from cvkit.data.datamodule import ClassificationDataModule
from cvkit.tasks.callbacks import (AppendingCSVLogger, AtomicCheckpointIO, KeepLastCheckpoint,
                                   TrainingReport)
from cvkit.tasks.classification import ClassificationTask, ConfigError
from cvkit.tasks.prediction_writer import PredictionCSVWriter


class ClassificationCLI(LightningCLI):
    """``fit`` / ``validate`` / ``test`` / ``predict`` with ``--config``, dotted overrides and
    ``--print_config``; see docs/training.md."""

    def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True, **kwargs):
        super().__init__(
            ClassificationTask, ClassificationDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "runs/classification",
                              "callbacks": [lazy_instance(TrainingReport)]},
            # parse errors come back as exceptions; main() prints them as one line
            parser_kwargs={"exit_on_error": False},
            args=args, run=run, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """``fit --ckpt_path FILE`` resumes as ``--ckpt_path last`` does: the config and the command
        line define the run. (LightningCLI replaces the model options by a checkpoint file's
        hyper-parameters, not last's: ``--model.model_kwargs '{hc_nan_guard: true}'``,
        ``--model.compile``... were silently dropped. A network other than the checkpoint's is
        refused when it loads: ``ClassificationTask._check_same_network``.) ``validate`` / ``test``
        / ``predict`` take the file's model options, as LightningCLI does. A file that is not a
        training checkpoint is one line pointing at ``--model.pretrained_path``."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not (path and Path(path).is_file()):  # "last" / "best" / none: nothing to read here
            return
        check_training_checkpoint(path, sub)
        if sub != "fit":
            super()._parse_ckpt_path()
            # the file's weights replace the initial ones, whose file may be gone (as load_task)
            self.config[sub].model.pretrained_path = None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(KeepLastCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.monitor": "val_top1",
                             "checkpoint.mode": "max", "checkpoint.save_top_k": 1,
                             "checkpoint.filename": "best-epoch{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """``data.seed`` unset follows ``seed_everything`` (resolved by now, a random one
        included): a seed sweep trains on differently ordered, differently augmented data."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        seed = config.get("seed_everything")
        if config.data.get("seed") is None and not isinstance(seed, bool) and seed is not None:
            config.data.seed = int(seed)

    def instantiate_trainer(self, **kwargs):
        cfg = self._get(self.config_init, "trainer", default={})
        plugins = cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # the user's own CheckpointIO wins
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if cfg.get("logger") in (None, True):
            root = cfg.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = run_loggers(root, self.subcommand,
                                           resuming=self._get(self.config, "ckpt_path") is not None)
        # e.g. --trainer.accelerator foo, --trainer.precision 17: Lightning raises ValueError
        with tool_errors.option_errors("bad trainer option (--trainer.*): "):
            trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict" and not any(
                isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            trainer.callbacks.append(PredictionCSVWriter())  # the user's own writer wins
        return trainer

    def before_fit(self) -> None:
        """``--ckpt_path last`` without a last checkpoint trains from scratch (Lightning's rule, for
        scripts that always pass it): say so plainly, naming the folder searched (Lightning's own
        warning advises save_last=True, which cvkit already sets)."""
        if self._get(self.config, "ckpt_path") != "last" or not self.trainer.is_global_zero:
            return
        if self._get(self.config, "trainer").get("logger") not in (None, True, False):
            return  # a user's logger decides where checkpoints go (Lightning's warning stays)
        callback = self.trainer.checkpoint_callback
        folder = Path(getattr(callback, "dirpath", None)
                      or Path(self.trainer.default_root_dir) / "checkpoints")
        if not (folder / "last.ckpt").is_file():
            print(f"warning: --ckpt_path last: no last.ckpt in {folder}: training starts from "
                  "scratch (to resume a run, give its --trainer.default_root_dir)",
                  file=sys.stderr, flush=True)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print_run_report(self.trainer)


def check_training_checkpoint(path, subcommand: str = "fit") -> None:
    """``path`` must be a Lightning training checkpoint (what ``--ckpt_path`` restores): a plain
    state dict or another tool's file is one line, not Lightning's KeyError."""
    import torch

    from cvkit.models.checkpoint import CheckpointError, load_failure

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"--ckpt_path {path} is not a readable training checkpoint: "
                              f"{load_failure(e, path)}") from None
    if not (isinstance(obj, dict) and "pytorch-lightning_version" in obj and "state_dict" in obj):
        advice = (f"to start a run from its weights, use --model.pretrained_path {path}"
                  if subcommand == "fit" else
                  f"to evaluate plain weights: tools/test.py --checkpoint {path} --model NAME")
        raise CheckpointError(f"--ckpt_path {path} is not a training checkpoint of tools/train.py "
                              f"(it holds no Lightning state); {advice}")


def run_loggers(root: str, subcommand: Optional[str], resuming: bool) -> list:
    """CSV + TensorBoard loggers. ``fit`` logs into the run folder itself (where the checkpoints
    are, so ``--ckpt_path last`` finds them); a resumed fit appends to its ``metrics.csv``;
    ``validate`` / ``test`` / ``predict`` log into ``<run>/<subcommand>/`` and leave the fit's
    logs alone."""
    version = "" if subcommand in (None, "fit") else subcommand
    csv_logger = AppendingCSVLogger if resuming and not version else CSVLogger
    return [csv_logger(root, name="", version=version),
            TensorBoardLogger(root, name="", version=version, default_hp_metric=False)]


def print_run_report(trainer) -> None:
    """What a user needs after ``fit``: top-1, where things are, how to evaluate."""
    report = next((c for c in trainer.callbacks if isinstance(c, TrainingReport)), None)
    if report is None or report.summary_path is None:
        return
    s = json.loads(report.summary_path.read_text())
    top1 = s["final"].get("val_top1")
    ckpt = s["best_checkpoint"] or s["last_checkpoint"]
    dm = trainer.datamodule
    val = Path(dm.hparams.root) / dm.hparams.val_split if dm is not None else "<val folder>"
    lines = [
        "",
        f"validation top-1: {100 * top1:.2f} %  (best {100 * s['best_val_top1']:.2f} %, "
        f"{s['epochs']} epochs, {s['fit_seconds']:.0f} s)" if top1 is not None else
        "validation: not run",
        f"skipped image files: {s['skipped_files']}" if s["skipped_files"] else None,
        f"checkpoint: {ckpt}",
        f"curves:     {report.plot_path}",
        f"summary:    {report.summary_path}   (TensorBoard: tensorboard --logdir {report.summary_path.parent})",
        f"evaluate:   python tools/test.py --checkpoint {ckpt} --data {val}",
    ]
    print("\n".join(line for line in lines if line is not None), flush=True)

_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")


def argument_error_line(e: ArgumentError) -> str:
    """jsonargparse's nested, multi-line message as one line: the dotted key and the reason (for
    an unknown key of a dataclass option, the keys it takes)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    keys = [m.group(1) for ln in lines for m in [re.match(r'Parser key "([^"]+)"', ln)] if m]
    reasons = [ln.lstrip("- ") for ln in lines
               if not ln.startswith(("Parser key", "- Problem with given class_path", *_STRUCTURE))]
    if not keys or not reasons:
        return lines[0] if lines else type(e).__name__
    key = ".".join(dict.fromkeys(keys))  # 'model.optimizer' + 'name' -> 'model.optimizer.name'
    reason = reasons[0]
    cls = next((m.group(1) for ln in lines for m in [re.search(r"class_path '([\w.]+)'", ln)] if m),
               None)
    if cls and reason.startswith("Option ") and "not accepted" in reason:
        module, _, name = cls.rpartition(".")
        target = getattr(importlib.import_module(module), name, None)
        if dataclasses.is_dataclass(target):
            reason += f" (keys: {', '.join(f.name for f in dataclasses.fields(target))})"
    return f"{key}: {reason}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; errors a user can cause end as one line on stderr (:mod:`cvkit.tool_errors`):
    exit code 2 for a bad option or config key/value, 1 for bad data or a failed run (a
    non-finite loss, a NaN caught by ``hc_nan_guard``: one line naming the step / layer)."""
    try:
        ClassificationCLI(args=None if argv is None else list(argv))
    except ArgumentError as e:
        print(f"error: bad option or config key: {argument_error_line(e)}", file=sys.stderr)
        return tool_errors.USAGE
    except ConfigError as e:
        return tool_errors.report(e, prefix="bad option or config value: ")
    except MisconfigurationException as e:  # e.g. more GPUs asked for than the machine has
        if "gpu" in str(e).lower():  # the recipes ask for 8 GPUs
            import torch

            hint = (f"--trainer.devices {torch.cuda.device_count()}, and --trainer.num_nodes 1 "
                    "on one machine" if torch.cuda.is_available() else
                    "on this machine's CPU: --trainer.accelerator cpu --trainer.devices 1 "
                    "--trainer.num_nodes 1")  # the ViT recipes ask for 8 nodes
            e = MisconfigurationException(f"{e} ({hint}; the LR follows the global batch)")
        return tool_errors.report(e, prefix="bad trainer option (--trainer.*): ")
    except tool_errors.USER_ERRORS as e:
        return tool_errors.report(e)
    return 0
