"""Saving and loading structurally pruned models (uniform and per-layer different)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from course_lib.pruning.channels import remove_ffn_channels
from course_lib.pruning.heads import remove_heads
from course_lib.pruning.structure import (
    STRUCTURE_FILE,
    is_uniform,
    layer_structure,
    load_pruned,
    save_pruned,
)


def rand_ids(b=2, t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (b, t), generator=g)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def non_uniform(kind, **overrides):
    """A tiny model pruned differently in each layer (heads, KV heads and FFN width)."""
    model = tiny_model(kind, **overrides)
    n_kv = model.config.num_key_value_heads
    group = 8 // n_kv
    # layer 0: one query head from every group; layer 1: a whole KV group
    remove_heads(model, {0: [g * group for g in range(n_kv)] if group > 1 else [3],
                         1: list(range(group)) if group > 1 else [0, 1]})
    remove_ffn_channels(model, {0: list(range(0, 96, 3)), 1: [5, 7]})
    return model


def test_layer_structure_of_unpruned_model_matches_config():
    model = tiny_model("gqa")
    assert layer_structure(model) == [
        {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 96}
    ] * 2
    assert is_uniform(model)


@pytest.mark.parametrize(
    "kind, heads, n_heads, n_kv",
    [
        ("mha", {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}, 4, 4),
        ("gqa", {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}, 4, 1),  # a whole KV group per layer
        ("mistral", {0: [0, 4], 1: [3, 7]}, 6, 2),  # one head per group
        ("qwen2", {0: [0, 1, 2, 4, 6], 1: [1, 2, 3, 5, 7]}, 3, 3),  # 64 / 3 heads: head_dim must be explicit
    ],
)
def test_uniform_removal_round_trips_through_plain_save_pretrained(kind, heads, n_heads, n_kv, tmp_path):
    model = tiny_model(kind)
    remove_heads(model, heads)
    remove_ffn_channels(model, {0: list(range(20)), 1: list(range(76, 96))})
    assert is_uniform(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"]) == (n_heads, n_kv)
    assert (saved["head_dim"], saved["intermediate_size"]) == (8, 76)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert layer_structure(loaded) == layer_structure(model)
    ids = rand_ids()
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=1e-6)


def test_uniform_llama_heads_that_llama_config_refuses_go_through_save_pruned(tmp_path):
    # LlamaConfig (transformers 5) insists on hidden_size % num_attention_heads == 0: 64 % 6 != 0
    model = tiny_model("gqa")
    with pytest.warns(UserWarning, match="save_pruned"):
        remove_heads(model, {0: [0, 4], 1: [3, 7]})
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (6, 2)
    with pytest.raises(Exception, match="not a multiple of the number of attention"):
        model.save_pretrained(tmp_path / "plain")
    save_pruned(model, tmp_path / "pruned")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (6, 2)  # restored
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"], saved["head_dim"]) == (6, 2, 8)
    with pytest.raises(Exception, match="not a multiple of the number of attention"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads) == (6, 2)
    assert layer_structure(loaded) == layer_structure(model)
    ids = rand_ids()
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["mha", "gqa", "mistral", "qwen2"])
def test_non_uniform_round_trip_with_save_pruned(kind, tmp_path):
    model = non_uniform(kind)
    assert not is_uniform(model)
    save_pruned(model, tmp_path)
    record = json.loads((tmp_path / STRUCTURE_FILE).read_text())
    assert record["layers"] == layer_structure(model)
    loaded = load_pruned(tmp_path)
    assert not loaded.training
    assert layer_structure(loaded) == layer_structure(model)
    ids = rand_ids()
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=1e-6)
    prompt = rand_ids(1, 4, seed=5)
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(loaded.generate(prompt, **kw), model.generate(prompt, **kw))


def test_load_pruned_with_eager_attention_and_dtypes(tmp_path):
    model = non_uniform("gqa")
    save_pruned(model, tmp_path / "f32")
    eager = load_pruned(tmp_path / "f32", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    ids = rand_ids()
    torch.testing.assert_close(logits(eager, ids), logits(model, ids), rtol=0, atol=1e-5)

    save_pruned(model.to(torch.bfloat16), tmp_path / "bf16")
    assert load_pruned(tmp_path / "bf16").model.embed_tokens.weight.dtype == torch.bfloat16
    as_f32 = load_pruned(tmp_path / "bf16", dtype=torch.float32)
    assert as_f32.lm_head.weight.dtype == torch.float32
    assert torch.equal(as_f32.lm_head.weight, model.lm_head.weight.float())
    with pytest.raises(TypeError, match="dtype"):
        load_pruned(tmp_path / "bf16", dtype=torch.int8)


def test_tied_embeddings_round_trip(tmp_path):
    model = non_uniform("gqa", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save_pruned(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")  # transformers drops the tied copy
    loaded = load_pruned(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = rand_ids()
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=1e-6)


def test_load_pruned_is_strict(tmp_path):
    model = non_uniform("qwen2")
    save_pruned(model, tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)

    save_file({k: v for k, v in state.items() if k != "model.layers.1.self_attn.k_proj.bias"}, weights)
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.self_attn.k_proj.bias'\]"):
        load_pruned(tmp_path)

    save_file({**state, "model.layers.0.extra.weight": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.0.extra.weight'\]"):
        load_pruned(tmp_path)

    save_file(state, weights)
    record = json.loads((tmp_path / STRUCTURE_FILE).read_text())
    record["layers"][0]["intermediate_size"] += 1
    (tmp_path / STRUCTURE_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not match"):
        load_pruned(tmp_path)

    record["layers"][0]["intermediate_size"] -= 1
    assert record["layers"][0]["num_key_value_heads"] == 4
    record["layers"][0]["num_key_value_heads"] = 2  # valid on its own, but k/v_proj were saved with 4
    (tmp_path / STRUCTURE_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="k_proj"):
        load_pruned(tmp_path)

    record["layers"] = record["layers"][:1]
    (tmp_path / STRUCTURE_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="describes 1 layers"):
        load_pruned(tmp_path)

    (tmp_path / STRUCTURE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="save_pruned"):
        load_pruned(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pruned(tmp_path / "nowhere")


def test_non_llama_model_is_rejected(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16))
    with pytest.raises(ValueError, match="Llama layout"):
        layer_structure(gpt2)
    with pytest.raises(ValueError, match="Llama layout"):
        save_pruned(gpt2, tmp_path)
    assert not (tmp_path / "config.json").exists()
