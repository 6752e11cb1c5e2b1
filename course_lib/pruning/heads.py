"""Attention-head pruning: score heads, ablate them with gates, then cut them out.

Michel, Levy & Neubig (2019), "Are Sixteen Heads Really Better than One?" (NeurIPS).

The output of an attention layer is ``o_proj`` applied to the concatenated heads::

    attn_out = o_proj([head_0 | head_1 | ... | head_{H-1}])      # each head_h: [B, T, D]
             = sum_h o_proj.weight[:, h*D:(h+1)*D] @ head_h  (+ bias)

so multiplying ``head_h`` by a gate ``xi_h`` scales exactly that head's contribution.
``xi_h = 0`` ablates the head; Michel et al. score a head by the sensitivity of the
loss to its gate at ``xi = 1``::

    I_h = sum over batches | dL / d xi_h |        (a first-order Taylor estimate of
                                                   the loss change when the head goes)

Scores (``head_importance``): ``"gradient"`` (Michel), ``"ablation"`` (measured loss
increase when the one head is gated off) and ``"norm"`` (the Frobenius norm of the
head's ``o_proj`` columns: how strongly the head can write into the residual stream).

Physical removal (``remove_heads``) slices the head's rows out of ``q_proj`` (and its
bias) and its columns out of ``o_proj``. With grouped-query attention (GQA) ``H`` query
heads share ``K`` key/value heads: query head ``h`` reads KV head ``h // (H // K)``, and
the attention code repeats each KV head ``num_key_value_groups = H // K`` times. That
repetition is one number per layer, so after pruning every remaining KV group must keep
the *same* number of query heads. Allowed per layer:

* remove whole KV groups (all their query heads; ``k_proj``/``v_proj`` rows go too);
* remove the same number of query heads from every group;
* any mix of the two that leaves every remaining group with the same number of heads.

Anything else raises ``ValueError``. With plain multi-head attention (``K == H``) every
head is its own group, so any subset can go. After removal the pruned model computes
exactly what the gated model (gates 0 on the removed heads) computes, with fewer FLOPs.

Shapes: ``B`` batch, ``T`` tokens, ``H`` query heads, ``K`` KV heads, ``D`` head_dim.
"""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import nn

from ..model import check_llama_layout
from .common import check_indices

HEAD_METHODS = ("gradient", "ablation", "norm")


# ----------------------------------------------------------------------------------
# Shared helpers (also used by channels.py and structure.py)


def check_batches(batches) -> list[dict[str, torch.Tensor]]:
    """Validate calibration batches: a non-empty list of ``{"input_ids": LongTensor[B, T]}``."""
    if isinstance(batches, dict) or not isinstance(batches, (list, tuple)):
        raise TypeError(
            f"batches must be a list of dicts {{'input_ids': LongTensor[B, T]}}, got {type(batches).__name__}"
        )
    if len(batches) == 0:
        raise ValueError("batches is empty: give at least one {'input_ids': LongTensor[B, T]} batch")
    for i, batch in enumerate(batches):
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise TypeError(f"batch {i} must be a dict with key 'input_ids', got {type(batch).__name__}")
        extra = set(batch) - {"input_ids"}
        if extra:
            raise ValueError(f"batch {i} has keys {sorted(extra)}: only 'input_ids' is used (labels = input_ids)")
        ids = batch["input_ids"]
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"batch {i}: input_ids must be an integer (long) torch.Tensor")
        if ids.dim() != 2 or ids.shape[1] < 2:
            raise ValueError(f"batch {i}: input_ids must be [batch, seq] with seq >= 2, got {tuple(ids.shape)}")
    return list(batches)


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on one batch (a 0-d tensor)."""
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device=device, dtype=torch.long)  # [B, T]
    return model(input_ids=ids, labels=ids).loss


class _EvalMode:
    """Context manager: the model in eval mode (no dropout), its former mode restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def check_index_dict(indices, sizes: list[int], what: str) -> dict[int, list[int]]:
    """Validate ``{layer: [index, ...]}``: layers in ``range(len(sizes))``, indices in
    ``range(sizes[layer])``, no duplicates. Returns ``{layer: sorted indices}``."""
    if not isinstance(indices, dict):
        raise TypeError(f"{what} must be a dict {{layer: [index, ...]}}, got {type(indices).__name__}")
    out = {}
    for layer, idx in indices.items():
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"{what}: layer keys must be ints, got {layer!r}")
        layer = int(layer)
        if not 0 <= layer < len(sizes):
            raise ValueError(
                f"{what}: layer {layer} out of range, the model has {len(sizes)} layers (0..{len(sizes) - 1})"
            )
        idx = check_indices(idx, sizes[layer], f"{what}[{layer}]",
                            f"layer {layer} has {sizes[layer]} (0..{sizes[layer] - 1})")
        if idx:
            out[layer] = sorted(idx)
    return out


