"""End to end on the embedded synthetic data: a checkpoint evaluated on the fly and through a
generated ImageNet-C folder gives the same errors; reports; missing sets; resume; bad input."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cvkit
from cvkit.robustness import summarize
from cvkit.robustness.evaluate import error_table

REPO = Path(__file__).resolve().parents[1]
CORR = ["gaussian_noise", "glass_blur", "fog", "spatter"]  # 3 benchmark + 1 held-out
SEVS = ["1", "5"]
SIZE = ["--resize", "40", "--crop", "32"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cls_root):
    tmp = tmp_path_factory.mktemp("robust")
    val = tmp / "val"
    for d in sorted((cls_root / "val").iterdir()):  # 3 images per class, 10 classes
        (val / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:3]:
            shutil.copy(f, val / d.name / f.name)
    # A random-init classifier whose predictions depend on the input: BatchNorm statistics and the
    # classifier bias calibrated on training images (so it does not predict one class for all).
    from cvkit.robustness.folder import CleanImageFolder
    torch.manual_seed(0)
    model = cvkit.create_model("resnet18", num_classes=10)
    train = CleanImageFolder(cls_root / "train", 40, 32)
    idx = np.random.default_rng(0).permutation(len(train))[:128]
    x = torch.from_numpy(np.stack([train[i][0] for i in idx])).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    x = (x - mean) / std
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # exact averages over the calibration batch
    with torch.no_grad():
        model.train()(x)
        logits = model.eval()(x)
        model.get_classifier().bias -= logits.mean(0)
        assert len(set(model(x).argmax(1).tolist())) > 3
    ckpt = tmp / "model.ckpt"  # Lightning layout: task prefix + hyper_parameters
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18", "num_classes": 10}}, ckpt)
    return tmp, val, ckpt


def _eval(*args):
    return _tool("eval_corruption")(["--corruptions", *CORR, "--severities", *SEVS, "--workers", "0",
                                     "--batch-size", "16", "--no-progress", "--device", "cpu", *args])


@pytest.mark.slow
def test_on_the_fly_equals_generated_folder(setup, capsys):
    tmp, val, ckpt = setup
    fly, folder, c_root = tmp / "fly", tmp / "folder", tmp / "imagenet_c"
    assert _eval("--checkpoint", str(ckpt), "--val", str(val), *SIZE, "--jpeg-quality", "85",
                 "--out", str(fly)) == 0
    assert _tool("make_imagenet_c")(["--val", str(val), "--out", str(c_root), *SIZE, "--corruptions", *CORR,
                                     "--severities", *SEVS, "--workers", "2"]) == 0  # parallel path
    files = sorted(c_root.rglob("*.jpg"))
    assert len(files) == len(CORR) * len(SEVS) * 30 and Image.open(files[0]).size == (32, 32)
    assert _eval("--checkpoint", str(ckpt), "--imagenet-c", str(c_root), "--clean-val", str(val), *SIZE,
                 "--out", str(folder)) == 0
    a = json.loads((fly / "results.json").read_text())
    b = json.loads((folder / "results.json").read_text())
    assert a["errors"] == b["errors"] and a["clean_error"] == b["clean_error"]
    errs = [e for c in a["errors"].values() for e in c.values()]
    assert len(set(errs)) > 2, "errors do not depend on the corruption: the test would prove nothing"
    # reports
    for name in ("summary.json", "errors.csv", "report.md", "heatmap.png", "bars.png"):
        assert (fly / name).is_file()
    for png in ("heatmap.png", "bars.png"):
        with Image.open(fly / png) as im:
            im.verify()
        assert Image.open(fly / png).size[0] > 100
    summary = json.loads((fly / "summary.json").read_text())
    assert summary["complete"] is False  # 3 of the 15 benchmark corruptions
    assert set(summary["held_out"]["errors_percent"]) == {"spatter"}
    assert set(summary["benchmark"]["errors_percent"]) == {"gaussian_noise", "glass_blur", "fog"}
    assert summary["benchmark"]["CE"] == {}  # CE needs all 5 severities; 2 were evaluated
    md = (fly / "report.md").read_text()
    assert "Incomplete" in md and "Held-out" in md


@pytest.mark.slow
def test_missing_severity_reported_rest_continues_and_resume(setup, capsys):
    tmp, val, ckpt = setup
    c_root = tmp / "c_missing"
    assert _tool("make_imagenet_c")(["--val", str(val), "--out", str(c_root), *SIZE, "--corruptions",
                                     "fog", "glass_blur", "--severities", "1", "5", "--format", "png",
                                     "--workers", "1"]) == 0
    shutil.rmtree(c_root / "fog" / "5")
    out = tmp / "missing_out"
    args = ["--checkpoint", str(ckpt), "--imagenet-c", str(c_root), *SIZE, "--out", str(out)]
    assert _eval(*args) == 0
    err = capsys.readouterr().err
    assert "fog severity 5 not evaluated" in err and "gaussian_noise severity 1 not evaluated" in err
    state = json.loads((out / "results.json").read_text())
    assert set(state["errors"]) == {"fog", "glass_blur"} and set(state["errors"]["glass_blur"]) == {"1", "5"}
    assert set(state["errors"]["fog"]) == {"1"} and "5" in state["missing"]["fog"]
    assert set(state["missing"]) == {"fog", "gaussian_noise", "spatter"}
    s = summarize(error_table(state))
    assert not s.complete and "fog" in s.missing
    # resume: finished sets are not recomputed, missing ones are picked up once they exist
    state["errors"]["glass_blur"]["1"] = 0.123456
    (out / "results.json").write_text(json.dumps(state))
    assert _tool("make_imagenet_c")(["--val", str(val), "--out", str(c_root), *SIZE, "--corruptions",
                                     "fog", "--severities", "5", "--format", "png", "--workers", "1"]) == 0
    assert _eval(*args) == 0
    state2 = json.loads((out / "results.json").read_text())
    assert state2["errors"]["glass_blur"]["1"] == 0.123456
    assert "5" in state2["errors"]["fog"] and "fog" not in state2["missing"]


def test_bad_inputs(tmp_path, cls_root, capsys):
    ev = _tool("eval_corruption")
    ckpt = tmp_path / "bare.pt"
    torch.save(cvkit.create_model("resnet18", num_classes=10).state_dict(), ckpt)
    assert ev(["--checkpoint", str(ckpt), "--val", str(cls_root / "val"), "--out", str(tmp_path / "o")]) == 2
    assert "holds plain model weights: pass --model" in capsys.readouterr().err
    assert ev(["--checkpoint", str(tmp_path / "nope.pt"), "--val", str(cls_root / "val"),
               "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert ev(["--checkpoint", str(ckpt), "--model", "resnet18", "--val", str(cls_root / "val"),
               "--severities", "6", "--out", str(tmp_path / "o")]) == 2
    assert "severity must be an integer in 1..5" in capsys.readouterr().err
    assert ev(["--checkpoint", str(ckpt), "--model", "resnet18", "--imagenet-c", str(tmp_path / "none"),
               "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    mk = _tool("make_imagenet_c")
    assert mk(["--val", str(cls_root / "val"), "--out", str(tmp_path / "c"), "--corruptions", "foggy"]) == 2
    assert "unknown corruption 'foggy'" in capsys.readouterr().err


def test_released_folder_is_centre_cropped_not_resized(tmp_path):
    """A 100x90 image in an ImageNet-C folder is centre-cropped to 64 (no resize); a too-small one
    is a clear error naming the file."""
    from cvkit.robustness.folder import ImageNetCFolder
    d = tmp_path / "a"
    d.mkdir()
    img = np.random.default_rng(0).integers(0, 256, (90, 100, 3), dtype=np.uint8)
    Image.fromarray(img).save(d / "x.png")
    crop = ImageNetCFolder(tmp_path, crop=64)[0][0]
    np.testing.assert_array_equal(crop, img[13:77, 18:82])
    with pytest.raises(ValueError, match=r"x.png is 100x90, smaller than the centre crop 96"):
        ImageNetCFolder(tmp_path, crop=96)[0]


# ----------------------------------------------------------------------- review fixes (issue 8)
def _fit_tiny_task(tmp_path, cls_root, model_kwargs, mean=(0.4, 0.5, 0.6)):
    """A checkpoint written by Lightning for the classification task (4 classes, 2 steps)."""
    from lightning.pytorch import Trainer

    from cls_helpers import tiny_imagefolder
    from cvkit.data.datamodule import ClassificationDataModule
    from cvkit.tasks.classification import ClassificationTask
    root = tiny_imagefolder(cls_root, tmp_path / "tiny", classes=4, train=8, val=2)
    dm = ClassificationDataModule(root=str(root), batch_size=8, image_size=32, crop_pct=1.0,
                                  num_workers=0, persistent_workers=False, mean=mean)
    torch.manual_seed(0)
    task = ClassificationTask("resnet18", num_classes=4, model_kwargs=model_kwargs)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(task, datamodule=dm)
    ckpt = tmp_path / "task.ckpt"
    trainer.save_checkpoint(ckpt)
    return task, ckpt, root / "val"


def test_lightning_checkpoint_with_model_kwargs_loads_and_evaluates(tmp_path, cls_root, capsys):
    """a task checkpoint with non-preset model_kwargs (GCP head) is rebuilt from its
    hyper-parameters, with the datamodule's normalisation; classes it was not trained on are an
    error."""
    from cvkit.robustness.evaluate import load_classifier
    task, ckpt, val = _fit_tiny_task(tmp_path, cls_root, {"global_pool": "gcp", "gcp_dim": 16})
    model, name, dm_hp = load_classifier(ckpt, classes=["a", "b", "c", "d"])
    assert name == "resnet18" and list(dm_hp["mean"]) == [0.4, 0.5, 0.6]
    ref = task.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items()) and len(ref) == len(model.state_dict())
    out = tmp_path / "out"
    assert _eval("--checkpoint", str(ckpt), "--val", str(val), "--resize", "36", "--crop", "32",
                 "--corruptions", "fog", "--severities", "1", "--out", str(out)) == 0
    state = json.loads((out / "results.json").read_text())
    assert set(state["errors"]["fog"]) == {"1"} and state["clean_error"] is not None
    assert state["meta"]["mean"] == [0.4, 0.5, 0.6]  # the checkpoint's normalisation, not the preset's
    capsys.readouterr()
    assert _eval("--checkpoint", str(ckpt), "--val", str(cls_root / "val"), *SIZE, "--out", str(tmp_path / "o2")) == 1
    err = capsys.readouterr().err
    # the checkpoint recorded its 4 class names: the other 6 folders are named
    assert "not trained on (6 of 10; its 4 classes begin" in err and str(ckpt) in err


def _read_csv(path):
    import csv
    with open(path) as f:
        return {r["corruption"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_fifteen_corruptions_give_complete_summary_and_mce_by_hand(setup, tmp_path):
    """the 15 benchmark corruptions (no held-out) make a complete summary with an mCE
    and relative mCE equal to a by-hand computation from the per-severity errors in errors.csv;
    the held-out gaps are listed apart."""
    _, val, ckpt = setup
    small = tmp_path / "val"
    for d in sorted(val.iterdir()):  # 1 image per class
        (small / d.name).mkdir(parents=True)
        shutil.copy(sorted(d.iterdir())[0], small / d.name)
    out = tmp_path / "out"
    from cvkit.robustness import CORRUPTIONS, HELD_OUT
    assert _tool("eval_corruption")(["--checkpoint", str(ckpt), "--val", str(small), *SIZE, "--workers", "0",
                                     "--no-progress", "--device", "cpu", "--corruptions", *CORRUPTIONS,
                                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["missing"] == []
    assert summary["held_out"]["complete"] is False and summary["held_out"]["missing"] == list(HELD_OUT)
    rows = _read_csv(out / "errors.csv")
    assert [rows[c]["missing_severities"] for c in HELD_OUT] == ["1 2 3 4 5"] * 4
    alexnet = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816,
               0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]  # papers.md
    clean = summary["clean_error_percent"] / 100
    ce, rel = [], []
    for c, a in zip(CORRUPTIONS, alexnet):
        e = [float(rows[c][f"error_s{s}_percent"]) / 100 for s in range(1, 6)]
        ce.append(100 * sum(e) / (5 * a))
        rel.append(100 * sum(x - clean for x in e) / (5 * (a - 0.435)))
    assert summary["benchmark"]["mCE"] == pytest.approx(sum(ce) / 15, rel=1e-9)
    assert summary["benchmark"]["relative_mCE"] == pytest.approx(sum(rel) / 15, rel=1e-9)
    assert len({round(x, 6) for x in ce}) > 3, "CE does not vary: the check would prove little"
    md = (out / "report.md").read_text()
    assert "Incomplete" not in md and "Held-out corruption(s) not evaluated" in md


def _write_c_folder(root, spec):
    """``spec``: {(corruption, severity): [class names]} -> one 40x40 PNG per class."""
    rng = np.random.default_rng(0)
    for (c, s), classes in spec.items():
        d = root / c / str(s)
        d.mkdir(parents=True, exist_ok=True)
        for cls in classes:
            (d / cls).mkdir()
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / cls / "x.png")


def test_empty_or_flat_severity_folder_is_missing_and_rest_continues(tmp_path, capsys):
    """an empty and a flat severity folder are recorded as missing with a warning naming
    them; the other sets are evaluated."""
    root = tmp_path / "c"
    _write_c_folder(root, {("fog", 1): ["a", "b"]})
    (root / "fog" / "2").mkdir()  # empty
    (root / "fog" / "3").mkdir()  # flat: images without class folders
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "fog" / "3" / "y.png")
    ckpt = tmp_path / "m.ckpt"
    model = cvkit.create_model("resnet18", num_classes=2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18", "num_classes": 2}}, ckpt)
    out = tmp_path / "out"
    assert _tool("eval_corruption")(["--checkpoint", str(ckpt), "--imagenet-c", str(root), "--crop", "32",
                                     "--corruptions", "fog", "--severities", "1", "2", "3", "--workers", "0",
                                     "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"fog severity 2 not evaluated: split folder {root / 'fog' / '2'}" in err
    assert f"fog severity 3 not evaluated: split folder {root / 'fog' / '3'}" in err
    state = json.loads((out / "results.json").read_text())
    assert set(state["errors"]["fog"]) == {"1"} and set(state["missing"]["fog"]) == {"2", "3"}


@pytest.mark.parametrize("kind", ["empty", "flat"])
def test_make_imagenet_c_empty_or_flat_val_is_one_line_error(tmp_path, kind, capsys):
    val = tmp_path / "val"
    val.mkdir()
    if kind == "flat":
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(val / "y.png")
    assert _tool("make_imagenet_c")(["--val", str(val), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(val) in err


def test_one_class_list_for_all_folders(tmp_path):
    """without --clean-val the class list is the union over all severity folders, so a
    folder lacking a class keeps the others' labels; a class outside a given list is an error."""
    from cvkit.robustness.evaluate import FolderSource
    root = tmp_path / "c"
    _write_c_folder(root, {("fog", 1): ["b", "c"], ("fog", 2): ["a", "b", "c"], ("snow", 1): ["a", "c"]})
    src = FolderSource(root, crop=32)
    assert src.classes == ["a", "b", "c"]
    for (c, s) in [("fog", 1), ("fog", 2), ("snow", 1)]:
        ds, why = src.corrupted(c, s)
        assert why is None
        got = {Path(p).parent.name: t for p, t in ds.samples}
        assert got == {k: ["a", "b", "c"].index(k) for k in got}
    given = FolderSource(root, crop=32, classes=["a", "b"])
    with pytest.raises(ValueError, match=r"fog/1 has class folder\(s\) \['c'\] not in"):
        given.corrupted("fog", 1)


