"""Give a Llama-family model outlier features without changing what it computes.

Large LLMs carry a few hidden dimensions whose activations are far larger than the rest
(Dettmers et al. 2022, "LLM.int8()", arXiv:2208.07339: they become systematic from about
6.7B parameters). Wanda (Sun et al. 2023) was designed around them. A small model such as
the course model has none: its input-channel norms are nearly flat (notebook 07, section 1).

:func:`add_outlier_features` creates such dimensions by a *function-preserving
reparametrisation*. In every decoder layer, for each chosen hidden dimension ``j``:

* the RMSNorm weights that feed the linears (``input_layernorm`` -> q/k/v,
  ``post_attention_layernorm`` -> gate/up) are multiplied by ``scale`` at ``j``;
* column ``j`` of each of those linears is divided by ``scale``.

A linear sees ``W[:, j] * x[j]``. After the change it sees ``(W[:, j] / s) * (s * x[j])``, the
same product, so the logits are unchanged up to rounding. Two pruning scores react
differently:

* magnitude ``|W_ij|`` now finds column ``j`` tiny and removes it first;
* Wanda ``|W_ij| * ||X_j||`` is unchanged, because the two factors of ``s`` cancel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .model import check_llama_layout, decoder_layers
from .pruning.common import check_indices

# norm -> the linears that read its output, in a Llama decoder layer
NORM_READERS = {"input_layernorm": ("self_attn", ("q_proj", "k_proj", "v_proj")),
                "post_attention_layernorm": ("mlp", ("gate_proj", "up_proj"))}


def _check_channels(channels, hidden: int) -> list[int]:
    if isinstance(channels, (list, tuple)) and not channels:
        raise ValueError("channels is empty: name at least one hidden dimension")
    channels = check_indices(channels, hidden, "channels", f"hidden dimensions are 0..{hidden - 1}")
    if not channels:
        raise ValueError("channels is empty: name at least one hidden dimension")
    return channels


@torch.no_grad()
def add_outlier_features(model: nn.Module, channels, scale: float = 20.0) -> nn.Module:
    """Scale hidden dimensions ``channels`` up by ``scale`` wherever a linear reads them after
    an RMSNorm, and that linear's columns down by ``scale`` (in place; returns ``model``).

    ``channels``: list of hidden-dimension indices (or a 1-d integer tensor); ``scale``: a
    finite float > 0 (``> 1`` makes outliers). The model computes the same function
    afterwards: logits agree to float rounding.
    """
    check_llama_layout(model)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    hidden = model.config.hidden_size
    channels = _check_channels(channels, hidden)
    plan = []  # checked for every layer first: a bad model is rejected before anything changes
    for i, layer in enumerate(decoder_layers(model)):
        for norm_name, (block_name, linear_names) in NORM_READERS.items():
            weight = getattr(getattr(layer, norm_name, None), "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.shape != (hidden,):
                raise ValueError(f"layer {i}: {norm_name} has no weight of shape ({hidden},); "
                                 "add_outlier_features needs Llama-style RMSNorms (weight * normalised x)")
            block = getattr(layer, block_name)
            plan.append((weight, [getattr(block, name).weight for name in linear_names]))
    for norm_weight, linear_weights in plan:
        norm_weight[channels] *= scale
        for weight in linear_weights:
            weight[:, channels] /= scale
    return model
