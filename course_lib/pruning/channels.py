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

    def accumulate(i, a):  # a: [B*T, I]
        sums[i] += a.abs().sum(dim=0, dtype=torch.float64).cpu()
        counts[i] += a.shape[0]

    _for_each_down_input(model, batches, accumulate)
    return pad_rows([s / c for s, c in zip(sums, counts)])


def _for_each_down_input(model: nn.Module, batches, fn) -> None:
    """Run the batches (no grad, eval mode) and call ``fn(layer, a)`` with every ``down_proj`` input.

    ``a`` is ``[B*T, I]`` in the model's dtype: the SwiGLU channels of layer ``layer``.
    """
    def hook_for(i):
        def hook(module, args):
            fn(i, args[0].detach().reshape(-1, args[0].shape[-1]))

        return hook

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook_for(i))
               for i, layer in enumerate(model.model.layers)]
    try:
        with _EvalMode(model), torch.no_grad():
            for batch in batches:
                lm_loss(model, batch)
    finally:
        for h in handles:
            h.remove()


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


# ----------------------------------------------------------------------------------
# Bias compensation (FLAP: An et al. 2024, "Fluctuation-based Adaptive Structured Pruning
# for Large Language Models", AAAI, arXiv:2312.11983)
#
# Removing channel j sets a_j to 0, an error of down_proj.weight[:, j] * a_j on every token.
# Replacing a_j by its calibration mean m_j instead leaves only the fluctuation around the
# mean, and the constant part folds into down_proj's bias once the channel is gone:
#
#     sum_{j removed} W[:, j] * m_j  =  W[:, R] @ m[R]                  # [hidden]
#
# On the calibration tokens this is the constant that minimises the squared output error
# (the mean), so the error drops by exactly ||W[:, R] @ m[R]||^2 per token.
#
# Where the bias goes: Llama's MLP builds its linears with ``bias=config.mlp_bias``, so the
# compensated Llama gets ``config.mlp_bias = True`` and a bias on gate/up/down of *every*
# layer (zero on gate/up and on uncompensated layers): the config then describes the model,
# and ``save_pretrained``/``from_pretrained`` round-trip it. Mistral's and Qwen2's MLPs have
# no bias option (always ``bias=False``): their compensated ``down_proj`` gets a bias, which
# ``course_lib.pruning.save_pruned`` records per layer (``"down_proj_bias": true``) and
# ``load_pruned`` restores; plain ``from_pretrained`` would drop it (with transformers'
# "unexpected keys" report), so save such models with ``save_pruned``.


def _down_input_moments(model: nn.Module, batches) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Per layer: float64 sums of ``a`` and ``a**2`` over every token at the input of
    ``down_proj`` (``[I]`` each), and the token count."""
    sizes = channels_per_layer(model)
    batches = check_batches(batches)
    sums = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    squares = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    counts = [0] * len(sizes)

    def accumulate(i, a):  # a: [B*T, I]
        a = a.double()
        sums[i] += a.sum(dim=0).cpu()
        squares[i] += a.pow(2).sum(dim=0).cpu()
        counts[i] += a.shape[0]

    _for_each_down_input(model, batches, accumulate)
    return sums, squares, counts


def channel_means(model: nn.Module, batches) -> torch.Tensor:
    """Mean of every FFN channel ``a_j`` over every token of ``batches``: float32
    ``[layers, intermediate]`` on CPU (NaN-padded like :func:`channel_importance`).

    The baseline that :func:`remove_ffn_channels_compensated` folds into ``down_proj``'s bias.
    """
    sums, _, counts = _down_input_moments(model, batches)
    return pad_rows([s / c for s, c in zip(sums, counts)])


def channel_fluctuation(model: nn.Module, batches) -> torch.Tensor:
    """FLAP's fluctuation score of every FFN channel: float32 ``[layers, intermediate]`` (higher = keep).

    ``S_j = var_t(a_j) * ||down_proj.weight[:, j]||^2``, the sample variance (``N - 1``) over
    every token of ``batches``: the output error left when ``a_j`` is replaced by its mean,
    i.e. what removing the channel costs *after* bias compensation (An et al. 2024).
    """
    sums, squares, counts = _down_input_moments(model, batches)
    rows = []
    for s, q, n, layer in zip(sums, squares, counts, model.model.layers):
        if n < 2:
            raise ValueError(f"channel_fluctuation needs at least 2 tokens, got {n}")
        var = ((q - s * s / n) / (n - 1)).clamp_min(0.0)  # [I]
        rows.append(var * layer.mlp.down_proj.weight.detach().double().pow(2).sum(dim=0).cpu())
    return pad_rows(rows)


def _check_means(model: nn.Module, channels: dict, means) -> tuple[dict[int, list[int]], torch.Tensor]:
    sizes = channels_per_layer(model)
    channels = check_index_dict(channels, sizes, "channels")
    if not isinstance(means, torch.Tensor) or not means.dtype.is_floating_point:
        raise TypeError("means must be a float tensor [layers, intermediate] (from channel_means)")
    if means.dim() != 2 or means.shape[0] != len(sizes) or means.shape[1] < max(sizes):
        raise ValueError(
            f"means has shape {tuple(means.shape)}, the model needs [{len(sizes)}, {max(sizes)}]: "
            "compute it with channel_means on the model as it is now"
        )
    for i in channels:
        if not torch.isfinite(means[i, :sizes[i]]).all():
            raise ValueError(f"means[{i}] has NaN/inf entries among the layer's {sizes[i]} channels")
    return channels, means.detach().cpu()


@torch.no_grad()
def compensation_biases(model: nn.Module, channels: dict[int, list[int]],
                        means: torch.Tensor) -> dict[int, torch.Tensor]:
    """The plan: ``{layer: down_proj.weight[:, removed] @ means[layer, removed]}`` (``[hidden]``,
    float32 on CPU), the removed channels' mean contribution, for every layer in ``channels``."""
    channels, means = _check_means(model, channels, means)
    out = {}
    for i, removed in channels.items():
        w = model.model.layers[i].mlp.down_proj.weight.detach().double().cpu()  # [hidden, I]
        idx = torch.tensor(removed, dtype=torch.long)
        out[i] = (w[:, idx] @ means[i, idx].double()).float()
    return out