def test_baseline_validated_first_and_normalises(setup, tmp_path, capsys):
    """A bad --baseline is a one-line error before any evaluation; a good one adds
    CE / mCE normalised by its errors and its clean error."""
    _, val, ckpt = setup
    args = ["--checkpoint", str(ckpt), "--val", str(val), *SIZE, "--corruptions", "fog", "--severities",
            "1", "2", "3", "4", "5", "--workers", "0", "--no-progress", "--device", "cpu"]
    ev = _tool("eval_corruption")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clean_error": 0.2}))
    for path, msg in [(tmp_path / "nope.json", "does not exist"), (bad, "has no 'errors' mapping")]:
        out = tmp_path / f"o_{path.stem}"
        assert ev([*args, "--baseline", str(path), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err and str(path) in err
        assert not out.exists()  # nothing evaluated
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"clean_error": 0.3, "errors": {"fog": {str(s): 0.4 + 0.1 * s for s in range(1, 6)}}}))
    out = tmp_path / "good"
    assert ev([*args, "--baseline", str(base), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    fog = [summary["benchmark"]["errors_percent"]["fog"][s] / 100 for s in range(5)]
    clean = summary["clean_error_percent"] / 100
    vb = summary["versus_baseline"]
    assert vb["corruptions"] == ["fog"]
    assert vb["mCE"] == pytest.approx(100 * sum(fog) / (0.5 + 0.6 + 0.7 + 0.8 + 0.9))
    assert vb["relative_mCE"] == pytest.approx(100 * sum(e - clean for e in fog) / (5 * (0.7 - 0.3)))


def test_resume_compares_resolved_paths_and_names_differing_keys(setup, tmp_path, monkeypatch, capsys):
    """the same run spelled with relative paths resumes; another crop is refused naming it."""
    _, val, ckpt = setup
    args = ["--corruptions", "fog", "--severities", "1", "--workers", "0", "--no-progress", "--device", "cpu"]
    ev = _tool("eval_corruption")
    out = tmp_path / "out"
    assert ev([*args, "--checkpoint", str(ckpt), "--val", str(val), *SIZE, "--out", str(out)]) == 0
    monkeypatch.chdir(ckpt.parent)
    rel_val = Path("..") / ckpt.parent.name / val.relative_to(ckpt.parent)
    assert ev([*args, "--checkpoint", ckpt.name, "--val", str(rel_val), *SIZE, "--out", str(out)]) == 0
    capsys.readouterr()
    assert ev([*args, "--checkpoint", ckpt.name, "--val", str(rel_val), "--resize", "40", "--crop", "30",
               "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "crop: 32 there, 30 now" in err and err.count(" there, ") == 1  # only crop differs


def test_small_image_with_workers_and_negative_seed_are_one_line_errors(tmp_path, capsys):
    """Nits: a too-small image read by a DataLoader worker gives the one-line message naming the
    file; --seed -1 names --seed before any work."""
    root = tmp_path / "c"
    _write_c_folder(root, {("fog", 1): ["a", "b"]})
    # the first image fits the crop (the check before evaluating passes); a later one does not
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "fog" / "1" / "b" / "x.png")
    ckpt = tmp_path / "m.ckpt"
    model = cvkit.create_model("resnet18", num_classes=2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18", "num_classes": 2}}, ckpt)
    ev = _tool("eval_corruption")
    base = ["--checkpoint", str(ckpt), "--imagenet-c", str(root), "--corruptions", "fog", "--severities", "1",
            "--no-progress", "--device", "cpu"]
    assert ev([*base, "--crop", "40", "--workers", "2", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b/x.png is 20x20, smaller than the centre crop 40" in err
    assert ev([*base, "--seed", "-1", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed" in err and not (tmp_path / "o2").exists()


# ------------------------------------------------------------------- walkthrough fixes (issue 9)
def _with_datamodule_hp(ckpt, dst, **dm_hp):
    """A copy of ``ckpt`` (Lightning layout) trained, as recorded, at ``dm_hp`` (image_size, ...)."""
    c = torch.load(ckpt, weights_only=True)
    c["datamodule_hyper_parameters"] = dm_hp
    torch.save(c, dst)
    return dst


def test_sizes_default_to_the_checkpoints_as_tools_test_py(setup, tmp_path, capsys):
    """without --resize/--crop the checkpoint's training size is used (crop =
    image_size, resize = round(image_size / crop_pct)), so the clean error equals tools/test.py's
    (cvkit.tasks.evaluate.evaluate); a size given wins."""
    from cvkit.tasks.evaluate import evaluate
    _, val, ckpt = setup
    ckpt = _with_datamodule_hp(ckpt, tmp_path / "m.ckpt", image_size=32, crop_pct=0.8)
    args = ["--checkpoint", str(ckpt), "--val", str(val), "--corruptions", "fog", "--severities", "1",
            "--workers", "0", "--no-progress", "--device", "cpu"]
    ev = _tool("eval_corruption")
    assert ev([*args, "--out", str(tmp_path / "o")]) == 0
    state = json.loads((tmp_path / "o" / "results.json").read_text())
    assert (state["meta"]["resize"], state["meta"]["crop"]) == (40, 32)
    out = capsys.readouterr().out
    assert "image size: resize 40, centre crop 32 (as trained: image_size 32, crop_pct 0.8)" in out
    top1 = evaluate(ckpt, val, num_workers=0, accelerator="cpu")["top1"]
    assert state["clean_error"] == pytest.approx(1 - top1 / 100, abs=1e-6)
    assert ev([*args, "--crop", "24", "--out", str(tmp_path / "o2")]) == 0  # resize follows crop_pct
    meta = json.loads((tmp_path / "o2" / "results.json").read_text())["meta"]
    assert (meta["resize"], meta["crop"]) == (30, 24)


def test_eval_sizes():
    from cvkit.robustness.evaluate import eval_sizes
    assert eval_sizes(None, None, {}) == (256, 224)  # plain weights
    assert eval_sizes(None, None, {"image_size": 48, "crop_pct": 1.0}) == (48, 48)  # make demo
    assert eval_sizes(64, None, {"image_size": 48, "crop_pct": 1.0}) == (64, 48)
    with pytest.raises(ValueError, match="--resize 40 is smaller than the crop 48"):
        eval_sizes(40, None, {"image_size": 48})


def test_folder_images_of_another_size_than_the_models_crop(setup, tmp_path, capsys):
    """Pre-rendered folder: images larger than the checkpoint's crop are a warning (only
    their centre is evaluated), smaller ones a one-line error before any evaluation; both point to
    tools/make_imagenet_c.py at the model's size."""
    _, _, ckpt = setup
    root = tmp_path / "c"
    _write_c_folder(root, {("fog", 1): [f"c{i}" for i in range(10)]})  # 40x40 images
    ev = _tool("eval_corruption")
    args = ["--imagenet-c", str(root), "--corruptions", "fog", "--severities", "1", "--workers", "0",
            "--no-progress", "--device", "cpu"]
    small = _with_datamodule_hp(ckpt, tmp_path / "s.ckpt", image_size=32, crop_pct=1.0)
    assert ev(["--checkpoint", str(small), *args, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: the images of {root} are 40x40, the crop is 32: only their centre 32x32 is "
            f"evaluated" in err)
    assert "tools/make_imagenet_c.py --val VAL --out DIR --resize 32 --crop 32" in err
    big = _with_datamodule_hp(ckpt, tmp_path / "b.ckpt", image_size=48, crop_pct=0.75)
    assert ev(["--checkpoint", str(big), *args, "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.png is 40x40, smaller than the centre crop 48" in err
    assert "make_imagenet_c.py --val VAL --out DIR --resize 64 --crop 48" in err
    assert not (tmp_path / "o2").exists()


def test_model_arg_for_plain_weights(setup, tmp_path, capsys):
    """--model-arg KEY=VALUE (repeatable) builds plain weights that need model keywords
    (a GCP head); refused for a training checkpoint, a malformed pair is a one-line error."""
    from cvkit.robustness.evaluate import load_classifier
    _, val, ckpt = setup
    torch.manual_seed(0)
    gcp = cvkit.create_model("resnet18", num_classes=10, global_pool="gcp", gcp_dim=16)
    plain = tmp_path / "gcp.pt"
    torch.save(gcp.state_dict(), plain)
    ev = _tool("eval_corruption")
    args = ["--val", str(val), *SIZE, "--corruptions", "fog", "--severities", "1", "--workers", "0",
            "--no-progress", "--device", "cpu"]
    assert ev(["--checkpoint", str(plain), "--model", "resnet18", "--model-arg", "global_pool=gcp",
               "--model-arg", "gcp_iters=3", *args, "--out", str(tmp_path / "o")]) == 0
    state = json.loads((tmp_path / "o" / "results.json").read_text())
    assert state["meta"]["model_kwargs"] == {"global_pool": "gcp", "gcp_iters": 3}
    assert state["clean_error"] is not None and set(state["errors"]["fog"]) == {"1"}
    model = load_classifier(plain, "resnet18", classes=[str(i) for i in range(10)],
                            model_kwargs={"global_pool": "gcp"})[0]
    ref = gcp.state_dict()
    got = model.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in got.items())
    capsys.readouterr()
    assert ev(["--checkpoint", str(plain), "--model", "resnet18", *args,
               "--out", str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err  # the load error's advice in the tool's terms
    assert err.count("\n") == 1 and "pass --model-arg global_pool=gcp" in err, err
    assert ev(["--checkpoint", str(ckpt), "--model-arg", "global_pool=gcp", *args,
               "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a training checkpoint" in err and "--model-arg (global_pool)" in err
    assert ev(["--checkpoint", str(plain), "--model", "resnet18", "--model-arg", "gcp", *args,
               "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model-arg 'gcp': expected KEY=VALUE" in err


def test_report_names_the_missing_severities(tmp_path):
    """a corruption evaluated at some severities is reported with the severities it
    lacks, not as missing; summary.json keeps ``missing`` (names) and adds ``missing_severities``."""
    from cvkit.robustness import CORRUPTIONS
    from cvkit.robustness.report import write_reports
    errors = {c: {str(s): 0.5 for s in range(1, 6)} for c in CORRUPTIONS if c not in ("fog", "snow")}
    errors["fog"] = {"1": 0.3, "3": 0.4}
    errors["spatter"] = {"2": 0.5}
    state = {"meta": {"source": "imagenet-c-folder", "crop": 224}, "clean_error": 0.1, "errors": errors,
             "missing": {}}
    write_reports(state, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert ("**Incomplete**: mCE needs all 5 severities of the 15 benchmark corruptions; not evaluated: "
            "snow (all severities); fog (severities 2, 4, 5) — ") in md
    assert ("Held-out corruption(s) not evaluated (not part of mCE): speckle_noise, gaussian_blur, "
            "saturate (all severities); spatter (severities 1, 3, 4, 5).") in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] is False and summary["missing"] == ["snow", "fog"]  # canonical order
    assert summary["missing_severities"] == {"snow": [1, 2, 3, 4, 5], "fog": [2, 4, 5]}
    assert summary["held_out"]["missing_severities"]["spatter"] == [1, 3, 4, 5]
    assert summary["benchmark"]["mCE"] is not None  # over the 13 complete ones, and says so
    over = summary["benchmark"]["mCE_over"]
    assert len(over) == 13 and "fog" not in over and "snow" not in over
    assert "- mCE (AlexNet-normalised, only 13 of the 15 benchmark corruptions: not comparable): " in md
    assert "- relative mCE (only 13 of the 15 benchmark corruptions: not comparable): " in md
    errors.update(fog={str(s): 0.5 for s in range(1, 6)}, snow={str(s): 0.5 for s in range(1, 6)})
    write_reports(state, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "- mCE (AlexNet-normalised, 15 benchmark corruptions): " in md and "Incomplete" not in md
    assert len(json.loads((tmp_path / "summary.json").read_text())["benchmark"]["mCE_over"]) == 15


def test_make_imagenet_c_refuses_the_other_format_in_the_same_folder(setup, tmp_path, capsys):
    """rendering PNG where JPEGs of the same set are (or the reverse) is a one-line
    error naming the folder, before anything is written; evaluation would count both."""
    _, val, _ = setup
    mk = _tool("make_imagenet_c")
    out = tmp_path / "c"
    args = ["--val", str(val), "--out", str(out), *SIZE, "--corruptions", "fog", "--severities", "1",
            "--workers", "1"]
    assert mk(args) == 0 and len(list(out.rglob("*.jpg"))) == 30
    capsys.readouterr()
    assert mk([*args, "--format", "png"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'fog' / '1'} already holds .jpg images" in err
    assert not list(out.rglob("*.png"))
    assert mk(args) == 0 and len(list(out.rglob("*.jpg"))) == 30  # the same format: rewritten
    assert mk([*args, "--corruptions", "snow", "--format", "png"]) == 0  # another set: no clash


def test_results_written_before_resize_was_recorded_resume_at_256(tmp_path):
    """A released-folder run with --clean-val recorded no "resize" before it became a setting
    (its clean images were always resized to 256): such a results file resumes a run at 256 and
    is refused, naming resize, at another size."""
    from cvkit.robustness.evaluate import RESULTS_FILE, resume_results

    old_meta = {"source": "folder", "root": str(tmp_path / "c"), "crop": 224,
                "clean_root": str(tmp_path / "val"), "model": "resnet50"}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(
        {"meta": old_meta, "clean_error": 0.25, "errors": {"fog": {"1": 0.4}}, "missing": {}}))
    state = resume_results(tmp_path, {**old_meta, "resize": 256}, True, {})
    assert state["errors"] == {"fog": {"1": 0.4}} and state["clean_error"] == 0.25
    with pytest.raises(ValueError, match=r"resize: 256 there, 300 now"):
        resume_results(tmp_path, {**old_meta, "resize": 300}, True, {})


@pytest.mark.parametrize("task", ["cls", "det"])
def test_a_cuda_device_the_machine_lacks_is_one_line(task, tmp_path, capsys):
    """--device cuda:99 (no such GPU here, with or without CUDA): one line naming the device and
    the GPU count, exit 2, before any work (torch raised a driver/assert traceback)."""
    import torch

    ev = _tool("eval_corruption")
    what = (["--val", str(tmp_path)] if task == "cls"
            else ["--task", "det", "--config", str(REPO / "configs/detection/faster-rcnn_eca-r18_fpn_shapes.py")])
    assert ev(["--checkpoint", str(tmp_path / "x.ckpt"), *what, "--device", "cuda:99",
               "--out", str(tmp_path / "o")]) == 2
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    err = capsys.readouterr().err
    assert err == f"error: --device cuda:99: this machine has {count} CUDA GPU(s)\n", err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ audit fixes (corruption robustness)
def _complete_state(meta):
    from cvkit.robustness import CORRUPTIONS
    return {"meta": meta, "clean_error": 0.1, "missing": {},
            "errors": {c: {str(s): 0.5 for s in range(1, 6)} for c in CORRUPTIONS}}


@pytest.mark.parametrize("meta, comparable, why", [
    ({"source": "imagenet-c-folder", "crop": 224, "rendered_by": None}, True, "at 224 px"),
    ({"source": "on-the-fly", "crop": 48, "jpeg_quality": None}, False,
     "on-the-fly corruptions (cvkit's imagecorruptions formulas, no JPEG step) at 48 px"),
    ({"source": "on-the-fly", "crop": 224, "jpeg_quality": 85}, False, "JPEG quality 85) at 224 px"),
    ({"source": "imagenet-c-folder", "crop": 224, "rendered_by": {"renders": [{"seed": 0}]}}, False,
     "a folder rendered by cvkit's tools/make_imagenet_c.py"),
    ({"source": "imagenet-c-folder", "crop": 192}, False, "centre-cropped to 192 px, not 224"),
    ({}, None, "the image source is not recorded"),
])
def test_reports_say_whether_comparable_with_published_mces(tmp_path, meta, comparable, why):
    """Only the released folder (no cvkit render marker) at 224 px is comparable with published
    mCEs: summary.json says so (comparable_with_published, comparability), the mCE lines and the
    CSV too; the same errors from any other source are labelled not comparable, with the reason."""
    import csv

    from cvkit.robustness.report import write_reports
    write_reports(_complete_state(meta), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["comparable_with_published"] is comparable and why in summary["comparability"]
    md = (tmp_path / "report.md").read_text()
    mce_line = next(line for line in md.splitlines() if line.startswith("- mCE "))
    if comparable:
        assert mce_line.startswith("- mCE (AlexNet-normalised, 15 benchmark corruptions): ")
        assert "Comparable with published ImageNet-C mCEs: yes" in md
    elif comparable is None:
        assert f"15 benchmark corruptions; {why}: comparability with published mCEs unknown)" in mce_line
    else:
        assert mce_line.startswith("- mCE (AlexNet-normalised, 15 benchmark corruptions; ") and why in mce_line
        assert mce_line.endswith(": not comparable): 64.67"), mce_line  # 0.5 everywhere
        assert md.startswith(f"# ImageNet-C report\n\n**Not comparable with published ImageNet-C mCEs**: ")
    with open(tmp_path / "errors.csv") as f:
        cells = {r["comparable_with_published"] for r in csv.DictReader(f)}
    assert cells == {{True: "true", False: "false", None: ""}[comparable]}


def test_incomplete_release_run_is_not_comparable(tmp_path):
    from cvkit.robustness.report import write_reports
    state = _complete_state({"source": "imagenet-c-folder", "crop": 224})
    del state["errors"]["fog"]
    write_reports(state, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["comparable_with_published"] is False
    assert summary["comparability"] == "only 14 of the 15 benchmark corruptions complete"


def test_rendered_folder_carries_a_marker_recorded_by_the_evaluation(setup, tmp_path, capsys):
    """tools/make_imagenet_c.py writes a marker (generator, seed, sizes, format, JPEG quality);
    evaluating the folder records it (meta.rendered_by) and reports the mCE as not comparable;
    the same folder without the marker is taken as the release (here at 32 px: still not)."""
    from cvkit.robustness.folder import RENDER_MARKER
    _, val, ckpt = setup
    root = tmp_path / "c"
    mk = _tool("make_imagenet_c")
    args = ["--val", str(val), "--out", str(root), *SIZE, "--corruptions", "fog", "--severities", "1",
            "--workers", "1", "--seed", "3"]
    assert mk(args) == 0
    marker = json.loads((root / RENDER_MARKER).read_text())
    assert marker["generator"].startswith("cvkit tools/make_imagenet_c.py")
    assert marker["renders"] == [{"cvkit_version": cvkit.__version__, "seed": 3, "resize": 40, "crop": 32,
                                  "format": "jpeg", "jpeg_quality": 85}]
    assert mk([*args, "--corruptions", "snow"]) == 0  # the same settings: recorded once
    assert mk([*args, "--format", "png", "--corruptions", "brightness", "--seed", "4"]) == 0
    renders = json.loads((root / RENDER_MARKER).read_text())["renders"]
    assert len(renders) == 2 and renders[1]["format"] == "png" and renders[1]["jpeg_quality"] is None
    ev = _tool("eval_corruption")
    common = ["--checkpoint", str(ckpt), "--imagenet-c", str(root), "--crop", "32", "--corruptions", "fog",
              "--severities", "1", "--workers", "0", "--no-progress", "--device", "cpu"]
    assert ev([*common, "--out", str(tmp_path / "o")]) == 0
    meta = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]
    assert meta["source"] == "imagenet-c-folder"  # the layout; rendered_by says who made it
    assert meta["rendered_by"] == json.loads((root / RENDER_MARKER).read_text())
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["comparable_with_published"] is False
    assert "rendered by cvkit's tools/make_imagenet_c.py" in summary["comparability"]
    assert "rendered by cvkit's tools/make_imagenet_c.py" in capsys.readouterr().out  # printed report
    (root / RENDER_MARKER).unlink()
    assert ev([*common, "--out", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "results.json").read_text())["meta"]["rendered_by"] is None


def test_clean_val_is_framed_as_the_corrupted_images(tmp_path):
    """With --imagenet-c and no --resize, the clean val is resized as the stored (only centre-
    cropped) images were made, whatever the model's crop: the release's ratio for S-pixel images
    (256 for 224), or a cvkit-rendered folder's recorded resize for them; not the checkpoint's
    crop_pct (0.95 would give other image regions than the corrupted ones)."""
    from cvkit.robustness.evaluate import FolderSource
    from cvkit.robustness.folder import _mark_rendered

    _write_c_folder(tmp_path, {("fog", 1): ["a"]})                  # 40x40 images
    source = FolderSource(tmp_path, crop=32)
    assert source.clean_resize()[0] == round(40 * 256 / 224) == 46
    _mark_rendered(tmp_path, {"seed": 0, "resize": 48, "crop": 40, "format": "png",
                              "jpeg_quality": None})
    source = FolderSource(tmp_path, crop=32)
    assert source.clean_resize() == (48, "as its 40 px images were rendered (cvkit_render.json)")
    _mark_rendered(tmp_path, {"seed": 1, "resize": 56, "crop": 40, "format": "png",
                              "jpeg_quality": None})
    resize, why = FolderSource(tmp_path).clean_resize()
    assert resize == 46 and "several resizes for 40 px images" in why
    (tmp_path / "fog" / "1" / "a" / "x.png").unlink()
    assert FolderSource(tmp_path).clean_resize()[0] is None


def test_on_the_fly_report_says_not_comparable(setup, tmp_path, capsys):
    """The printed report of an on-the-fly run names the source and size in the mCE line."""
    _, val, ckpt = setup
    assert _eval("--checkpoint", str(ckpt), "--val", str(val), *SIZE, "--corruptions", "fog",
                 "--severities", "1", "--out", str(tmp_path / "o")) == 0
    out = capsys.readouterr().out
    assert ("- mCE (AlexNet-normalised, only 0 of the 15 benchmark corruptions; on-the-fly corruptions "
            "(cvkit's imagecorruptions formulas, no JPEG step) at 32 px: not comparable): ") in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["comparable_with_published"] is False and summary["meta"]["source"] == "on-the-fly"


@pytest.mark.parametrize("option, message", [
    (["--seed", "5"], "--seed does not apply to --imagenet-c"),
    (["--seed", "0"], "--seed does not apply to --imagenet-c"),  # the default value, given
    (["--jpeg-quality", "85"], "--jpeg-quality does not apply to --imagenet-c"),
    (["--crop", "0"], "--crop must be a positive number of pixels, got 0"),
    (["--resize", "0"], "--resize must be a positive number of pixels, got 0"),
    (["--crop", "-5"], "--crop must be a positive number of pixels, got -5"),
])
def test_imagenet_c_options_refused_not_ignored(tmp_path, option, message, capsys):
    """Options that do not apply to a pre-rendered folder, and sizes below 1, are one-line usage
    errors naming the option, before anything is loaded or written."""
    ev = _tool("eval_corruption")
    assert ev(["--checkpoint", str(tmp_path / "x.ckpt"), "--imagenet-c", str(tmp_path), *option,
               "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, message", [
    (["--crop", "0"], "--crop must be a positive number of pixels, got 0"),
    (["--resize", "-1"], "--resize must be a positive number of pixels, got -1"),
    (["--crop", "-5"], "--crop must be a positive number of pixels, got -5"),
    (["--jpeg-quality", "0"], "--jpeg-quality must be an integer in 1..100, got 0"),
    (["--jpeg-quality", "101"], "--jpeg-quality must be an integer in 1..100, got 101"),
    (["--jpeg-quality", "-5"], "--jpeg-quality must be an integer in 1..100, got -5"),
    # were torch's errors, exit 1, naming batch_size or nothing
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--workers", "-1"], "--workers must be an integer >= 0 (0: load in the main process), got -1"),
    # was ignored: the clean error is the --val set's own
    (["--clean-val", "v"], "--clean-val does not apply to --val (the clean error is that of the --val "
                           "images); it is for --imagenet-c"),
])
def test_on_the_fly_bad_sizes_and_jpeg_quality_are_one_line_errors(tmp_path, option, message, capsys):
    ev = _tool("eval_corruption")
    assert ev(["--checkpoint", str(tmp_path / "x.ckpt"), "--val", str(tmp_path), *option,
               "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n", err
    assert not (tmp_path / "o").exists()


def test_eval_sizes_zero_is_refused_not_the_default():
    from cvkit.robustness.evaluate import eval_sizes
    with pytest.raises(ValueError, match="--crop must be a positive number of pixels, got 0"):
        eval_sizes(None, 0, {"image_size": 48})
    with pytest.raises(ValueError, match="--resize must be a positive number of pixels, got 0"):
        eval_sizes(0, 32, {})
    with pytest.raises(ValueError, match="--crop must be a positive number of pixels, got -5"):
        eval_sizes(None, -5, {})
    assert eval_sizes(None, 1, {}) == (1, 1)  # 1 is a size (round(1 / 0.875) = 1)


@pytest.mark.parametrize("option, message", [
    (["--quality", "0"], "--quality must be an integer in 1..100, got 0"),
    (["--quality", "200"], "--quality must be an integer in 1..100, got 200"),
    (["--quality", "90", "--format", "png"], "--quality does not apply to --format png"),
    (["--crop", "0"], "--crop must be a positive number of pixels, got 0"),
    (["--resize", "-3"], "--resize must be a positive number of pixels, got -3"),
    (["--resize", "40", "--crop", "48"], "--resize 40 is smaller than --crop 48"),
    # Pool's own error after the render marker was written; 0 silently meant all cores
    (["--workers", "-1"], "--workers must be an integer >= 1 (default: all cores), got -1"),
    (["--workers", "0"], "--workers must be an integer >= 1 (default: all cores), got 0"),
])
def test_make_imagenet_c_bad_options_are_one_line_errors(tmp_path, option, message, capsys):
    assert _tool("make_imagenet_c")(["--val", str(tmp_path), "--out", str(tmp_path / "o"), *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert not (tmp_path / "o").exists()


def _with_classes(ckpt, dst, classes, key="ClassificationDataModule"):
    """A copy of ``ckpt`` whose datamodule recorded ``classes`` (as checkpoints since 2026-11-28
    do; a subclass of the datamodule is keyed by its own class name)."""
    c = torch.load(ckpt, weights_only=True)
    c[key] = {"classes": list(classes)}
    torch.save(c, dst)
    return dst


@pytest.mark.parametrize("key", ["ClassificationDataModule", "MyImageNetDataModule"])
def test_folders_lacking_a_class_keep_the_checkpoints_labels(setup, tmp_path, key, capsys):
    """With the training class names recorded, a corrupted set (and clean val) lacking a whole
    class is labelled by name as trained: its errors equal those of the full set's other images;
    on the fly likewise; a class the checkpoint was not trained on is a one-line error."""
    from cvkit.robustness.evaluate import load_classifier, top1_error
    from cvkit.robustness.folder import CleanImageFolder, CorruptingCollate, list_image_folder
    _, val, ckpt = setup
    trained = sorted(p.name for p in val.iterdir())
    ckpt = _with_classes(ckpt, tmp_path / "m.ckpt", trained, key)
    full = tmp_path / "c"
    assert _tool("make_imagenet_c")(["--val", str(val), "--out", str(full), *SIZE, "--corruptions", "fog",
                                     "--severities", "1", "--format", "png", "--workers", "1"]) == 0
    gone = trained[0]  # label 0: without it every other label shifts by one in folder order
    part, part_val = tmp_path / "c_part", tmp_path / "val_part"
    shutil.copytree(full, part)
    shutil.copytree(val, part_val)
    shutil.rmtree(part / "fog" / "1" / gone)
    shutil.rmtree(part_val / gone)

    model = load_classifier(ckpt, device="cpu")[0]
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]

    def reference(dataset):  # the full folder's labels (its own sorted classes = trained), less `gone`
        dataset.samples = [(p, t) for p, t in dataset.samples if Path(p).parent.name != gone]
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=CorruptingCollate(None))
        return top1_error(model, loader, "cpu", mean, std)

    from cvkit.robustness.folder import ImageNetCFolder
    assert list_image_folder(full / "fog" / "1")[1] == trained
    want_fog = reference(ImageNetCFolder(full / "fog" / "1", 32))
    want_clean = reference(CleanImageFolder(val, 40, 32))
    assert _eval("--checkpoint", str(ckpt), "--imagenet-c", str(part), "--clean-val", str(part_val), *SIZE,
                 "--out", str(tmp_path / "o")) == 0
    state = json.loads((tmp_path / "o" / "results.json").read_text())
    assert state["errors"]["fog"]["1"] == pytest.approx(want_fog)
    assert state["clean_error"] == pytest.approx(want_clean)
    assert _eval("--checkpoint", str(ckpt), "--val", str(part_val), *SIZE, "--corruptions", "fog",
                 "--severities", "1", "--out", str(tmp_path / "fly")) == 0
    assert json.loads((tmp_path / "fly" / "results.json").read_text())["clean_error"] == pytest.approx(want_clean)
    capsys.readouterr()
    (part / "fog" / "1" / "zebra").mkdir()  # a class the checkpoint never saw
    shutil.copy(next((part / "fog" / "1" / trained[1]).iterdir()), part / "fog" / "1" / "zebra" / "z.png")
    assert _eval("--checkpoint", str(ckpt), "--imagenet-c", str(part), *SIZE, "--out", str(tmp_path / "o2")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "['zebra']" in err and str(part / "fog" / "1") in err
    assert not (tmp_path / "o2" / "results.json").exists()


def test_recorded_classes_of_a_datamodule_subclass():
    from cvkit.tasks.evaluate import recorded_classes
    assert recorded_classes({"state_dict": {}, "MyDataModule": {"classes": ["a", "b"], "train_position": {}}}) == ["a", "b"]
    assert recorded_classes({"state_dict": {}, "hyper_parameters": {"num_classes": 2}}) is None


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_image_is_one_line_naming_it(setup, tmp_path, workers, capsys):
    """A file PIL cannot read was a 47-line traceback (PIL's UnidentifiedImageError, from a
    DataLoader worker too) in eval_corruption and make_imagenet_c; one line naming it, exit 1."""
    _, val, ckpt = setup
    bad_val = tmp_path / "val"
    shutil.copytree(val, bad_val)
    bad = sorted((bad_val / "circle").iterdir())[0]
    bad.write_bytes(b"not an image")
    rc = _tool("eval_corruption")(["--corruptions", "fog", "--severities", "1", "--workers",
                                   workers, "--batch-size", "16", "--no-progress", "--device",
                                   "cpu", "--checkpoint", str(ckpt), "--val", str(bad_val), *SIZE,
                                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err == f"error: cannot read image file {bad}: not an image PIL can identify\n", err
    rc = _tool("make_imagenet_c")(["--val", str(bad_val), "--out", str(tmp_path / "c"), *SIZE,
                                   "--corruptions", "fog", "--severities", "1", "--workers", "1"])
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert rc == 1 and err == f"error: cannot read image file {bad}: not an image PIL can identify"


def test_make_imagenet_c_keeps_sub_folders_and_refuses_names_that_collide(setup, tmp_path,
                                                                           capsys):
    """Images in sub-folders of a class (ImageFolder reads them) were all written to the class
    folder by file name: same-named files overwrote each other and "wrote 2 images" left one. The
    path under the class folder is kept; x.png beside x.jpg (both .jpg) is one line naming both."""
    _, val, _ = setup
    src = sorted((val / "circle").iterdir())[:2]
    nested = tmp_path / "nested"
    for i, f in enumerate(src):
        (nested / "circle" / f"sub{i}").mkdir(parents=True)
        shutil.copy(f, nested / "circle" / f"sub{i}" / "img.jpg")
    mk = _tool("make_imagenet_c")
    args = [*SIZE, "--corruptions", "fog", "--severities", "1", "--workers", "1"]
    assert mk(["--val", str(nested), "--out", str(tmp_path / "c"), *args]) == 0
    assert sorted(p.relative_to(tmp_path / "c") for p in (tmp_path / "c").rglob("*.jpg")) == [
        Path("fog/1/circle/sub0/img.jpg"), Path("fog/1/circle/sub1/img.jpg")]
    from PIL import Image
    Image.open(src[0]).save(nested / "circle" / "sub0" / "img.png")
    capsys.readouterr()
    assert mk(["--val", str(nested), "--out", str(tmp_path / "c2"), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would both be rendered as circle/sub0/img.jpg" in err, err
    assert not (tmp_path / "c2").exists()


# ------------------------------------------------------------------ audit fixes (classification path)
def _two_class_ckpt(path, seed=0):
    torch.manual_seed(seed)
    model = cvkit.create_model("resnet18", num_classes=2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18", "num_classes": 2}}, path)
    return path


def test_short_sets_foreign_classes_and_a_retrained_checkpoint(tmp_path, capsys):
    """Three defects of a folder run: a set missing images (partial extraction, interrupted
    render) was evaluated over the rest without a word; a class folder outside the clean val's
    classes failed only on reaching its set, after the clean val and the sets before it; a model
    retrained into the same checkpoint file resumed with the old model's errors."""
    root, val = tmp_path / "c", tmp_path / "val"
    _write_c_folder(root, {("fog", 1): ["a", "b"], ("fog", 2): ["a"]})  # fog/2 lacks b's image
    _write_c_folder(val, {("x", 1): ["a", "b"]})
    val = val / "x" / "1"
    ckpt = _two_class_ckpt(tmp_path / "m.ckpt")
    args = ["--checkpoint", str(ckpt), "--imagenet-c", str(root), "--clean-val", str(val), "--resize",
            "40", "--crop", "40", "--corruptions", "fog", "--workers", "0", "--no-progress", "--device", "cpu"]
    ev = _tool("eval_corruption")
    out = tmp_path / "o"
    assert ev([*args, "--severities", "1", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: fog severity 2 has 1 image, the clean val 2: its error is over those only" in err
    state = json.loads((out / "results.json").read_text())
    assert state["images"] == {"fog": {"1": 2, "2": 1}} and state["clean_images"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["uneven_sets"] == {"fog": {"2": 1}} and summary["images_expected"] == 2
    assert "**Sets with another image count**" in (out / "report.md").read_text()

    _write_c_folder(root, {("fog", 3): ["a", "zebra"]})  # a class the clean val does not have
    assert ev([*args, "--severities", "1", "2", "3", "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{root / 'fog' / '3'} has class folder(s) ['zebra']" in err
    assert f"(2 classes, those of the clean val {val})" in err
    assert not (tmp_path / "o2").exists()  # refused before the clean val was evaluated

    _two_class_ckpt(ckpt, seed=1)  # retrained into the same file
    assert ev([*args, "--severities", "1", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different evaluation (checkpoint_sha256: " in err
    assert "the checkpoint's contents changed" in err


def test_unreadable_results_and_an_output_file_are_one_line_errors(tmp_path, capsys):
    """A results.json that is not JSON (or not an object) gave json's message without the file
    ('Unterminated string ...') or a traceback; an --out that is a file a FileExistsError
    traceback after the clean val was evaluated (make_imagenet_c: before rendering)."""
    from cvkit.robustness.evaluate import RESULTS_FILE, resume_results

    fresh = {"meta": {}, "errors": {}}
    (tmp_path / RESULTS_FILE).write_text('{"meta": {"task": "classifi')
    with pytest.raises(ValueError, match=rf"cannot resume from {tmp_path / RESULTS_FILE}: not readable "
                                         r"JSON \(Unterminated string.*--no-resume to start over"):
        resume_results(tmp_path, {}, True, fresh)
    (tmp_path / RESULTS_FILE).write_text('[1, 2]')
    with pytest.raises(ValueError, match="not a JSON object"):
        resume_results(tmp_path, {}, True, fresh)
    (tmp_path / RESULTS_FILE).write_text('{"meta": {}, "errors": [0.5]}')
    with pytest.raises(ValueError, match="'errors' is not a JSON object"):
        resume_results(tmp_path, {}, True, fresh)
    assert resume_results(tmp_path, {}, False, fresh) is fresh  # --no-resume: not read
    (tmp_path / RESULTS_FILE).write_text('{"meta": {}}')  # keys it lacks: as a fresh run's
    assert resume_results(tmp_path, {}, True, fresh) == {"meta": {}, "errors": {}}
    (tmp_path / RESULTS_FILE).write_text('{"errors": {"fog": {"1": 0.5}}}')  # whose errors?
    with pytest.raises(ValueError, match="records no 'meta' .*--no-resume to start over"):
        resume_results(tmp_path, {"model": "m"}, True, fresh)
    # a file from before the checkpoint digest resumes, and the digest is saved with it: a model
    # retrained into the same file is refused at the next resume
    (tmp_path / RESULTS_FILE).write_text('{"meta": {"model": "m"}, "errors": {}}')
    state = resume_results(tmp_path, {"model": "m", "checkpoint_sha256": "ab"}, True, fresh)
    assert state["meta"] == {"model": "m", "checkpoint_sha256": "ab"}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="checkpoint_sha256: 'ab' there, 'cd' now"):
        resume_results(tmp_path, {"model": "m", "checkpoint_sha256": "cd"}, True, fresh)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"output folder {afile} is a file: give a folder"):
        resume_results(afile, {}, True, fresh)
    assert _tool("make_imagenet_c")(["--val", str(tmp_path), "--out", str(afile), "--workers", "1"]) == 1
    assert capsys.readouterr().err == f"error: output folder {afile} is a file: give a folder\n"
