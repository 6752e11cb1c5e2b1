"""FFN channel (neuron) pruning: score the MLP's intermediate channels, mask them, cut them out.

A Llama MLP (SwiGLU) is::

    a = act_fn(gate_proj(x)) * up_proj(x)          # [B, T, I]   the "channels"
    y = down_proj(a) = sum_j down_proj.weight[:, j] * a_j  (+ bias)

Channel ``j`` is row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of
``down_proj``; nothing else reads it, so removing those three slices computes exactly
what the model computes with ``a_j`` forced to 0, with fewer weights.

Scores (``channel_importance``), all read at the input of ``down_proj``:

* ``"activation"``: mean ``|a_j|`` over every token of the batches;
* ``"norm"``: L2 norm of the channel's output weights ``down_proj.weight[:, j]`` (how
  strongly the channel can write into the residual stream; needs no data);
* ``"taylor"``: first-order Taylor estimate of the loss change when ``a_j`` goes,
  ``sum over batches |sum over tokens a_j * dL/da_j|`` (Molchanov et al. 2019,
  "Importance Estimation for Neural Network Pruning", CVPR). This is ``|dL/dc_j|`` for
  a gate ``c_j`` on the channel at ``c = 1``: the same estimate Michel et al. use for heads.

Shapes: ``B`` batch, ``T`` tokens, ``I`` intermediate size.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import check_llama_layout
from .heads import (
    InputGates,
    _EvalMode,
    check_batches,
    check_index_dict,
    check_not_reparametrized,
    lm_loss,
    pad_rows,
    slice_linear_,
    update_config_if_uniform,
)

CHANNEL_METHODS = ("activation", "norm", "taylor")


def channels_per_layer(model: nn.Module) -> list[int]:
    """Intermediate size of every decoder layer's MLP (checked against gate/up/down)."""
    check_llama_layout(model)
    sizes = []
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        n = mlp.down_proj.in_features
        if mlp.gate_proj.out_features != n or mlp.up_proj.out_features != n:
            raise ValueError(
                f"layer {i}: inconsistent MLP shapes gate {mlp.gate_proj.out_features}, "
                f"up {mlp.up_proj.out_features}, down in {n}"
            )
        sizes.append(n)
    return sizes


def channel_gates(model: nn.Module) -> InputGates:
    """Per-channel gates ``gates[layer]: float32 [I_layer]`` (all 1) on every ``down_proj`` input.

    Same object as :func:`course_lib.pruning.heads.head_gates` returns: set entries to 0
    (``gates.zero_({layer: [channels]})``) to mask channels, ``gates.requires_grad_()``
    for gradients, ``gates.remove()`` or ``with channel_gates(model) as gates:``.
    """
    sizes = channels_per_layer(model)  # checks the Llama layout
    linears = [layer.mlp.down_proj for layer in model.model.layers]
    return InputGates(linears, sizes, group_size=1, kind="channel")


def channel_mask(model: nn.Module, channels: dict[int, list[int]]) -> InputGates:
    """Gates with channels ``{layer: [channel, ...]}`` set to 0: the *masked oracle* that
    :func:`remove_ffn_channels` must reproduce. Use as ``with channel_mask(model, ch): ...``."""
    gates = channel_gates(model)
    try:
        gates.zero_(channels)
    except Exception:
        gates.remove()
        raise
    return gates


def channel_importance(model: nn.Module, batches, method: str = "activation") -> torch.Tensor:
    """Importance of every FFN channel: float32 ``[layers, intermediate]`` on CPU (higher = keep).

    See the module doc for the three methods. ``batches``: list of
    ``{"input_ids": LongTensor[B, T]}`` (unused, may be None, for ``"norm"``). Layers
    pruned to fewer channels than others are padded with NaN on the right.
    """
    sizes = channels_per_layer(model)
    if method not in CHANNEL_METHODS:
        raise ValueError(f"method must be one of {CHANNEL_METHODS}, got {method!r}")
    layers = model.model.layers
    if method == "norm":
        return pad_rows([layer.mlp.down_proj.weight.detach().float().norm(dim=0) for layer in layers])  # [I]

    batches = check_batches(batches)
    if method == "taylor":
        with _EvalMode(model), channel_gates(model) as gates:
            gates.requires_grad_(True)
            totals = [torch.zeros_like(g) for g in gates]
            for batch in batches:
                grads = torch.autograd.grad(lm_loss(model, batch), list(gates))  # dL/dc = sum_tokens a * dL/da
                for t, g in zip(totals, grads):
                    t += g.abs()
        return pad_rows(totals)

    # activation: mean |a_j| over all tokens, read by a pre-hook on down_proj
    sums = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    counts = [0] * len(sizes)

    def hook_for(i):
        def hook(module, args):
            a = args[0].detach()  # [B, T, I]
            sums[i] += a.abs().reshape(-1, a.shape[-1]).sum(dim=0, dtype=torch.float64).cpu()
            counts[i] += a.numel() // a.shape[-1]

        return hook

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        with _EvalMode(model), torch.no_grad():
            for batch in batches:
                lm_loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    return pad_rows([s / c for s, c in zip(sums, counts)])


def remove_ffn_channels(model: nn.Module, channels: dict[int, list[int]]) -> None:
    """Physically remove FFN channels ``{layer: [channel, ...]}`` (in place).

    Slices rows of ``gate_proj`` and ``up_proj`` (and their biases, if any) and columns
    of ``down_proj``; updates ``mlp.intermediate_size``, and ``config.intermediate_size``
    when every layer ends up with the same width. Raises ``ValueError`` for removing all
    channels of a layer, duplicate or out-of-range indices, or a model without the Llama
    layout; nothing is changed when it raises.
    """
    sizes = channels_per_layer(model)
    channels = check_index_dict(channels, sizes, "channels")
    layers = model.model.layers
    for i, removed in channels.items():
        if len(removed) == sizes[i]:
            raise ValueError(f"layer {i}: removing all {sizes[i]} channels would leave an empty MLP; keep at least one")
        for name in ("gate_proj", "up_proj", "down_proj"):
            check_not_reparametrized(getattr(layers[i].mlp, name), f"layer {i} mlp.{name}")

    for i, removed in channels.items():
        mlp = layers[i].mlp
        keep = torch.ones(sizes[i], dtype=torch.bool)
        keep[removed] = False
        kept = keep.nonzero().squeeze(1)  # [I']
        slice_linear_(mlp.gate_proj, rows=kept)
        slice_linear_(mlp.up_proj, rows=kept)
        slice_linear_(mlp.down_proj, cols=kept)
        mlp.intermediate_size = kept.numel()
    update_config_if_uniform(model)
