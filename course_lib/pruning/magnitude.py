"""Magnitude pruning: remove the weights with the smallest absolute value.

The oldest and simplest pruning criterion (LeCun et al. 1990 used it as the baseline of
*Optimal Brain Damage*; Han et al. 2015, "Learning both Weights and Connections for
Efficient Neural Networks", made it the standard): the importance of weight ``w`` is
``|w|``, and pruning to sparsity ``s`` removes the ``round(s * numel)`` least important
weights.

* ``scope="layer"``: every linear loses the same fraction ``s`` of its own weights
  (what :func:`torch.nn.utils.prune.l1_unstructured` does).
* ``scope="global"``: one threshold over all target weights together, so layers whose
  weights are small lose more (what :func:`torch.nn.utils.prune.global_unstructured`
  with ``L1Unstructured`` does). Exactly ``round(s * total)`` weights are removed.

Exact counts and ties
---------------------
The number removed is always exactly ``round(sparsity * numel)`` (Python rounding, as
torch.nn.utils.prune does), whatever the ties. Among weights of *equal* magnitude the one
with the **lower flat (row-major) index is removed first** -- the order a stable
ascending sort of the scores would put them in. Globally, the flat index is the position
in the concatenation of the targets' flattened weights, in the order of
:func:`course_lib.model.prunable_linears`.

The threshold comes from :func:`torch.kthvalue` plus a running count of the ties, not
from :func:`torch.quantile` (which refuses inputs above 2**24 elements) and not from a
full sort (slow on large tensors). Scores are compared in float32; float16 and bfloat16
magnitudes are exactly representable there, so no ties are created or broken by the cast.

Reparametrisation
-----------------
``torch.nn.utils.prune`` keeps the dense weight as ``weight_orig`` (a parameter) plus a
``weight_mask`` buffer and recomputes ``weight = weight_orig * weight_mask`` before each
forward. :func:`to_torch_prune`, :func:`masks_from_torch_prune` and
:func:`make_permanent` move between that form and this library's ``{name: bool mask}``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from ..model import prunable_linears
from .common import apply_masks, check_sparsity, check_weight, n_to_remove

SCOPES = ("layer", "global")


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """Importance of each weight: ``|weight|`` as float32, same shape and device."""
    check_weight(weight)
    return weight.detach().abs().float()


def keep_mask_from_scores(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Bool mask (True = keep) that removes exactly the ``n_remove`` lowest scores.

    Ties: among equal scores the lower flat (row-major) index is removed first, as in a
    stable ascending sort. ``scores`` may have any shape, real dtype and device, and any
    size (no 2**24 limit). NaN scores are refused.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    numel = scores.numel()
    if isinstance(n_remove, bool) or not isinstance(n_remove, int) or not 0 <= n_remove <= numel:
        raise ValueError(f"n_remove must be an int in [0, {numel}], got {n_remove!r}")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a NaN score cannot be ranked")
    flat = scores.detach().reshape(-1)  # [numel]
    if n_remove == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, n_remove).values  # the n_remove-th smallest score
    below = flat < threshold  # all of these go
    at = flat == threshold  # the first (n_remove - #below) of these go, in flat order
    still_needed = n_remove - int(below.sum())
    rank_among_ties = at.to(torch.int64).cumsum(0)  # 1, 2, ... over tied positions
    removed = below | (at & (rank_among_ties <= still_needed))
    return (~removed).reshape(scores.shape)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask of ``weight``'s shape that removes exactly ``round(sparsity * numel)``
    weights, the smallest in magnitude (ties: lower flat index removed first).

    Any floating dtype, any device, any size (tested above 2**24 elements).
    """
    check_weight(weight)
    sparsity = check_sparsity(sparsity)
    return keep_mask_from_scores(magnitude_scores(weight), n_to_remove(weight.numel(), sparsity))


def _check_not_reparametrised(name: str, module: nn.Module) -> None:
    if hasattr(module, "weight_orig"):
        raise ValueError(
            f"{name!r} is reparametrised by torch.nn.utils.prune (it has weight_orig/weight_mask); "
            "call make_permanent(model) first, or read its mask with masks_from_torch_prune(model)"
        )


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "layer", targets=None) -> dict[str, torch.Tensor]:
    """Magnitude-prune the target linears in place; returns ``{module_name: mask}``.

    ``scope="layer"``: each linear loses ``round(sparsity * its numel)`` weights.
    ``scope="global"``: ``round(sparsity * total numel)`` weights go, ranked together.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    linears = prunable_linears(model, targets)
    if not linears:
        raise ValueError("targets selects no linear layer to prune")
    for name, module in linears.items():
        _check_not_reparametrised(name, module)
        check_weight(module.weight)
    if scope == "layer":
        masks = {name: magnitude_mask(mod.weight, sparsity) for name, mod in linears.items()}
    else:
        device = next(iter(linears.values())).weight.device
        flat = torch.cat([magnitude_scores(mod.weight).reshape(-1).to(device) for mod in linears.values()])  # [total]
        keep = keep_mask_from_scores(flat, n_to_remove(flat.numel(), sparsity))
        masks, start = {}, 0
        for name, mod in linears.items():
            numel = mod.weight.numel()
            masks[name] = keep[start : start + numel].reshape(mod.weight.shape).to(mod.weight.device)
            start += numel
    return apply_masks(model, masks)


def to_torch_prune(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Install ``masks`` as torch.nn.utils.prune reparametrisations (``weight_orig`` +
    ``weight_mask``), via :func:`torch.nn.utils.prune.custom_from_mask`. Returns ``model``.

    A module that is already pruned by torch gets the two masks combined (logical AND),
    as torch's PruningContainer does.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"no module named {name!r} in the model")
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"module {name!r} has no weight tensor to prune")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask for {name!r} must be a bool tensor (True = keep)")
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
    for name, mask in masks.items():
        module = modules[name]
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device))
    return model


def masks_from_torch_prune(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module_name: bool mask}`` read from every ``weight_mask`` buffer of the model."""
    out = {}
    for name, module in model.named_modules():
        mask = dict(module.named_buffers(recurse=False)).get("weight_mask")
        if mask is not None:
            out[name] = mask != 0
    return out


def make_permanent(model: nn.Module) -> list[str]:
    """Fold every torch.nn.utils.prune reparametrisation into a plain parameter
    (:func:`torch.nn.utils.prune.remove`): ``weight = weight_orig * weight_mask``.

    Returns the names (``module.param``) that were made permanent.
    """
    done = []
    for name, module in model.named_modules():
        buffers = dict(module.named_buffers(recurse=False))
        for param_name in [p for p, _ in module.named_parameters(recurse=False) if p.endswith("_orig")]:
            base = param_name[: -len("_orig")]
            if base + "_mask" in buffers:
                prune.remove(module, base)
                done.append(f"{name}.{base}" if name else base)
    return done
