"""tools/train.py and tools/test.py: every recipe builds, one-line errors, 2-process DDP equals one
process, a SIGKILLed run resumed with --ckpt_path last ends where an unbroken run ends."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cls_helpers import tiny_imagefolder
from cvkit.tasks.cli import ClassificationCLI, main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs" / "classification").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny(cls_root, tmp_path_factory):
    return tiny_imagefolder(cls_root, tmp_path_factory.mktemp("tiny"), classes=4, train=8, val=4)


# -- recipes ----------------------------------------------------------------------------------------
def test_recipe_folder_is_complete():
    names = {p.stem for p in RECIPES}
    for d in (18, 34, 50, 101, 152):
        assert {f"resnet{d}", f"eca_resnet{d}"} <= names
    for d in (18, 34, 50, 101):
        assert {f"resnet{d}_gcp_{s}" for s in ("lrnorm", "lrfast", "lradju")} <= names
    assert {"eca_mobilenetv2", "mobilenetv2", "isqrt_resnet50", "vit_base_patch16",
            "vit_base_patch16_hc2", "vit_base_patch16_dhc2", "demo"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_and_builds_model_and_optimizer(recipe, tiny, tmp_path):
    """Every YAML goes through the real CLI parser and builds its model (on the meta device: the
    structure, not the memory) and its optimiser; the stated global batch is the recipe's LR batch."""
    raw = yaml.safe_load(recipe.read_text())
    tr = raw["trainer"]
    global_batch = raw["data"]["batch_size"] * tr.get("devices", 1) * tr.get("num_nodes", 1)
    with torch.device("meta"):
        cli = ClassificationCLI(args=["--config", str(recipe), "--data.root", str(tiny),
                                      "--trainer.devices", "1", "--trainer.num_nodes", "1",
                                      "--trainer.accelerator", "cpu", "--trainer.strategy", "auto",
                                      "--trainer.logger", "false",
                                      "--trainer.default_root_dir", str(tmp_path)], run=False)
    task = cli.model
    assert task.hparams.model_name == raw["model"]["model_name"]
    assert task.hparams.num_classes == 4  # linked to the data folder
    opt_cfg = raw["model"]["optimizer"]
    assert global_batch == opt_cfg["reference_batch"], "YAML global batch != the recipe's batch"
    out = task.build_optimizers(global_batch, steps_per_epoch=10, total_epochs=tr["max_epochs"])
    opt = out["optimizer"]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(opt_cfg["lr"])  # paper batch: no rescaling
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, opt_cfg["weight_decay"]}
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in task.model.parameters() if p.requires_grad)
    # the recipe's LR schedule is the one stated in the YAML
    assert task.schedule.name == raw["model"]["schedule"]["name"]


def test_recipe_lr_scales_with_devices(tiny, tmp_path):
    """eca_resnet50 states lr 0.1 at 8 x 32: one device with 32 gives 0.0125 (linear rule)."""
    cli = ClassificationCLI(args=["--config", str(REPO / "configs/classification/eca_resnet50.yaml"),
                                  "--data.root", str(tiny), "--trainer.devices", "1",
                                  "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                                  "--model.model_name", "resnet18",
                                  "--trainer.default_root_dir", str(tmp_path)], run=False)
    out = cli.model.build_optimizers(cli.datamodule.batch_size * cli.trainer.world_size,
                                     steps_per_epoch=10, total_epochs=100)
    assert out["optimizer"].param_groups[0]["initial_lr"] == pytest.approx(0.1 * 32 / 256)


# -- one-line errors --------------------------------------------------------------------------------
def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()
           and not ln.startswith(("Seed set", "GPU available", "TPU available", "HPU available",
                                  "💡", "/"))]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_unknown_yaml_key_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  model_nmae: resnet18\n")
    assert main(["fit", "--config", str(bad)]) == 2
    assert "model.model_nmae" in _one_error_line(capsys)


def test_missing_data_folder_is_one_line_error(tmp_path, capsys):
    assert main(["fit", "--data.root", str(tmp_path / "nowhere"),
                 "--trainer.default_root_dir", str(tmp_path)]) == 1
    assert str(tmp_path / "nowhere") in _one_error_line(capsys)


