"""What ``features_only`` pruning removed from a model, so its checkpoint loads strictly.

timm's ``FeatureGetterNet`` calls the model's ``prune_intermediate_layers``: the classifier and
pooling become stateless (``Identity``), later stages or blocks go. A checkpoint of the whole
network then holds keys the pruned model lacks; only those of what the pruning removed may be
ignored when loading (a trained head of another kind, e.g. an iSQRT-COV pooling, included): any
other key is a checkpoint of another network (:func:`cvkit.models.checkpoint.load_state_dict`)."""
from __future__ import annotations

import functools

from torch import nn


def records_pruned_keys(prune):
    """Decorate a ``prune_intermediate_layers`` method: the state-dict keys it removes and the
    names of the modules it removes or replaces by a stateless one are kept in
    ``model.pruned_keys`` / ``model.pruned_modules`` (frozensets, accumulated over calls)."""

    @functools.wraps(prune)
    def wrapper(self, *args, **kwargs):
        keys, modules = set(self.state_dict()), dict(self.named_modules())
        result = prune(self, *args, **kwargs)
        now = dict(self.named_modules())
        gone = {name for name, m in modules.items() if name and now.get(name) is not m
                and (name not in now or _stateless(now[name]))}
        self.pruned_keys = getattr(self, "pruned_keys", frozenset()) | (keys - set(self.state_dict()))
        self.pruned_modules = getattr(self, "pruned_modules", frozenset()) | gone
        return result

    return wrapper


def _stateless(module: nn.Module) -> bool:
    return not module.state_dict()


def pruned_away(model: nn.Module, key: str) -> bool | None:
    """Whether ``key`` belongs to what pruning removed from ``model``; None when the model does
    not record it (not pruned through :func:`records_pruned_keys`)."""
    keys, modules = getattr(model, "pruned_keys", None), getattr(model, "pruned_modules", None)
    if keys is None or modules is None:
        return None
    return key in keys or any(key.startswith(name + ".") for name in modules)
