"""cvkit/benchmarks: every suite's printed command reproduces the run (no benchmark runs here)."""
from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from cvkit.benchmarks import SUITES, command_line
from cvkit.kernels.isqrt_cov import DIRECT_LAUNCH_ENV
from cvkit.kernels.tile_configs import ENV_VAR

# per suite, a set of options off their defaults (values needing quoting among them)
NON_DEFAULT = {
    "covpool": ["--device", "cuda", "--batch", "8", "16", "--dim", "64", "--size", "7",
                "--iters", "3", "--repeats", "2", "--seed", "4", "--cuda-graph", "--no-tf32"],
    "covpool-tiles": ["--device", "cpu", "--seed", "3", "--max-configs", "1", "--jobs", "2",
                      "--configs", "32,32,4,1", "64,64,4,3", "--precision", "tf32"],
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
    for name in (ENV_VAR, DIRECT_LAUNCH_ENV):
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


def test_always_printed_skips_flags_and_none():
    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=None)
        parser.add_argument("--flag", action="store_true")
        parser.add_argument("--k", type=int, default=1)

    args = argparse.Namespace(n=None, flag=False, k=1)
    assert command_line("x", args, add_arguments, ("n", "flag", "k")) == \
        "python tools/benchmark.py x --k 1"
