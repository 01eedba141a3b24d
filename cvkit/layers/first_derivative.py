"""Custom autograd backwards that have no derivative of their own."""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch._C import _functions  # DelayedError, as torch.autograd.function.once_differentiable


def first_derivative_only(what: str, why: str) -> Callable:
    """Decorate a ``torch.autograd.Function.backward``: it runs without recording a graph, and
    under ``create_graph=True`` its gradients raise when differentiated again, naming ``what``
    and ``why``.

    torch's ``@once_differentiable`` raises only when an incoming gradient requires grad; in a
    gradient penalty (``grad(out.sum(), x, create_graph=True)``) none does, and the gradient came
    back as a constant: a silently wrong second derivative."""
    message = f"{what} has no second derivative ({why})".encode()

    def decorate(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return out
            outs = out if isinstance(out, tuple) else (out,)
            outs = tuple(_functions.DelayedError(message, 1)(o.detach().requires_grad_())
                         if isinstance(o, torch.Tensor) else o for o in outs)
            return outs if isinstance(out, tuple) else outs[0]
        return wrapper
    return decorate
