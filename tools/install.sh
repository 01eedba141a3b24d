#!/usr/bin/env bash
# Sets up cvkit's virtual environment: torch, a cached source build of mmcv, then cvkit itself.
# Idempotent: every step is skipped when already done. Used by `make setup` (and so by `make test`).
set -euo pipefail
VENV=${1:-.venv}
CACHE=${CVKIT_CACHE:-$HOME/.cache/cvkit}
MMCV_VERSION=2.1.0
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"

# Build tools for mmcv (setuptools < 82 still has pkg_resources, which mmcv and mmengine import).
$PIP install -q "setuptools>=77,<82" wheel ninja psutil
# torch first, alone: pip takes it from this machine's local wheel store.
$PY -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION' or torchvision.__version__.split('+')[0] != '$TORCHVISION_VERSION')" 2>/dev/null \
  || $PIP install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# mmcv 2.1.0 has no wheel for this torch, and its setup.py forces -std=c++17 while torch's headers
# need C++20: build it once from the PyPI sdist with that one flag changed, and cache the wheel
# outside the repo, keyed by the versions its compiled ABI depends on.
if ! $PY -c "import mmcv.ops" 2>/dev/null; then
  PYTAG=$($PY -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
  KEY="mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$(uname -m)"
  WHEELDIR="$CACHE/wheels/$KEY"
  if ! ls "$WHEELDIR"/mmcv-*.whl >/dev/null 2>&1; then
    echo "Building mmcv $MMCV_VERSION from source (about 10 minutes on 2 cores, once per machine)..."
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT   # a failed build leaves no 1 GB temp folder behind
    $PIP download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
    sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
    MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP wheel -q --no-build-isolation --no-deps "$BUILD/mmcv-$MMCV_VERSION" -w "$BUILD/out"
    mkdir -p "$WHEELDIR.tmp.$$" && mv "$BUILD"/out/mmcv-*.whl "$WHEELDIR.tmp.$$"/
    rm -rf "$WHEELDIR" && mv "$WHEELDIR.tmp.$$" "$WHEELDIR"   # atomic: a half-built wheel is never cached
    rm -rf "$BUILD" && trap - EXIT
  fi
  $PIP install -q --no-deps "$WHEELDIR"/mmcv-*.whl
fi

# Everything else, pinned in pyproject.toml; an editable install so tools/ and tests use the tree.
$PIP install -q -e ".[dev]"
$PY -c "import cvkit, timm, lightning, mmdet, mmcv.ops, triton" \
  || { echo "error: the environment in $VENV does not import cvkit's stack" >&2; exit 1; }
