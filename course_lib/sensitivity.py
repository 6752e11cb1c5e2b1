"""Sensitivity scans: how much does pruning *one* linear of *one* layer hurt?

Before choosing how much to prune where, measure it: prune a single module (say the
``v_proj`` of layer 0) to sparsity ``s``, evaluate perplexity, put the dense weights back,
and repeat for every (layer, module type). Han et al. 2015 ("Learning both Weights and
Connections for Efficient Neural Networks") plot such per-layer pruning sensitivities of
AlexNet and use them to choose a pruning rate per layer.

Each entry of the scan changes exactly one weight matrix; it is pruned in place with
``mask_fn`` (default: :func:`course_lib.pruning.magnitude.magnitude_mask`, i.e. the
``round(s * numel)`` smallest magnitudes of that matrix) and restored bit for bit
afterwards -- also when the evaluation raises. The model is left as it was found.
"""

from __future__ import annotations

import torch
from torch import nn

from .evaluation import perplexity
from .model import ATTN_LINEARS, DECODER_LINEARS, decoder_layers, prunable_linears
from .pruning.common import check_sparsity


def module_name(layer: int, module_type: str) -> str:
    """``(0, "q_proj")`` -> ``"model.layers.0.self_attn.q_proj"`` (the Llama layout)."""
    if module_type not in DECODER_LINEARS:
        raise ValueError(f"module_type must be one of {DECODER_LINEARS}, got {module_type!r}")
    parent = "self_attn" if module_type in ATTN_LINEARS else "mlp"
    return f"model.layers.{layer}.{parent}.{module_type}"


def _check_layers(layers, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layers must be ints, got {layer!r}")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
        out.append(layer)
    return out


def _check_types(module_types) -> list[str]:
    if module_types is None:
        return list(DECODER_LINEARS)
    if isinstance(module_types, str):
        module_types = [module_types]
    out = []
    for t in module_types:
        if t not in DECODER_LINEARS:
            raise ValueError(f"module type {t!r} is not one of {DECODER_LINEARS}")
        out.append(t)
    return out


@torch.no_grad()
def _prune_one(linear: nn.Linear, name: str, sparsity: float, mask_fn) -> None:
    mask = mask_fn(linear.weight, sparsity)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != linear.weight.shape:
        raise TypeError(f"mask_fn must return a bool mask of shape {tuple(linear.weight.shape)} for {name!r}")
    linear.weight.mul_(mask.to(linear.weight.device))


def sensitivity_scan(model: nn.Module, sparsity: float, max_tokens: int | None = 8192, layers=None,
                     module_types=None, split: str = "eval", tokens: torch.Tensor | None = None,
                     mask_fn=None, progress: bool = True) -> dict[tuple[int, str], float]:
    """Perplexity with only one (layer, module type) pruned -> ``{(layer, type): ppl}``.

    ``layers``: decoder-layer indices (default all); ``module_types``: short names out of
    ``q/k/v/o_proj, gate/up/down_proj`` (default all seven). Keys come layer by layer, in
    the order of ``module_types``. Perplexity is :func:`course_lib.perplexity` on ``split``
    (or the 1-D id stream ``tokens``), cut to ``max_tokens`` for speed. ``mask_fn(weight,
    sparsity) -> bool mask`` chooses the weights to remove (default magnitude). The model's
    weights are restored after every entry, so the model is unchanged afterwards.
    """
    from tqdm.auto import tqdm

    from .pruning.magnitude import magnitude_mask

    sparsity = check_sparsity(sparsity)
    n_layers = len(decoder_layers(model))
    layers = _check_layers(layers, n_layers)
    module_types = _check_types(module_types)
    mask_fn = magnitude_mask if mask_fn is None else mask_fn
    if not callable(mask_fn):
        raise TypeError(f"mask_fn must be callable (weight, sparsity) -> bool mask, got {mask_fn!r}")
    names = {(layer, t): module_name(layer, t) for layer in layers for t in module_types}
    linears = prunable_linears(model, list(names.values()))
    for name, linear in linears.items():
        if hasattr(linear, "weight_orig"):
            raise ValueError(f"{name!r} is reparametrised by torch.nn.utils.prune; call "
                             "course_lib.pruning.make_permanent(model) first")
    out = {}
    for key in tqdm(names, desc=f"sensitivity at {sparsity:.0%}", disable=not progress):
        linear = linears[names[key]]
        saved = linear.weight.detach().clone()
        try:
            _prune_one(linear, names[key], sparsity, mask_fn)
            out[key] = perplexity(model, split=split, max_tokens=max_tokens, tokens=tokens)
        finally:
            with torch.no_grad():
                linear.weight.copy_(saved)
    return out


def as_grid(scan: dict[tuple[int, str], float]) -> tuple[torch.Tensor, list[int], list[str]]:
    """A scan's dict -> ``(values [n_layers, n_types] float64, layers, module_types)``
    for heatmaps; entries missing from the scan are NaN."""
    if not isinstance(scan, dict) or not scan:
        raise ValueError("scan must be a non-empty dict {(layer, module_type): value}")
    layers = sorted({k[0] for k in scan})
    types = [t for t in DECODER_LINEARS if any(k[1] == t for k in scan)]
    grid = torch.full((len(layers), len(types)), float("nan"), dtype=torch.float64)
    for (layer, t), value in scan.items():
        grid[layers.index(layer), types.index(t)] = float(value)
    return grid, layers, types


def allocate_sparsity(scan: dict, sizes: dict, target: float, spread: float = 0.1) -> dict:
    """Non-uniform per-module sparsities from a sensitivity scan, at the same total sparsity.

    Two levels: the most sensitive modules (highest perplexity in ``scan``), taken in that order until
    they hold at least half of all weights, get ``target - spread``; the others get the sparsity that
    keeps the size-weighted mean exactly ``target``. ``sizes`` maps the scan's keys to the modules'
    weight counts. Returns ``{key: sparsity}`` (the scan's keys, in its order).
    """
    target, spread = check_sparsity(target), float(spread)
    if not isinstance(scan, dict) or not scan or set(scan) != set(sizes):
        raise ValueError("scan and sizes must be non-empty dicts with the same keys")
    if not 0 <= spread <= target:
        raise ValueError(f"spread must be in [0, target={target}], got {spread}")
    total = sum(sizes.values())
    sensitive, held = set(), 0
    for key in sorted(scan, key=lambda k: -scan[k]):
        if held * 2 >= total:
            break
        sensitive.add(key)
        held += sizes[key]
    if held == total:
        raise ValueError("every module would be 'sensitive': need at least two modules of different sensitivity")
    low = target - spread
    high = (target * total - low * held) / (total - held)
    if not high < 1:
        raise ValueError(f"spread {spread} is too large: the other modules would need sparsity {high:.3f} >= 1")
    return {key: (low if key in sensitive else high) for key in scan}
