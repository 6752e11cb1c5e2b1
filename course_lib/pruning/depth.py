"""Whole-layer (depth) pruning: score decoder layers, skip them, cut them out.

A decoder layer adds its attention and MLP outputs to the residual stream::

    y = x + attn(norm(x));  y = y + mlp(norm(y))          # x, y: [B, T, hidden]

so a layer whose output ``y`` points where its input ``x`` points changes little.
ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
Redundant Than You Expect", arXiv:2403.03853) scores layer ``i`` by its *block
influence*::

    BI_i = 1 - mean over calibration tokens t of  cos(x_t, y_t)

and removes the layers of lowest BI. Scores (``layer_importance``, higher = keep):

* ``"influence"``: BI as above, read by hooks on each layer (one forward per batch);
* ``"ablation"``: ``loss(layer i skipped) - loss(all layers)``, the loss being the mean
  over ``batches`` of the mean next-token loss (one forward per layer and batch): the
  oracle BI tries to predict without running the model once per layer.

Skipping a layer (``layer_mask``) makes it the identity: ``y = x + g * (layer(x) - x)``
with gate ``g = 0`` (all gates start at 1). Removing it (``remove_layers``) deletes it
from ``model.model.layers``, renumbers ``layer_idx`` on the remaining attention modules
(the KV cache is indexed by it), and updates ``config.num_hidden_layers`` and
``config.layer_types`` (Qwen2 and newer configs carry one entry per layer). The result
computes exactly what the skipped model computes, with fewer layers; it saves and loads
with ``save_pretrained`` / ``from_pretrained`` and with ``save_pruned`` / ``load_pruned``.

Shapes: ``B`` batch, ``T`` tokens, ``L`` decoder layers.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..model import check_llama_layout
from .common import check_indices
from .heads import _EvalMode, check_batches, lm_loss

LAYER_METHODS = ("influence", "ablation")


def check_layer_list(layers, n_layers: int) -> list[int]:
    """Validate a list of decoder-layer indices in ``range(n_layers)``, no duplicates -> sorted list."""
    return sorted(check_indices(layers, n_layers, "layers",
                                f"the model has {n_layers} layers (0..{n_layers - 1})"))


# ----------------------------------------------------------------------------------
# Gates


def _hidden_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class LayerGates:
    """One float gate per decoder layer: the layer computes ``x + gate * (layer(x) - x)``.

    ``gates.gates`` is a float32 tensor ``[L]`` (all 1: the model is unchanged). A gate of
    0 skips the layer exactly (its output is its input); gates 0 and 1 are applied
    exactly, other values interpolate (no gradient flows to the gates). Use as a context manager, or
    call :meth:`remove` to take the hooks off.
    """

    def __init__(self, layers: nn.ModuleList):
        device = next(layers[0].parameters()).device
        self.gates = torch.ones(len(layers), dtype=torch.float32, device=device)
        self._handles = [layer.register_forward_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, args, kwargs, output):
            x = _hidden_in(args, kwargs)  # [B, T, hidden]
            y = output[0] if isinstance(output, tuple) else output  # older transformers return tuples
            g = float(self.gates[i])
            if g == 1.0:  # exactly the layer's output
                return output
            mixed = x if g == 0.0 else x + g * (y - x)  # g == 0: exactly the layer's input
            return (mixed,) + tuple(output[1:]) if isinstance(output, tuple) else mixed

        return hook

    def __len__(self) -> int:
        return self.gates.numel()

    @torch.no_grad()
    def zero_(self, layers) -> "LayerGates":
        """Skip the given layers (gate 0), validated like a removal."""
        self.gates[check_layer_list(layers, len(self))] = 0.0
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "LayerGates":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def layer_gates(model: nn.Module) -> LayerGates:
    """Gates (all 1) on every decoder layer; ``with layer_gates(model) as gates: ...``."""
    check_llama_layout(model)
    return LayerGates(model.model.layers)


def layer_mask(model: nn.Module, layers) -> LayerGates:
    """Gates with the given layers skipped (identity): the *masked oracle* that
    :func:`remove_layers` must reproduce. Use as ``with layer_mask(model, [2, 3]): ...``."""
    gates = layer_gates(model)
    try:
        gates.zero_(layers)
    except Exception:
        gates.remove()
        raise
    return gates


# ----------------------------------------------------------------------------------
# Scores


@torch.no_grad()
def block_influence(model: nn.Module, batches) -> torch.Tensor:
    """ShortGPT's block influence of every layer: float32 ``[L]`` on CPU (higher = keep).

    ``BI_i = 1 - mean cos(x_t, y_t)`` over every token ``t`` of every batch, ``x``/``y`` the
    layer's input/output hidden states; accumulated in float64.
    """
    check_llama_layout(model)
    batches = check_batches(batches)
    layers = model.model.layers
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0

    def hook_for(i):
        def hook(module, args, kwargs, output):
            x = _hidden_in(args, kwargs).float()  # [B, T, hidden]
            y = (output[0] if isinstance(output, tuple) else output).float()
            sums[i] += F.cosine_similarity(x, y, dim=-1).double().sum().cpu()

        return hook

    handles = [layer.register_forward_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with _EvalMode(model):
            for batch in batches:
                lm_loss(model, batch)
                count += batch["input_ids"].numel()
    finally:
        for h in handles:
            h.remove()
    return (1.0 - sums / count).float()


@torch.no_grad()
def layer_importance(model: nn.Module, batches, method: str = "influence") -> torch.Tensor:
    """Importance of every decoder layer: float32 ``[L]`` on CPU (higher = keep).

    ``"influence"``: :func:`block_influence`. ``"ablation"``: mean loss over ``batches``
    with the layer skipped minus the mean loss of the whole model.
    ``batches``: list of ``{"input_ids": LongTensor[B, T]}``.
    """
    check_llama_layout(model)
    if method not in LAYER_METHODS:
        raise ValueError(f"method must be one of {LAYER_METHODS}, got {method!r}")
    if method == "influence":
        return block_influence(model, batches)
    batches = check_batches(batches)
    with _EvalMode(model), layer_gates(model) as gates:

        def mean_loss() -> float:
            return sum(lm_loss(model, b).float().item() for b in batches) / len(batches)

        base = mean_loss()
        out = torch.zeros(len(gates))
        for i in range(len(gates)):
            gates.gates[i] = 0.0
            out[i] = mean_loss() - base
            gates.gates[i] = 1.0
    return out


def layers_to_remove(scores: torch.Tensor, n: int) -> list[int]:
    """The plan: the ``n`` layers of lowest score (ties: lower index first), sorted."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or not scores.dtype.is_floating_point:
        raise TypeError("scores must be a 1-D float tensor [L] (from layer_importance)")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int, got {n!r}")
    if not 0 <= n < scores.numel():
        raise ValueError(f"n must be in 0..{scores.numel() - 1} (keep at least one of {scores.numel()} layers), "
                         f"got {n}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = torch.sort(scores.cpu(), stable=True).indices
    return sorted(order[: int(n)].tolist())


# ----------------------------------------------------------------------------------
# Removal


def remove_layers(model: nn.Module, layers) -> None:
    """Physically remove decoder layers ``[index, ...]`` (in place).

    Deletes them from ``model.model.layers``, renumbers ``layer_idx`` on every submodule of
    the remaining layers that has one (the attention modules: KV-cache slots), and sets
    ``config.num_hidden_layers`` and, if the config has it, ``config.layer_types``.
    Raises ``ValueError`` for removing every layer, duplicate or out-of-range indices, or
    a model without the Llama layout; nothing is changed when it raises.
    """
    check_llama_layout(model)
    n_layers = len(model.model.layers)
    removed = set(check_layer_list(layers, n_layers))
    if len(removed) == n_layers:
        raise ValueError(f"removing all {n_layers} layers would leave no decoder; keep at least one")
    cfg = model.config
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and len(layer_types) != n_layers:
        raise ValueError(f"config.layer_types has {len(layer_types)} entries but the model has {n_layers} layers")
    kept = [i for i in range(n_layers) if i not in removed]
    new_layers = nn.ModuleList([model.model.layers[i] for i in kept])
    for new_idx, layer in enumerate(new_layers):
        for mod in layer.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    model.model.layers = new_layers
    cfg.num_hidden_layers = len(kept)
    if layer_types is not None:
        cfg.layer_types = [layer_types[i] for i in kept]
