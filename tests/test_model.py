import pytest
import torch
from torch import nn

import course_lib
from course_lib.model import DECODER_LINEARS, check_llama_layout, prunable_linears
from conftest import tiny_model


@pytest.mark.parametrize("kind", ["mha", "gqa", "mistral", "qwen2"])
def test_load_model_round_trips_local_checkpoints(kind, tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = tiny_model(kind)
    model.save_pretrained(tmp_path)
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(tmp_path)

    loaded, tokenizer = course_lib.load_model(tmp_path, device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.dtype == torch.float32
    ids = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert tokenizer("a b")["input_ids"] == [1, 2]

    half, _ = course_lib.load_model(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        course_lib.load_model(tmp_path)
    with pytest.raises(TypeError, match="dtype"):
        course_lib.load_model(tmp_path, dtype=torch.int8)


def test_course_model_loads_with_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = course_lib.data_dir() / "course-model"
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.num_attention_heads == 8 and cfg.num_key_value_heads in (2, 4)
    assert 4 <= cfg.num_hidden_layers <= 6 and cfg.hidden_act == "silu"
    assert 2e6 <= sum(p.numel() for p in model.parameters()) <= 10e6
    assert len(tok) <= 1024 and cfg.vocab_size == len(tok)
    weights = path / "model.safetensors"
    assert weights.stat().st_size <= 40 * 2**20
    ours, tok2 = course_lib.load_course_model()
    assert next(ours.parameters()).device.type == "cpu"
    assert tok2("Mira found the red ball.")["input_ids"] == tok("Mira found the red ball.")["input_ids"]


def test_prunable_linears_default_and_targets():
    model = tiny_model("gqa")
    names = list(prunable_linears(model))
    assert len(names) == 2 * len(DECODER_LINEARS)
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in names)
    qv = prunable_linears(model, targets=["q_proj", "v_proj"])
    assert sorted(qv) == sorted(n for n in names if n.endswith(("q_proj", "v_proj")))
    assert list(prunable_linears(model, targets="lm_head")) == ["lm_head"]
    with pytest.raises(ValueError, match="unknown target"):
        prunable_linears(model, targets=["qproj"])
    with pytest.raises(TypeError, match="not an nn.Linear"):
        prunable_linears(model, targets=["model.norm"])


def test_non_llama_layout_is_rejected():
    with pytest.raises(ValueError, match="Llama layout"):
        check_llama_layout(nn.Sequential(nn.Linear(2, 2)))
    model = tiny_model("gqa")
    model.model.layers[1].mlp.up_proj = nn.Identity()
    with pytest.raises(ValueError, match="layer 1"):
        check_llama_layout(model)
