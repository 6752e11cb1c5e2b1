"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot", arXiv:2301.00774).

Per linear layer ``y = W x`` (W [out, in]) SparseGPT solves, approximately, the layer-wise
reconstruction problem ``min_{M, W'} ||W X - (M * W') X||^2`` on calibration inputs X
[in, N]. Its tools come from Optimal Brain Surgeon (Hassibi & Stork 1993):

* ``H = 2 X X^T`` [in, in] (here the mean over tokens, ``2/N X X^T``; the scale cancels)
  is the Hessian of the error and the same for every row of W.
* Removing ``w_j`` from a row costs ``w_j^2 / [H^-1]_jj`` and is best compensated by
  changing the *other* weights of that row by ``-(w_j / [H^-1]_jj) [H^-1]_{j,:}``.

Doing OBS exactly per row is too slow for LLMs. SparseGPT processes the columns left to
right and only updates the columns not yet visited, so all rows share one sequence of
inverse Hessians: row j of the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``)
holds, scaled, exactly the OBS update over the remaining columns. In code, per column j::

    err   = (w_j - q_j) / U_jj                   # q_j = 0 if pruned, else w_j
    W[:, j:] -= err[:, None] * U[j, j:][None, :]

Columns are handled in blocks of ``blocksize``: the updates inside a block are done
column by column, then the block's accumulated error updates all later columns in one
matmul (lazy batched updates). The mask is chosen *adaptively*: at the start of each
block (unstructured) or of each group of m columns (N:M), from the current, already
updated weights, by the OBS saliency ``w^2 / U_jj^2``. ``U_jj^2`` is ``[H_F^-1]_jj``, the
inverse-Hessian diagonal restricted to the columns F = {j, j+1, ...} not yet processed
(a Schur-complement property of the Cholesky factor), i.e. the OBS cost in the sequential
scheme.

Details:

* Dampening: ``H += percdamp * mean(diag H) * I`` keeps the Cholesky stable.
* Dead inputs (channel j is 0 on every calibration token, ``H_jj = 0``): set ``H_jj = 1``
  and rank them first for removal -- removing them costs nothing on the calibration data
  and, as their row of ``U`` is zero off the diagonal, changes no other weight. (The
  reference code zeroes all their weights; here a weight that is kept is never zeroed,
  so the returned mask is the only source of zeros.)
* Exact unstructured sparsity: block b removes ``round(s * numel up to its end) -
  round(s * numel before it)`` weights, ranked over the whole [out, blocksize] block
  (the reference uses a per-block quantile), so the layer loses exactly
  ``round(s * out * in)``.
* Computation in float32 on the weight's device; the result is cast back to its dtype.
  With sparsity 0 nothing is pruned and the weights come back bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import prunable_linears
from .calibration import HessianStats, check_pattern, layerwise_prune
from .common import check_weight, n_to_remove
from .magnitude import keep_mask_from_scores
from .nm import nm_mask


def _check_block_args(blocksize, percdamp, m):
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if m is not None and blocksize % m:
        raise ValueError(f"blocksize={blocksize} must be a multiple of m={m} so that N:M groups do not straddle blocks")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp >= 0:
        raise ValueError(f"percdamp must be a float >= 0 (the fraction of mean(diag H) added to the diagonal), "
                         f"got {percdamp!r}")