def test_print_config(capsys):
    demo = REPO / "configs/classification/demo.yaml"
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(demo), "--print_config"])
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load(demo.read_text())
    assert cfg["model"]["model_name"] == recipe["model"]["model_name"] == "eca_resnet18"
    for key, value in recipe["model"]["optimizer"].items():  # the YAML's values, completed
        assert cfg["model"]["optimizer"][key] == value, key
    assert cfg["model"]["optimizer"]["betas"] == [0.9, 0.999]  # a default filled in
    assert cfg["checkpoint"]["save_last"] is True


# -- runs in subprocesses (DDP, SIGKILL) -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_config(tmp_path: Path, name: str, tiny: Path, config_name: str | None = None,
                **overrides) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(tmp_path / name), "accelerator": "cpu", "devices": 1,
                    "max_epochs": 2, "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1},
        "model": {"model_name": "eca_resnet18",
                  "optimizer": {"name": "sgd", "lr": 0.02, "reference_batch": 8},
                  "schedule": {"name": "cosine", "per_iteration": True}},
        "data": {"root": str(tiny), "batch_size": 8, "image_size": 32, "num_workers": 0},
        "checkpoint": {"every_n_train_steps": 1},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    path = tmp_path / f"{config_name or name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, *extra: str, env_extra: dict | None = None, check: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASTER_PORT=str(_free_port()),
               PYTHONPATH=os.pathsep.join([str(REPO), str(config.parent)]))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(REPO / "tools/train.py"), "fit", "--config",
                           str(config), *extra], env=env, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _final(run_dir: Path):
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return summary, state


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tiny, tmp_path):
    """2 ranks x batch 4 (gloo) == 1 process x batch 8: same weights and metrics. A ViT (LayerNorm
    only): BatchNorm would see 4 vs 8 samples, and torch's SyncBatchNorm runs on GPUs only."""
    vit = {"model_name": "vit_tiny_patch16", "model_kwargs": {"img_size": 32, "depth": 2},
           # SGD: AdamW would blow float-level noise in zero gradients (key biases) up to lr-size steps
           "optimizer": {"name": "sgd", "lr": 0.01, "reference_batch": 8},
           "schedule": {"name": "cosine", "per_iteration": True}}
    one = _run_config(tmp_path, "one", tiny, trainer__max_epochs=1, model=vit)
    two = _run_config(tmp_path, "two", tiny, trainer__max_epochs=1, trainer__devices=2,
                      trainer__strategy="ddp", data__batch_size=4, model=vit)
    _train(one)
    _train(two)
    (s1, w1), (s2, w2) = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert s1["global_batch"] == s2["global_batch"] == 8
    assert s1["final"]["val_top1"] == s2["final"]["val_top1"]
    assert s1["final"]["val_loss"] == pytest.approx(s2["final"]["val_loss"], rel=1e-4)
    assert w1["global_step"] == w2["global_step"] == 4
    for k, v in w1["state_dict"].items():
        if v.is_floating_point():
            torch.testing.assert_close(w2["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # tools/test.py on the single-process checkpoint reproduces the validation top-1
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools/test.py"), "--checkpoint",
                           str(tmp_path / "one/checkpoints/last.ckpt"), "--data",
                           str(tiny / "val"), "--output", str(out), "--workers", "0"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["images"] == 16
    assert result["top1"] == pytest.approx(100 * s1["final"]["val_top1"])


KILLER = '''
import os, signal
from lightning.pytorch import Callback

class KillAt(Callback):
    """SIGKILL this process when a batch starts at global step ``step``."""
    def __init__(self, step: int):
        self.step = step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_unbroken_run(tiny, tmp_path):
    """4 steps per epoch, 2 epochs; killed at step 6 (mid epoch 2); resumed from last.ckpt."""
    (tmp_path / "killer.py").write_text(KILLER)
    unbroken = _run_config(tmp_path, "unbroken", tiny)
    broken = _run_config(tmp_path, "broken", tiny, trainer__callbacks=[
        {"class_path": "killer.KillAt", "init_args": {"step": 6}}])
    resume = _run_config(tmp_path, "broken", tiny, config_name="resume")  # same run folder, no killer
    _train(unbroken)
    killed = _train(broken, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = torch.load(tmp_path / "broken/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 1  # mid-epoch checkpoint
    _train(resume, "--ckpt_path", "last")
    (s1, w1), (s2, w2) = _final(tmp_path / "unbroken"), _final(tmp_path / "broken")
    assert w2["global_step"] == w1["global_step"] == 8
    for k, v in w1["state_dict"].items():
        assert torch.equal(w2["state_dict"][k], v), k
    assert s2["final"] == s1["final"]
