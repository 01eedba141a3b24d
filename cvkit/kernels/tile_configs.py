"""Tile configs of the iSQRT-COV matrix kernels, as text, and the variables that replace their
autotune lists.

The autotuner of each matrix kernel chooses among a short list of configs (``isqrt_cov_kernels.py``;
every config is compiled per kernel variant and precision). Three variables replace those lists,
each a ``;``-separated list of configs, to try the configs that
``python tools/benchmark.py covpool-tiles --device cuda`` chose on a GPU without editing code:

- ``CVKIT_ISQRT_COV_PRODUCT_CONFIGS``: ``_products_kernel``, and ``_covariance_kernel`` unless the
  next one is set; entries ``BLOCK,BLOCK_K,WARPS,STAGES`` (square BLOCK×BLOCK output tiles, a
  k-step of BLOCK_K), e.g. ``"64,32,4,3;128,32,8,2"``;
- ``CVKIT_ISQRT_COV_COVARIANCE_CONFIGS``: ``_covariance_kernel``; the same entries (BLOCK_K: the
  step along the positions);
- ``CVKIT_ISQRT_COV_GRADX_CONFIGS``: ``_grad_input_kernel``; entries
  ``BLOCK_C,BLOCK_M,BLOCK_K,WARPS,STAGES`` (BLOCK_C channels × BLOCK_M positions per output tile, a
  k-step of BLOCK_K channels), e.g. ``"128,32,32,4,3"``.

An unset or empty variable leaves the kernel file's list. They are read when the kernels are first
used in a process (Triton fixes a kernel's configs when it decorates it), under the interpreter
too; a malformed entry is a ValueError naming the variable and the entry.
"""
from __future__ import annotations

import os
import re

ENV_VAR = "CVKIT_ISQRT_COV_PRODUCT_CONFIGS"
COVARIANCE_ENV_VAR = "CVKIT_ISQRT_COV_COVARIANCE_CONFIGS"
GRADX_ENV_VAR = "CVKIT_ISQRT_COV_GRADX_CONFIGS"
ENV_VARS = (ENV_VAR, COVARIANCE_ENV_VAR, GRADX_ENV_VAR)

PRODUCT_BLOCKS = ("BLOCK", "BLOCK_K")  # the product and covariance kernels' tile sizes
GRADX_BLOCKS = ("BLOCK_C", "BLOCK_M", "BLOCK_K")  # the input-gradient kernel's
BLOCKS = {ENV_VAR: PRODUCT_BLOCKS, COVARIANCE_ENV_VAR: PRODUCT_BLOCKS, GRADX_ENV_VAR: GRADX_BLOCKS}
"""Each variable's tile sizes, in the order its entries give them (then WARPS, STAGES)."""


def fields(blocks: tuple[str, ...] = PRODUCT_BLOCKS) -> str:
    """The text form of a config with tile sizes ``blocks``: ``"BLOCK,BLOCK_K,WARPS,STAGES"``."""
    return ",".join((*blocks, "WARPS", "STAGES"))


FIELDS = fields(PRODUCT_BLOCKS)
GRADX_FIELDS = fields(GRADX_BLOCKS)
_COUNT = {4: "four", 5: "five"}


def _power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def parse_tile_config(text: str, source: str = "tile config",
                      blocks: tuple[str, ...] = PRODUCT_BLOCKS) -> dict:
    """``"64,32,4,3"`` -> ``{"BLOCK": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}``; with
    ``blocks=GRADX_BLOCKS``, ``"128,32,32,4,3"`` -> ``{"BLOCK_C": 128, "BLOCK_M": 32,
    "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}``.

    Tile sizes are powers of two >= 16 (``tl.dot``'s smallest tile), WARPS a power of two,
    STAGES >= 1; anything else is a ValueError naming ``source`` and the entry."""
    n = len(blocks) + 2
    try:
        values = [int(v) for v in text.strip().split(",")]
        if len(values) != n:
            raise ValueError
    except ValueError:
        raise ValueError(f"{source}: expected {fields(blocks)} ({_COUNT.get(n, n)} integers), "
                         f"got {text!r}") from None
    *sizes, warps, stages = values
    problems = [f"{name} must be a power of two >= 16, got {v}"
                for name, v in zip(blocks, sizes) if v < 16 or not _power_of_two(v)]
    if not _power_of_two(warps):
        problems.append(f"WARPS must be a power of two, got {warps}")
    if stages < 1:
        problems.append(f"STAGES must be >= 1, got {stages}")
    if problems:
        raise ValueError(f"{source}: bad tile config {text!r}: " + "; ".join(problems))
    return {**dict(zip(blocks, sizes)), "num_warps": warps, "num_stages": stages}


def format_tile_config(config: dict, blocks: tuple[str, ...] = PRODUCT_BLOCKS) -> str:
    """The inverse of ``parse_tile_config``."""
    return ",".join(str(config[k]) for k in (*blocks, "num_warps", "num_stages"))


def parse_tile_configs(text: str, source: str = ENV_VAR,
                       blocks: tuple[str, ...] | None = None) -> list[dict]:
    """Configs separated by ``;`` (or spaces; spaces beside a comma belong to the config, as in
    ``"64, 32, 4, 3"``); an empty list is an error (the kernels need one). ``blocks``: the tile
    sizes, by default those of the variable ``source`` names (``BLOCKS``), else the products'."""
    if blocks is None:
        blocks = BLOCKS.get(source, PRODUCT_BLOCKS)
    entries = [e for part in re.sub(r"\s*,\s*", ",", text).split(";") for e in part.split()]
    if not entries:
        raise ValueError(f"{source}: no tile config given (expected {fields(blocks)}[;...])")
    return [parse_tile_config(e, source, blocks) for e in entries]


def configs_from_env(name: str = ENV_VAR) -> list[dict] | None:
    """The configs in the variable ``name`` (one of ``ENV_VARS``), or None when it is unset or
    empty."""
    text = os.environ.get(name, "").strip()
    return parse_tile_configs(text, name) if text else None

