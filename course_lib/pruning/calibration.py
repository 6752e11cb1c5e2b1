"""Calibration data for post-training pruning, and the layer-by-layer driver.

Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023) prune a trained model
without retraining. Both need statistics of the *inputs* ``X`` of every linear layer
on a few calibration sequences: Wanda the per-channel norms ``||X_j||_2``, SparseGPT
the Gram matrix ``H = 2 X X^T``. Both papers gather them **layer by layer**, which is
what lets a 7B model be pruned on one GPU: only one decoder layer is ever on the GPU.

The driver (:func:`layerwise_prune`) does::

    capture the inputs of decoder layer 0 (hidden states + the kwargs the layer gets:
        position_embeddings, attention mask, position_ids, ...) for every calibration batch
    for each decoder layer i:
        move layer i to `device`
        run it on its inputs with forward hooks on its linears -> per-linear statistics
        prune each linear from its statistics (may also update the kept weights)
        rerun the (now pruned) layer: its outputs are the inputs of layer i + 1
        move layer i back to where it was

So layer i + 1 is calibrated on the outputs of the *pruned* layers before it, as in
both reference implementations. Within a layer all linears are calibrated in one pass
on the unpruned layer (the references' default; no "true-sequential" option here).

The kwargs are recorded once per layer and batch by running the model's own forward
with every decoder layer replaced by a recorder (no layer is computed), so whatever
each layer receives in the installed transformers version -- including a different
attention mask for sliding-window layers (Qwen2, Mistral) -- is passed on unchanged.

Calibration batches are dicts ``{"input_ids": LongTensor[B, T]}`` with an optional
``"attention_mask": [B, T]`` (0 = padding); padded tokens are left out of every
statistic.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from ..model import check_llama_layout, prunable_linears
from .common import check_nm, check_sparsity


def check_pattern(sparsity=None, n=None, m=None) -> tuple[float | None, int | None, int | None]:
    """Validate "exactly one of ``sparsity`` (unstructured) or ``n``, ``m`` (N:M)"."""
    if sparsity is None and n is None and m is None:
        raise ValueError("give either sparsity (unstructured, a float in [0, 1)) or n and m (N:M, e.g. n=2, m=4)")
    if sparsity is not None:
        if n is not None or m is not None:
            raise ValueError(f"give either sparsity or n and m, not both (got sparsity={sparsity}, n={n}, m={m})")
        return check_sparsity(sparsity), None, None
    if n is None or m is None:
        raise ValueError(f"N:M sparsity needs both n and m (got n={n}, m={m})")
    n, m = check_nm(n, m)
    return None, n, m


# ----------------------------------------------------------------------------- batches

def check_calib_batches(calib_batches) -> list[dict]:
    """Validate calibration batches -> a list of ``{"input_ids": [B, T], ("attention_mask": [B, T])}``."""
    if isinstance(calib_batches, dict) or isinstance(calib_batches, torch.Tensor):
        raise TypeError("calib_batches must be a list of batches {'input_ids': LongTensor[B, T]}, "
                        f"not a single {type(calib_batches).__name__}")
    batches = list(calib_batches)
    if not batches:
        raise ValueError("calib_batches is empty: give at least one batch {'input_ids': LongTensor[B, T]}")
    for i, batch in enumerate(batches):
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise TypeError(f"calibration batch {i} must be a dict with 'input_ids', got {type(batch).__name__}")
        ids = batch["input_ids"]
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise TypeError(f"batch {i}: input_ids must be a LongTensor [batch, seq_len], got "
                            f"{getattr(ids, 'dtype', type(ids).__name__)} of shape {tuple(getattr(ids, 'shape', ()))}")
        am = batch.get("attention_mask")
        if am is not None and (not isinstance(am, torch.Tensor) or am.shape != ids.shape):
            raise ValueError(f"batch {i}: attention_mask must be a tensor of the input_ids shape {tuple(ids.shape)}")
        extra = set(batch) - {"input_ids", "attention_mask"}
        if extra:
            raise ValueError(f"batch {i}: unexpected keys {sorted(extra)}; allowed: 'input_ids', 'attention_mask'")
    return batches


def _token_mask(batch) -> torch.Tensor | None:
    """[B * T] bool of the real (non-padding) tokens, or None when nothing is padded."""
    am = batch.get("attention_mask")
    return None if am is None else am.reshape(-1).bool()


def _flat_inputs(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """A linear's input [..., in] -> [N, in] over the real tokens."""
    x = x.reshape(-1, x.shape[-1])
    if token_mask is not None:
        x = x[token_mask.to(x.device)]
    return x


# ----------------------------------------------------------------------------- statistics

