"""``atomic_write(path)``: write a file so that a crash never leaves a torn or half-written one.

The bytes go to a temporary file in the target's folder (same filesystem, so the final rename is
atomic), are flushed to disk (``fsync``), get the permissions a newly created file would get
(``mkstemp`` makes it 0600), and are ``os.replace``d onto the final name; on any error the
temporary file is removed and an existing file at ``path`` is left as it was. Every file cvkit
writes that a later run reads (checkpoints, converted state dicts, evaluation results) goes
through it.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as f: torch.save(obj, f)``; ``mode="w"`` for text."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    if path.is_dir():  # checked first: os.replace would name the temporary file
        raise IsADirectoryError(f"cannot write {path}: it is a directory (give a file name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
