"""Whether the Triton interpreter is asked for (``TRITON_INTERPRET``), read as Triton reads it."""
from __future__ import annotations

import os

# Triton's getenv_bool (3.6 and 3.8): these, in any case, mean true; anything else false
_TRUE = ("1", "true", "yes", "on", "y")


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` is 1 / true / yes / on / y: ``@triton.jit`` kernels then run
    on the CPU through the interpreter (slow: for tests)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE
