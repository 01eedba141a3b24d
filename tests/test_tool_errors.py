"""cvkit.tool_errors: every tool reports a user's mistake as one line, exit 2 for a bad option and
1 for an input the run fails on; a checkpoint mismatch's advice is phrased per audience; an error
re-raised from a DataLoader worker is reported by its own message."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import cvkit
from cvkit.models.checkpoint import CheckpointError, load_state_dict
from cvkit.tool_errors import FAILED, USAGE, OptionError, error_line, is_user_error, report

REPO = Path(__file__).resolve().parents[1]
FASTER = REPO / "configs/detection/faster-rcnn_eca-r18_fpn_shapes.py"


def _tool(name: str):
    if str(REPO / "tools") not in sys.path:  # train_det / test_det import each other
        sys.path.insert(0, str(REPO / "tools"))
    spec = importlib.util.spec_from_file_location(f"cvkit_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _cli(argv):
    from cvkit.tasks.cli import main

    return main(argv)


def _tools(tmp):
    """(tool, argv with a bad option, argv with a missing input file)."""
    missing = str(tmp / "missing.pth")
    val = str(REPO / "data/classification/val")
    return {
        "test": (["--checkpoint", missing, "--data", val, "--model-arg", "gcp"],
                 ["--checkpoint", missing, "--data", val]),
        "convert_checkpoint": ([missing, str(tmp / "o.pth"), "--model", "resnet18", "--model-arg", "gcp"],
                               [missing, str(tmp / "o.pth")]),
        "eval_corruption": (["--checkpoint", missing, "--val", val, "--severities", "6", "--out", str(tmp / "e")],
                            ["--checkpoint", missing, "--val", val, "--out", str(tmp / "e")]),
        "make_imagenet_c": (["--val", val, "--out", str(tmp / "c"), "--corruptions", "foggy"],
                            ["--val", str(tmp / "no_val"), "--out", str(tmp / "c")]),
        "test_det": ([str(FASTER), missing, "--cfg-options", "novalue"],
                     [str(tmp / "missing_config.py"), missing]),
        "train_det": ([str(FASTER), "--cfg-options", "novalue"],
                      [str(tmp / "missing_config.py")]),
    }


@pytest.mark.parametrize("name", ["test", "convert_checkpoint", "eval_corruption", "make_imagenet_c",
                                  "test_det", "train_det"])
def test_every_tool_exits_2_for_a_bad_option_and_1_for_a_missing_input(name, tmp_path, capsys):
    bad_option, missing_input = _tools(tmp_path)[name]
    main = _tool(name)
    for argv, status in ((bad_option, USAGE), (missing_input, FAILED)):
        capsys.readouterr()
        assert main(argv) == status, (name, argv)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: "), (name, err)
        assert "Traceback" not in err[0]
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "c").exists()


def test_option_values_found_while_building_are_exit_2(tmp_path, capsys):
    """A --model-arg value the model refuses (an even ECA kernel size) and an accelerator or
    precision Lightning does not know are bad options too, though found only while building."""
    weights = tmp_path / "eca18.pth"
    torch.save(cvkit.create_model("eca_resnet18", num_classes=10).state_dict(), weights)
    val = str(REPO / "data/classification/val")
    test = _tool("test")
    for extra, said in ((["--model-arg", "eca_k_size=4"], "eca_k_size"),
                        (["--accelerator", "foo"], "foo"), (["--precision", "17"], "17")):
        capsys.readouterr()
        assert test(["--checkpoint", str(weights), "--model", "eca_resnet18", "--data", val,
                     "--workers", "0", *extra]) == USAGE, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and said in err[0], err
    assert _cli(["fit", "--data.root", str(REPO / "data/classification"), "--trainer.accelerator",
                 "foo", "--trainer.default_root_dir", str(tmp_path)]) == USAGE
    assert "bad trainer option (--trainer.*): " in capsys.readouterr().err


def test_an_output_path_that_is_a_folder_is_one_line_and_exit_1(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, weights)
    folder = tmp_path / "out"
    folder.mkdir()
    assert _tool("convert_checkpoint")([str(weights), str(folder)]) == FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {folder}: it is a directory (give a file name)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "w.pth"]  # no temporary left


def test_errors_keep_their_advice_across_processes():
    import pickle

    from cvkit.tasks.classification import ModelKwargsError

    e = pickle.loads(pickle.dumps(CheckpointError("python advice", "tool advice")))
    assert str(e) == "python advice" and e.tool_message == "tool advice"
    e = pickle.loads(pickle.dumps(ModelKwargsError("--model-arg {} of model 'x': bad", "bad")))
    assert e.reason == "bad" and "--model-arg" in str(e)


def test_training_cli_follows_the_same_exit_statuses(tmp_path, capsys):
    """tools/train.py: an unknown preset is a bad option (2), a missing data folder a failed
    input (1)."""
    assert _cli(["fit", "--data.root", str(REPO / "data/classification"), "--model.model_name", "resnet1B",
                 "--trainer.default_root_dir", str(tmp_path)]) == USAGE
    assert "unknown model 'resnet1B'" in capsys.readouterr().err
    assert _cli(["fit", "--data.root", str(tmp_path / "nowhere"),
                 "--trainer.default_root_dir", str(tmp_path)]) == FAILED
    assert "nowhere" in capsys.readouterr().err


class _Broken(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise FileNotFoundError(f"image /data/x{i}.jpg is gone")


def test_an_error_from_a_dataloader_worker_is_reported_by_its_own_message(capsys):
    with pytest.raises(FileNotFoundError) as info:
        next(iter(DataLoader(_Broken(), num_workers=1)))
    assert "Original Traceback" in str(info.value)  # torch re-raises with the worker's traceback
    assert error_line(info.value) == "image /data/x0.jpg is gone"
    assert report(info.value) == FAILED
    assert capsys.readouterr().err == "error: image /data/x0.jpg is gone\n"


def test_statuses_by_kind():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    assert report(OptionError("--x")) == USAGE and report(ValueError("bad file")) == FAILED
    assert report(MisconfigurationException("no\n  GPU")) == USAGE
    assert error_line(MisconfigurationException("no\n  GPU")) == "no GPU"
    assert is_user_error(FloatingPointError()) and not is_user_error(KeyError("bug"))
    assert error_line(ValueError("")) == "ValueError"


def _mismatch(model, source):
    with pytest.raises(CheckpointError) as info:
        load_state_dict(model, source.state_dict())
    return str(info.value), error_line(info.value)


def test_checkpoint_mismatch_advice_in_python_and_in_the_tools_terms():
    gcp = cvkit.create_model("resnet18", num_classes=4, global_pool="gcp", gcp_dim=32)
    plain = cvkit.create_model("resnet18", num_classes=4)
    python, tool = _mismatch(plain, gcp)
    assert "build the model with global_pool='gcp'" in python and "--model-arg" not in python
    assert "pass --model-arg global_pool=gcp (or a *_gcp preset as --model)" in tool
    assert "build the model" not in tool
    assert python.split("; the checkpoint has")[0] == tool.split("; the checkpoint has")[0]
    python, tool = _mismatch(cvkit.create_model("resnet18", num_classes=4, global_pool="gcp",
                                                gcp_dim=32), plain)
    assert "build it without global_pool='gcp'" in python
    assert "give a --model without _gcp and no --model-arg global_pool=gcp" in tool
    python, tool = _mismatch(cvkit.create_model("eca_resnet18", num_classes=4, eca_k_size=5),
                             cvkit.create_model("eca_resnet18", num_classes=4, eca_k_size=3))
    assert "(or pass eca_k_size=...)" in python
    assert "the tools read them from the checkpoint; drop --model-arg eca_k_size" in tool
    python, tool = _mismatch(cvkit.create_model("mobilenetv2", num_classes=4),
                             cvkit.create_model("eca_mobilenetv2", num_classes=4))
    assert "the checkpoint has ECA modules: build an eca_* preset (or pass eca=True)" in python
    assert "the checkpoint has ECA modules: give an eca_* preset as --model" in tool
    python, tool = _mismatch(cvkit.create_model("eca_resnet18", num_classes=4),
                             cvkit.create_model("resnet18", num_classes=4))
    assert "the model has ECA modules the checkpoint lacks: build the preset without eca_" in python
    assert "give a --model without eca_" in tool
