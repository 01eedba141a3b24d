"""Hyper-connections (Zhu et al., "Hyper-Connections", ICLR 2025) and frac-connections (2025).

Both replace the residual connection ``h + T(h)`` of a pre-norm block by a learnable mixing of a
widened hidden state. Notation per position (a token, or a pixel when ``channel_first``): the state
``H`` has ``n`` rows; ``T`` is the wrapped branch (norm + attention / MLP / conv block).

Hyper-connections, expansion rate ``n`` (paper Eqs. 1-5): ``H`` is ``n x d``, ``n`` full copies.
  connection matrix ``[[0, B], [A_m, A_r]]``, ``B in R^{1 x n}``, ``A_m in R^{n x 1}``,
  ``A_r in R^{n x n}``;
  layer input   ``h = A_m^T H``                      (width connection, 1 x d)
  layer output  ``H' = B^T T(h) + A_r^T H``          (depth connection, n x d)

Frac-connections, frac-rate ``m``: ``H`` is ``m x d/m``, the hidden state split into fractions.
  connection matrix ``[[0, B], [Y, A]]``, ``B in R^{1 x m}``, ``Y, A in R^{m x m}``;
  layer input   ``h = concat_j (Y^T H)_j``           (the m mixed fractions side by side, width d)
  layer output  ``H'_j = B_j T(h)_j + (A^T H)_j``    (``T(h)_j`` = j-th d/m slice of T's output)

Dynamic variant (HC Eqs. 10-13; the same form for FC with ``Y`` in place of ``A_m``):
  ``Hbar = LayerNorm(H)`` (each row over its features, no affine: the projections absorb it),
  ``B(H)   = s_beta  * tanh(Hbar W_beta)^T + B``,
  ``A_m(H) = s_alpha * tanh(Hbar W_m) + A_m``,  ``A_r(H) = s_alpha * tanh(Hbar W_r) + A_r``,
  ``W`` initialised to 0, ``s_alpha = s_beta = 0.01`` (learnable scalars).

Initialisation equivalent to the pre-norm residual network (paper Sec. 3.3 / FC paper):
  HC: ``B = 1``, ``A_m = e_{k mod n}`` (k = ``layer_index``), ``A_r = I``. Starting from ``n``
  copies (:func:`expand_streams`) every stream equals the pre-norm hidden state ``h_k`` after
  every layer, so :func:`merge_streams` (the paper's sum) returns ``n * h_L``; the final norm
  (LayerNorm/RMSNorm) removes the factor ``n`` up to its eps.
  FC: ``B = 1``, ``Y = I``, ``A = I``: ``h = concat(H)`` and ``H' = split(h + T(h))``, so
  :func:`merge_fractions` returns exactly ``h_L``.

Parameters: ``static_alpha = [A_m | A_r]`` (n x (1+n)) or ``[Y | A]`` (m x 2m), ``static_beta = B``;
dynamic ``dynamic_alpha = [W_m | W_r]`` / ``[W_Y | W_A]``, ``dynamic_beta = W_beta``,
``dynamic_alpha_scale = s_alpha``, ``dynamic_beta_scale = s_beta``. ``no_weight_decay()`` names the
static ones: weight decay pulls ``A_r`` away from ``I`` and ``B`` to 0, which the HC author names as
a cause of the NaN collapse of ViT + DHC.

All connection maths (gating, width mixing, depth add) runs outside autocast: the gating in fp32,
its result cast to the stream dtype; only ``T`` runs under the caller's autocast. Note that the
dynamic scales get an exactly zero gradient at initialisation (``d/ds [s tanh(Hbar W)] =
tanh(0) = 0`` while ``W = 0``); they start learning after the first step moves ``W``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.layers.autocast import autocast_off
from cvkit.layers.deployment import capturing_graph


def expand_streams(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` copies of ``x`` as a stream dim at position 1: ``(B, *rest) -> (B, n, *rest)``.

    Returns a broadcast view (no copy); hyper-connection layers never write to their input.
    """
    _check_rate(n, "n")
    return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:])