class LinearStats(Protocol):
    def add(self, x: torch.Tensor) -> None:
        """Accumulate a linear's inputs ``x`` [N, in_features] (N tokens)."""


class ChannelNormStats:
    """Running ``sum_n x[n, j]^2`` per input channel (float32) -> ``norms()`` = ``||X_j||_2``."""

    def __init__(self, in_features: int, device=None):
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)  # [in]
        self.n_tokens = 0

    def add(self, x: torch.Tensor) -> None:  # x: [N, in]
        self.sum_sq += x.float().pow(2).sum(0).to(self.sum_sq.device)
        self.n_tokens += x.shape[0]

    def norms(self) -> torch.Tensor:  # [in]
        return self.sum_sq.sqrt()


class HessianStats:
    """``H = (2 / N) sum_n x_n x_n^T`` [in, in] in float32 (a running mean, as in SparseGPT).

    The 1/N scale does not change SparseGPT's result: dampening is relative to mean(diag H).
    """

    def __init__(self, in_features: int, device=None):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n_tokens = 0

    def add(self, x: torch.Tensor) -> None:  # x: [N, in]
        n_new = x.shape[0]
        if n_new == 0:
            return
        x = x.float().to(self.H.device)
        total = self.n_tokens + n_new
        self.H *= self.n_tokens / total
        x = x * (2.0 / total) ** 0.5
        self.H += x.T @ x
        self.n_tokens = total


# ----------------------------------------------------------------------------- one full pass

@torch.no_grad()
def input_channel_norms(model: nn.Module, calib_batches, targets=None) -> dict[str, torch.Tensor]:
    """``{name: ||X_j||_2 [in_features]}`` per target linear, over all calibration tokens.

    One ordinary forward pass of the (unpruned) model per batch, where it is; the norm runs
    over every real token of every batch (padding excluded), per input channel ``j``.
    Returned in float32 on each weight's device. (``wanda_prune`` gathers the same statistic
    layer by layer, i.e. on the outputs of the already pruned layers.)
    """
    batches = check_calib_batches(calib_batches)
    linears = prunable_linears(model, targets)
    stats = {name: ChannelNormStats(mod.in_features, mod.weight.device) for name, mod in linears.items()}
    state = {"token_mask": None}

    def hook(name):
        def fn(module, inputs, output):
            stats[name].add(_flat_inputs(inputs[0], state["token_mask"]))
        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, mod in linears.items()]
    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device
    try:
        for batch in batches:
            state["token_mask"] = _token_mask(batch)
            am = batch.get("attention_mask")
            model(input_ids=batch["input_ids"].to(device),
                  attention_mask=None if am is None else am.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: s.norms() for name, s in stats.items()}


# ----------------------------------------------------------------------------- layer by layer

class _StopForward(Exception):
    pass


def _module_device(module: nn.Module):
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return None if t is None else t.device


