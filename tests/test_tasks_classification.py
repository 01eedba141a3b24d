"""ClassificationTask: a few optimisation steps reduce the loss (CNN and ViT presets), skipped files
are counted in summary.json, a non-finite loss stops with one line and the last good checkpoint
kept, and that checkpoint loads with weights_only=True."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from cls_helpers import add_bad_files, tiny_imagefolder
from cvkit.data.datamodule import ClassificationDataModule
from cvkit.tasks.callbacks import AtomicCheckpointIO, TrainingReport
from cvkit.tasks.classification import ClassificationTask, NonFiniteLossError
from cvkit.tasks.prediction_writer import PredictionCSVWriter


def fixed_batch_loss(task: ClassificationTask, dm: ClassificationDataModule) -> float:
    """CE on the whole (tiny, un-augmented) training split as one batch, in training mode (batch
    statistics: after a few steps BatchNorm's running averages still mostly hold their init)."""
    batch = next(iter(torch.utils.data.DataLoader(
        dm.train_set, batch_size=len(dm.train_set), collate_fn=dm.train_dataloader().collate_fn)))
    images, targets, *_ = dm.on_after_batch_transfer(batch, 0)  # uint8 -> normalised float
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(task(images), targets))


def fit(task, dm, tmp_path, steps, callbacks=()):
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                      default_root_dir=tmp_path, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=list(callbacks),
                      plugins=[AtomicCheckpointIO()], enable_checkpointing=any(
                          isinstance(c, ModelCheckpoint) for c in callbacks))
    trainer.fit(task, datamodule=dm)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,opt,lr,steps", [
    ("eca_resnet18", {}, "sgd", 0.01, 8),
    ("vit_tiny_patch16_hc2", dict(img_size=32, depth=2), "adamw", 1e-3, 12),
])
def test_few_steps_reduce_loss(cls_root, tmp_path, name, kwargs, opt, lr, steps):
    torch.manual_seed(0)
    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=4, train=4, val=1)
    bad = add_bad_files(root / "train")
    # no augmentation, one batch = the whole split (16 images + 2 bad files): full-batch steps
    dm = ClassificationDataModule(root=str(root), batch_size=18, image_size=32, num_workers=0,
                                  scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    dm.setup("fit")
    task = ClassificationTask(name, num_classes=4, model_kwargs=kwargs,
                              optimizer=dict(name=opt, lr=lr, reference_batch=18, weight_decay=0.0),
                              schedule=dict(name="constant"))
    before = fixed_batch_loss(task, dm)
    report = TrainingReport(log_every_n_steps=1)
    fit(task, dm, tmp_path, steps=steps, callbacks=[report])
    after = fixed_batch_loss(task, dm)
    assert after < 0.7 * before, (before, after)
    summary = json.loads(report.summary_path.read_text())
    assert summary["skipped_files"] == 2
    assert sorted(summary["skipped_file_names"]) == sorted(map(str, bad))
    assert report.plot_path.stat().st_size > 1000
    assert summary["global_batch"] == 18 and summary["lr"] == pytest.approx(lr)


def test_mixup_trains_past_a_skipped_file(cls_root, tmp_path):
    """6 images and a bad file in batches of 4 and 3: a batch with an odd number of good images
    (timm's Mixup pairs samples and refused it: AssertionError) leaves its odd sample out of that
    step; a batch of 1 is skipped."""
    torch.manual_seed(0)
    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=2, train=3, val=1)
    bad = add_bad_files(root / "train")[:1]
    (bad[0].parent / "zz_notes.jpg").unlink()              # 6 images + 1 bad file, batches of 4 and 3
    dm = ClassificationDataModule(root=str(root), batch_size=4, image_size=32, num_workers=0)
    task = ClassificationTask("resnet18", num_classes=2, mixup=0.2,
                              optimizer=dict(name="sgd", lr=0.01, reference_batch=4),
                              schedule=dict(name="constant"))
    seen = []
    mix = task.mixup_fn
    task.mixup_fn = lambda x, y: (seen.append(x.shape[0]), mix(x, y))[1]
    report = TrainingReport(log_every_n_steps=1)
    trainer = fit(task, dm, tmp_path, steps=2, callbacks=[report])
    assert trainer.global_step == 2 and len(seen) == 2 and all(n in (2, 4) for n in seen)
    assert json.loads(report.summary_path.read_text())["skipped_file_names"] == [str(bad[0])]
    odd = ClassificationDataModule(root=str(root), batch_size=3, image_size=32, num_workers=0)
    with pytest.raises(ValueError, match="data.batch_size must be even, got 3"):
        fit(task, odd, tmp_path, steps=1)          # a configured odd batch: refused, not trimmed


