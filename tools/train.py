#!/usr/bin/env python
"""Train / validate / test image classifiers (LightningCLI; see docs/training.md).

    python tools/train.py                                   # the demo (configs/classification/demo.yaml)
    python tools/train.py fit --config configs/classification/eca_resnet50.yaml --data.root /data/imagenet
    python tools/train.py fit --config ... --ckpt_path last # resume
    python tools/train.py fit --config ... --print_config   # the full resolved config
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "classification" / "demo.yaml"

if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from cvkit.tasks.cli import main

    # no arguments: the demo
    sys.exit(main(None if sys.argv[1:] else ["fit", "--config", str(DEMO)]))
