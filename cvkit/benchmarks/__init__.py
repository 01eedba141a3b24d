"""Benchmarks behind ``tools/benchmark.py``: one module per suite, each with
``add_arguments(parser)`` and ``run(args) -> str`` (a Markdown report for BENCHMARKS.md).

Targets in the issues are ratios measured in one run on one machine; nothing here is a unit test.

A user's mistake (a bad option value, a device the machine lacks, a missing folder) is one line
``error: ...`` on stderr, exit status 2 for a bad option, 1 for bad data (:mod:`cvkit.tool_errors`);
the suites check their options in ``run`` before anything is timed.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import shlex
import sys

import torch

from cvkit import tool_errors
from cvkit.tool_errors import NON_NEGATIVE_INT, POSITIVE_INT, check_options

SUITES = {
    "covpool": "iSQRT-COV forward+backward time and peak memory (CPU, or --device cuda)",
    "covpool-tiles": "the iSQRT-COV Triton matrix kernels per launch kind and tile config (CUDA)",
    "covpool-host": "host time of the iSQRT-COV Triton forward+backward: stand-in compiled "
                    "kernels on the CPU, or --device cuda",
    "models": "training-step time of cvkit presets beside torchvision's resnet50",
    "data": "training input pipeline images/s beside torchvision transforms",
    "corruptions": "ImageNet-C corruptions beside the imagecorruptions package",
}


def machine_description(device: str = "cpu") -> str:
    """One line naming the machine a figure was measured on."""
    if device.startswith("cuda") and torch.cuda.is_available():
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}, Python {platform.python_version()}"


def check_int_options(args: argparse.Namespace, positive=(), non_negative=()) -> None:
    """An :class:`~cvkit.tool_errors.OptionError` naming the first option (by its ``dest``) of
    ``positive`` that is not an integer >= 1 or of ``non_negative`` that is not one >= 0 (None
    passes: the option's "not given")."""
    checks = [(name, POSITIVE_INT) for name in positive]
    checks += [(name, NON_NEGATIVE_INT) for name in non_negative]
    check_options((f"--{name.replace('_', '-')}", getattr(args, name), test, allowed)
                  for name, (test, allowed) in checks if getattr(args, name) is not None)


def command_line(suite: str, args: argparse.Namespace, add_arguments, always=(), env=()) -> str:
    """``python tools/benchmark.py SUITE`` with every option of ``args`` that differs from the
    default ``add_arguments`` gives it (and those named in ``always``, unless None or a flag at
    its default): the command reproduces the run. ``env`` names environment variables that change
    what is measured; each one set (non-empty) goes ahead as ``NAME=value``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parts = [f"{name}={shlex.quote(os.environ[name].strip())}" for name in env
             if os.environ.get(name, "").strip()]
    parts += ["python tools/benchmark.py", suite]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        if value is None or (value == action.default
                             and (action.dest not in always or action.nargs == 0)):
            continue  # None: no command-line value gives it (it is the default)
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_false
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    modules = {}
    for name, help_text in SUITES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = f"cvkit.benchmarks.{name.replace('-', '_')}"
            modules[name] = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.suite not in modules:
        print(f"error: benchmark suite {args.suite!r} is not implemented yet", file=sys.stderr)
        return tool_errors.USAGE
    try:
        report = modules[args.suite].run(args)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        if not tool_errors.is_user_error(e):
            raise
        return tool_errors.report(e)
    print(report)
    return 0
