"""cvkit.tasks.evaluate.load_task (tools/test.py, tools/eval_corruption.py): a file that is not a
checkpoint is one error naming it and saying why; tools/test.py's --model-arg and one-line
errors."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cls_helpers import tiny_imagefolder
from cvkit.models.checkpoint import CheckpointError
from cvkit.tasks.evaluate import load_task


def test_unreadable_checkpoint_is_one_error_naming_it(tmp_path):
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")  # an interrupted copy
    with pytest.raises(CheckpointError, match=r"last\.ckpt is not a readable PyTorch checkpoint: "
                                              r"the file is empty or cut short"):
        load_task(empty)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_task(tmp_path / "nope.ckpt")
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    with pytest.raises(ValueError, match=r"weights\.pth holds plain model weights: pass --model"):
        load_task(weights)


# -- tools/test.py: plain weights with --model-arg, one-line errors -------------------------------
REPO = Path(__file__).resolve().parents[1]


def _test_tool():
    spec = importlib.util.spec_from_file_location("cvkit_test_tool", REPO / "tools" / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def gcp_weights(cls_root, tmp_path):
    """Plain weights of a 2-class ResNet-18 with a 32-d GCP head (as convert_checkpoint writes the
    demo's) and a 2-class validation folder."""
    import cvkit

    model = cvkit.create_model("resnet18", num_classes=2, global_pool="gcp", gcp_dim=32)
    weights = tmp_path / "demo.pth"
    torch.save(model.state_dict(), weights)
    data = tiny_imagefolder(cls_root, tmp_path / "data", classes=2, train=1, val=2)
    return weights, data / "val", model


def test_test_tool_evaluates_plain_weights_with_model_args(gcp_weights, tmp_path, capsys):
    """--model-arg reaches load_task (the weights need global_pool=gcp); without it the error says
    which --model-arg to pass."""
    weights, val, model = gcp_weights
    task, _ = load_task(weights, "resnet18", num_classes=2, model_kwargs={"global_pool": "gcp"})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in task.model.state_dict().items())
    tool = _test_tool()
    common = ["--checkpoint", str(weights), "--model", "resnet18", "--data", str(val),
              "--image-size", "32", "--workers", "0", "--accelerator", "cpu", "--batch-size", "4"]
    assert tool.main(common) == 1
    line = _error_line(capsys)
    assert "demo.pth" in line and "pass --model-arg global_pool=gcp" in line, line
    out = tmp_path / "eval.json"
    assert tool.main([*common, "--model-arg", "global_pool=gcp", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 4 and 0 <= result["top1"] <= 100


def test_test_tool_ignores_hidden_folders_beside_the_classes(gcp_weights, tmp_path):
    """A .ipynb_checkpoints folder in the val split was a third class for plain weights' head
    (the classes are found as in training now: hidden folders are none), and a dataset root whose
    val holds only hidden folders is no dataset root."""
    weights, val, _ = gcp_weights
    (val / ".ipynb_checkpoints").mkdir()
    tool = _test_tool()
    out = tmp_path / "eval.json"
    assert tool.main(["--checkpoint", str(weights), "--model", "resnet18", "--data", str(val),
                      "--model-arg", "global_pool=gcp", "--model-arg", "gcp_dim=32",
                      "--image-size", "32", "--workers", "0", "--accelerator", "cpu",
                      "--output", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 4
    from cvkit.tasks.evaluate import _is_dataset_root

    (tmp_path / "root" / "val" / ".cache").mkdir(parents=True)
    assert not _is_dataset_root(tmp_path / "root")


def test_test_tool_takes_val_of_a_dataset_root_with_files_beside_the_splits(gcp_weights, tmp_path):
    """An ImageNet root holds files beside train/ and val/ (LOC_synset_mapping.txt): --data ROOT
    evaluates ROOT/val (it took ROOT itself: "2 class folders", train and val)."""
    weights, val, _ = gcp_weights
    (val.parent / "LOC_synset_mapping.txt").write_text("n01440764 tench\n")
    out = tmp_path / "eval.json"
    assert _test_tool().main(["--checkpoint", str(weights), "--model", "resnet18",
                              "--model-arg", "global_pool=gcp", "--model-arg", "gcp_dim=32",
                              "--data", str(val.parent), "--image-size", "32", "--workers", "0",
                              "--accelerator", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["data"] == str(val) and result["images"] == 4
    assert not list(tmp_path.glob(".eval.json.*"))             # written atomically, no temp left


def test_test_tool_misspelt_model_arg_or_model_is_one_line(gcp_weights, capsys):
    weights, val, _ = gcp_weights
    tool = _test_tool()
    common = ["--checkpoint", str(weights), "--data", str(val), "--workers", "0",
              "--accelerator", "cpu"]
    assert tool.main([*common, "--model", "resnet18", "--model-arg", "globl_pool=gcp"]) == 2
    line = _error_line(capsys)  # the tool's option and the user's keywords (not checkpoint_path)
    assert line.startswith("error: --model-arg {'globl_pool': 'gcp'} of model 'resnet18': "), line
    assert "unexpected keyword argument 'globl_pool'" in line, line
    assert tool.main([*common, "--model", "resnet1B"]) == 2
    line = _error_line(capsys)
    assert "unknown model 'resnet1B'" in line and "closest cvkit presets: resnet18" in line, line


def test_detector_lightning_checkpoint_points_to_test_det(tmp_path, capsys):
    """A DetectionTask's last.ckpt (mmdet config in the hyper-parameters, ``detector.`` weights) is
    named as a detector checkpoint, not as plain weights that need --model."""
    from cvkit.tasks.detection import DetectionTask

    task = DetectionTask(REPO / "configs/detection/retinanet_eca-r18_fpn_shapes.py")
    ckpt = tmp_path / "last.ckpt"  # what Lightning's checkpoint connector writes for the task
    torch.save({"epoch": 0, "global_step": 0, "state_dict": task.state_dict(),
                "hyper_parameters": dict(task.hparams)}, ckpt)
    with pytest.raises(ValueError,
                       match=r"last\.ckpt is a detector checkpoint .*tools/test_det\.py"):
        load_task(ckpt)
    assert _test_tool().main(["--checkpoint", str(ckpt), "--data", str(tmp_path)]) == 1
    line = _error_line(capsys)
    assert "tools/test_det.py" in line and "--model" not in line, line
    assert "tools/eval_corruption.py --task det --config CONFIG" in line, line  # COCO-C's way


def test_test_tool_unavailable_accelerator_is_one_line_exit_2(gcp_weights, capsys):
    """An accelerator the machine lacks (Lightning's MisconfigurationException; MPS on Linux)
    is a bad option: one line, exit 2, not a traceback."""
    weights, val, _ = gcp_weights
    rc = _test_tool().main(["--checkpoint", str(weights), "--model", "resnet18", "--model-arg",
                            "global_pool=gcp", "--data", str(val), "--workers", "0",
                            "--accelerator", "mps"])
    assert rc == 2
    line = _error_line(capsys)
    assert "`MPSAccelerator` can not run on your system" in line, line


@pytest.mark.parametrize("option,where", [
    (["--image-size", "-5"], "--image-size must be an integer >= 1, got -5"),
    (["--image-size", "0"], "--image-size must be an integer >= 1, got 0"),
    (["--crop-pct", "0"], "--crop-pct must be in (0, 1], got 0.0"),
    (["--crop-pct", "1.5"], "--crop-pct must be in (0, 1], got 1.5"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
])
def test_test_tool_bad_size_or_crop_is_one_line_exit_2(gcp_weights, option, where, capsys):
    """A size < 1 or a crop_pct outside (0, 1] is refused naming the option (0 silently became the
    checkpoint's value, -5 was a traceback, 1.5 exit 1)."""
    weights, val, _ = gcp_weights
    rc = _test_tool().main(["--checkpoint", str(weights), "--model", "resnet18", "--model-arg",
                            "global_pool=gcp", "--model-arg", "gcp_dim=32", "--data", str(val),
                            "--workers", "0", "--accelerator", "cpu", *option])
    assert rc == 2
    assert _error_line(capsys) == f"error: {where}"


def test_test_tool_resize_filter_defaults_to_the_checkpoints(gcp_weights, tmp_path):
    """--interpolation picks the resize filter (bicubic scores other pixels than bilinear); without
    it a training checkpoint's recorded data.interpolation is used, plain weights get bilinear."""
    from cvkit.tasks.evaluate import evaluate

    weights, val, model = gcp_weights
    common = dict(data=val, image_size=32, num_workers=0, accelerator="cpu", batch_size=4)
    plain = dict(checkpoint=weights, model_name="resnet18", model_kwargs={"global_pool": "gcp"})
    bilinear = evaluate(**plain, **common, interpolation="bilinear")["loss"]
    bicubic = evaluate(**plain, **common, interpolation="bicubic")["loss"]
    assert bicubic != bilinear
    assert evaluate(**plain, **common)["loss"] == bilinear
    ckpt = tmp_path / "bicubic.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "resnet18", "num_classes": 2,
                                     "model_kwargs": {"global_pool": "gcp", "gcp_dim": 32}},
                "datamodule_hyper_parameters": {"interpolation": "bicubic"}}, ckpt)
    assert evaluate(ckpt, **common)["loss"] == bicubic
    assert evaluate(ckpt, **common, interpolation="bilinear")["loss"] == bilinear
