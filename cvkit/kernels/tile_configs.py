"""Tile configs of the iSQRT-COV matrix-product kernels, as text: ``"BLOCK,BLOCK_K,WARPS,STAGES"``.

The autotuner of ``_products_kernel`` and ``_covariance_kernel`` chooses among a short list of
configs (``_PRODUCT_CONFIGS`` in ``isqrt_cov_kernels.py``; every config is compiled per kernel
variant and precision). ``CVKIT_ISQRT_COV_PRODUCT_CONFIGS`` replaces that list, e.g.
``CVKIT_ISQRT_COV_PRODUCT_CONFIGS="64,32,4,3;128,32,8,2"``, to try the configs that
``python tools/benchmark.py covpool-tiles --device cuda`` chose on a GPU without editing code.
It is read when the kernels are first used in a process (Triton fixes a kernel's configs when
it decorates it), under the interpreter too.
"""
from __future__ import annotations

import os
import re

ENV_VAR = "CVKIT_ISQRT_COV_PRODUCT_CONFIGS"
FIELDS = "BLOCK,BLOCK_K,WARPS,STAGES"


def _power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def parse_tile_config(text: str, source: str = "tile config") -> dict:
    """``"64,32,4,3"`` -> ``{"BLOCK": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}``.

    BLOCK and BLOCK_K are powers of two >= 16 (``tl.dot``'s smallest tile), WARPS a power of two,
    STAGES >= 1; anything else is a ValueError naming ``source`` and the entry."""
    try:
        block, block_k, warps, stages = (int(v) for v in text.strip().split(","))
    except ValueError:
        raise ValueError(f"{source}: expected {FIELDS} (four integers), got {text!r}") from None
    problems = [f"{name} must be a power of two >= 16, got {v}"
                for name, v in (("BLOCK", block), ("BLOCK_K", block_k))
                if v < 16 or not _power_of_two(v)]
    if not _power_of_two(warps):
        problems.append(f"WARPS must be a power of two, got {warps}")
    if stages < 1:
        problems.append(f"STAGES must be >= 1, got {stages}")
    if problems:
        raise ValueError(f"{source}: bad tile config {text!r}: " + "; ".join(problems))
    return {"BLOCK": block, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages}


def format_tile_config(config: dict) -> str:
    """The inverse of ``parse_tile_config``."""
    return ",".join(str(config[k]) for k in ("BLOCK", "BLOCK_K", "num_warps", "num_stages"))


def parse_tile_configs(text: str, source: str = ENV_VAR) -> list[dict]:
    """Configs separated by ``;`` (or spaces; spaces beside a comma belong to the config, as in
    ``"64, 32, 4, 3"``); an empty list is an error (the kernels need one)."""
    entries = [e for part in re.sub(r"\s*,\s*", ",", text).split(";") for e in part.split()]
    if not entries:
        raise ValueError(f"{source}: no tile config given (expected {FIELDS}[;...])")
    return [parse_tile_config(e, source) for e in entries]


def product_configs_from_env() -> list[dict] | None:
    """The configs in ``CVKIT_ISQRT_COV_PRODUCT_CONFIGS``, or None when it is unset or empty."""
    text = os.environ.get(ENV_VAR, "").strip()
    return parse_tile_configs(text) if text else None