def test_non_finite_loss_stops_with_last_good_checkpoint(cls_root, tmp_path):
    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=2, train=8, val=2)
    dm = ClassificationDataModule(root=str(root), batch_size=4, image_size=32, num_workers=0)
    task = ClassificationTask("vit_tiny_patch16", num_classes=2,
                              model_kwargs=dict(img_size=32, depth=1),
                              optimizer=dict(name="adamw", lr=1e-3, reference_batch=4))
    forward = task.model.forward

    def poisoned(x):  # the loss turns NaN at global step 3
        out = forward(x)
        return out * float("nan") if task.global_step == 3 and task.training else out

    task.model.forward = poisoned
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True,
                           save_top_k=0)
    with pytest.raises(NonFiniteLossError) as e:
        fit(task, dm, tmp_path, steps=6, callbacks=[ckpt])
    msg = str(e.value)
    assert "\n" not in msg and "step 3" in msg and "last.ckpt" in msg, msg
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # safe load works
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))  # no half-written temp files left


def test_fine_tuning_from_a_checkpoint_with_another_class_count(tmp_path):
    """ImageNet-style weights (here 7 classes) fine-tuned onto 3 classes: backbone loaded, new head."""
    import cvkit

    source = cvkit.create_model("resnet18", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    task = ClassificationTask(model_name="resnet18", num_classes=3,
                              pretrained_path=str(tmp_path / "r18.pth"))
    assert task.model.get_classifier().out_features == 3
    assert torch.equal(task.model.conv1.weight, source.conv1.weight)
    assert torch.equal(task.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


@pytest.mark.slow
def test_compile_option_compiles_in_place_and_checkpoints_load_uncompiled(cls_root, tmp_path):
    """``compile`` compiles the model in place (nn.Module.compile): training runs through the
    compiled module and learns, the checkpoint keeps eager keys and loads into an uncompiled task
    with the same outputs; a bad option is refused when the task is built, naming it."""
    torch.manual_seed(0)
    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=4, train=4, val=1)
    dm = ClassificationDataModule(root=str(root), batch_size=16, image_size=32, num_workers=0,
                                  scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    dm.setup("fit")
    opts = dict(name="adamw", lr=1e-3, reference_batch=16, weight_decay=0.0)
    kwargs = dict(img_size=32, depth=2)
    task = ClassificationTask("vit_tiny_patch16_hc2", num_classes=4, model_kwargs=kwargs,
                              optimizer=opts, schedule=dict(name="constant"),
                              compile={"backend": "eager"})
    calls = []
    task.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    before = fixed_batch_loss(task, dm)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(task, dm, tmp_path, steps=12, callbacks=[ckpt])
    assert task.model._compiled_call_impl is not None  # compiled in place, not wrapped
    assert len(calls) >= 12
    after = fixed_batch_loss(task, dm)
    assert after < 0.7 * before, (before, after)

    state = torch.load(ckpt.last_model_path, weights_only=True)
    assert not any("_orig_mod" in key for key in state["state_dict"])
    eager = ClassificationTask("vit_tiny_patch16_hc2", num_classes=4, model_kwargs=kwargs)
    eager.load_state_dict(state["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    task.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(eager(x), task(x), rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="bad compile option .*'fast'"):
        ClassificationTask("vit_tiny_patch16_hc2", num_classes=4, model_kwargs=kwargs,
                           compile={"fast": True})


def test_unknown_model_name_lists_the_closest_presets_and_timm_models():
    from cvkit.tasks.classification import create_model

    with pytest.raises(ValueError, match=r"unknown model 'eca_resnt18'.*closest cvkit presets: "
                                         r"eca_resnet18") as e:
        create_model("eca_resnt18", num_classes=2)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"closest timm models: convnext_tiny\b") as e:
        create_model("convnext_tinny", num_classes=2)
    assert "cvkit presets" not in str(e.value)  # none close
    with pytest.raises(ValueError, match=r"nor a timm model$"):
        create_model("zzzz", num_classes=2)


def test_predict_keeps_a_row_per_file_when_one_is_skipped(cls_root, tmp_path):
    """A bad file in the predict folder keeps its row (NaN): row i stays the prediction of
    dm.test_set.samples[i] (the row was dropped and every later prediction shifted onto the
    wrong image)."""
    import warnings

    from cvkit.data.transforms import normalize_batch

    torch.manual_seed(0)
    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=2, train=1, val=4)
    add_bad_files(root / "val")                 # 2 bad files between the two classes' images
    dm = ClassificationDataModule(root=str(root), batch_size=3, image_size=32, num_workers=0)
    task = ClassificationTask("resnet18", num_classes=2)
    writer = PredictionCSVWriter(str(tmp_path / "out" / "predictions.csv"), top_k=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = torch.cat(Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer],
                                 enable_progress_bar=False, enable_model_summary=False)
                         .predict(task, datamodule=dm))
    samples, classes = dm.test_set.samples, dm.test_set.classes
    assert rows.shape == (len(samples), 2) == (10, 2)
    # the CSV (tools/train.py predict writes it): one row per image in folder order, top-2 of 2
    with open(writer.written, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["path"] for r in csv_rows] == [p for p, _ in samples]
    assert [r["target"] for r in csv_rows] == [classes[label] for _, label in samples]
    task.eval()
    for i, (path, _) in enumerate(samples):
        if path.endswith(("zz_truncated.jpg", "zz_notes.jpg")):
            assert rows[i].isnan().all(), i
            assert csv_rows[i]["pred"] == csv_rows[i]["prob"] == csv_rows[i]["top2"] == ""
            continue
        image = dm.test_set[i][0][None]
        with torch.no_grad():
            expected = task(normalize_batch(image, dm.hparams.mean, dm.hparams.std)).softmax(-1)[0]
        torch.testing.assert_close(rows[i], expected, rtol=1e-4, atol=1e-5)
        best = int(expected.argmax())
        assert csv_rows[i]["pred"] == classes[best]
        assert float(csv_rows[i]["prob"]) == pytest.approx(float(expected[best]), abs=1e-5)
        top = [item.rsplit(":", 1) for item in csv_rows[i]["top2"].split(" ")]
        assert [name for name, _ in top] == [classes[best], classes[1 - best]]
        assert sum(float(v) for _, v in top) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("stage,num_classes", [("fit", 2), ("validate", 5), ("test", 2)])
def test_head_of_another_class_count_is_one_line_naming_both(cls_root, tmp_path, stage,
                                                             num_classes):
    """A head smaller than the data's classes failed at the first step with cross entropy's bare
    ``IndexError: Target 2 is out of bounds``; a larger one scored labels as other classes."""
    from cvkit.tasks.classification import ConfigError

    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=3, train=2, val=1)
    split = "train" if stage == "fit" else "val"
    dm = ClassificationDataModule(root=str(root), batch_size=2, image_size=32, num_workers=0)
    task = ClassificationTask("resnet18", num_classes=num_classes)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    with pytest.raises(ConfigError) as e:
        getattr(trainer, stage)(task, datamodule=dm)
    msg = str(e.value)
    assert "\n" not in msg and f"(model.num_classes) has {num_classes} outputs but " \
        f"{root / split} has 3 class folders" in msg, msg


