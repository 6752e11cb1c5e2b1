"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by
Fine-Tuning", arXiv:2005.07683), with the gradual schedule of Zhu & Gupta (2017, "To
prune, or not to prune", arXiv:1710.01878) and two baselines under the same budget.

Magnitude pruning keeps the weights that are large *now*. During fine-tuning that is the
wrong question: a weight that the task pushes away from zero matters, a large one that
is shrinking does not. Movement pruning learns an importance score ``S`` per weight while
fine-tuning. The forward pass uses the masked weight ``W' = W * M`` with
``M = TopK(S)`` (a hard 0/1 mask); the top-k has no gradient, so it is treated as the
identity (straight-through), which gives ``dL/dS = dL/dW' * W``. With a unit step::

    S  <-  S - W * dL/dW'        i.e.   S_T = - sum_t  W_t * (dL/dW')_t

``-W * grad > 0`` exactly when a gradient step moves ``W`` away from zero (``W > 0`` and
``grad < 0``, or ``W < 0`` and ``grad > 0``): weights moving away from zero gain score.
The score keeps accumulating for pruned weights too (their ``dL/dW'`` still exists), so a
pruned weight can come back; the weight itself only learns while kept
(``dL/dW = dL/dW' * M``).

Schedule: the sparsity ``s_t`` follows the cubic ramp of Zhu & Gupta from
``initial_sparsity`` to ``final_sparsity``, flat during ``warmup_steps`` and
``cooldown_steps`` (:func:`cubic_sparsity`). At step t the mask keeps the top
``1 - s_t`` of the scores, per linear (``scope="layer"``) or over all targets together
(``scope="global"``). At the end the mask from the final scores at ``final_sparsity``
is applied for good: pruned weights are exactly zero.

Baselines, same loop and budget, only the score differs:

* :func:`gradient_sensitivity_prune`: ``S += |dL/dW'|`` (first-order sensitivity: how
  much the loss reacts to the weight, regardless of the direction it moves).
* :func:`gradual_magnitude_prune`: ``S = |W|`` recomputed each step, pruned weights set
  to zero (Zhu & Gupta's gradual magnitude pruning).
* :func:`random_prune`: fixed random scores (a seeded random mask, grown on the schedule;
  the control every criterion must beat).

``movement_prune(..., score_lr=1e-2)`` trains the scores with an Adam of their own, as Sanh et
al.'s released code does, instead of the unit gradient step.

:func:`movement_scores` / :func:`gradient_sensitivity_scores` accumulate the scores on a
frozen, dense model (no fine-tuning, no pruning), and :func:`movement_score_update` is
the update rule as a pure function.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..model import prunable_linears
from .common import check_sparsity, check_weight, n_to_remove
from .magnitude import keep_mask_from_scores

SCOPES = ("layer", "global")


# ----------------------------------------------------------------------------- schedule

def _check_int(name, value, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def cubic_sparsity(step: int, total_steps: int, final_sparsity: float, initial_sparsity: float = 0.0,
                   warmup_steps: int = 0, cooldown_steps: int = 0) -> float:
    """Sparsity at ``step`` (0 .. total_steps) of the cubic schedule (Zhu & Gupta 2017)::

        s_t = s_i                                       for t < warmup
        s_t = s_f + (s_i - s_f) * (1 - (t - warmup) / (total - warmup - cooldown))^3
        s_t = s_f                                       for t >= total - cooldown

    Non-decreasing, ``s_0 = s_i``, ``s_total = s_f``; fast at first, slow at the end
    (the network has more time to recover when fewer weights are left).
    """
    total_steps = _check_int("total_steps", total_steps, 1)
    step = _check_int("step", step, 0)
    if step > total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}], got {step}")
    final_sparsity = check_sparsity(final_sparsity)
    initial_sparsity = check_sparsity(initial_sparsity)
    if initial_sparsity > final_sparsity:
        raise ValueError(f"initial_sparsity ({initial_sparsity}) must be <= final_sparsity ({final_sparsity})")
    warmup_steps = _check_int("warmup_steps", warmup_steps)
    cooldown_steps = _check_int("cooldown_steps", cooldown_steps)
    if warmup_steps + cooldown_steps > total_steps:
        raise ValueError(f"warmup_steps + cooldown_steps ({warmup_steps} + {cooldown_steps}) must be "
                         f"<= total_steps ({total_steps})")
    if step < warmup_steps:
        return initial_sparsity
    if step >= total_steps - cooldown_steps:
        return final_sparsity
    progress = (step - warmup_steps) / (total_steps - warmup_steps - cooldown_steps)
    # = s_f + (s_i - s_f) (1 - progress)^3, written so that progress 0 gives s_i exactly
    return initial_sparsity + (final_sparsity - initial_sparsity) * (1.0 - (1.0 - progress) ** 3)


# ----------------------------------------------------------------------------- score updates

def movement_score_update(scores: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One movement step: ``scores - weight * grad`` (a new tensor, float32).

    ``grad`` is dL/dW' of the masked weight (straight-through); all three of one shape.
    """
    check_weight(weight)
    for name, t in (("scores", scores), ("grad", grad)):
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != weight.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, weight has {tuple(weight.shape)}")
    return scores.float() - weight.detach().float() * grad.detach().float()


def _gradient_update(scores, weight, grad):
    return scores + grad.detach().float().abs()


def _magnitude_update(scores, weight, grad):
    return weight.detach().float().abs()


def _random_update(scores, weight, grad):
    return scores


_UPDATES = {"movement": movement_score_update, "gradient": _gradient_update, "magnitude": _magnitude_update,
            "random": _random_update}


# ----------------------------------------------------------------------------- masked forward

class _MaskedWeight(nn.Module):
    """Parametrization ``W' = W * mask`` that records ``dL/dW'`` (summed over accesses)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)
        self.effective_grad = None

    def forward(self, weight):
        w = weight * self.mask
        if torch.is_grad_enabled():
            if not w.requires_grad:  # a frozen weight: still score it
                w.requires_grad_()
            w.register_hook(self._record)
        return w

    def _record(self, grad):
        g = grad.detach()
        self.effective_grad = g if self.effective_grad is None else self.effective_grad + g


def _causal_lm_loss(model, batch):
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError(f"each batch must be a dict {{'input_ids': LongTensor[B, T]}}, got {type(batch).__name__} "
                        "(or pass loss_fn(model, batch) for another format)")
    device = model.get_input_embeddings().weight.device
    ids = batch["input_ids"].to(device)
    labels = ids.clone()
    am = batch.get("attention_mask")
    if am is not None:
        am = am.to(device)
        labels[am == 0] = -100
    return model(input_ids=ids, attention_mask=am, labels=labels, use_cache=False).loss


def _batch_stream(batches, steps):
    """``steps`` batches from ``batches``, cycling through the ones seen when it runs out."""
    if isinstance(batches, dict):
        raise TypeError("batches must be a list/iterable of batch dicts, not a single dict")
    seen, it = [], iter(batches)
    for step in range(steps):
        if it is not None:
            try:
                batch = next(it)
                seen.append(batch)
                yield batch
                continue
            except StopIteration:
                it = None
                if not seen:
                    raise ValueError("batches is empty") from None
        yield seen[step % len(seen)]


def _select_masks(scores: dict, sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    if scope == "layer":
        return {name: keep_mask_from_scores(s, n_to_remove(s.numel(), sparsity)) for name, s in scores.items()}
    device = next(iter(scores.values())).device
    flat = torch.cat([s.reshape(-1).to(device) for s in scores.values()])  # [total]
    keep = keep_mask_from_scores(flat, n_to_remove(flat.numel(), sparsity))
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start:start + s.numel()].reshape(s.shape).to(s.device)
        start += s.numel()
    return masks


def _targets(model, targets):
    linears = prunable_linears(model, targets)
    if not linears:
        raise ValueError("targets selects no linear layer")
    for name, mod in linears.items():
        check_weight(mod.weight)
        if parametrize.is_parametrized(mod):
            raise ValueError(f"{name} is already parametrized; remove its parametrizations first")
    return linears


# ----------------------------------------------------------------------------- frozen scores

def _accumulate_scores(model, batches, targets, update, loss_fn):
    linears = _targets(model, targets)
    if isinstance(batches, dict):
        raise TypeError("batches must be a list of batch dicts, not a single dict")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty")
    loss_fn = loss_fn or _causal_lm_loss
    scores = {name: torch.zeros_like(mod.weight, dtype=torch.float32) for name, mod in linears.items()}
    params = {name: _MaskedWeight(torch.ones_like(mod.weight, dtype=torch.bool)) for name, mod in linears.items()}
    saved_grads = {id(p): p.grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for name, mod in linears.items():
            parametrize.register_parametrization(mod, "weight", params[name])
        for batch in batches:
            loss = loss_fn(model, batch)
            loss.backward()
            for name, mod in linears.items():
                p = params[name]
                if p.effective_grad is None:
                    raise RuntimeError(f"{name} received no gradient: is it used by the loss?")
                scores[name] = update(scores[name], mod.parametrizations.weight.original, p.effective_grad)
                p.effective_grad = None
    finally:
        for mod in linears.values():
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        for p in model.parameters():
            p.grad = saved_grads.get(id(p))
        model.train(was_training)
    return scores


def movement_scores(model: nn.Module, batches, targets=None, loss_fn=None) -> dict[str, torch.Tensor]:
    """``{name: -sum_batches W * dL/dW}`` on the frozen dense model (eval mode); weights unchanged.

    One backward pass per batch of ``batches`` (list of ``{"input_ids": [B, T]}``).
    ``loss_fn(model, batch) -> scalar`` replaces the default causal-LM loss.
    """
    return _accumulate_scores(model, batches, targets, movement_score_update, loss_fn)


def gradient_sensitivity_scores(model: nn.Module, batches, targets=None, loss_fn=None) -> dict[str, torch.Tensor]:
    """``{name: sum_batches |dL/dW|}`` on the frozen dense model (eval mode); weights unchanged."""
    return _accumulate_scores(model, batches, targets, _gradient_update, loss_fn)


# ----------------------------------------------------------------------------- pruning while fine-tuning

def _prune_while_finetuning(model, batches, final_sparsity, steps, method, lr, targets, scope, initial_sparsity,
                            warmup_steps, cooldown_steps, weight_decay, loss_fn, callback, progress, score_lr=None,
                            seed=0):
    final_sparsity = check_sparsity(final_sparsity)
    if score_lr is not None and (isinstance(score_lr, bool) or not isinstance(score_lr, (int, float))
                                 or not score_lr > 0):
        raise ValueError(f"score_lr must be None or a float > 0, got {score_lr!r}")
    steps = _check_int("steps", steps, 1)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
        raise ValueError(f"lr must be a float >= 0, got {lr!r}")
    if warmup_steps is None:
        warmup_steps = round(0.1 * steps)
    if cooldown_steps is None:
        cooldown_steps = round(0.2 * steps)
    cubic_sparsity(0, steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)  # validate all
    linears = _targets(model, targets)
    update = _UPDATES[method]
    loss_fn = loss_fn or _causal_lm_loss

    scores = {name: torch.zeros_like(mod.weight, dtype=torch.float32) for name, mod in linears.items()}
    if method == "magnitude":
        scores = {name: mod.weight.detach().abs().float() for name, mod in linears.items()}
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        scores = {name: torch.rand(mod.weight.shape, generator=gen).to(mod.weight.device)
                  for name, mod in linears.items()}
    score_opt = None
    if score_lr is not None:  # scores as parameters of their own Adam (Sanh et al.'s released code)
        scores = {name: nn.Parameter(s, requires_grad=False) for name, s in scores.items()}
        score_opt = torch.optim.Adam(list(scores.values()), lr=score_lr)
    params = {name: _MaskedWeight(torch.ones_like(mod.weight, dtype=torch.bool)) for name, mod in linears.items()}
    was_training = model.training
    finished = False
    bar = None
    try:
        for name, mod in linears.items():
            parametrize.register_parametrization(mod, "weight", params[name])
        dense = {name: mod.parametrizations.weight.original for name, mod in linears.items()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay) if trainable else None
        model.train()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"{method} pruning")
        for step, batch in enumerate(_batch_stream(batches, steps)):
            sparsity = cubic_sparsity(step, steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)
            masks = _select_masks(scores, sparsity, scope)
            for name, mask in masks.items():
                params[name].mask.copy_(mask)
                if method == "magnitude":  # Zhu & Gupta: pruned weights are zeroed
                    with torch.no_grad():
                        dense[name].mul_(mask)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower lr")
            loss.backward()
            for name in linears:
                grad = params[name].effective_grad
                if grad is None:
                    raise RuntimeError(f"{name} received no gradient: is it used by the loss?")
                if score_opt is not None:  # dL/dS = W * dL/dW' (straight-through); Adam descends it
                    scores[name].grad = dense[name].detach().float() * grad.float()
                else:
                    scores[name] = update(scores[name], dense[name], grad)
                params[name].effective_grad = None
            if score_opt is not None:
                score_opt.step()
                score_opt.zero_grad(set_to_none=True)
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if method == "magnitude":
                scores = {name: dense[name].detach().abs().float() for name in linears}
            if callback is not None:
                callback(step=step, sparsity=sparsity, masks=masks, scores=scores, loss=loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", sparsity=f"{sparsity:.3f}")
        final_masks = _select_masks(scores, final_sparsity, scope)
        for name, mask in final_masks.items():
            params[name].mask.copy_(mask)
        finished = True
    finally:
        if bar is not None:
            bar.close()
        for mod in linears.values():
            if parametrize.is_parametrized(mod, "weight"):
                # success: weight = W * final mask; failure: back to the dense weights
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=finished)
        for p in model.parameters():
            p.grad = None
        model.train(was_training)
    return final_masks


_PRUNE_DOC = """
    Fine-tunes every trainable parameter of ``model`` with AdamW(``lr``, ``weight_decay``)
    for ``steps`` steps, one batch each (``batches``: list/iterable of
    ``{{"input_ids": LongTensor[B, T]}}``, cycled when shorter than ``steps``), while the
    target linears run with hard top-k masks from the {what}. The sparsity follows
    :func:`cubic_sparsity` (``warmup_steps=None``: 10% of ``steps``, ``cooldown_steps=None``:
    20%). Ends with the mask from the final scores at ``final_sparsity`` applied in place
    (pruned weights exactly 0; ``scope="layer"``: ``round(s * numel)`` per linear,
    ``"global"``: over all targets) and returns ``{{module_name: mask}}``.

    ``loss_fn(model, batch) -> scalar`` replaces the causal-LM loss;
    ``callback(step=, sparsity=, masks=, scores=, loss=)`` is called after each step (the
    masks are those the step ran with; ``module.weight`` is the masked weight then).
"""


def movement_prune(model: nn.Module, batches, final_sparsity: float, steps: int, lr: float = 1e-4, targets=None,
                   scope: str = "layer", warmup_steps: int | None = None, cooldown_steps: int | None = None,
                   progress: bool = True, initial_sparsity: float = 0.0, weight_decay: float = 0.0,
                   loss_fn: Callable | None = None, callback: Callable | None = None,
                   score_lr: float | None = None) -> dict[str, torch.Tensor]:
    return _prune_while_finetuning(model, batches, final_sparsity, steps, "movement", lr, targets, scope,
                                   initial_sparsity, warmup_steps, cooldown_steps, weight_decay, loss_fn,
                                   callback, progress, score_lr=score_lr)


def gradient_sensitivity_prune(model: nn.Module, batches, final_sparsity: float, steps: int, lr: float = 1e-4,
                               targets=None, scope: str = "layer", warmup_steps: int | None = None,
                               cooldown_steps: int | None = None, progress: bool = True, initial_sparsity: float = 0.0,
                               weight_decay: float = 0.0, loss_fn: Callable | None = None,
                               callback: Callable | None = None) -> dict[str, torch.Tensor]:
    return _prune_while_finetuning(model, batches, final_sparsity, steps, "gradient", lr, targets, scope,
                                   initial_sparsity, warmup_steps, cooldown_steps, weight_decay, loss_fn,
                                   callback, progress)


def gradual_magnitude_prune(model: nn.Module, batches, final_sparsity: float, steps: int, lr: float = 1e-4,
                            targets=None, scope: str = "layer", warmup_steps: int | None = None,
                            cooldown_steps: int | None = None, progress: bool = True, initial_sparsity: float = 0.0,
                            weight_decay: float = 0.0, loss_fn: Callable | None = None,
                            callback: Callable | None = None) -> dict[str, torch.Tensor]:
    return _prune_while_finetuning(model, batches, final_sparsity, steps, "magnitude", lr, targets, scope,
                                   initial_sparsity, warmup_steps, cooldown_steps, weight_decay, loss_fn,
                                   callback, progress)


def random_prune(model: nn.Module, batches, final_sparsity: float, steps: int, lr: float = 1e-4, targets=None,
                 scope: str = "layer", warmup_steps: int | None = None, cooldown_steps: int | None = None,
                 progress: bool = True, initial_sparsity: float = 0.0, weight_decay: float = 0.0,
                 loss_fn: Callable | None = None, callback: Callable | None = None, seed: int = 0
                 ) -> dict[str, torch.Tensor]:
    return _prune_while_finetuning(model, batches, final_sparsity, steps, "random", lr, targets, scope,
                                   initial_sparsity, warmup_steps, cooldown_steps, weight_decay, loss_fn,
                                   callback, progress, seed=seed)


movement_prune.__doc__ = "Movement pruning (Sanh et al. 2020) while fine-tuning -> masks.\n" + _PRUNE_DOC.format(
    what="accumulated movement scores ``S -= W * dL/dW'``") + """
    ``score_lr=None`` takes a unit gradient step on the scores each step (``S -= W * dL/dW'``).
    A float trains the scores with an Adam of their own at that learning rate instead, as
    Sanh et al.'s released code does (``--mask_scores_learning_rate 1e-2`` next to
    ``--learning_rate 3e-5`` for the weights, scores initialised at 0). From scores that start
    at 0 the top-k of either rule does not depend on the score learning rate (both are
    scale-equivariant); Adam's per-weight normalisation does change the ranking.
"""
random_prune.__doc__ = "Control: prune a fixed random mask, grown on the same schedule, while fine-tuning.\n" + \
    _PRUNE_DOC.format(what="fixed uniform random scores (``seed``): the masks are nested") 
gradient_sensitivity_prune.__doc__ = "Baseline: prune by accumulated |gradient| while fine-tuning -> masks.\n" + \
    _PRUNE_DOC.format(what="accumulated gradient sensitivity ``S += |dL/dW'|``")
gradual_magnitude_prune.__doc__ = "Baseline: gradual magnitude pruning (Zhu & Gupta 2017) -> masks.\n" + \
    _PRUNE_DOC.format(what="current magnitudes ``|W|`` (pruned weights are zeroed, so they stay out)")
