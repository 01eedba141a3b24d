"""tools/train.py and tools/test.py: every recipe builds, one-line errors, 2-process DDP equals one
process, a SIGKILLed run resumed with --ckpt_path last ends where an unbroken run ends."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import cvkit
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


def _parsed_recipe(recipe, tiny, tmp_path) -> ClassificationCLI:
    """The recipe through the real CLI parser on one CPU process, its model built on the meta
    device (the structure, not the memory)."""
    with torch.device("meta"):
        return ClassificationCLI(args=["--config", str(recipe), "--data.root", str(tiny),
                                       "--trainer.devices", "1", "--trainer.num_nodes", "1",
                                       "--trainer.accelerator", "cpu", "--trainer.strategy", "auto",
                                       "--trainer.logger", "false",
                                       "--trainer.default_root_dir", str(tmp_path)], run=False)


@pytest.mark.parametrize("recipe", ["resnet50_gcp_lrfast", "mobilenetv2_gcp_lrnorm"])
def test_gcp_dim128_variant_overlays_any_gcp_recipe(recipe, tiny, tmp_path):
    """variants/gcp_dim128.yaml after a GCP recipe: the paper's 128-d head (8256-d fc input), the
    recipe's model, optimiser and schedule unchanged."""
    base = _parsed_recipe(REPO / f"configs/classification/{recipe}.yaml", tiny, tmp_path).model
    with torch.device("meta"):
        cli = ClassificationCLI(args=["--config", str(REPO / f"configs/classification/{recipe}.yaml"),
                                      "--config", str(REPO / "configs/classification/variants/gcp_dim128.yaml"),
                                      "--data.root", str(tiny), "--trainer.devices", "1",
                                      "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                                      "--trainer.default_root_dir", str(tmp_path)], run=False)
    task = cli.model
    assert task.hparams.model_kwargs == {"global_pool": "gcp", "gcp_dim": 128}
    assert task.model.global_pool.dim == 128 and task.model.get_classifier().in_features == 8256
    assert base.model.get_classifier().in_features == 32896
    assert task.hparams.model_name == base.hparams.model_name
    assert task.optimizer_cfg == base.optimizer_cfg and task.schedule == base.schedule


@pytest.mark.parametrize("extra,seed", [([], 0), (["--seed_everything", "7"], 7),
                                        (["--seed_everything", "7", "--data.seed", "3"], 3)])
def test_data_seed_follows_seed_everything_unless_set(extra, seed, tiny, tmp_path, monkeypatch):
    """A seed sweep (--seed_everything N) trained every run on the same order and augmentation:
    data.seed was a separate 0. Unset, it is now the run's seed, recorded in the hparams."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything sets it: restored after
    cli = ClassificationCLI(args=["--data.root", str(tiny), "--trainer.accelerator", "cpu",
                                  "--trainer.logger", "false", "--model.model_name", "resnet18",
                                  "--trainer.default_root_dir", str(tmp_path), *extra], run=False)
    assert cli.datamodule.seed == seed and cli.datamodule.hparams.seed == seed
    cli.datamodule.setup("fit")
    assert cli.datamodule.train_set.seed == seed


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_and_builds_model_and_optimizer(recipe, tiny, tmp_path):
    """Every YAML goes through the real CLI parser and builds its model (on the meta device: the
    structure, not the memory) and its optimiser; the stated global batch is the recipe's LR batch."""
    raw = yaml.safe_load(recipe.read_text())
    tr = raw["trainer"]
    global_batch = raw["data"]["batch_size"] * tr.get("devices", 1) * tr.get("num_nodes", 1)
    cli = _parsed_recipe(recipe, tiny, tmp_path)
    task = cli.model
    assert task.hparams.model_name == raw["model"]["model_name"]
    assert task.hparams.num_classes == 4  # linked to the data folder
    opt_cfg = raw["model"]["optimizer"]
    assert global_batch == opt_cfg["reference_batch"], "YAML global batch != the recipe's batch"
    out = task.build_optimizers(global_batch, steps_per_epoch=10, total_epochs=tr["max_epochs"])
    opt = out["optimizer"]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(opt_cfg["lr"])  # paper batch: no rescaling
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    norm_weights = [p for m in task.model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                    for p in m.parameters()]
    # the ECA-Net script decays every parameter; the others follow timm (no decay on 1-d params)
    expected = opt_cfg["weight_decay"] if opt_cfg.get("decay_norm_and_bias") else 0.0
    assert {decay_of[id(p)] for p in norm_weights} <= {expected}
    assert set(decay_of.values()) <= {0.0, opt_cfg["weight_decay"]}
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in task.model.parameters() if p.requires_grad)
    # the recipe's LR schedule is the one stated in the YAML
    assert task.schedule.name == raw["model"]["schedule"]["name"]


# The papers' numbers (../shared/reference/papers.md), typed in: optimiser, lr at the paper's global
# batch, weight decay, epochs, and the LR at the start of chosen epochs (1-based, as in the papers).
def _lrfast(e):
    return 0.1 * (1 - (e - 1) / 52) ** 11


def _lradju(e):
    return 0.1 * (1 - (e - 1) / 49) ** 2


PAPER = {
    # decay_all: the ECA-Net release's main.py / light_main.py, the GCP release's src/main.py and
    # fast-MPN-COV's main.py (iSQRT-COV; SGD over three parameter groups, each with the weight
    # decay) decay every parameter (SGD(model.parameters(), weight_decay=...))
    "eca_resnet50": dict(opt="sgd", lr=0.1, batch=256, wd=1e-4, epochs=100, decay_all=True,
                         lr_at={1: 0.1, 30: 0.1, 31: 0.01, 61: 1e-3, 91: 1e-4}),
    "eca_mobilenetv2": dict(opt="sgd", lr=0.045, batch=96, wd=4e-5, epochs=400, decay_all=True,
                            lr_at={1: 0.045, 11: 0.045 * 0.98 ** 10, 400: 0.045 * 0.98 ** 399}),
    "mobilenetv2": dict(opt="sgd", lr=0.045, batch=96, wd=4e-5, epochs=400, decay_all=True,
                        lr_at={1: 0.045, 101: 0.045 * 0.98 ** 100}),
    "isqrt_resnet50": dict(opt="sgd", lr=0.1, batch=160, wd=1e-4, epochs=65, decay_all=True,
                           lr_at={30: 0.1, 31: 0.01, 45: 0.01, 46: 1e-3, 61: 1e-4}),
    "resnet50_gcp_lrnorm": dict(decay_all=True, opt="sgd", lr=0.1, batch=256, wd=1e-4, epochs=100,
                                lr_at={30: 0.1, 31: 0.01, 61: 1e-3}),
    "resnet50_gcp_lrfast": dict(decay_all=True, opt="sgd", lr=0.1, batch=256, wd=1e-4, epochs=30,
                                lr_at={e: _lrfast(e) for e in (1, 2, 15, 30)}),
    "resnet50_gcp_lradju": dict(decay_all=True, opt="sgd", lr=0.1, batch=256, wd=1e-4, epochs=50,
                                lr_at={e: _lradju(e) for e in (1, 2, 25, 50)}),
    "mobilenetv2_gcp_lrfast": dict(decay_all=True, opt="sgd", lr=0.06, batch=96, wd=4e-5, epochs=100,
                                   lr_at={1: 0.06, 51: 0.06 * 0.92 ** 50}),
    # the GCP release's MobileNetV2 LRadju: batch 192, 150 epochs, piecewise linear (src/main.py,
    # its 0-based epoch e - 1: 0.06 - 0.05 (e - 1) / 50 up to e = 51, ...)
    "mobilenetv2_gcp_lradju": dict(decay_all=True, opt="sgd", lr=0.06, batch=192, wd=4e-5,
                                   epochs=150, lr_at={1: 0.06, 26: 0.06 - 0.05 * 25 / 50, 51: 0.01,
                                                      76: 0.01 - 0.009 * 25 / 50, 101: 0.001,
                                                      150: 0.001 - 0.00099 * 49 / 50}),
    "vit_base_patch16_hc2": dict(opt="adamw", lr=3e-3, batch=4096, wd=0.3, epochs=300,
                                 betas=(0.9, 0.999), mixup=0.2, clip=1.0, warmup_steps=10_000),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_matches_the_paper(name, tiny, tmp_path):
    paper = PAPER[name]
    recipe = REPO / "configs/classification" / f"{name}.yaml"
    raw = yaml.safe_load(recipe.read_text())["trainer"]
    cli = _parsed_recipe(recipe, tiny, tmp_path)
    task, opt = cli.model, cli.model.optimizer_cfg
    batch = cli.datamodule.batch_size * raw.get("devices", 1) * raw.get("num_nodes", 1)
    assert (opt.name, opt.lr, opt.reference_batch, batch, opt.weight_decay) == \
        (paper["opt"], paper["lr"], paper["batch"], paper["batch"], paper["wd"])
    assert cli.trainer.max_epochs == paper["epochs"]
    assert opt.decay_norm_and_bias == paper.get("decay_all", False)
    if paper["opt"] == "sgd":
        assert opt.momentum == 0.9 and not opt.nesterov
    else:
        assert tuple(opt.betas) == paper["betas"] and task.hparams.mixup == paper["mixup"]
        assert cli.trainer.gradient_clip_val == paper["clip"]
        assert (task.schedule.name, task.schedule.warmup_steps) == ("cosine", paper["warmup_steps"])
    steps = 10
    out = task.build_optimizers(paper["batch"], steps_per_epoch=steps, total_epochs=paper["epochs"])
    factor = out["lr_scheduler"]["scheduler"].lr_lambdas[0]
    for epoch, lr in paper.get("lr_at", {}).items():
        assert paper["lr"] * factor((epoch - 1) * steps) == pytest.approx(lr, rel=1e-9), epoch


# The released ECA-Net models' kernel sizes (papers.md), with which the papers' numbers were
# measured: per stage for the ResNets, per block by width (1 below 96 channels, else 3) for
# MobileNetV2. Eq. 12 (the presets' default) gives e.g. (5, 5, 5, 7) on ResNet-50.
RELEASED_ECA_K = {"eca_resnet18": (3, 5, 7, 7), "eca_resnet34": (3, 3, 5, 7),
                  "eca_resnet50": (3, 5, 5, 7), "eca_resnet101": (3, 3, 5, 7),
                  "eca_resnet152": (3, 3, 5, 7), "eca_mobilenetv2": None}


@pytest.mark.parametrize("name", sorted(RELEASED_ECA_K))
def test_eca_recipe_trains_the_released_architecture(name, tiny, tmp_path):
    """A recipe that reproduces a number of ECA-Net's tables trains the model the number was
    measured with: ECA-ResNet-50 has its 80 ECA parameters (3 x 3 + 4 x 5 + 6 x 5 + 3 x 7), and a
    checkpoint it writes loads where the release does."""
    from cvkit.layers.eca import EcaModule

    model = _parsed_recipe(REPO / "configs/classification" / f"{name}.yaml", tiny, tmp_path).model.model
    ecas = [m for m in model.modules() if isinstance(m, EcaModule)]
    sizes = [m.conv.weight.shape[-1] for m in ecas]
    if name == "eca_mobilenetv2":
        assert sizes == [1 if m.channels < 96 else 3 for m in ecas]
    else:
        per_stage = [[m.conv.weight.shape[-1] for m in stage.modules() if isinstance(m, EcaModule)]
                     for stage in (model.layer1, model.layer2, model.layer3, model.layer4)]
        assert [set(s) for s in per_stage] == [{k} for k in RELEASED_ECA_K[name]]
    if name == "eca_resnet50":
        assert sum(sizes) == 80


def test_recipe_lr_scales_with_nodes_devices_and_accumulation(tiny, tmp_path, monkeypatch):
    """eca_resnet50 states lr 0.1 at 8 x 32. The task's own configure_optimizers in a real
    one-step fit: batch 4 x 2 devices x 2 nodes (world size 4, faked: one process) x 2 accumulated
    batches = global batch 32, lr 0.1 x 32 / 256 (linear rule)."""
    from lightning.pytorch import Trainer

    cli = ClassificationCLI(args=["--config", str(REPO / "configs/classification/eca_resnet50.yaml"),
                                  "--data.root", str(tiny), "--data.batch_size", "4",
                                  "--data.image_size", "32", "--data.num_workers", "0",
                                  "--trainer.devices", "1", "--trainer.accelerator", "cpu",
                                  "--trainer.accumulate_grad_batches", "2",
                                  "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                                  "--trainer.logger", "false", "--model.model_name", "eca_resnet18",
                                  "--trainer.default_root_dir", str(tmp_path)], run=False)
    monkeypatch.setattr(Trainer, "world_size", property(lambda self: 2 * 2))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.global_batch == 32
    assert cli.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.1 * 32 / 256)


# -- one-line errors --------------------------------------------------------------------------------
def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()
           and not ln.startswith(("Seed set", "GPU available", "TPU available", "HPU available",
                                  "💡", "/"))]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_gpu_recipe_on_a_cpu_only_machine_is_one_line_exit_2(tiny, tmp_path, capsys):
    """The recipes ask for the paper's 8 devices: with Lightning's automatic accelerator a
    CPU-only machine started 8 gloo processes; they name the GPU, so it is one line."""
    rc = main(["fit", "--config", str(REPO / "configs/classification/resnet18.yaml"),
               "--data.root", str(tiny), "--trainer.default_root_dir", str(tmp_path)])
    assert rc == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: bad trainer option (--trainer.*)") and "gpu" in line, line
    assert "--trainer.accelerator cpu --trainer.devices 1 --trainer.num_nodes 1" in line, line


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


