"""Wanda: pruning by Weights AND Activations (Sun, Liu, Bair & Kolter 2023,
"A Simple and Effective Pruning Approach for Large Language Models", arXiv:2306.11695).

Magnitude pruning ignores that a small weight on an input channel with huge activations
matters more than a large weight on a channel that is almost always zero -- and LLMs
have a few such outlier channels. Wanda scores weight ``W_ij`` (output i, input j) by::

    S_ij = |W_ij| * ||X_j||_2

where ``||X_j||_2`` is the L2 norm of input channel j over all N calibration tokens
(``X`` is [N, in]). This is the diagonal approximation of the output reconstruction
error ``||W X^T - W' X^T||``: removing ``W_ij`` alone changes output i by ``W_ij X_j``,
whose norm over the tokens is exactly ``S_ij``.

The second ingredient: scores are compared **per output row** (each row loses exactly
``round(sparsity * in)`` weights), not per layer -- each output then keeps the same
budget of inputs, which the paper found clearly better for LLMs. For N:M the n largest
scores of every m consecutive inputs of a row survive.

No weight is updated (unlike SparseGPT) and no gradient is needed: one forward pass over
the calibration data, run layer by layer (:mod:`course_lib.pruning.calibration`), so each
layer sees the outputs of the already pruned layers before it, as in the paper's code.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import prunable_linears
from .calibration import ChannelNormStats, check_pattern, layerwise_prune
from .common import check_weight, n_to_remove
from .nm import nm_mask


def _check_act_norm(weight: torch.Tensor, act_norm) -> torch.Tensor:
    if not isinstance(act_norm, torch.Tensor) or not act_norm.dtype.is_floating_point:
        raise TypeError(f"act_norm must be a floating-point tensor [in_features], got "
                        f"{getattr(act_norm, 'dtype', type(act_norm).__name__)}")
    if act_norm.dim() != 1 or act_norm.shape[0] != weight.shape[-1]:
        raise ValueError(f"act_norm must have shape [in_features] = [{weight.shape[-1]}] for a weight of shape "
                         f"{tuple(weight.shape)}, got {tuple(act_norm.shape)}")
    if (act_norm < 0).any() or torch.isnan(act_norm).any():
        raise ValueError("act_norm holds norms: it must be >= 0 and not NaN")
    return act_norm


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2``: weight [out, in], act_norm [in] -> scores [out, in] (float32)."""
    check_weight(weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    _check_act_norm(weight, act_norm)
    return weight.detach().abs().float() * act_norm.detach().float().to(weight.device)[None, :]


def row_mask_from_scores(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask [out, in] removing exactly ``round(sparsity * in)`` lowest scores in every row.

    A row is one N:M group with ``m = in`` (so :func:`course_lib.pruning.nm.nm_mask` does
    the selection; ties: the lower input index is kept).
    """
    n_in = scores.shape[-1]
    k = n_to_remove(n_in, sparsity)
    if k == 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k == n_in:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return nm_mask(scores, n=n_in - k, m=n_in, scores=scores)


def wanda_mask(weight: torch.Tensor, act_norm: torch.Tensor, sparsity: float | None = None,
               n: int | None = None, m: int | None = None) -> torch.Tensor:
    """Bool keep-mask [out, in] from Wanda scores, compared within each output row.

    Exactly one of ``sparsity`` (each row loses exactly ``round(sparsity * in)``) or
    ``n, m`` (keep the n best of every m consecutive inputs).
    """
    sparsity, n, m = check_pattern(sparsity, n, m)
    scores = wanda_scores(weight, act_norm)  # [out, in]
    if sparsity is not None:
        return row_mask_from_scores(scores, sparsity)
    return nm_mask(weight, n=n, m=m, scores=scores)


def wanda_prune(model: nn.Module, calib_batches, sparsity: float | None = None, n: int | None = None,
                m: int | None = None, targets=None, device=None, progress: bool = False) -> dict[str, torch.Tensor]:
    """Wanda-prune the target linears in place, layer by layer -> ``{module_name: mask}``.

    ``calib_batches``: list of ``{"input_ids": LongTensor[B, T]}`` (optional
    ``"attention_mask"``). ``device``: where each layer is computed (``None``: where the
    model's first layer is). Exactly one of ``sparsity`` or ``n, m``.
    """
    sparsity, n, m = check_pattern(sparsity, n, m)
    for name, mod in prunable_linears(model, targets).items():
        check_weight(mod.weight)
        if m is not None and mod.in_features % m:
            raise ValueError(f"{name} has in_features={mod.in_features}, not divisible by m={m}")

    def make_stats(linear):
        return ChannelNormStats(linear.in_features, device=linear.weight.device)

    def prune_linear(name, linear, stats):
        mask = wanda_mask(linear.weight, stats.norms(), sparsity=sparsity, n=n, m=m)
        linear.weight.mul_(mask)
        return mask

    return layerwise_prune(model, calib_batches, make_stats, prune_linear, targets=targets, device=device,
                           progress=progress)