def _resolve_device(model, device) -> torch.device:
    if device is None:
        return _module_device(model.model.layers[0]) or torch.device("cpu")
    return torch.device(device)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, calib_batches, device=None):
    """Inputs of decoder layer 0 and every layer's other arguments, per calibration batch.

    Returns ``(hidden, layer_args)``: ``hidden[b]`` [B, T, hidden] is the input of layer 0
    for batch b (on ``device``) and ``layer_args[i][b] = (args, kwargs)`` what layer i gets
    besides its hidden states (position_embeddings, attention mask, position_ids, ...).

    The model's forward runs with each decoder layer replaced by a recorder that passes its
    hidden states through; the last one stops the forward. Only the modules outside the
    decoder layers (embeddings, rotary embedding, final norm) visit ``device``.
    """
    check_llama_layout(model)
    batches = check_calib_batches(calib_batches)
    device = _resolve_device(model, device)
    layers = model.model.layers
    n_layers = len(layers)
    hidden: list[torch.Tensor] = []
    layer_args: list[list] = [[] for _ in range(n_layers)]

    def recorder(i):
        def forward(hidden_states, *args, **kwargs):
            if i == 0:
                hidden.append(hidden_states)
            layer_args[i].append((args, kwargs))
            if i == n_layers - 1:
                raise _StopForward
            return hidden_states
        return forward

    others = {name: mod for name, mod in model.model.named_children() if name != "layers"}
    home = {name: _module_device(mod) for name, mod in others.items()}
    patched = {}
    was_training = model.training
    model.eval()
    try:
        for mod in others.values():
            mod.to(device)
        for i, layer in enumerate(layers):
            if "forward" in layer.__dict__:  # e.g. an accelerate hook: put it back afterwards
                patched[i] = layer.__dict__["forward"]
            layer.forward = recorder(i)  # instance attribute shadows the class's forward
        for batch in batches:
            am = batch.get("attention_mask")
            try:
                model.model(input_ids=batch["input_ids"].to(device),
                            attention_mask=None if am is None else am.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for i, layer in enumerate(layers):
            if i in patched:
                layer.forward = patched[i]
            elif "forward" in layer.__dict__:
                del layer.forward
        for name, mod in others.items():
            if home[name] is not None:
                mod.to(home[name])
        model.train(was_training)
    if any(len(a) != len(batches) for a in layer_args):
        raise RuntimeError("could not record the inputs of every decoder layer: the model's forward does "
                           "not call model.model.layers in order")
    return hidden, layer_args


def _run_layer(layer, hidden_states, args, kwargs) -> torch.Tensor:
    out = layer(hidden_states, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # v5 layers return a tensor


def _layer_linears(model, targets, index) -> dict[str, nn.Linear]:
    prefix = f"model.layers.{index}."
    return {name: mod for name, mod in prunable_linears(model, targets).items() if name.startswith(prefix)}


@torch.no_grad()
def layerwise_prune(
    model: nn.Module,
    calib_batches,
    make_stats: Callable[[nn.Linear], LinearStats],
    prune_linear: Callable[[str, nn.Linear, LinearStats], torch.Tensor],
    targets=None,
    device=None,
    progress: bool = False,
    on_layer_outputs: Callable[[int, list], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune the target linears one decoder layer at a time (see module doc) -> masks.

    ``make_stats(linear)`` gives a statistics object with ``add(x [N, in])``;
    ``prune_linear(name, linear, stats)`` prunes ``linear.weight`` in place (it is on
    ``device`` then) and returns its keep-mask. ``device=None`` works where layer 0 is.
    ``on_layer_outputs(i, outputs)`` (optional) sees each layer's outputs (one
    [B, T, hidden] tensor per batch) after it is pruned. Masks end on their weight's device.
    """
    check_llama_layout(model)
    all_targets = prunable_linears(model, targets)
    n_layers = len(model.model.layers)
    in_layers = set().union(*(_layer_linears(model, targets, i) for i in range(n_layers)))
    outside = sorted(set(all_targets) - in_layers)
    if outside:
        raise ValueError(f"layer-by-layer pruning covers decoder-layer linears only; {outside} are outside "
                         "model.model.layers")
    batches = check_calib_batches(calib_batches)
    device = _resolve_device(model, device)
    hidden, layer_args = capture_layer_inputs(model, batches, device)
    token_masks = [_token_mask(b) for b in batches]
    masks: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    steps = range(n_layers)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="layers")
    try:
        for i in steps:
            layer = model.model.layers[i]
            home = _module_device(layer)
            layer.to(device)
            linears = _layer_linears(model, targets, i)
            if linears:
                stats = {name: make_stats(mod) for name, mod in linears.items()}
                state = {"token_mask": None}

                def hook(name):
                    def fn(module, inputs, output):
                        stats[name].add(_flat_inputs(inputs[0], state["token_mask"]))
                    return fn

                handles = [mod.register_forward_hook(hook(name)) for name, mod in linears.items()]
                try:
                    for b, h in enumerate(hidden):
                        state["token_mask"] = token_masks[b]
                        _run_layer(layer, h, *layer_args[i][b])
                finally:
                    for handle in handles:
                        handle.remove()
                for name, mod in linears.items():
                    mask = prune_linear(name, mod, stats[name])
                    if mask.dtype != torch.bool or mask.shape != mod.weight.shape:
                        raise RuntimeError(f"prune_linear returned a {mask.dtype} mask of shape "
                                           f"{tuple(mask.shape)} for {name}; need bool {tuple(mod.weight.shape)}")
                    masks[name] = mask
                del stats
            hidden = [_run_layer(layer, h, *layer_args[i][b]) for b, h in enumerate(hidden)]
            if on_layer_outputs is not None:
                on_layer_outputs(i, hidden)
            if home is not None:
                layer.to(home)
            for name, mod in linears.items():
                masks[name] = masks[name].to(mod.weight.device)
    finally:
        model.train(was_training)
    return masks


@torch.no_grad()
def layerwise_hidden_states(model: nn.Module, calib_batches, device=None) -> list[list[torch.Tensor]]:
    """Run the driver without pruning -> ``outs[i][b]``, layer i's output [B, T, hidden] on batch b.

    For an unpruned model these equal ``model(..., output_hidden_states=True).hidden_states[i + 1]``
    (whose last entry has the final norm applied). Outputs are returned on the CPU.
    """
    outs: list[list[torch.Tensor]] = []
    layerwise_prune(model, calib_batches, make_stats=None, prune_linear=None, targets=[], device=device,
                    on_layer_outputs=lambda i, hs: outs.append([h.cpu() for h in hs]))
    return outs