def check_not_reparametrized(linear: nn.Linear, name: str) -> None:
    """Physical slicing needs plain weights (no torch.nn.utils.prune / parametrize wrappers)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(linear) or hasattr(linear, "weight_orig"):
        raise ValueError(
            f"{name} carries a pruning re-parametrization (weight_orig/parametrizations): call "
            "torch.nn.utils.prune.remove / parametrize.remove_parametrizations before removing structure"
        )


@torch.no_grad()
def slice_linear_(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (output features) and/or ``cols`` (input features) of ``linear``, in place.

    The module object stays the same (hooks registered on it stay); its parameters are new.
    """
    weight = linear.weight  # [out, in]
    w = weight
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    linear.weight = nn.Parameter(w.clone(), requires_grad=weight.requires_grad)
    linear.out_features, linear.in_features = w.shape
    if linear.bias is not None and rows is not None:
        bias = linear.bias  # [out]
        linear.bias = nn.Parameter(bias.index_select(0, rows.to(bias.device)).clone(), requires_grad=bias.requires_grad)


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack 1-D score tensors into ``[layers, max_len]`` float32 on CPU, padding with NaN.

    Only layers pruned to different sizes need padding; NaN sorts last in ``torch.sort``.
    """
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), float("nan"))
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.detach().float().cpu()
    return out


class InputGates:
    """Float gates on the input features of one linear per layer, in groups of ``group_size``.

    ``gates[i]`` is a float32 tensor ``[n_i]``; the forward pre-hook multiplies the
    linear's input ``[..., n_i * group_size]`` by ``gates[i].repeat_interleave(group_size)``.
    All gates start at 1, so the gated model computes exactly what the plain model does.
    Use as a context manager, or call :meth:`remove` to take the hooks off.
    """

    def __init__(self, linears: list[nn.Linear], sizes: list[int], group_size: int, kind: str):
        self.group_size = group_size
        self.kind = kind
        self.gates = [torch.ones(n, dtype=torch.float32, device=lin.weight.device) for lin, n in zip(linears, sizes)]
        self._handles = [lin.register_forward_pre_hook(self._hook(i)) for i, lin in enumerate(linears)]

    def _hook(self, i: int):
        def hook(module, args):
            x = args[0]  # [B, T, n * group_size]
            gate = self.gates[i]
            if x.shape[-1] != gate.numel() * self.group_size:
                raise RuntimeError(
                    f"{self.kind} gates of layer {i} have {gate.numel()} entries but the layer now has "
                    f"{x.shape[-1] // self.group_size}: the model was reshaped after the gates were added; "
                    "remove these gates and add new ones"
                )
            scale = gate.to(device=x.device, dtype=x.dtype).repeat_interleave(self.group_size)  # [n * group]
            return (x * scale,) + tuple(args[1:])

        return hook

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.gates[layer]

    def __len__(self) -> int:
        return len(self.gates)

    def __iter__(self):
        return iter(self.gates)

    def requires_grad_(self, flag: bool = True) -> "InputGates":
        for g in self.gates:
            g.requires_grad_(flag)
        return self

    @torch.no_grad()
    def fill_(self, value: float = 1.0) -> "InputGates":
        for g in self.gates:
            g.fill_(value)
        return self

    @torch.no_grad()
    def zero_(self, indices: dict[int, list[int]]) -> "InputGates":
        """Set the gates ``{layer: [index, ...]}`` to 0 (validated like a removal)."""
        for layer, idx in check_index_dict(indices, [g.numel() for g in self.gates], self.kind).items():
            self.gates[layer][idx] = 0.0
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "InputGates":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# ----------------------------------------------------------------------------------
# Attention shapes


def attention_shape(attn: nn.Module) -> tuple[int, int, int]:
    """``(H, K, D)`` of one attention module, read off its weights (and checked)."""
    d = attn.head_dim
    h, rem_q = divmod(attn.q_proj.out_features, d)
    k, rem_k = divmod(attn.k_proj.out_features, d)
    if rem_q or rem_k or attn.v_proj.out_features != k * d or attn.o_proj.in_features != h * d or k == 0:
        raise ValueError(
            f"inconsistent attention shapes: q_proj {attn.q_proj.out_features}, k_proj {attn.k_proj.out_features}, "
            f"v_proj {attn.v_proj.out_features}, o_proj in {attn.o_proj.in_features}, head_dim {d}"
        )
    if h != k * attn.num_key_value_groups:
        raise ValueError(f"{h} query heads but {k} KV heads x num_key_value_groups={attn.num_key_value_groups}")
    return h, k, d


def set_attention_heads(attn: nn.Module, n_heads: int, n_kv_heads: int) -> None:
    """Update the attributes the attention forward reads after its head count changed.

    transformers v5 reads ``num_key_value_groups`` (repeat_kv / sdpa GQA) and ``head_dim``
    (unchanged by head pruning); older versions also had ``num_heads`` and ``num_key_value_heads``.
    """
    attn.num_key_value_groups = n_heads // n_kv_heads
    for name, value in (("num_heads", n_heads), ("num_attention_heads", n_heads), ("num_key_value_heads", n_kv_heads)):
        if hasattr(attn, name):
            setattr(attn, name, value)


def heads_per_layer(model: nn.Module) -> list[int]:
    """Number of query heads of every decoder layer."""
    check_llama_layout(model)
    return [attention_shape(layer.self_attn)[0] for layer in model.model.layers]


# ----------------------------------------------------------------------------------
# Gates


def add_head_gates(model: nn.Module) -> InputGates:
    """Per-head gates ``gates[layer]: float32 [H_layer]`` (all 1) on every layer's ``o_proj`` input.

    Set a gate to 0 (under ``torch.no_grad()`` or with ``gates.zero_({layer: [heads]})``)
    to ablate that head; call ``gates.requires_grad_()`` and backpropagate to get
    ``dL/d gate``. Remove with ``gates.remove()`` or use ``with head_gates(model) as gates:``.
    """
    check_llama_layout(model)
    layers = model.model.layers
    dims = {layer.self_attn.head_dim for layer in layers}
    if len(dims) != 1:
        raise ValueError(f"layers have different head_dim {sorted(dims)}; course_lib expects one head_dim")
    linears = [layer.self_attn.o_proj for layer in layers]
    return InputGates(linears, heads_per_layer(model), group_size=dims.pop(), kind="head")


head_gates = add_head_gates  # ``with head_gates(model) as gates: ...`` reads better


def head_mask(model: nn.Module, heads: dict[int, list[int]]) -> InputGates:
    """Gates with the given heads ``{layer: [head, ...]}`` set to 0: the *masked oracle*
    that :func:`remove_heads` must reproduce. Use as ``with head_mask(model, heads): ...``."""
    gates = add_head_gates(model)
    try:
        gates.zero_(heads)
    except Exception:
        gates.remove()
        raise
    return gates


# ----------------------------------------------------------------------------------
# Scores


def head_importance(model: nn.Module, batches, method: str = "gradient") -> torch.Tensor:
    """Importance of every query head: float32 ``[layers, heads]`` on CPU (higher = keep).

    * ``"gradient"`` (Michel et al.): ``sum over batches |dL/d gate_h|`` at gates = 1.
    * ``"ablation"``: ``loss(head h gated off) - loss(all heads)``, the loss being the mean
      over ``batches`` of the mean next-token loss (one forward per head and batch).
    * ``"norm"``: Frobenius norm of the head's ``o_proj`` columns ``[:, h*D:(h+1)*D]``
      (needs no data; ``batches`` may be None).

    ``batches``: list of ``{"input_ids": LongTensor[B, T]}``. Layers pruned to fewer heads
    than others are padded with NaN on the right.
    """
    check_llama_layout(model)
    if method not in HEAD_METHODS:
        raise ValueError(f"method must be one of {HEAD_METHODS}, got {method!r}")
    layers = model.model.layers
    if method == "norm":
        rows = []
        for layer in layers:
            h, _, d = attention_shape(layer.self_attn)
            w = layer.self_attn.o_proj.weight.detach().float()  # [hidden, H*D]
            rows.append(w.view(w.shape[0], h, d).pow(2).sum(dim=(0, 2)).sqrt())  # [H]
        return pad_rows(rows)

    batches = check_batches(batches)
    with _EvalMode(model), head_gates(model) as gates:
        if method == "gradient":
            gates.requires_grad_(True)
            totals = [torch.zeros_like(g) for g in gates]
            for batch in batches:
                grads = torch.autograd.grad(lm_loss(model, batch), list(gates))
                for t, g in zip(totals, grads):
                    t += g.abs()
            return pad_rows(totals)

        # ablation
        with torch.no_grad():

            def mean_loss() -> float:
                return sum(lm_loss(model, b).float().item() for b in batches) / len(batches)

            base = mean_loss()
            rows = []
            for layer_gates in gates:
                row = torch.zeros(layer_gates.numel())
                for h in range(layer_gates.numel()):
                    layer_gates[h] = 0.0
                    row[h] = mean_loss() - base
                    layer_gates[h] = 1.0
                rows.append(row)
        return pad_rows(rows)


# ----------------------------------------------------------------------------------
# Removal


def _plan_layer(layer_idx: int, n_heads: int, n_kv: int, removed: list[int]) -> tuple[list[int], list[int]]:
    """-> (kept query heads, kept KV heads) for one layer, or ValueError if GQA forbids it."""
    group = n_heads // n_kv
    gone = set(removed)
    kept_in_group = [[h for h in range(g * group, (g + 1) * group) if h not in gone] for g in range(n_kv)]
    kept_groups = [g for g in range(n_kv) if kept_in_group[g]]
    if not kept_groups:
        raise ValueError(f"layer {layer_idx}: removing all {n_heads} heads would leave no attention; keep at least one")
    sizes = {len(kept_in_group[g]) for g in kept_groups}
    if len(sizes) > 1:
        detail = ", ".join(
            f"group {g} (heads {g * group}..{(g + 1) * group - 1}) keeps {len(kept_in_group[g])}" for g in kept_groups
        )
        raise ValueError(
            f"layer {layer_idx}: uneven GQA removal ({detail}). Query heads share {n_kv} key/value heads in groups "
            f"of {group}, and every remaining group must keep the same number of query heads: remove whole groups, "
            "or the same number of heads from every group, or a mix that leaves the remaining groups equal"
        )
    kept_heads = [h for g in kept_groups for h in kept_in_group[g]]
    return kept_heads, kept_groups


def _rows_of(heads: list[int], head_dim: int) -> torch.Tensor:
    """Weight rows (or columns) of the given heads: ``[len(heads) * head_dim]`` long."""
    idx = torch.tensor(heads, dtype=torch.long)
    return (idx[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def config_error(config) -> str | None:
    """The config class's own validation error, or None.

    transformers >= 5 validates configs when saving and loading; ``LlamaConfig`` wants
    ``hidden_size % num_attention_heads == 0`` even when ``head_dim`` is explicit.
    """
    validate = getattr(config, "validate", None)
    if validate is None:
        return None
    try:
        validate()
    except Exception as e:  # huggingface_hub's StrictDataclassClassValidationError is no ValueError
        return str(e)
    return None


def update_config_if_uniform(model: nn.Module) -> None:
    """Write the layers' shared structure into ``model.config`` where all layers agree.

    Attention: ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim`` (set
    explicitly: ``hidden_size / num_attention_heads`` no longer equals it after head
    pruning), when every layer has the same (H, K, D). MLP: ``intermediate_size`` when
    every layer has the same width. Non-uniform parts of the config are left untouched
    (save such models with :func:`course_lib.pruning.structure.save_pruned`).
    """
    layers = model.model.layers
    cfg = model.config
    attn_shapes = {attention_shape(layer.self_attn) for layer in layers}
    if len(attn_shapes) == 1:
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = attn_shapes.pop()
    widths = {layer.mlp.down_proj.in_features for layer in layers}
    if len(widths) == 1:
        cfg.intermediate_size = widths.pop()


def remove_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Physically remove query heads ``{layer: [head, ...]}`` (in place).

    Slices ``q_proj`` rows (and bias) and ``o_proj`` columns of the removed heads, and
    ``k_proj``/``v_proj`` rows (and biases) of KV groups left without query heads;
    updates ``num_key_value_groups``; updates ``model.config`` (heads, KV heads,
    head_dim) when all layers end up with the same shape. Indices refer to the current
    heads of each layer. Warns when the updated config fails transformers' own validation
    (e.g. ``LlamaConfig`` with ``hidden_size % num_attention_heads != 0``): such a model
    runs but needs ``save_pruned`` instead of ``save_pretrained``. Raises ``ValueError``
    for uneven GQA removal (see module doc),
    removing every head of a layer, duplicate or out-of-range indices, or a model
    without the Llama layout; nothing is changed when it raises.
    """
    check_llama_layout(model)
    layers = model.model.layers
    shapes = [attention_shape(layer.self_attn) for layer in layers]
    heads = check_index_dict(heads, [s[0] for s in shapes], "heads")
    plans = {}
    for i, removed in heads.items():
        h, k, _ = shapes[i]
        plans[i] = _plan_layer(i, h, k, removed)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            check_not_reparametrized(getattr(layers[i].self_attn, name), f"layer {i} self_attn.{name}")

    for i, (kept_heads, kept_groups) in plans.items():
        attn = layers[i].self_attn
        d = shapes[i][2]
        q_rows = _rows_of(kept_heads, d)  # [H' * D]
        slice_linear_(attn.q_proj, rows=q_rows)
        slice_linear_(attn.o_proj, cols=q_rows)
        if len(kept_groups) < shapes[i][1]:
            kv_rows = _rows_of(kept_groups, d)  # [K' * D]
            slice_linear_(attn.k_proj, rows=kv_rows)
            slice_linear_(attn.v_proj, rows=kv_rows)
        set_attention_heads(attn, len(kept_heads), len(kept_groups))
    update_config_if_uniform(model)
    problem = config_error(model.config)
    if problem is not None:
        warnings.warn(
            f"the pruned model runs, but transformers refuses its config for save_pretrained ({problem}); "
            "save it with course_lib.save_pruned / load it with course_lib.load_pruned",
            stacklevel=2,
        )
