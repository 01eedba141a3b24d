#!/usr/bin/env python
"""Benchmarks:
``python tools/benchmark.py {covpool,covpool-tiles,covpool-host,models,data,corruptions} [options]``.

Prints a Markdown report (figures, the command, the machine) to paste into BENCHMARKS.md.
"""
import sys

from cvkit.benchmarks import main

if __name__ == "__main__":
    sys.exit(main())
