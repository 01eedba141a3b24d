"""cvkit.tasks.evaluate.load_task (tools/test.py, tools/eval_corruption.py): a file that is not a
checkpoint is one error naming it and saying why."""
from __future__ import annotations

import pytest
import torch

from cvkit.models.checkpoint import CheckpointError
from cvkit.tasks.evaluate import load_task


def test_unreadable_checkpoint_is_one_error_naming_it(tmp_path):
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")  # an interrupted copy
    with pytest.raises(CheckpointError, match=r"last\.ckpt is not a readable PyTorch checkpoint: "
                                              r"the file is empty or cut short"):
        load_task(empty)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_task(tmp_path / "nope.ckpt")
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    with pytest.raises(ValueError, match=r"weights\.pth holds plain model weights: pass --model"):
        load_task(weights)