@pytest.mark.parametrize("option,allowed", [
    ({"label_smoothing": 1.0}, "in [0, 1)"), ({"label_smoothing": -0.1}, "in [0, 1)"),
    ({"mixup": -0.2}, ">= 0 (0 = off)"), ({"cutmix": float("nan")}, ">= 0 (0 = off)"),
    ({"mixup_prob": 1.5}, "a probability in [0, 1]"),
    ({"mixup_switch_prob": -1}, "a probability in [0, 1]"),
    ({"ema_decay": 1.0}, "null (off) or in [0, 1)"), ({"num_classes": 0}, "an integer >= 2"),
    ({"num_classes": 1}, "an integer >= 2"),  # was torchmetrics' error at the first validation
])
def test_bad_task_option_values_are_one_line_naming_the_key(option, allowed):
    from cvkit.tasks.classification import ConfigError

    (key, value), = option.items()
    with pytest.raises(ConfigError) as e:
        ClassificationTask("resnet18", **{"num_classes": 3, **option})
    assert str(e.value) == f"model.{key} must be {allowed}, got {value!r}"


def test_a_step_without_images_still_joins_the_other_ranks(monkeypatch):
    """Every file of a rank's batch skipped: on one device the step is skipped (None); under DDP
    the rank returns a zero loss that gives every trainable parameter a (zero) gradient and takes
    part in the ranks' NaN check, so the others' all-reduces do not wait for it."""
    from types import SimpleNamespace

    task = ClassificationTask("resnet18", num_classes=2)
    calls = []
    strategy = SimpleNamespace(reduce_boolean_decision=lambda bad, all: calls.append(bad) or bad)
    empty = (torch.empty(0), torch.empty(0, dtype=torch.long), ["bad.jpg"], [0])
    monkeypatch.setattr(ClassificationTask, "trainer",
                        property(lambda self: SimpleNamespace(world_size=1, strategy=strategy)))
    assert task.training_step(empty, 0) is None and calls == []
    monkeypatch.setattr(ClassificationTask, "trainer",
                        property(lambda self: SimpleNamespace(world_size=2, strategy=strategy)))
    loss = task.training_step(empty, 0)
    assert loss.item() == 0 and calls == [False]
    loss.backward()
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)


