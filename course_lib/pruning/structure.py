"""Saving and loading structurally pruned models, whose layers may differ from each other.

A Hugging Face config describes every decoder layer with the same four numbers
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``).
After *uniform* pruning (the same removal count in every layer) :func:`remove_heads` and
:func:`remove_ffn_channels` update those numbers, so plain ``save_pretrained`` /
``AutoModelForCausalLM.from_pretrained`` round-trip the model.

Non-uniform pruning (say 6 heads in layer 0, 4 in layer 1) cannot be written in such a
config. :func:`save_pruned` therefore writes the ordinary ``save_pretrained`` output plus
``pruned_structure.json``, one entry per layer::

    {"format": "course_lib.pruned_structure", "version": 1,
     "layers": [{"num_attention_heads": 6, "num_key_value_heads": 2,
                 "head_dim": 8, "intermediate_size": 96}, ...]}

and :func:`load_pruned` builds the model from the config, reshapes each layer to its
recorded structure and loads the weights strictly (no missing or unexpected keys).

A layer whose ``down_proj`` has a bias that its config would not build (bias compensation
on Mistral/Qwen2, whose MLPs have no bias option; see
:func:`course_lib.pruning.channels.remove_ffn_channels_compensated`) also records
``"down_proj_bias": true``; :func:`load_pruned` gives that layer's ``down_proj`` a bias.

One catch: some config classes validate the head count against the hidden size
(transformers 5's ``LlamaConfig`` wants ``hidden_size % num_attention_heads == 0`` even
when ``head_dim`` is given), so e.g. 6 heads of 32 in a 256-wide Llama cannot be saved by
``save_pretrained`` although the model runs fine. :func:`save_pruned` then saves with
placeholder head counts (``hidden_size // head_dim``) and writes the true ones back into
``config.json``; :func:`load_pruned` reverses this. Plain ``from_pretrained`` refuses
such a folder with the config class's own error, which is the honest answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..model import check_llama_layout
from .channels import channels_per_layer
from .heads import attention_shape, config_error, set_attention_heads

STRUCTURE_FILE = "pruned_structure.json"
STRUCTURE_FORMAT = "course_lib.pruned_structure"
STRUCTURE_KEYS = ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
DOWN_BIAS_KEY = "down_proj_bias"  # optional, only ever true: a down_proj bias the config does not build


def layer_structure(model: nn.Module) -> list[dict[str, int]]:
    """One dict per decoder layer, read off the weights::

    {"num_attention_heads": H, "num_key_value_heads": K, "head_dim": D, "intermediate_size": I}
    """
    check_llama_layout(model)
    widths = channels_per_layer(model)
    out = []
    for layer, width in zip(model.model.layers, widths):
        h, k, d = attention_shape(layer.self_attn)
        spec = {"num_attention_heads": h, "num_key_value_heads": k, "head_dim": d, "intermediate_size": width}
        if layer.mlp.down_proj.bias is not None and not getattr(model.config, "mlp_bias", False):
            spec[DOWN_BIAS_KEY] = True
        out.append(spec)
    return out


def is_uniform(model: nn.Module) -> bool:
    """True when every layer has the same structure (then the config alone describes it)."""
    return len({tuple(s.values()) for s in layer_structure(model)}) == 1


HEAD_KEYS = ("num_attention_heads", "num_key_value_heads")


def _placeholder_heads(config_dict: dict, problem: str) -> dict[str, int]:
    """Head counts that satisfy ``hidden_size % num_attention_heads == 0`` for the given head_dim."""
    hidden, head_dim = config_dict.get("hidden_size"), config_dict.get("head_dim")
    if not head_dim or not hidden or hidden % head_dim:
        raise ValueError(f"the config cannot be saved or loaded as is ({problem}) and has no usable head_dim")
    n = hidden // head_dim
    return {"num_attention_heads": n, "num_key_value_heads": n}


def save_pruned(model: nn.Module, path) -> Path:
    """``model.save_pretrained(path)`` plus ``pruned_structure.json``; returns ``path``.

    Load it back with :func:`load_pruned`. A tokenizer, if wanted, is saved separately.
    """
    structure = layer_structure(model)
    path = Path(path)
    config = model.config
    problem = config_error(config)
    if problem is None:
        model.save_pretrained(str(path))
    else:  # save with placeholder head counts, then write the true ones into config.json
        true = {k: getattr(config, k) for k in HEAD_KEYS}
        placeholder = _placeholder_heads(config.to_dict(), problem)
        try:
            for k, v in placeholder.items():
                setattr(config, k, v)
            if config_error(config) is not None:
                raise ValueError(f"model.config cannot be saved: {problem}")
            model.save_pretrained(str(path))
        finally:
            for k, v in true.items():
                setattr(config, k, v)
        saved = json.loads((path / "config.json").read_text())
        saved.update(true)
        (path / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    record = {"format": STRUCTURE_FORMAT, "version": 1, "layers": structure}
    (path / STRUCTURE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return path


def _load_config(path: Path):
    """``(config, true head counts or None)``: the saved config, with placeholder head counts
    if its class refuses the true ones (see the module doc)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = json.loads((path / "config.json").read_text())
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True), None
    except Exception as e:
        if raw.get("model_type") not in CONFIG_MAPPING or not all(k in raw for k in HEAD_KEYS):
            raise
        problem = str(e)
    placeholder = _placeholder_heads(raw, problem)
    config = CONFIG_MAPPING[raw["model_type"]].from_dict({**raw, **placeholder})
    return config, {k: raw[k] for k in HEAD_KEYS}


