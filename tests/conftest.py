"""Shared fixtures: the embedded synthetic datasets (generated once, deterministically)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``data/`` with both synthetic datasets (`make test` generates them; this is a no-op then)."""
    from cvkit.data.synthetic import generate

    generate(REPO / "data")
    return REPO / "data"


@pytest.fixture(scope="session")
def cls_root(data_root: Path) -> Path:
    """ImageFolder root with ``train/`` and ``val/``."""
    return data_root / "classification"


@pytest.fixture(scope="session")
def det_root(data_root: Path) -> Path:
    """COCO root with ``annotations/instances_{train,val}.json`` and ``{train,val}/`` images."""
    return data_root / "detection"
