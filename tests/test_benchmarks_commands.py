"""cvkit/benchmarks: every suite's printed command reproduces the run (no benchmark runs here)."""
from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from cvkit.benchmarks import SUITES, command_line
from cvkit.kernels.isqrt_cov import DIRECT_LAUNCH_ENV
from cvkit.kernels.tile_configs import ENV_VAR, ENV_VARS

# per suite, a set of options off their defaults (values needing quoting among them)
NON_DEFAULT = {
    "covpool": ["--device", "cuda", "--batch", "8", "16", "--dim", "64", "--size", "7",
                "--iters", "3", "--repeats", "2", "--seed", "4", "--cuda-graph", "--no-tf32"],
    "covpool-tiles": ["--device", "cpu", "--seed", "3", "--max-configs", "1", "--jobs", "2",
                      "--configs", "32,32,4,1", "64,64,4,3", "--precision", "tf32", "--size", "7",
                      "--covariance-configs", "32,16,4,2",
                      "--gradx-configs", "128,32,32,4,3", "64,16,32,4,2"],
    "covpool-host": ["--device", "cuda", "--batch", "3", "--dim", "64", "--size", "7", "--iters", "3",
                     "--steps", "4", "--repeats", "2", "--no-direct"],
    "models": ["--models", "eca_resnet18", "resnet50_gcp", "--batch", "2", "--size", "64",
               "--repeats", "3", "--warmup", "0", "--channels-last", "--threads", "2",
               "--device", "cuda:1"],
    "data": ["--root", "/tmp/my data/classification", "--size", "96", "--batch-size", "8",
             "--workers", "0", "--repeats", "1", "--max-images", "40"],
    "corruptions": ["--batch", "1", "--size", "32", "--repeats", "1",
                    "--corruptions", "fog", "gaussian_noise"],
}


def _module(suite: str):
    return importlib.import_module(f"cvkit.benchmarks.{suite.replace('-', '_')}")


def _command(suite: str, args: argparse.Namespace) -> str:
    """The command line as the suite's run() prints it."""
    return _module(suite).command(args)


