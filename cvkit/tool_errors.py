"""How the command-line tools (``tools/*.py`` and :mod:`cvkit.tasks.cli`) report an error a user
can cause: one line ``error: ...`` on stderr, no traceback, and an exit status as argparse's:

- :data:`USAGE` (2): a bad command line, option or config (argparse and jsonargparse errors, an
  :class:`OptionError`, an accelerator or device the machine lacks);
- :data:`FAILED` (1): the run failed on its inputs (a missing file, a checkpoint that does not
  match, an unreadable image, a non-finite loss).

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import ast
import numbers
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

USAGE = 2
FAILED = 1

#: the exception types of a user's mistake (a CheckpointError, BadImageError, EmptyFolderError
#: is a ValueError; NonFiniteLossError and ``hc_nan_guard``'s error a FloatingPointError; an
#: output path that is a folder or not writable an IsADirectoryError / PermissionError)
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               ValueError, FloatingPointError)


class OptionError(ValueError):
    """A bad option value, e.g. a misspelt ``--model-arg`` key or an unknown corruption name (also
    when found only while the run is set up): exit status :data:`USAGE`."""


@contextmanager
def option_errors(prefix: str = "") -> Iterator[None]:
    """A ValueError raised inside is a bad option (an OptionError, ``prefix`` before its
    message): for code whose ValueErrors all come from the arguments it was given, e.g.
    Lightning's ``Trainer(accelerator="foo")`` or ``precision=17``."""
    try:
        yield
    except OptionError:
        raise
    except ValueError as e:
        raise OptionError(f"{prefix}{' '.join(str(e).split())}") from None


def _misconfiguration(e: BaseException) -> bool:
    """Lightning's MisconfigurationException (e.g. ``devices=4`` on a 1-GPU machine); looked up
    only where Lightning is loaded, so tools without it do not import it."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return module is not None and isinstance(e, module.MisconfigurationException)


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS) or _misconfiguration(e)


def error_line(e: BaseException) -> str:
    """``e``'s message as one line: a :class:`~cvkit.models.checkpoint.CheckpointError`'s advice
    in the tools' terms (``--model-arg``); an error re-raised from a DataLoader worker (its
    message holds the worker's traceback) by the original message."""
    text = str(getattr(e, "tool_message", None) or e).strip()
    if "Original Traceback" in text:  # torch.utils.data's ExceptionWrapper
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return " ".join(text.split()) or type(e).__name__


def report(e: BaseException, status: int | None = None, prefix: str = "") -> int:
    """Print ``error: <prefix><one line>`` on stderr; the exit status: ``status``, else
    :data:`USAGE` for an :class:`OptionError` or a Lightning misconfiguration, :data:`FAILED` for
    the rest."""
    print(f"error: {prefix}{error_line(e)}", file=sys.stderr)
    if status is not None:
        return status
    return USAGE if isinstance(e, OptionError) or _misconfiguration(e) else FAILED


def is_integer(v) -> bool:
    """An int (NumPy's too), not a bool or a float of integral value."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


#: option rules for :func:`check_options`: (test, what the value must be)
POSITIVE_INT = (lambda v: is_integer(v) and v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = (lambda v: is_integer(v) and v >= 0, "an integer >= 0")
FRACTION = (lambda v: 0 < v <= 1, "in (0, 1]")
PROBABILITY = (lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def check_options(checks: Iterable[tuple[str, Any, Callable[[Any], bool], str]],
                  error: type[ValueError] | None = None) -> None:
    """Raise ``error`` for the first ``(key, value, test, allowed)`` whose ``test(value)`` fails
    (a value the test cannot compare fails too): one line naming the key, what is allowed and the
    value given."""
    for key, value, test, allowed in checks:
        try:
            ok = bool(test(value))
        except (TypeError, ValueError, IndexError, OverflowError):
            ok = False
        if not ok:
            raise (error or OptionError)(f"{key} must be {allowed}, got {value!r}")


def check_device(device: str, option: str = "--device") -> None:
    """An :class:`OptionError` unless ``device`` is ``cpu``, or ``cuda`` / ``cuda:N`` with that
    GPU present (torch and Lightning fail later with a traceback, e.g. "Found no NVIDIA driver")."""
    import torch

    name, sep, index = str(device).partition(":")
    if name == "cpu" and not sep:
        return
    if name != "cuda" or (sep and not index.isdigit()):
        raise OptionError(f"{option} {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < (int(index) + 1 if sep else 1):
        raise OptionError(f"{option} {device}: this machine has {count} CUDA GPU(s)")


def literal_or_text(text: str) -> Any:
    """A command-line value: the Python literal it spells (``128``, ``(3, 5, 5, 7)``, ``None``),
    else the text itself (``gcp``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_cfg_options(items: list[str] | None) -> dict:
    """The detection tools' ``--cfg-options KEY=VALUE ...`` (mmengine's dotted keys) as a dict;
    values as :func:`literal_or_text` reads them. A pair without ``=`` is an OptionError."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--cfg-options expects key=value, got {item!r}")
        options[key] = literal_or_text(value)
    return options