class ChannelFill:
    """Forward pre-hooks on ``down_proj`` that replace the given channels by constants:
    ``a_j := fill[layer][j]``. The *masked oracle* of a compensated removal."""

    def __init__(self, model: nn.Module, channels: dict[int, list[int]], means: torch.Tensor):
        channels, means = _check_means(model, channels, means)
        sizes = channels_per_layer(model)
        self._handles = []
        for i, removed in channels.items():
            keep = torch.ones(sizes[i], dtype=torch.bool)
            keep[removed] = False
            fill = torch.where(keep, torch.zeros(()), means[i, :sizes[i]].float())  # [I]
            down = model.model.layers[i].mlp.down_proj
            self._handles.append(down.register_forward_pre_hook(self._hook(keep, fill)))

    @staticmethod
    def _hook(keep: torch.Tensor, fill: torch.Tensor):
        def hook(module, args):
            x = args[0]  # [B, T, I]
            k, f = keep.to(x.device), fill.to(device=x.device, dtype=x.dtype)
            return (torch.where(k, x, f),) + tuple(args[1:])

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "ChannelFill":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def channel_mean_mask(model: nn.Module, channels: dict[int, list[int]], means: torch.Tensor) -> ChannelFill:
    """Channels ``{layer: [channel, ...]}`` replaced by their ``means`` (from :func:`channel_means`):
    what :func:`remove_ffn_channels_compensated` must reproduce. ``with channel_mean_mask(...): ...``."""
    return ChannelFill(model, channels, means)


def _zero_bias(linear: nn.Linear) -> None:
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=w.dtype, device=w.device),
                                   requires_grad=w.requires_grad)


@torch.no_grad()
def remove_ffn_channels_compensated(model: nn.Module, channels: dict[int, list[int]],
                                    means: torch.Tensor) -> dict[int, torch.Tensor]:
    """Remove FFN channels like :func:`remove_ffn_channels` and add their mean contribution
    (:func:`compensation_biases`) to ``down_proj``'s bias, in place; returns the added biases.

    The result computes what :func:`channel_mean_mask` computes. Where the bias lives per
    architecture (``config.mlp_bias`` for Llama, a recorded ``down_proj`` bias otherwise)
    is explained above this function in the source and in the course notes. Raises like
    :func:`remove_ffn_channels`, and for ``means`` of the wrong shape or with NaN; nothing
    is changed when it raises.
    """
    biases = compensation_biases(model, channels, means)  # validates; reads the columns before they go
    remove_ffn_channels(model, channels)
    layers = model.model.layers
    if hasattr(model.config, "mlp_bias"):  # Llama: the config can say "MLP linears have biases"
        model.config.mlp_bias = True
        for layer in layers:
            for name in ("gate_proj", "up_proj", "down_proj"):
                _zero_bias(getattr(layer.mlp, name))
    for i, b in biases.items():
        down = layers[i].mlp.down_proj
        _zero_bias(down)
        down.bias.add_(b.to(device=down.bias.device, dtype=down.bias.dtype))
    return biases