def _read_structure(path: Path, n_layers: int) -> list[dict[str, int]]:
    file = path / STRUCTURE_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} has no {STRUCTURE_FILE}: save with course_lib save_pruned, or load a uniformly "
            "pruned model with AutoModelForCausalLM.from_pretrained"
        )
    record = json.loads(file.read_text())
    if not isinstance(record, dict) or record.get("format") != STRUCTURE_FORMAT or record.get("version") != 1:
        raise ValueError(f"{file} is not a course_lib pruned-structure file (format/version 1)")
    layers = record.get("layers")
    if not isinstance(layers, list) or len(layers) != n_layers:
        n = len(layers) if isinstance(layers, list) else "?"
        raise ValueError(f"{file} describes {n} layers, config has {n_layers}")
    for i, spec in enumerate(layers):
        if not isinstance(spec, dict) or set(spec) - {DOWN_BIAS_KEY} != set(STRUCTURE_KEYS):
            raise ValueError(f"{file}: layer {i} must have exactly the keys {STRUCTURE_KEYS} "
                             f"(and optionally {DOWN_BIAS_KEY!r})")
        if spec.get(DOWN_BIAS_KEY, True) is not True:
            raise ValueError(f"{file}: layer {i} {DOWN_BIAS_KEY!r} must be true when present, "
                             f"got {spec[DOWN_BIAS_KEY]!r}")
        if not all(isinstance(spec[k], int) and spec[k] > 0 for k in STRUCTURE_KEYS):
            raise ValueError(f"{file}: layer {i} sizes must be positive ints, got {spec}")
        if spec["num_attention_heads"] % spec["num_key_value_heads"]:
            raise ValueError(f"{file}: layer {i} has {spec['num_attention_heads']} heads, not a multiple of "
                             f"{spec['num_key_value_heads']} KV heads")
    return layers


def _new_linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """An ``nn.Linear`` of the new shape with ``old``'s bias-ness, dtype and device (weights are loaded later)."""
    w = old.weight
    return nn.Linear(in_features, out_features, bias=old.bias is not None, dtype=w.dtype, device=w.device)


def reshape_layer(layer: nn.Module, spec: dict[str, int], layer_idx: int = 0) -> None:
    """Replace a fresh decoder layer's linears by empty ones of the recorded shapes."""
    attn, mlp = layer.self_attn, layer.mlp
    h, k, d, inter = (spec[key] for key in STRUCTURE_KEYS)
    if d != attn.head_dim:
        raise ValueError(f"layer {layer_idx}: recorded head_dim {d} but the config gives {attn.head_dim}; "
                         "head pruning never changes head_dim")
    hidden = attn.q_proj.in_features
    attn.q_proj = _new_linear(attn.q_proj, hidden, h * d)
    attn.k_proj = _new_linear(attn.k_proj, hidden, k * d)
    attn.v_proj = _new_linear(attn.v_proj, hidden, k * d)
    attn.o_proj = _new_linear(attn.o_proj, h * d, attn.o_proj.out_features)
    set_attention_heads(attn, h, k)
    mlp.gate_proj = _new_linear(mlp.gate_proj, hidden, inter)
    mlp.up_proj = _new_linear(mlp.up_proj, hidden, inter)
    down = mlp.down_proj
    mlp.down_proj = nn.Linear(inter, down.out_features, bias=down.bias is not None or spec.get(DOWN_BIAS_KEY, False),
                              dtype=down.weight.dtype, device=down.weight.device)
    mlp.intermediate_size = inter


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors (or sharded index)")
    state = {}
    for f in files:
        state.update(load_file(str(path / f)))
    return state


def load_pruned(path, device="cpu", dtype: torch.dtype | None = None, attn_implementation: str | None = None):
    """Load a model written by :func:`save_pruned`, in eval mode.

    Builds the model from ``config.json``, reshapes every layer to
    ``pruned_structure.json``, then loads the weights strictly: a key missing from the
    file (other than a weight tied to one that is present) or an unexpected key raises
    ``ValueError``. ``dtype=None`` keeps the saved dtype; ``device`` defaults to CPU.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved model (no config.json)")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    config, true_heads = _load_config(path)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    check_llama_layout(model)
    structure = _read_structure(path, len(model.model.layers))
    for i, (layer, spec) in enumerate(zip(model.model.layers, structure)):
        reshape_layer(layer, spec, i)

    state = _read_weights(path)
    saved_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if dtype is None:
        dtype = saved_dtypes.pop() if len(saved_dtypes) == 1 else torch.float32
    model.to(dtype=dtype)

    expected = set(model.state_dict())
    unexpected = sorted(set(state) - expected)
    # a missing key is fine only when its Parameter is shared with a loaded key (tied weights)
    params = dict(model.named_parameters(remove_duplicate=False))
    names_of = {}  # id(Parameter) -> every name it has
    for name, p in params.items():
        names_of.setdefault(id(p), set()).add(name)

    def tied_to_loaded(key: str) -> bool:
        return key in params and bool(names_of[id(params[key])] & state.keys())

    missing = sorted(k for k in expected - state.keys() if not tied_to_loaded(k))
    if missing or unexpected:
        raise ValueError(
            f"weights in {path} do not match the recorded structure: missing {missing}, unexpected {unexpected}"
        )
    model_state = model.state_dict()
    wrong = [f"{k}: file {tuple(t.shape)}, structure {tuple(model_state[k].shape)}"
             for k, t in state.items() if t.shape != model_state[k].shape]
    if wrong:
        raise ValueError(f"weights in {path} do not match {STRUCTURE_FILE}: " + "; ".join(wrong))
    model.load_state_dict(state, strict=False)
    for k, v in (true_heads or {}).items():
        setattr(model.config, k, v)
    return model.to(device).eval()
