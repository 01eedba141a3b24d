"""Vision Transformer (Dosovitskiy et al., ICLR 2021), patch 16, with hyper-/frac-connections and
an iSQRT-COV head.

Built on timm's ``VisionTransformer`` and ``Block``, so parameter names, initialisation, pooling,
``forward_intermediates`` and timm ViT checkpoints carry over unchanged. cvkit adds:

* ``hc_rate=n`` (+ ``hc_dynamic``) — hyper-connections (Zhu et al., ICLR 2025) around each of the
  2·depth sub-layers (attention, MLP: layer index 2i and 2i+1, as in the paper), on ``n`` copies of
  the token sequence that are summed before the final norm (paper: H0 = n copies; final = sum,
  then norm and head). ``fc_rate=m`` — frac-connections: the embedding is split into ``m``
  fractions and concatenated back. At the paper's initialisation both equal the plain pre-norm
  network (the final LayerNorm removes the factor n of the sum; up to its epsilon).
  ``forward_intermediates`` / ``features_only`` give the streams' mean (the plain network's hidden
  state at init, as the CNNs' merge: a dense head fine-tuned from plain weights sees the scale it
  expects, not n times it). Attention masks (``attn_mask``, ``is_causal``) reach every block.
* ``global_pool="gcp"`` — :class:`~cvkit.models.heads.TokenCovariancePool`: the class token
  concatenated with the iSQRT-COV of the patch tokens, one linear classifier.
* a clear error for an input of the wrong size (timm's PatchEmbed asserts deep inside).
* frozen stages stay in eval mode: ``train()`` keeps the frozen prefix of the network (embedding,
  its dropouts ``pos_drop`` / ``patch_drop``, and the leading blocks with no trainable parameter)
  in eval mode once the embedding and the first block are frozen, as mmdet's / mmpretrain's
  ``_freeze_stages`` (``drop_after_pos.eval()``, re-applied by their ``train()`` override): a
  frozen feature map is deterministic (``CvkitBackbone(frozen_stages=k)`` relies on it).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer as TimmVisionTransformer
from timm.models.vision_transformer import init_weights_vit_timm

from cvkit.models.heads import TokenCovariancePool
from cvkit.models.pruning import records_pruned_keys
from cvkit.models.streams import StreamSpec, connection_no_weight_decay, stream_spec

ARCH = {"tiny": dict(embed_dim=192, depth=12, num_heads=3),
        "small": dict(embed_dim=384, depth=12, num_heads=6),
        "base": dict(embed_dim=768, depth=12, num_heads=12)}


class StreamBlock(Block):
    """timm's pre-norm block; with a :class:`StreamSpec` each sub-layer runs inside a hyper- or
    frac-connection on (B, n, N, D) streams instead of ``x + f(x)``. Parameter names of the plain
    block are unchanged; the connections add ``hc_attn.*`` and ``hc_mlp.*``."""

    def __init__(self, *args, spec: StreamSpec | None = None, depth: int = 0, **kwargs) -> None:
        super().__init__(*args, depth=depth, **kwargs)
        dim = self.norm1.normalized_shape[0]
        self.hc_attn = spec.connection(dim, 2 * depth, channel_first=False) if spec else None
        self.hc_mlp = spec.connection(dim, 2 * depth + 1, channel_first=False) if spec else None

    def attn_branch(self, h: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        return self.drop_path1(self.ls1(self.attn(self.norm1(h), attn_mask=attn_mask,
                                                  is_causal=is_causal)))

    def mlp_branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop_path2(self.ls2(self.mlp(self.norm2(h))))

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if self.hc_attn is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        branch = (self.attn_branch if attn_mask is None and not is_causal else
                  partial(self.attn_branch, attn_mask=attn_mask, is_causal=is_causal))
        x = self.hc_attn(x, branch)
        return self.hc_mlp(x, self.mlp_branch)


class VisionTransformer(TimmVisionTransformer):
    """timm's ViT plus streams (``hc_rate``/``fc_rate``) and the ``"gcp"`` global pool."""

    def __init__(self, *args, global_pool: str = "token", hc_rate: int = 0, fc_rate: int = 0,
                 hc_dynamic: bool = False, hc_nan_guard: bool = False,
                 gcp_dim: int | None = 256, gcp_iters: int = 5, **kwargs) -> None:
        spec = stream_spec(hc_rate, fc_rate, hc_dynamic, hc_nan_guard)
        gcp = global_pool == "gcp"
        if spec is not None:
            kwargs["block_fn"] = partial(StreamBlock, spec=spec)
        super().__init__(*args, global_pool="token" if gcp else global_pool, **kwargs)
        self.spec = spec
        self.gcp = None
        if gcp:
            self.gcp = TokenCovariancePool(self.embed_dim, self.num_prefix_tokens, gcp_dim,
                                           gcp_iters)
            self.head_hidden_size = self.gcp.out_features
            self.reset_classifier(self.num_classes)
            if isinstance(self.head, nn.Linear):
                init_weights_vit_timm(self.head)

    # --- inputs ---------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"ViT expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        if not self.dynamic_img_size:
            want = tuple(self.patch_embed.img_size)
            if tuple(x.shape[-2:]) != want:
                raise ValueError(
                    f"this ViT was built for {want[0]}x{want[1]} images but got "
                    f"{x.shape[-2]}x{x.shape[-1]}; build it with img_size={x.shape[-2]} "
                    f"(or dynamic_img_size=True) or resize the input")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        return self.norm_pre(self.patch_drop(x))

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.close(x, average=False) if self.spec is not None else x

    # --- timm contract --------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
        if self.spec is None:
            self._check_input(x)
            return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        x = self.spec.open(self._embed(x))
        if attn_mask is not None or is_causal:  # as timm: block by block, with the mask
            for blk in self.blocks:
                x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
        elif self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(self._merge(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None,
                              return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False, attn_mask=None,
                              is_causal: bool = False, **kwargs):
        if self.spec is None:
            self._check_input(x)
            return super().forward_intermediates(
                x, indices, return_prefix_tokens=return_prefix_tokens, norm=norm,
                stop_early=stop_early, output_fmt=output_fmt,
                intermediates_only=intermediates_only, attn_mask=attn_mask,
                is_causal=is_causal, **kwargs)
        if kwargs:
            raise TypeError(f"forward_intermediates() got unexpected arguments {sorted(kwargs)}")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        b, _, height, width = x.shape
        x = self.spec.open(self._embed(x))
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            if attn_mask is not None or is_causal:
                x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
            elif self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take:  # the streams' mean: the plain ViT's hidden state at init (their sum is n x)
                y = self.spec.close(x, average=True)
                intermediates.append(self.norm(y) if norm else y)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":
            gh, gw = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(self._merge(x)), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.gcp is None:
            return super().forward_head(x, pre_logits=pre_logits)
        x = self.head_drop(self.gcp(x))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if getattr(self, "gcp", None) is None:
            return super().reset_classifier(num_classes, global_pool)
        if global_pool not in (None, "gcp"):  # e.g. '' from prune_intermediate_layers
            self.gcp = None
            self.head_hidden_size = self.embed_dim
            return super().reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        w = self.cls_token
        self.head = (nn.Linear(self.head_hidden_size, num_classes, device=w.device, dtype=w.dtype)
                     if num_classes else nn.Identity())

    @records_pruned_keys
    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's, recording what it removes (``pruned_keys``); without the head, a GCP head's
        ``gcp.*`` weights count as pruned also when this model was built without one."""
        take = super().prune_intermediate_layers(indices, prune_norm=prune_norm,
                                                 prune_head=prune_head)
        if prune_head:
            self.pruned_modules = getattr(self, "pruned_modules", frozenset()) | {"gcp"}
        return take

    def train(self, mode: bool = True) -> "VisionTransformer":
        """``nn.Module.train``; in training, :meth:`frozen_prefix` stays in eval mode."""
        super().train(mode)
        if mode:
            for module in self.frozen_prefix():
                module.eval()
        return self

    def frozen_prefix(self) -> list[nn.Module]:
        """The modules before the first trainable parameter, when that is after block 0: the
        embedding (patch embedding, position dropout, patch dropout, pre-norm) and the leading
        blocks none of whose parameters has ``requires_grad``; [] when the embedding or block 0
        trains (then ``pos_drop`` regularises a trainable block's input and stays on)."""
        def frozen(params) -> bool:
            return not any(p.requires_grad for p in params if p is not None)

        stem = [m for m in (self.patch_embed, getattr(self, "pos_drop", None),
                            getattr(self, "patch_drop", None), getattr(self, "norm_pre", None))
                if m is not None]
        tokens = [getattr(self, n, None) for n in ("pos_embed", "cls_token", "reg_token")]
        if not frozen([*tokens, *(p for m in stem for p in m.parameters())]):
            return []
        blocks = []
        for block in self.blocks:
            if not frozen(block.parameters()):
                break
            blocks.append(block)
        return stem + blocks if blocks else []

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embedding, class token and the static hyper-connection parameters."""
        return set(super().no_weight_decay()) | connection_no_weight_decay(self)