def test_checkpoint_records_the_optimizer_and_schedule(cls_root, tmp_path):
    """Two save_hyperparameters calls kept only the second's: no checkpoint recorded the
    optimiser or schedule, and load_from_checkpoint rebuilt SGD 0.1 with a step schedule (an
    AdamW run then failed to resume: KeyError 'momentum'); hparams.yaml lacked them too."""
    from lightning.pytorch.core.saving import load_hparams_from_yaml
    from lightning.pytorch.loggers import CSVLogger

    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=2, train=2, val=1)
    dm = ClassificationDataModule(root=str(root), batch_size=2, image_size=32, num_workers=0)
    task = ClassificationTask("resnet18", num_classes=2,
                              optimizer=dict(name="adamw", lr=3e-3, reference_batch=2,
                                             betas=(0.8, 0.99)),
                              schedule=dict(name="cosine", warmup_steps=3, per_iteration=True))
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=CSVLogger(tmp_path, name="log"),
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded.optimizer_cfg == task.optimizer_cfg and loaded.optimizer_cfg.name == "adamw"
    assert loaded.schedule == task.schedule and loaded.schedule.warmup_steps == 3
    logged = load_hparams_from_yaml(tmp_path / "log" / "version_0" / "hparams.yaml")
    assert tuple(logged["optimizer"]["betas"]) == (0.8, 0.99)
    assert logged["schedule"]["name"] == "cosine"


def test_checkpoint_carries_the_cuda_generator_when_cuda_is_used(monkeypatch):
    """Resuming on a GPU replayed dropout masks from the start: the checkpoint held the CPU
    generators only and seed_everything had reset CUDA's. (Plumbing, with torch.cuda stood in
    for on this CPU machine; the real generator is torch.cuda.get/set_rng_state.)"""
    state = {"now": torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: state["now"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: state.update(now=s.clone()))
    task = ClassificationTask("resnet18", num_classes=2)
    checkpoint = {}
    task.on_save_checkpoint(checkpoint)
    assert torch.equal(checkpoint["cvkit_rng"]["cuda"], torch.tensor([7], dtype=torch.uint8))
    state["now"] = torch.tensor([9], dtype=torch.uint8)  # the generator moves on (or is reseeded)
    task.on_load_checkpoint(checkpoint)
    assert torch.equal(state["now"], torch.tensor([7], dtype=torch.uint8))


def test_clipping_by_norm_under_fsdp_uses_the_wrapped_modules_norm(monkeypatch):
    """Lightning's FSDPPrecision refuses gradient_clip_val (by norm): a ViT recipe run with its
    advertised --trainer.strategy fsdp stopped at the first step. The task clips through FSDP's
    clip_grad_norm_ (one CPU process, gloo: FSDP without sharding, the same call)."""
    import socket
    from types import SimpleNamespace

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        task = ClassificationTask("resnet18", num_classes=2)
        wrapped = FullyShardedDataParallel(torch.nn.Linear(8, 2), device_id=torch.device("cpu"))
        wrapped(torch.randn(4, 8)).pow(2).sum().backward()
        grads = [p.grad.clone() for p in wrapped.parameters()]
        task._trainer = SimpleNamespace(strategy=SimpleNamespace(model=wrapped))
        task.configure_gradient_clipping(None, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert total > 0.5
        for before, p in zip(grads, wrapped.parameters()):
            torch.testing.assert_close(p.grad, before * 0.5 / total, rtol=1e-4, atol=1e-7)
    finally:
        dist.destroy_process_group()


def test_training_curve_has_one_point_per_optimiser_step_under_accumulation(cls_root, tmp_path):
    """With accumulate_grad_batches every micro-batch added a point at the same step (the curve
    zig-zagged between micro-batch losses at one x)."""
    root = tiny_imagefolder(cls_root, tmp_path / "data", classes=2, train=4, val=1)
    dm = ClassificationDataModule(root=str(root), batch_size=2, image_size=32, num_workers=0)
    report = TrainingReport(log_every_n_steps=1)
    trainer = Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=2, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[report])
    trainer.fit(ClassificationTask("resnet18", num_classes=2), datamodule=dm)
    assert report.history["step"] == [0, 1, 2], report.history["step"]
    assert len(report.history["train_loss"]) == len(report.history["lr"]) == 3
