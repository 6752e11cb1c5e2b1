"""Loading the course model (or any local Llama-family checkpoint) and its module layout.

The course relies on the Llama layout that Llama-2, TinyLlama, Mistral and Qwen2 share::

    model.model.embed_tokens
    model.model.layers[i].self_attn.{q_proj, k_proj, v_proj, o_proj}
    model.model.layers[i].mlp.{gate_proj, up_proj, down_proj}
    model.model.norm, model.lm_head
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
DECODER_LINEARS = ATTN_LINEARS + MLP_LINEARS


def course_config(vocab_size: int = 1024):
    """The architecture of the course model (a small Llama with grouped-query attention)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=192,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_dtype(dtype):
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float16) or None, got {dtype!r}")


def check_llama_layout(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` has the Llama module layout (see module doc)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(
            f"{type(model).__name__} does not have the Llama layout: expected model.model.layers "
            "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, ...)"
        )
    for i, layer in enumerate(layers):
        for parent, names in (("self_attn", ATTN_LINEARS), ("mlp", MLP_LINEARS)):
            block = getattr(layer, parent, None)
            missing = [n for n in names if not isinstance(getattr(block, n, None), nn.Linear)]
            if missing:
                raise ValueError(
                    f"layer {i} of {type(model).__name__} lacks {parent}.{missing}: course_lib "
                    "needs the Llama layout (q/k/v/o_proj and gate/up/down_proj linears)"
                )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    check_llama_layout(model)
    return model.model.layers


def prunable_linears(model: nn.Module, targets=None) -> dict[str, nn.Linear]:
    """The linears that pruning touches, by module name (``model.layers.0.mlp.up_proj``...).

    ``targets=None`` means every q/k/v/o/gate/up/down linear of every decoder layer
    (never embeddings, norms or lm_head). ``targets`` may also be a collection of short
    names (``{"q_proj", "v_proj"}``) or of full module names (e.g. ``"lm_head"``, to
    prune it on purpose).
    """
    check_llama_layout(model)
    modules = dict(model.named_modules())
    default = {
        f"model.layers.{i}.{'self_attn' if n in ATTN_LINEARS else 'mlp'}.{n}": None
        for i in range(len(model.model.layers))
        for n in DECODER_LINEARS
    }
    if targets is None:
        names = list(default)
    else:
        if isinstance(targets, str):
            targets = [targets]
        names = []
        for t in targets:
            if t in DECODER_LINEARS:
                names += [k for k in default if k.endswith("." + t)]
            elif t in modules:
                names.append(t)
            else:
                raise ValueError(
                    f"unknown target {t!r}: use short names {DECODER_LINEARS} or full module names "
                    "such as 'model.layers.0.mlp.up_proj'"
                )
    out = {}
    for name in names:
        mod = modules[name]
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"target {name!r} is a {type(mod).__name__}, not an nn.Linear")
        out[name] = mod
    return out


def load_model(path, device=None, dtype=None, attn_implementation: str | None = None):
    """Any local Hugging Face Llama-family checkpoint -> ``(model, tokenizer)``, in eval mode.

    ``device=None`` picks CUDA when available, else CPU. ``dtype=None`` loads float32 on
    CPU and the checkpoint's own dtype on GPU. Nothing is downloaded: ``path`` must be a
    folder on disk.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_dtype(dtype)
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a local Hugging Face checkpoint (no config.json)")
    device = _resolve_device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else "auto"
    kwargs = {"dtype": dtype, "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    check_llama_layout(model)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


def load_course_model(device=None, dtype=None, attn_implementation: str | None = None):
    """The course model from ``data/course-model`` -> ``(model, tokenizer)``.

    Unlike :func:`load_model`, ``device=None`` means CPU: the model is tiny, and CPU
    results are the reference numbers quoted in the notebooks.
    """
    from .paths import course_model_dir

    return load_model(course_model_dir(), device=device or "cpu", dtype=dtype,
                      attn_implementation=attn_implementation)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