def _parse(suite: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _module(suite).add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def no_env(monkeypatch):
    for name in (*ENV_VARS, DIRECT_LAUNCH_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_suite_has_options():
    assert set(NON_DEFAULT) == set(SUITES)


@pytest.mark.parametrize("defaults", [False, True], ids=["non-default", "defaults"])
@pytest.mark.parametrize("suite", list(SUITES))
def test_command_reproduces_the_arguments(suite, defaults, no_env):
    args = _parse(suite, [] if defaults else NON_DEFAULT[suite])
    tokens = shlex.split(_command(suite, args))
    assert tokens[:3] == ["python", "tools/benchmark.py", suite]
    assert _parse(suite, tokens[3:]) == args


def test_covpool_host_and_data_name_their_main_options_at_defaults(no_env):
    host = shlex.split(_command("covpool-host", _parse("covpool-host", [])))
    assert host[3:] == ["--device", "cpu", "--dim", "256", "--size", "14", "--iters", "5",
                        "--steps", "50", "--repeats", "7"]  # --batch: None, no value gives it
    data = shlex.split(_command("data", _parse("data", [])))
    assert data[3:] == ["--root", "data/classification", "--size", "224", "--batch-size", "64",
                        "--workers", "2", "--repeats", "3"]


def test_covpool_command_carries_the_kernel_settings(no_env):
    args = _parse("covpool", NON_DEFAULT["covpool"])
    no_env.setenv(ENV_VAR, " 64,32,4,3;128,32,8,2 ")
    tokens = shlex.split(_command("covpool", args))
    assert tokens[0] == f"{ENV_VAR}=64,32,4,3;128,32,8,2"
    assert tokens[1:4] == ["python", "tools/benchmark.py", "covpool"]
    assert _parse("covpool", tokens[4:]) == args
    no_env.setenv(DIRECT_LAUNCH_ENV, "0")
    tokens = shlex.split(_command("covpool", args))
    assert tokens[:2] == [f"{ENV_VAR}=64,32,4,3;128,32,8,2", f"{DIRECT_LAUNCH_ENV}=0"]
    assert _parse("covpool", tokens[5:]) == args


def test_covpool_host_command_carries_the_tile_configs(no_env):
    args = _parse("covpool-host", NON_DEFAULT["covpool-host"])
    no_env.setenv(ENV_VAR, "64,32,4,3")
    tokens = shlex.split(_command("covpool-host", args))
    assert tokens[:4] == [f"{ENV_VAR}=64,32,4,3", "python", "tools/benchmark.py", "covpool-host"]
    assert _parse("covpool-host", tokens[4:]) == args


def test_covpool_tiles_command_carries_the_three_tile_config_variables(no_env):
    """Each variable set goes ahead of the command (the autotuned rows choose among its configs),
    in the order product, covariance, input gradient; the map size is always named."""
    args = _parse("covpool-tiles", NON_DEFAULT["covpool-tiles"])
    no_env.setenv(ENV_VARS[2], "128,32,32,4,3")
    no_env.setenv(ENV_VARS[1], "64,32,4,4;64,64,4,2")
    tokens = shlex.split(_command("covpool-tiles", args))
    assert tokens[:3] == [f"{ENV_VARS[1]}=64,32,4,4;64,64,4,2", f"{ENV_VARS[2]}=128,32,32,4,3",
                          "python"]
    no_env.setenv(ENV_VARS[0], "64,32,4,3")
    tokens = shlex.split(_command("covpool-tiles", args))
    assert [t.split("=")[0] for t in tokens[:3]] == list(ENV_VARS)
    assert _parse("covpool-tiles", tokens[6:]) == args
    defaults = shlex.split(_command("covpool-tiles", _parse("covpool-tiles", [])))
    assert defaults[6:] == ["--device", "cuda", "--batch", "128", "--dim", "256", "--size", "14",
                            "--precision", "tf32x3"]


def test_always_printed_skips_flags_and_none():
    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=None)
        parser.add_argument("--flag", action="store_true")
        parser.add_argument("--k", type=int, default=1)

    args = argparse.Namespace(n=None, flag=False, k=1)
    assert command_line("x", args, add_arguments, ("n", "flag", "k")) == \
        "python tools/benchmark.py x --k 1"


# ------------------------------------------------------------------------ a user's mistakes
# Each command below is a user's mistake: one line ``error: ...`` naming the option on stderr,
# nothing on stdout, exit status 2 (bad option) or 1 (bad data), before anything is timed. The
# valid options around the mistake are tiny, so that code which missed it ends quickly.
TINY = {
    "corruptions": ["--batch", "1", "--size", "32", "--repeats", "1", "--corruptions", "fog"],
    "models": ["--models", "eca_resnet18", "--batch", "2", "--size", "32", "--repeats", "1",
               "--warmup", "0"],
    "data": ["--workers", "0", "--size", "32", "--batch-size", "2", "--max-images", "4",
             "--repeats", "1"],
}
BAD_COMMANDS = [  # (suite, the mistake (the last value given wins), exit status, option named)
    ("corruptions", ["--corruptions", "fog", "foo"], 2, "--corruptions"),  # after a valid name
    ("corruptions", ["--size", "16"], 2, "--size"),  # imagecorruptions needs >= 32 px
    ("corruptions", ["--batch", "0"], 2, "--batch"),
    ("corruptions", ["--repeats", "0"], 2, "--repeats"),
    ("models", ["--models", "eca_resnet18", "foo"], 2, "--models"),
    ("models", ["--device", "cuda"], 2, "--device"),  # the test machine has no CUDA (fixture)
    ("models", ["--device", "cuda:0"], 2, "--device"),
    ("models", ["--device", "gpu"], 2, "--device"),
    ("models", ["--batch", "0"], 2, "--batch"),
    ("models", ["--size", "0"], 2, "--size"),
    ("models", ["--repeats", "0"], 2, "--repeats"),
    ("models", ["--warmup", "-1"], 2, "--warmup"),
    ("models", ["--threads", "-1"], 2, "--threads"),
    ("data", ["--root", "/nonexistent/cvkit-benchmark-root"], 1, "--root"),
    ("data", ["--batch-size", "0"], 2, "--batch-size"),
    ("data", ["--repeats", "0"], 2, "--repeats"),
    ("data", ["--workers", "-1"], 2, "--workers"),
    ("data", ["--max-images", "0"], 2, "--max-images"),
    ("data", ["--size", "0"], 2, "--size"),
]


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _image_folder(root, n_train: int):
    """An ImageFolder root with train/ (``n_train`` images) and val/, two classes."""
    from PIL import Image

    for split, n in (("train", n_train), ("val", 2)):
        for i in range(n):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (60 * i % 256, 90, 120)).save(folder / f"{i}.png")
    return root


def _one_error_line(capsys, option: str) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err  # no traceback, nothing timed before the error
    assert lines[0].startswith("error: ") and option in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("suite, mistake, status, option", BAD_COMMANDS,
                         ids=[f"{s}:{'='.join(m)}" for s, m, _, _ in BAD_COMMANDS])
def test_mistake_is_one_error_line(suite, mistake, status, option, capsys, no_cuda, tmp_path):
    from cvkit.benchmarks import main

    root = ["--root", str(_image_folder(tmp_path, 4))] if suite == "data" else []
    assert main([suite, *TINY[suite], *root, *mistake]) == status
    _one_error_line(capsys, option)


def test_data_batch_larger_than_the_images(capsys, tmp_path):
    """The loaders drop an incomplete last batch: a batch size above the image count would
    time empty passes (and divide by zero images)."""
    from cvkit.benchmarks import main

    root = str(_image_folder(tmp_path, 3))
    assert main(["data", *TINY["data"], "--root", root, "--batch-size", "8"]) == 2
    assert "3 images" in _one_error_line(capsys, "--batch-size")


def test_device_gpu_index_beyond_the_machine(monkeypatch):
    import torch

    from cvkit.tool_errors import OptionError, check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device in ("cpu", "cuda", "cuda:0"):
        check_device(device)
    with pytest.raises(OptionError, match=r"--device cuda:1: this machine has 1 CUDA GPU"):
        check_device("cuda:1")
