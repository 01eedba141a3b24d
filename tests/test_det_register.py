"""cvkit.det loads mmdet only where needed: the converter is torch-only, and mmdet learns about
cvkit's modules from a config's ``custom_imports`` (run in fresh interpreters, so nothing this
test session imported earlier can help)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_converter_imports_neither_mmdet_nor_mmcv():
    _run("import sys, cvkit.det.convert, cvkit.det\n"
         "assert callable(cvkit.det.convert_legacy_mmdet_checkpoint)\n"
         "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mmdet', 'mmcv'))\n"
         "assert not loaded, loaded")


def test_custom_imports_of_a_config_register_the_modules_in_mmdet():
    config = REPO / "configs/detection/mask-rcnn_vit-s_simplefpn_1x_coco.py"
    _run("import sys\n"
         "from mmengine.config import Config\n"
         "from mmdet.registry import DATASETS, MODELS\n"
         "assert MODELS.get('CvkitBackbone') is None and 'cvkit.det.register' not in sys.modules\n"
         f"cfg = Config.fromfile({str(config)!r})\n"  # runs the config's custom_imports
         "from cvkit.det import CvkitBackbone, CvkitCocoDataset, SimpleFeaturePyramid\n"
         "assert MODELS.get(cfg.model.backbone.type) is CvkitBackbone\n"
         "assert MODELS.get(cfg.model.neck.type) is SimpleFeaturePyramid\n"
         "assert DATASETS.get(cfg.train_dataloader.dataset.type) is CvkitCocoDataset")
