"""Hyper-/frac-connection residual streams for convolutional networks (channel-first).

Hyper-connections (Zhu et al., ICLR 2025) replace a residual ``x + F(x)`` with ``n`` residual
streams mixed by learned weights; frac-connections split the channels into ``m`` fractions instead
of copying them. Both are defined for a stack of blocks whose input and output have the same shape.
A CNN changes shape at its stage transitions, so cvkit applies them as follows (documented in
docs/models.md):

* every residual block whose shortcut is the identity gets a connection module (``block.streams``)
  and runs on the streams: ``H <- act(HC(H, block.branch))`` — ``act`` is the block's post-add
  activation (ReLU in ResNet, none in MobileNetV2), applied per stream;
* a block that changes shape (projection shortcut, stride, or no skip at all) is run as in the
  plain network on the *closed* streams: the streams are closed before it and reopened after it;
* opening: hyper-connections copy ``x`` into ``n`` streams (paper, ``H0``); frac-connections split
  the channels into ``m`` fractions. Closing: frac-connections concatenate the fractions back;
  hyper-connections take the **mean** of the streams (the paper's sum divided by ``n``).

With the paper's initialisation (B = 1, A_m = e_{k mod n}, A_r = I; frac: B = 1, Y = A = I) every
stream equals the plain network's activation after every block, so the closed value is exactly the
plain network's — hence "hyper-connections at init == baseline" holds for the CNNs too, in train
and eval mode alike (a sum would scale the input of the next, eval-mode BatchNorm by ``n``). In
the transformer (vit.py) the paper's sum is kept: the final LayerNorm removes the factor ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class StreamSpec:
    """Which residual connection a network uses: ``kind`` in {"hc", "fc"}, expansion ``rate``;
    ``nan_guard``: every connection raises at the first non-finite value (names its layer)."""
    kind: str
    rate: int
    dynamic: bool = False
    nan_guard: bool = False

    def connection(self, channels: int, layer_index: int, channel_first: bool = True) -> nn.Module:
        """The connection module for one residual block (or one transformer sub-layer)."""
        from cvkit.layers.hyper_connections import FracConnections, HyperConnections

        cls = HyperConnections if self.kind == "hc" else FracConnections
        return cls(channels, self.rate, layer_index, dynamic=self.dynamic,
                   channel_first=channel_first, nan_guard=self.nan_guard)

    def open(self, x: torch.Tensor) -> torch.Tensor:
        from cvkit.layers.hyper_connections import expand_streams, split_fractions

        return expand_streams(x, self.rate) if self.kind == "hc" else split_fractions(x, self.rate)

    def close(self, streams: torch.Tensor, average: bool = True) -> torch.Tensor:
        """Merge the streams: concatenate fractions; sum hyper-connection streams (the paper),
        divided by ``n`` when ``average`` (CNNs, see the module docstring)."""
        from cvkit.layers.hyper_connections import merge_fractions, merge_streams

        if self.kind == "hc":
            return merge_streams(streams, reduction="mean" if average else "sum")
        return merge_fractions(streams)


def stream_spec(hc_rate: int = 0, fc_rate: int = 0, hc_dynamic: bool = False,
                hc_nan_guard: bool = False) -> StreamSpec | None:
    """Validate the model keywords ``hc_rate`` / ``fc_rate`` / ``hc_dynamic`` / ``hc_nan_guard``;
    None for a plain net."""
    for name, value in (("hc_rate", hc_rate), ("fc_rate", fc_rate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 (0 = off), got {value!r}")
    for name, value in (("hc_dynamic", hc_dynamic), ("hc_nan_guard", hc_nan_guard)):
        if not isinstance(value, bool):  # bool("no") is True
            raise ValueError(f"{name} must be true or false, got {value!r}")
    if hc_rate and fc_rate:
        raise ValueError(f"choose hyper-connections (hc_rate={hc_rate}) or frac-connections "
                         f"(fc_rate={fc_rate}), not both")
    if hc_rate:
        return StreamSpec("hc", hc_rate, hc_dynamic, hc_nan_guard)
    if fc_rate:
        return StreamSpec("fc", fc_rate, hc_dynamic, hc_nan_guard)
    for name, value in (("hc_dynamic", hc_dynamic), ("hc_nan_guard", hc_nan_guard)):
        if value:
            raise ValueError(f"{name}=True needs hc_rate > 0 or fc_rate > 0")
    return None


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, spec: StreamSpec | None,
               grad_checkpointing: bool = False, take: Sequence[int] = (),
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``blocks`` in order, opening/closing the streams around blocks without a connection.

    A block with a ``streams`` connection module is called as ``block.forward_streams(H)``; any
    other block as ``block(x)``. Returns the (closed) output and the closed activations after the
    blocks whose positions are in ``take`` (for ``forward_intermediates``).
    """
    def call(fn: Callable, t: torch.Tensor) -> torch.Tensor:
        if grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, t, use_reentrant=False)
        return fn(t)

    streams = None
    taken = []
    for i, block in enumerate(blocks):
        if spec is not None and getattr(block, "streams", None) is not None:
            if streams is None:
                streams = spec.open(x)
            streams = call(block.forward_streams, streams)
        else:
            if streams is not None:
                x, streams = spec.close(streams), None
            x = call(block, x)
        if i in take:
            taken.append(spec.close(streams) if streams is not None else x)
    if streams is not None:
        x = spec.close(streams)
    return x, taken


def connection_no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the static hyper-/frac-connection parameters of ``model`` (no weight decay,
    as the hyper-connection paper prescribes for the static B, A_m, A_r)."""
    names = set()
    for prefix, module in model.named_modules():
        if module is model or not hasattr(module, "no_weight_decay"):
            continue
        if type(module).__name__ in ("HyperConnections", "FracConnections"):
            names.update(f"{prefix}.{n}" for n in module.no_weight_decay())
    return names
