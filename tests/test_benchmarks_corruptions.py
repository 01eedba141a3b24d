"""cvkit/benchmarks: the printed command reproduces the run (every option off its default)."""
from __future__ import annotations

import argparse
import shlex

from cvkit.benchmarks import main


def _command(report: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith("Command: `"))
    return shlex.split(line.removeprefix("Command: `").rstrip("`"))


def _reparsed(add_arguments, argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(argv))


def test_corruptions_command_names_the_corruptions(capsys):
    from cvkit.benchmarks import corruptions
    argv = ["--batch", "1", "--size", "32", "--repeats", "1", "--corruptions", "fog", "gaussian_noise"]
    assert main(["corruptions", *argv]) == 0
    cmd = _command(capsys.readouterr().out)
    assert cmd[:3] == ["python", "tools/benchmark.py", "corruptions"]
    assert " ".join(cmd).endswith("--corruptions fog gaussian_noise")
    assert _reparsed(corruptions.add_arguments, cmd[3:]) == _reparsed(corruptions.add_arguments, argv)


def test_covpool_tiles_command_keeps_seed_and_max_configs():
    from cvkit.benchmarks import covpool_tiles
    argv = ["--device", "cpu", "--seed", "3", "--max-configs", "1", "--jobs", "2", "--configs", "32,32,4,1"]
    args = argparse.Namespace(**_reparsed(covpool_tiles.add_arguments, argv))
    cmd = shlex.split(covpool_tiles.command(args))
    assert cmd[3:9] == ["--device", "cpu", "--batch", "128", "--dim", "256"]  # always named
    assert _reparsed(covpool_tiles.add_arguments, cmd[3:]) == vars(args)