def _train(config: Path, *extra: str, env_extra: dict | None = None, check: bool = True,
           subcommand: str = "fit"):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASTER_PORT=str(_free_port()),
               PYTHONPATH=os.pathsep.join([str(REPO), str(config.parent)]))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(REPO / "tools/train.py"), subcommand, "--config",
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
    # predict on 2 ranks writes the rows of 1 process: every image once, the same top-k
    last = str(tmp_path / "one/checkpoints/last.ckpt")
    for config in (one, two):
        _train(config, "--ckpt_path", last, subcommand="predict")
    rows = {}
    for name in ("one", "two"):
        with open(tmp_path / name / "predict" / "predictions.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["one"]) == len(rows["two"]) == 16
    for a, b in zip(rows["one"], rows["two"]):
        assert (a["path"], a["target"], a["pred"]) == (b["path"], b["target"], b["pred"])
        assert float(a["prob"]) == pytest.approx(float(b["prob"]), abs=1e-5)
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
@pytest.mark.parametrize("checkpoint,epochs,kill,saved", [
    ({"every_n_train_steps": 1}, 2, 6, (1, 6)),  # a checkpoint every step: the kill's step
    ({}, 3, 10, (1, 8)),  # the defaults: last.ckpt of epoch 2, whether val_top1 improved or not
], ids=["every-step", "defaults"])
def test_sigkill_mid_epoch_then_resume_matches_unbroken_run(tiny, tmp_path, checkpoint, epochs,
                                                            kill, saved):
    """4 steps per epoch; killed at step ``kill`` (mid epoch); resumed from last.ckpt."""
    (tmp_path / "killer.py").write_text(KILLER)
    opts = dict(checkpoint=checkpoint, trainer__max_epochs=epochs)
    unbroken = _run_config(tmp_path, "unbroken", tiny, **opts)
    broken = _run_config(tmp_path, "broken", tiny, trainer__callbacks=[
        {"class_path": "killer.KillAt", "init_args": {"step": kill}}], **opts)
    resume = _run_config(tmp_path, "broken", tiny, config_name="resume", **opts)  # no killer
    _train(unbroken)
    killed = _train(broken, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = torch.load(tmp_path / "broken/checkpoints/last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == saved
    _train(resume, "--ckpt_path", "last")
    (s1, w1), (s2, w2) = _final(tmp_path / "unbroken"), _final(tmp_path / "broken")
    assert w2["global_step"] == w1["global_step"] == 4 * epochs
    for k, v in w1["state_dict"].items():
        assert torch.equal(w2["state_dict"][k], v), k
    assert s2["final"] == s1["final"]


# -- last.ckpt, exact resume, logs (in-process runs of the CLI) -------------------------------------
def _fit(tmp_path: Path, name: str, tiny: Path, *extra: str, **overrides) -> Path:
    """``tools/train.py fit`` in this process on the tiny set: 8 batches of 4 per epoch; returns the
    run folder. Not ``trainer.deterministic``: that switch would stay on for the rest of the
    session, and these CPU kernels are deterministic anyway."""
    overrides.setdefault("trainer__deterministic", False)
    overrides.setdefault("data__batch_size", 4)
    overrides.setdefault("checkpoint", {})
    config = _run_config(tmp_path, name, tiny, config_name=f"{name}-{len(list(tmp_path.glob('*.yaml')))}",
                         **overrides)
    assert main(["fit", "--config", str(config), *extra]) == 0
    return tmp_path / name


def _weights(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def test_last_ckpt_is_rewritten_every_epoch_when_the_metric_gets_worse(tiny, tmp_path):
    """The monitored value gets worse in epoch 2 (monitor `epoch`, mode min): best stays at epoch 1,
    last.ckpt still holds the final state (Lightning 2.6 alone left it at epoch 1)."""
    run = _fit(tmp_path, "worse", tiny, checkpoint={"monitor": "epoch", "mode": "min"})
    last = _weights(run)
    assert (last["epoch"], last["global_step"]) == (1, 16)
    assert _weights(run, "best-epoch000.ckpt")["global_step"] == 8


@pytest.fixture(scope="module")
def stopped_and_resumed(tiny, tmp_path_factory):
    """An unbroken 12-step run and one stopped by max_steps at step 3 of its 8-batch first epoch,
    then resumed with --ckpt_path last to step 12 (max_epochs 2 in all three: the cosine schedule
    spans 16 steps whatever max_steps says)."""
    tmp = tmp_path_factory.mktemp("resume")
    unbroken = _fit(tmp, "unbroken", tiny, trainer__max_steps=12)
    stopped = _fit(tmp, "stopped", tiny, trainer__max_steps=3)
    first = _weights(stopped)
    history = (stopped / "metrics.csv").read_text()
    _fit(tmp, "stopped", tiny, "--ckpt_path", "last", trainer__max_steps=12)
    return unbroken, stopped, first, history


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)


def test_stop_mid_epoch_then_resume_equals_unbroken_run(stopped_and_resumed):
    unbroken, stopped, first, _ = stopped_and_resumed
    # the stop left a true mid-epoch checkpoint: epoch 0 unfinished, 3 batches of it consumed
    assert (first["epoch"], first["global_step"]) == (0, 3)
    assert first["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == 0
    assert first["ClassificationDataModule"]["train_position"] == {"epoch": 0, "batches": 3}
    _assert_same_weights(_weights(unbroken), _weights(stopped))


def test_resumed_fit_appends_to_metrics_csv_and_validate_logs_apart(stopped_and_resumed, tiny):
    import csv

    _, stopped, _, history = stopped_and_resumed
    text = (stopped / "metrics.csv").read_text()
    steps = [int(r["step"]) for r in csv.DictReader(text.splitlines()) if r.get("train_loss_step")]
    assert steps == list(range(12))  # steps 0-2 of the first run, 3-11 of the resumed one
    assert len(history.splitlines()) >= 4
    before = (stopped / "metrics.csv").read_bytes()
    config = sorted(stopped.parent.glob("stopped-*.yaml"))[-1]
    assert main(["validate", "--config", str(config), "--ckpt_path",
                 str(stopped / "checkpoints/last.ckpt")]) == 0
    assert (stopped / "metrics.csv").read_bytes() == before  # the fit's log is untouched
    assert "val_top1" in (stopped / "validate" / "metrics.csv").read_text()


def test_resume_after_an_epoch_cut_by_limit_train_batches(tiny, tmp_path):
    """limit_train_batches=4 of 8: a run of 1 epoch resumed to 2 equals 2 unbroken epochs (the
    resumed run starts epoch 2 at its first batch, not at batch 4 of it). A per-epoch schedule
    (x0.5 / epoch): cosine would span max_epochs, which differs between the runs."""
    opts = dict(trainer__limit_train_batches=4,
                model__schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    unbroken = _fit(tmp_path, "unbroken", tiny, **opts)
    cut = _fit(tmp_path, "cut", tiny, trainer__max_epochs=1, **opts)
    assert _weights(cut)["ClassificationDataModule"]["train_position"] == \
        {"epoch": 1, "batches": 0}
    _fit(tmp_path, "cut", tiny, "--ckpt_path", "last", **opts)
    _assert_same_weights(_weights(unbroken), _weights(cut))


@pytest.fixture(scope="module")
def one_epoch_run(tiny, tmp_path_factory):
    """A finished 1-epoch run (8 batches of 4) to resume from."""
    tmp = tmp_path_factory.mktemp("one-epoch")
    return tmp, _fit(tmp, "run", tiny, trainer__max_epochs=1)


def test_resume_at_another_global_batch_is_refused_and_the_checkpoint_kept(one_epoch_run, tiny,
                                                                             capsys):
    """Batch 4 -> 2 on resume: the schedule would continue at step 8 = epoch 0.5 of the new 16
    steps per epoch (the LR back up) and the LR stay the checkpoint's although the log said it
    was rescaled. Refused with one line, before a step; last.ckpt untouched."""
    tmp, run = one_epoch_run
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    config = _run_config(tmp, "run", tiny, config_name="half-batch", data__batch_size=2,
                         checkpoint={}, trainer__deterministic=False)
    capsys.readouterr()
    assert main(["fit", "--config", str(config), "--ckpt_path", "last"]) == 2
    line = _one_error_line(capsys)
    assert "global batch 4" in line and "steps per epoch 8" in line and "pretrained_path" in line
    assert last.read_bytes() == before


def test_resume_with_another_weight_decay_grouping_names_the_option(one_epoch_run, tiny, capsys):
    """The ECA-Net / GCP recipes now decay norms and biases (one parameter group): resuming a run
    started before was PyTorch's "loaded state dict has a different number of parameter groups"
    (exit 1, no option named). One line naming decay_norm_and_bias; last.ckpt untouched."""
    tmp, run = one_epoch_run
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    capsys.readouterr()
    config = _run_config(tmp, "run", tiny, config_name="decay-all", checkpoint={},
                         trainer__deterministic=False)
    assert main(["fit", "--config", str(config), "--ckpt_path", "last",
                 "--model.optimizer.decay_norm_and_bias", "true"]) == 2
    line = _one_error_line(capsys)
    assert "holds an optimiser state of 2 parameter groups; this run builds 1" in line, line
    assert line.endswith("resume with --model.optimizer.decay_norm_and_bias false"), line
    assert last.read_bytes() == before


def test_ckpt_path_file_resumes_with_the_command_line_model_options(one_epoch_run, tiny):
    """``--ckpt_path FILE`` as ``--ckpt_path last``: the command line's --model.* options stay
    (LightningCLI replaced them by the file's hyper-parameters, dropping e.g. label_smoothing)."""
    tmp, run = one_epoch_run
    copy = tmp / "copy.ckpt"
    copy.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    config = _run_config(tmp, "file-resume", tiny, trainer__max_epochs=2, data__batch_size=4,
                         checkpoint={}, trainer__deterministic=False)
    assert main(["fit", "--config", str(config), "--ckpt_path", str(copy),
                 "--model.label_smoothing", "0.1"]) == 0
    state = _weights(tmp / "file-resume")
    assert state["epoch"] == 1 and state["global_step"] == 16      # resumed: one more epoch
    assert state["hyper_parameters"]["label_smoothing"] == 0.1


def test_ckpt_path_of_another_network_or_plain_weights_is_one_line(one_epoch_run, tiny, capsys):
    tmp, run = one_epoch_run
    last = run / "checkpoints" / "last.ckpt"
    config = _run_config(tmp, "other", tiny, data__batch_size=4, checkpoint={},
                         trainer__deterministic=False)
    capsys.readouterr()
    assert main(["fit", "--config", str(config), "--ckpt_path", str(last),
                 "--model.model_name", "resnet18"]) == 1
    line = _one_error_line(capsys)
    assert "holds another network" in line and "model.model_name='eca_resnet18'" in line
    assert "layer1.0.eca.conv.weight" in line
    plain = tmp / "plain.pth"
    torch.save(cvkit.create_model("resnet18", num_classes=4).state_dict(), plain)
    assert main(["fit", "--config", str(config), "--ckpt_path", str(plain)]) == 1
    line = _one_error_line(capsys)
    assert "not a training checkpoint" in line and f"--model.pretrained_path {plain}" in line


def test_validate_ckpt_path_file_takes_the_checkpoints_model(one_epoch_run, tiny, capsys):
    """validate / test / predict with a checkpoint file keep LightningCLI's rule (the file's model
    options), unlike fit, which resumes with the config's; plain weights there point at
    tools/test.py."""
    tmp, run = one_epoch_run
    config = _run_config(tmp, "validate-other", tiny, data__batch_size=4, checkpoint={},
                         trainer__deterministic=False)
    last = run / "checkpoints" / "last.ckpt"
    assert main(["validate", "--config", str(config), "--ckpt_path", str(last),
                 "--model.model_name", "resnet18"]) == 0
    # predict writes its predictions (LightningCLI discards Trainer.predict's return value)
    assert main(["predict", "--config", str(config), "--ckpt_path", str(last)]) == 0
    with open(tmp / "validate-other" / "predict" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = sorted((tiny / "val").rglob("*.*"))
    assert sorted(Path(r["path"]) for r in rows) == val
    for r in rows:
        top = [item.rsplit(":", 1) for item in r["top4"].split(" ")]
        assert r["target"] == Path(r["path"]).parent.name and r["pred"] == top[0][0]
        assert sorted(name for name, _ in top) == sorted(p.name for p in (tiny / "val").iterdir())
    plain = tmp / "plain-validate.pth"
    torch.save(cvkit.create_model("resnet18", num_classes=4).state_dict(), plain)
    capsys.readouterr()
    assert main(["validate", "--config", str(config), "--ckpt_path", str(plain)]) == 1
    assert "tools/test.py --checkpoint" in _one_error_line(capsys)


def test_ckpt_path_on_a_folder_of_other_classes_is_one_line(one_epoch_run, tiny, tmp_path,
                                                             capsys):
    """validate / test / fit with --ckpt_path read a val folder whose class folders are not the
    checkpoint's in label order (renamed so that they sort otherwise: labels permuted) and
    scored it with exit 0; tools/test.py refused it. Refused the same way here, naming the
    label; the same classes under their own names still validate."""
    tmp, run = one_epoch_run
    last = run / "checkpoints" / "last.ckpt"
    classes = sorted(p.name for p in (tiny / "val").iterdir())
    other = tmp_path / "other"
    for i, name in enumerate(classes):  # the last class sorts first now
        new = ("a_" if i == len(classes) - 1 else "b_") + name
        for split in ("train", "val"):
            shutil.copytree(tiny / split / name, other / split / new)
    capsys.readouterr()
    for subcommand in ("validate", "test", "fit"):
        config = _run_config(tmp, f"classes-{subcommand}", tiny, data__batch_size=4,
                             data__root=str(other), checkpoint={}, trainer__deterministic=False)
        assert main([subcommand, "--config", str(config), "--ckpt_path", str(last)]) == 1
        line = _one_error_line(capsys)
        assert line.startswith(f"error: the class folders of {other}/") and \
            f"label 0 is 'a_{classes[-1]}' there, '{classes[0]}' in training" in line, line
        assert f"not the classes {last} was trained on" in line, line
    config = _run_config(tmp, "classes-same", tiny, data__batch_size=4, checkpoint={},
                         trainer__deterministic=False)
    assert main(["validate", "--config", str(config), "--ckpt_path", str(last)]) == 0


def test_validate_a_fine_tune_whose_initial_weights_are_gone(tiny, tmp_path):
    """The checkpoint file's model options include the fine-tune's pretrained_path; validate
    loads the checkpoint's weights, so a pretrained file moved or deleted since does not matter."""
    init = tmp_path / "init.pth"
    torch.save(cvkit.create_model("eca_resnet18", num_classes=4).state_dict(), init)
    run = _fit(tmp_path, "fine-tune", tiny, f"--model.pretrained_path={init}",
               trainer__max_steps=1)
    init.unlink()
    config = sorted(tmp_path.glob("fine-tune-*.yaml"))[-1]
    assert main(["validate", "--config", str(config), "--ckpt_path",
                 str(run / "checkpoints" / "last.ckpt")]) == 0


def test_network_and_schedule_checks_in_every_restore_order(one_epoch_run):
    """FSDP / DeepSpeed load the weights themselves (no state_dict reaches on_load_checkpoint) and
    restore after configure_optimizers; load_from_checkpoint has no trainer and may be non-strict:
    no false "another network", and the schedule check still runs."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.trainer.states import TrainerFn

    from cvkit.models.checkpoint import CheckpointError
    from cvkit.tasks.classification import ClassificationTask, ConfigError

    _, run = one_epoch_run
    ckpt = _weights(run)
    other = {**ckpt, "state_dict": {k: v for k, v in ckpt["state_dict"].items() if ".eca." not in k}}
    task = ClassificationTask("resnet18", num_classes=4)
    task.on_load_checkpoint(other)                                  # no trainer: load_from_checkpoint
    task.trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(CheckpointError, match="holds another network"):
        task.on_load_checkpoint(ckpt)
    task.strict_loading = False
    task.on_load_checkpoint(ckpt)                                   # non-strict: the user's choice
    task.strict_loading = True
    task.trainer.state.fn = TrainerFn.FITTING
    fsdp = {k: v for k, v in other.items() if k != "state_dict"}
    task._schedule_now = {"global_batch": 8, "steps_per_epoch": 4}  # configure_optimizers ran first
    with pytest.raises(ConfigError, match="global batch 4, steps per epoch 8; this run has 8, 4"):
        task.on_load_checkpoint(fsdp)
    task.setup("fit")                                               # a new fit starts clean
    assert task._schedule_now is None and task._resumed_schedule is None


def test_test_tool_checks_the_class_names_the_checkpoint_was_trained_on(one_epoch_run, tiny,
                                                                         tmp_path, capsys):
    """A checkpoint records its training classes in label order; tools/test.py on a folder of as
    many classes under other names (labels that mean other classes) is one line, not a score."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("cvkit_test_tool", REPO / "tools" / "test.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    test_main = tool.main
    _, run = one_epoch_run
    last = run / "checkpoints" / "last.ckpt"
    classes = sorted(p.name for p in (tiny / "train").iterdir())
    assert _weights(run)["ClassificationDataModule"]["classes"] == classes
    common = ["--checkpoint", str(last), "--workers", "0", "--accelerator", "cpu",
              "--output", str(tmp_path / "eval.json")]
    assert test_main([*common, "--data", str(tiny / "val")]) == 0
    other = tmp_path / "val"
    shutil.copytree(tiny / "val", other)
    (other / classes[1]).rename(other / "zz_other")
    capsys.readouterr()
    assert test_main([*common, "--data", str(other)]) == 1
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and f"label 1 is {classes[2]!r} there, {classes[1]!r} in training" in line[0]


def test_ckpt_path_last_without_a_checkpoint_says_it_starts_from_scratch(tiny, tmp_path, capsys):
    run = _fit(tmp_path, "fresh", tiny, "--ckpt_path", "last", trainer__max_steps=1)
    err = capsys.readouterr().err
    assert (f"warning: --ckpt_path last: no last.ckpt in {run / 'checkpoints'}: training starts "
            "from scratch") in err
    _fit(tmp_path, "fresh", tiny, "--ckpt_path", "last", trainer__max_steps=2)  # now it resumes
    assert "training starts from scratch" not in capsys.readouterr().err
    assert _weights(run)["global_step"] == 2


def test_stale_checkpoint_temp_files_are_removed_and_atomic_io_kept_with_user_plugins(tiny, tmp_path):
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.pytorch.plugins.environments import LightningEnvironment

    from cvkit.tasks.callbacks import AtomicCheckpointIO

    ckpts = tmp_path / "stale" / "checkpoints"
    ckpts.mkdir(parents=True)
    stale, other = ckpts / ".last.ckpt.k3x9_q.tmp", ckpts / "notes.tmp"
    stale.write_bytes(b"PK\x03\x04half")
    other.write_text("not ours")
    _fit(tmp_path, "stale", tiny, trainer__max_steps=1)
    assert not stale.exists() and other.exists()

    def checkpoint_io(plugins):
        args = ["--data.root", str(tiny), "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu"]
        for p in plugins:
            args += ["--trainer.plugins+", p]
        return ClassificationCLI(args=args, run=False).trainer.strategy.checkpoint_io

    env = "lightning.pytorch.plugins.environments.LightningEnvironment"
    assert isinstance(checkpoint_io([env]), AtomicCheckpointIO)  # kept beside the user's plugin
    own = checkpoint_io(["lightning.fabric.plugins.io.torch_io.TorchCheckpointIO"])
    assert type(own) is TorchCheckpointIO  # the user's own CheckpointIO wins
    assert LightningEnvironment  # noqa: the class path above imports


@pytest.mark.parametrize("option,where", [
    (["--model.optimizer.lrr", "0.1"], ["model.optimizer", "'lrr'", "weight_decay"]),
    (["--model.optimizer.name", "sgdd"], ["model.optimizer.name", "sgdd", "'adamw'"]),
    (["--model.schedule.name", "linear"], ["model.schedule.name", "linear", "'cosine'"]),
])
def test_bad_optimizer_or_schedule_option_is_exit_2_before_data(option, where, tmp_path, capsys):
    """Checked while parsing: the data root does not even exist."""
    rc = main(["fit", "--data.root", str(tmp_path / "nowhere"),
               "--trainer.default_root_dir", str(tmp_path), *option])
    assert rc == 2
    line = _one_error_line(capsys)
    for word in where:
        assert word in line, line


def test_misspelt_model_kwargs_key_is_one_line_exit_2(tiny, tmp_path, capsys):
    rc = main(["fit", "--data.root", str(tiny), "--trainer.default_root_dir", str(tmp_path),
               "--model.model_name", "eca_resnet18",
               "--model.model_kwargs", "{global_pool: gcp, gcp_dimm: 32}"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "gcp_dimm" in line and "eca_resnet18" in line, line


def test_misspelt_model_name_is_one_line_exit_2_listing_the_closest(tiny, tmp_path, capsys):
    rc = main(["fit", "--data.root", str(tiny), "--trainer.default_root_dir", str(tmp_path),
               "--model.model_name", "eca_resnet81"])
    assert rc == 2  # a bad option value (cvkit.tool_errors.OptionError)
    line = _one_error_line(capsys)
    assert "unknown model 'eca_resnet81'" in line and "closest cvkit presets: eca_resnet18" in line


def test_hc_nan_guard_is_a_one_line_error_naming_the_layer(tiny, tmp_path, capsys):
    """A learning rate of 1e30 blows the weights up in the first step; with ``hc_nan_guard`` the
    second forward stops at the first connection that sees a non-finite value, in one line."""
    rc = main(["fit", "--data.root", str(tiny), "--trainer.default_root_dir", str(tmp_path),
               "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
               "--trainer.max_steps", "3",
               "--model.model_name", "resnet18_hc2", "--model.optimizer.lr", "1e30",
               "--model.model_kwargs", "{hc_nan_guard: true}"])
    assert rc == 1
    line = _one_error_line(capsys)
    assert "HyperConnections(layer_index=" in line and "non-finite values in" in line, line


def test_task_checks_optimizer_and_schedule_dicts_when_built():
    from cvkit.tasks.classification import ClassificationTask, ConfigError

    with pytest.raises(ConfigError, match=r"optimizer: unknown key 'lrr'; OptimizerConfig takes name, lr"):
        ClassificationTask("resnet18", num_classes=3, optimizer={"lrr": 0.1})
    with pytest.raises(ConfigError, match=r"schedule: unknown LR schedule 'linear'; choose one of step"):
        ClassificationTask("resnet18", num_classes=3, schedule={"name": "linear"})


def test_recipes_use_no_colour_jitter(tiny, tmp_path):
    """papers.md: RandomResizedCrop 224 + flip, nothing else, for every paper recipe."""
    for recipe in RECIPES:
        with torch.device("meta"):
            cli = ClassificationCLI(args=["--config", str(recipe), "--data.root", str(tiny),
                                          "--trainer.devices", "1", "--trainer.num_nodes", "1",
                                          "--trainer.accelerator", "cpu", "--trainer.strategy", "auto",
                                          "--trainer.logger", "false",
                                          "--trainer.default_root_dir", str(tmp_path)], run=False)
        hp = cli.datamodule.hparams
        assert (hp.color_jitter, hp.randaugment) == (0.0, 0), recipe.name
        assert hp.hflip == 0.5 and tuple(hp.scale) == ((0.08, 1.0) if recipe.stem != "demo" else (0.85, 1.0))


def test_trainer_misconfiguration_is_one_line_exit_2(tiny, tmp_path, capsys):
    """Lightning's MisconfigurationException (devices=0; likewise a GPU asked for on a machine
    without one, or more GPUs than it has) is a bad option: one line, exit 2, not a traceback."""
    rc = main(["fit", "--data.root", str(tiny), "--trainer.default_root_dir", str(tmp_path),
               "--trainer.accelerator", "cpu", "--trainer.devices", "0",
               "--trainer.max_steps", "1"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert line == ("error: bad trainer option (--trainer.*): `Trainer(devices='0')` value is not "
                    "a valid input using cpu accelerator."), line


@pytest.mark.parametrize("option,where", [
    (["--data.mean", "[0.5,0.5]"], ["data.mean", "3 finite values", "[0.5, 0.5]"]),
    (["--data.std", "[0,1,1]"], ["data.std", "3 values > 0"]),
    (["--data.ratio", "[0,1]"], ["data.ratio", "0 < min <= max"]),
    (["--data.scale", "[0.5,0.2]"], ["data.scale", "0 < min <= max <= 1"]),
    (["--data.hflip", "2"], ["data.hflip", "in [0, 1]", "got 2"]),
    (["--data.image_size", "0"], ["data.image_size", "integer >= 1", "got 0"]),
    (["--data.crop_pct", "1.5"], ["data.crop_pct", "in (0, 1]"]),
    (["--data.seed", "-1"], ["data.seed", "integer >= 0", "got -1"]),
    (["--model.label_smoothing", "1.5"], ["model.label_smoothing", "in [0, 1)", "got 1.5"]),
    (["--model.mixup", "-0.2"], ["model.mixup", ">= 0"]),
    (["--model.mixup_prob", "2"], ["model.mixup_prob", "in [0, 1]"]),
])
def test_bad_data_or_model_value_is_one_line_exit_2(option, where, tiny, tmp_path, capsys):
    """Each was a traceback at the first step, a NaN loss, a math domain error or albumentations'
    validation dump (exit 1); now refused when the datamodule / task is built, naming the key."""
    rc = main(["fit", "--data.root", str(tiny), "--trainer.default_root_dir", str(tmp_path),
               "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
               "--trainer.logger", "false", "--data.num_workers", "0", "--data.batch_size", "4",
               "--data.image_size", "32", "--model.model_name", "resnet18", *option])
    assert rc == 2
    line = _one_error_line(capsys)
    for word in where:
        assert word in line, line
