"""What every pruner shares: argument checks, applying masks, counting sparsity.

Conventions used by every module of ``course_lib.pruning``:

* A *mask* is a ``torch.bool`` tensor of the weight's shape; ``True`` = keep.
* A model's masks are a dict ``{module_name: mask}`` keyed by the full module name as
  in ``model.named_modules()`` (``"model.layers.0.self_attn.q_proj"``).
* ``targets=None`` means the q/k/v/o/gate/up/down linears of every decoder layer
  (see :func:`course_lib.model.prunable_linears`); never embeddings, norms or lm_head
  unless named explicitly.
* Every method is shaped *score -> mask -> apply*: ``<method>_scores`` (or a score
  function), ``<method>_mask``, and ``<method>_prune(model, ...)`` which computes the
  masks, applies them in place and returns them.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn


def check_sparsity(sparsity) -> float:
    """Validate a sparsity fraction: a real number in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights removed), got {sparsity}")
    return float(sparsity)


def check_weight(weight) -> torch.Tensor:
    """Validate a weight tensor: a floating-point ``torch.Tensor``."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight must be a floating-point tensor (float32/16, bfloat16...), got {weight.dtype}")
    return weight


def check_nm(n, m) -> tuple[int, int]:
    """Validate an N:M pattern: integers with 0 < n < m."""
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"n and m must be ints, got n={n!r}, m={m!r}")
    if not 0 < n < m:
        raise ValueError(f"N:M sparsity needs 0 < n < m (keep n of every m), got n={n}, m={m}")
    return n, m


def check_indices(indices, size: int, what: str, where: str | None = None) -> list[int]:
    """Validate a list (or 1-D integer tensor) of distinct indices in ``range(size)`` -> list of ints.

    ``what`` names the argument in the messages (``"layers"``, ``"heads[2]"``); ``where`` says what the
    range is (default ``"valid: 0..size-1"``). Order is kept; callers sort when order does not matter.
    """
    where = where or f"valid: 0..{size - 1}"
    if isinstance(indices, torch.Tensor):
        if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.dim() > 1:
            raise TypeError(f"{what}: a tensor of indices must be a 1-D integer tensor, got {indices.dtype} "
                            f"of shape {tuple(indices.shape)}")
        indices = indices.tolist()
    if isinstance(indices, (str, bytes, dict)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"{what} must be a list of indices (ints), got {type(indices).__name__}")
    indices = list(indices)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{what}: indices must be ints, got {i!r}")
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise ValueError(f"{what}: indices {bad} out of range, {where}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{what}: duplicate indices {sorted({i for i in indices if indices.count(i) > 1})}")
    return indices


def n_to_remove(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a sparsity removes: ``round(sparsity * numel)``."""
    return int(round(sparsity * numel))


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero the masked-out weights in place (``weight *= mask``); returns ``masks``."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"no module named {name!r} in the model")
        weight = modules[name].weight
        if mask.dtype != torch.bool:
            raise TypeError(f"mask for {name!r} must be a bool tensor (True = keep), got {mask.dtype}")
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        weight.mul_(mask.to(weight.device))
    return masks


def sparsity_of(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros in a tensor."""
    return (tensor == 0).sum().item() / tensor.numel()


def model_sparsity(model: nn.Module, targets=None) -> dict[str, float]:
    """Per-module fraction of zero weights, plus ``"global"`` over all of them."""
    from ..model import prunable_linears

    out, zeros, total = {}, 0, 0
    for name, mod in prunable_linears(model, targets).items():
        z = (mod.weight == 0).sum().item()
        out[name] = z / mod.weight.numel()
        zeros += z
        total += mod.weight.numel()
    out["global"] = zeros / total
    return out