def merge_streams(streams: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Sum of the streams (dim 1), the paper's output of a hyper-connected network.

    A following LayerNorm/RMSNorm removes the factor ``n`` the sum carries at initialisation;
    for a network without a final norm (a CNN's pooling + fc head) ``reduction="mean"`` keeps
    the initialisation exactly equal to the residual network.
    """
    if streams.dim() < 3:
        raise ValueError(f"merge_streams: expected streams (B, n, ...), got shape {tuple(streams.shape)}")
    if reduction == "sum":
        return streams.sum(dim=1)
    if reduction == "mean":
        return streams.mean(dim=1)
    raise ValueError(f"merge_streams: reduction must be 'sum' or 'mean', got {reduction!r}")


def _feature_dim(rank: int, channel_first: bool | None, what: str) -> bool:
    """Resolve the layout of a (B,N,D) / (B,C,H,W) tensor: returns ``channel_first``."""
    if channel_first is None:
        if rank not in (3, 4):
            raise ValueError(f"{what}: cannot infer the layout of a rank-{rank} tensor; "
                             "pass channel_first=True/False")
        return rank == 4
    return bool(channel_first)


def split_fractions(x: torch.Tensor, m: int, channel_first: bool | None = None) -> torch.Tensor:
    """Split the feature dim into ``m`` fractions as a stream dim at position 1.

    ``(B, N, D) -> (B, m, N, D/m)`` (tokens) or ``(B, C, H, W) -> (B, m, C/m, H, W)``
    (``channel_first``). ``channel_first=None`` infers it from the rank (3: tokens, 4: maps).
    """
    _check_rate(m, "m")
    channel_first = _feature_dim(x.dim(), channel_first, "split_fractions")
    if x.dim() < 2:
        raise ValueError(f"split_fractions: expected (B, N, D) or (B, C, H, W), got shape {tuple(x.shape)}")
    if channel_first:
        c = x.shape[1]
        if c % m:
            raise ValueError(f"split_fractions: channels {c} of shape {tuple(x.shape)} not divisible by m={m}")
        return x.reshape(x.shape[0], m, c // m, *x.shape[2:])
    d = x.shape[-1]
    if d % m:
        raise ValueError(f"split_fractions: features {d} of shape {tuple(x.shape)} not divisible by m={m}")
    return x.reshape(*x.shape[:-1], m, d // m).movedim(-2, 1)


def merge_fractions(streams: torch.Tensor, channel_first: bool | None = None) -> torch.Tensor:
    """Concatenate the fractions back: the inverse of :func:`split_fractions`.

    ``(B, m, N, D/m) -> (B, N, D)`` or ``(B, m, C/m, H, W) -> (B, C, H, W)``;
    ``channel_first=None`` infers it from the rank (4: tokens, 5: maps).
    """
    if streams.dim() < 3:
        raise ValueError(f"merge_fractions: expected (B, m, ...), got shape {tuple(streams.shape)}")
    channel_first = _feature_dim(streams.dim() - 1, channel_first, "merge_fractions")
    if channel_first:
        return streams.flatten(1, 2)
    return streams.movedim(1, -2).flatten(-2)


def _check_rate(rate, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError(f"{name} must be an int >= 1, got {rate!r}")


class _ConnectionBase(nn.Module):
    """Shared maths of hyper- and frac-connections (see the module docstring).

    ``rate`` rows of ``feat`` features per position; the layer input is mixed from
    ``num_inputs`` rows (1 for HC, ``rate`` for FC). Subclasses say how those rows form the
    branch input and how the branch output is spread back over the rows.
    """

    fractional: bool  # FC: rows are d/m-wide fractions and the branch reads all of them

    def __init__(self, dim: int, rate: int, layer_index: int, dynamic: bool = False,
                 channel_first: bool = False, *, nan_guard: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        name = type(self).__name__
        _check_rate(dim, f"{name}: dim")
        _check_rate(rate, f"{name}: rate")
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"{name}: layer_index must be an int >= 0, got {layer_index!r}")
        if self.fractional and dim % rate:
            raise ValueError(f"{name}: dim={dim} is not divisible by rate={rate}")
        self.dim, self.rate, self.layer_index = dim, rate, layer_index
        self.dynamic, self.channel_first = bool(dynamic), bool(channel_first)
        self.nan_guard, self.norm_eps = bool(nan_guard), norm_eps
        self.num_inputs = rate if self.fractional else 1
        self.feat = dim // rate if self.fractional else dim
        k = self.num_inputs
        self.static_alpha = nn.Parameter(self._init_static_alpha())           # (rate, k + rate)
        self.static_beta = nn.Parameter(torch.ones(rate))                      # (rate,)
        if self.dynamic:
            self.dynamic_alpha = nn.Parameter(torch.zeros(self.feat, k + rate))  # [W_m | W_r]
            self.dynamic_beta = nn.Parameter(torch.zeros(self.feat))             # W_beta
            self.dynamic_alpha_scale = nn.Parameter(torch.tensor(0.01))          # s_alpha
            self.dynamic_beta_scale = nn.Parameter(torch.tensor(0.01))           # s_beta

    def _init_static_alpha(self) -> torch.Tensor:
        raise NotImplementedError

    def _branch_input(self, mixed_inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _spread_output(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names of the static connection parameters (keep them out of weight decay)."""
        return {"static_alpha", "static_beta"}

    # --- checks -------------------------------------------------------------------------------
    def _check_streams(self, streams: torch.Tensor) -> None:
        name = type(self).__name__
        if self.channel_first:
            ok = streams.dim() == 5 and streams.shape[1] == self.rate and streams.shape[2] == self.feat
            want = f"(B, {self.rate}, {self.feat}, H, W)"
        else:
            ok = streams.dim() == 4 and streams.shape[1] == self.rate and streams.shape[3] == self.feat
            want = f"(B, {self.rate}, N, {self.feat})"
        if not ok:
            raise ValueError(f"{name}: expected streams {want}, got shape {tuple(streams.shape)}")
        if not streams.is_floating_point():
            raise ValueError(f"{name}: streams must be floating point, got {streams.dtype}")

    def _guard(self, t: torch.Tensor, what: str) -> None:
        if (self.nan_guard and t.device.type != "meta" and not capturing_graph()
                and not bool(torch.isfinite(t).all())):  # no values to check: shapes pass
            raise FloatingPointError(f"{type(self).__name__}(layer_index={self.layer_index}): "
                                     f"non-finite values in {what}")

    # --- maths ----------------------------------------------------------------------------------
    def _dynamic_gates(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (B, rate, P, k+rate) and beta (B, rate, P) per position P (Eqs. 10-13), computed
        in float32 (float64 streams stay float64)."""
        gdt = torch.promote_types(streams.dtype, torch.float32)
        x = streams.to(gdt)
        if self.channel_first:                                   # (B, r, C, H, W) -> (B, r, HW, C)
            x = x.flatten(3).transpose(2, 3)
        xn = F.layer_norm(x, (self.feat,), eps=self.norm_eps)
        w = torch.cat([self.dynamic_alpha, self.dynamic_beta.unsqueeze(1)], dim=1).to(gdt)
        proj = torch.tanh(xn @ w)                                # (B, r, P, k + r + 1)
        alpha = self.static_alpha.to(gdt)[:, None] + self.dynamic_alpha_scale.to(gdt) * proj[..., :-1]
        beta = self.static_beta.to(gdt)[:, None] + self.dynamic_beta_scale.to(gdt) * proj[..., -1]
        return alpha, beta

    def forward(self, streams: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One hyper-/frac-connected layer: mix the streams, run ``branch``, write back. The
        mixing and the depth add run in float32 (float64 stays float64) and the result is stored
        in the streams' dtype: bf16 streams (a CNN under autocast) would round the learned
        coefficients to bf16's grid (steps of 2^-7 near 1: B = 1.003 acted as 1)."""
        self._check_streams(streams)
        k, r, dtype = self.num_inputs, self.rate, streams.dtype
        cdt = torch.promote_types(dtype, torch.float32)
        b, spatial = streams.shape[0], streams.shape[3:]
        self._guard(streams, "input streams")
        with autocast_off(streams.device):
            x = streams.to(cdt)
            if self.dynamic:
                alpha, beta = self._dynamic_gates(x)
                self._guard(alpha, "dynamic alpha")
                self._guard(beta, "dynamic beta")
                if self.channel_first:      # mixed[b, j, c, p] = sum_i alpha[b, i, p, j] H[b, i, c, p]
                    mixed = torch.einsum("bipj,bicp->bjcp", alpha, x.flatten(3))
                    mixed = mixed.unflatten(3, spatial)
                    beta = beta.unflatten(2, spatial).unsqueeze(2)          # (B, r, 1, H, W)
                else:                       # mixed[b, j, t, d] = sum_i alpha[b, i, t, j] H[b, i, t, d]
                    mixed = torch.einsum("bitj,bitd->bjtd", alpha, x)
                    beta = beta.unsqueeze(-1)                               # (B, r, N, 1)
            else:                           # one (k+r, r) x (r, everything) product
                alpha = self.static_alpha.to(cdt)
                mixed = torch.matmul(alpha.t(), x.reshape(b, r, -1))
                mixed = mixed.view(b, k + r, *streams.shape[2:])
                beta = self.static_beta.to(cdt).view(r, *([1] * (streams.dim() - 2)))
        out = branch(self._branch_input(mixed[:, :k]).to(dtype))
        expected = (b, self.dim, *spatial) if self.channel_first else (b, streams.shape[2], self.dim)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{type(self).__name__}: branch must return shape {expected}, got {got}")
        self._guard(out, "branch output")
        with autocast_off(streams.device):
            new = torch.addcmul(mixed[:, k:], beta, self._spread_output(out).to(cdt))
            return new.to(dtype)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, rate={self.rate}, layer_index={self.layer_index}, "
                f"dynamic={self.dynamic}, channel_first={self.channel_first}")


class HyperConnections(_ConnectionBase):
    """Static / dynamic hyper-connections around one branch (Zhu et al., ICLR 2025, Eqs. 1-13).

    ``forward(streams, branch)``: streams (B, n, N, D) tokens or (B, n, C, H, W) maps
    (``channel_first``; then the dynamic gating is per pixel over the C channels);
    ``branch`` maps (B, N, D) / (B, C, H, W) to the same shape. Start a network with
    :func:`expand_streams` and end it with :func:`merge_streams` then the final norm.
    ``nan_guard=True`` raises ``FloatingPointError`` naming the layer at the first non-finite
    input, gate or branch output (a debugging aid: it synchronises with the device).
    """

    fractional = False

    def _init_static_alpha(self) -> torch.Tensor:
        a_m = torch.zeros(self.rate, 1)
        a_m[self.layer_index % self.rate] = 1.0                   # e_{k mod n}
        return torch.cat([a_m, torch.eye(self.rate)], dim=1)      # [A_m | A_r = I]

    def _branch_input(self, mixed_inputs: torch.Tensor) -> torch.Tensor:
        return mixed_inputs[:, 0]

    def _spread_output(self, out: torch.Tensor) -> torch.Tensor:
        return out.unsqueeze(1)                                   # B^T T(h): broadcast over streams


class FracConnections(_ConnectionBase):
    """Static / dynamic frac-connections around one branch (frac-rate ``m``, FC = [[0,B],[Y,A]]).

    ``forward(streams, branch)``: streams (B, m, N, D/m) tokens or (B, m, C/m, H, W) maps, made by
    :func:`split_fractions` and turned back into (B, N, D) / (B, C, H, W) by
    :func:`merge_fractions`; ``branch`` sees the full-width concatenation of the mixed fractions.
    Activation memory is that of a plain residual network. ``nan_guard`` as in
    :class:`HyperConnections`.
    """

    fractional = True

    def _init_static_alpha(self) -> torch.Tensor:
        return torch.cat([torch.eye(self.rate), torch.eye(self.rate)], dim=1)   # [Y = I | A = I]

    def _branch_input(self, mixed_inputs: torch.Tensor) -> torch.Tensor:
        return merge_fractions(mixed_inputs, self.channel_first)

    def _spread_output(self, out: torch.Tensor) -> torch.Tensor:
        return split_fractions(out, self.rate, self.channel_first)
