import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Results must not depend on the thread count; one thread also keeps parallel runs civil.
torch.set_num_threads(int(os.environ.get("COURSE_TEST_THREADS", "1")))

# Notebooks under tests/fixtures are grading fixtures, not notebooks to run with nbval.
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_llama_config(kind: str = "gqa", **overrides):
    """Random tiny Llama-family configs: 'mha', 'gqa' (Llama), 'mistral', 'qwen2'."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=8, max_position_embeddings=64, tie_word_embeddings=False)
    # overrides go to the constructor, so derived fields (Qwen2's per-layer `layer_types`) follow them
    if kind == "mha":
        cls, extra = LlamaConfig, dict(num_key_value_heads=8)
    elif kind == "gqa":
        cls, extra = LlamaConfig, dict(num_key_value_heads=2)
    elif kind == "mistral":
        cls, extra = MistralConfig, dict(num_key_value_heads=2, sliding_window=None)
    elif kind == "qwen2":
        cls, extra = Qwen2Config, dict(num_key_value_heads=4)
    else:
        raise ValueError(kind)
    cfg = cls(**{**common, **extra, **overrides})
    return cfg


def tiny_model(kind: str = "gqa", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(kind, **overrides))
    # random non-trivial biases for Qwen2 so bias slicing is exercised
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.1)
    return model.eval()


@pytest.fixture
def tiny_models():
    return {k: tiny_model(k) for k in ("mha", "gqa", "mistral", "qwen2")}


@pytest.fixture
def load_script():
    """``load_script("name")`` imports ``scripts/name.py`` as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