def _inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Dampened ``H`` [in, in] -> upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``)."""
    in_features = H.shape[0]
    diag = torch.arange(in_features, device=H.device)
    H[diag, diag] += percdamp * torch.mean(torch.diag(H))
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() != 0:
        raise ValueError(f"the dampened Hessian is not positive definite (percdamp={percdamp}); "
                         "use a larger percdamp or more calibration tokens")
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if info.item() != 0:
        raise ValueError(f"H^-1 is numerically not positive definite (percdamp={percdamp}); use a larger percdamp")
    return U


@torch.no_grad()
def sparsegpt_prune_weight(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None = None,
                           n: int | None = None, m: int | None = None, blocksize: int = 128,
                           percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight -> ``(pruned_weight, keep_mask)``; the inputs are not modified.

    ``weight`` [out, in], ``hessian`` [in, in] = ``2/N sum_n x_n x_n^T`` over the layer's
    calibration inputs (any positive scale). ``pruned_weight`` has ``weight``'s dtype and
    device, exact zeros where ``keep_mask`` is False and OBS-updated kept weights.
    Exactly one of ``sparsity`` or ``n, m``.
    """
    check_weight(weight)
    sparsity, n, m = check_pattern(sparsity, n, m)
    _check_block_args(blocksize, percdamp, m)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    n_out, n_in = weight.shape
    if not isinstance(hessian, torch.Tensor) or hessian.shape != (n_in, n_in):
        raise ValueError(f"hessian must be a tensor [in, in] = [{n_in}, {n_in}], got "
                         f"{tuple(getattr(hessian, 'shape', ()))}")
    if m is not None and n_in % m:
        raise ValueError(f"in_features={n_in} is not divisible by m={m}")

    device = weight.device
    W = weight.detach().float().clone()  # [out, in], updated in place
    H = hessian.detach().float().to(device).clone()  # [in, in]
    dead = torch.diag(H) == 0  # [in] inputs that are always zero
    H[dead, dead] = 1.0
    U = _inverse_hessian_factor(H, percdamp)  # [in, in] upper
    pruned = torch.zeros(n_out, n_in, dtype=torch.bool, device=device)

    for i1 in range(0, n_in, blocksize):
        i2 = min(i1 + blocksize, n_in)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()  # [out, count]
        U1 = U[i1:i2, i1:i2]  # [count, count]
        d1 = torch.diag(U1)  # [count]
        Q1 = torch.zeros_like(W1)  # the block's final (pruned) weights
        Err1 = torch.zeros_like(W1)  # scaled errors, for the lazy update of later columns
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if sparsity is not None:
            k = n_to_remove(n_out * i2, sparsity) - n_to_remove(n_out * i1, sparsity)
            saliency = W1.pow(2) / d1.pow(2)[None, :]  # [out, count]
            saliency[:, dead[i1:i2]] = -1.0  # free to remove: rank first
            prune1 = ~keep_mask_from_scores(saliency, k)
        for i in range(count):
            if m is not None and i % m == 0:
                group = W1[:, i:i + m]
                saliency = group.pow(2) / d1[i:i + m].pow(2)[None, :]  # [out, m]
                saliency[:, dead[i1 + i:i1 + i + m]] = -1.0
                prune1[:, i:i + m] = ~nm_mask(group, n=n, m=m, scores=saliency)
            w = W1[:, i]  # [out]
            q = torch.where(prune1[:, i], 0.0, w)  # [out]
            Q1[:, i] = q
            err = (w - q) / d1[i]  # [out]
            W1[:, i:] -= torch.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = prune1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    return W.to(weight.dtype), ~pruned


def sparsegpt_prune(model: nn.Module, calib_batches, sparsity: float | None = None, n: int | None = None,
                    m: int | None = None, blocksize: int = 128, percdamp: float = 0.01, targets=None,
                    device=None, progress: bool = False) -> dict[str, torch.Tensor]:
    """SparseGPT-prune the target linears in place, layer by layer -> ``{module_name: mask}``.

    The kept weights are updated too (OBS), so the pruned model is *not* ``weight * mask``
    of the original. ``calib_batches``: list of ``{"input_ids": LongTensor[B, T]}``;
    ``device``: where each layer is computed (``None``: where the first layer is).
    """
    sparsity, n, m = check_pattern(sparsity, n, m)
    _check_block_args(blocksize, percdamp, m)
    for name, mod in prunable_linears(model, targets).items():
        check_weight(mod.weight)
        if m is not None and mod.in_features % m:
            raise ValueError(f"{name} has in_features={mod.in_features}, not divisible by m={m}")

    def make_stats(linear):
        return HessianStats(linear.in_features, device=linear.weight.device)

    def prune_linear(name, linear, stats):
        new_weight, mask = sparsegpt_prune_weight(linear.weight, stats.H, sparsity=sparsity, n=n, m=m,
                                                  blocksize=blocksize, percdamp=percdamp)
        linear.weight.copy_(new_weight)
        return mask

    return layerwise_prune(model, calib_batches, make_stats, prune_linear, targets=targets, device=device,
                           progress=progress)
