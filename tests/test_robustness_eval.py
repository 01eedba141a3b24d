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
    assert summary["complete"] is False  # 4 of 19 corruptions
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
    assert "does not name its model" in capsys.readouterr().err
    assert ev(["--checkpoint", str(tmp_path / "nope.pt"), "--val", str(cls_root / "val"),
               "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert ev(["--checkpoint", str(ckpt), "--model", "resnet18", "--val", str(cls_root / "val"),
               "--severities", "6", "--out", str(tmp_path / "o")]) == 2
    assert "severity must be an integer in 1..5" in capsys.readouterr().err
    assert ev(["--checkpoint", str(ckpt), "--model", "resnet18", "--imagenet-c", str(tmp_path / "none"),
               "--out", str(tmp_path / "o")]) == 2
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
