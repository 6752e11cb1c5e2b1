"""Whole-layer (depth) pruning: block influence, layer skipping, physical layer removal.

Oracles: cosine similarities recomputed from ``output_hidden_states`` (block influence),
the model run layer by layer by hand (skipping), the skipped model (removal), greedy
decoding of the skipped model without a KV cache (generation after removal), and
save/load round trips.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from course_lib.pruning import load_pruned, save_pruned
from course_lib.pruning.depth import (
    block_influence,
    layer_gates,
    layer_importance,
    layer_mask,
    layers_to_remove,
    remove_layers,
)

KINDS = ("mha", "gqa", "mistral", "qwen2")
# Qwen2 with sliding-window attention on its last two layers: removal must carry layer_types along
SLIDING = dict(layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
               use_sliding_window=True, sliding_window=4)


def deep_model(kind, n_layers=4):
    extra = SLIDING if kind == "qwen2" else {}
    return tiny_model(kind, num_hidden_layers=n_layers, **extra)


def rand_ids(b=2, t=12, seed=1):
    return torch.randint(0, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def rand_batches(n=2):
    return [{"input_ids": rand_ids(seed=10 + i)} for i in range(n)]


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_block_influence_is_one_minus_mean_cosine_of_hidden_states(kind):
    model = deep_model(kind)
    batches = rand_batches(2)
    bi = block_influence(model, batches)
    sums, count = torch.zeros(4, dtype=torch.float64), 0
    with torch.no_grad():
        for b in batches:
            hs = model(b["input_ids"], output_hidden_states=True).hidden_states
            # hidden_states[i] is layer i's input; the last entry is after the final norm, so
            # layer 3's output is read by a hook instead
            outs = {}
            h = model.model.layers[-1].register_forward_hook(lambda m, a, o: outs.__setitem__("y", o))
            model(b["input_ids"])
            h.remove()
            ys = list(hs[1:-1]) + [outs["y"]]
            for i in range(4):
                sums[i] += F.cosine_similarity(hs[i], ys[i], dim=-1).double().sum()
            count += b["input_ids"].numel()
    torch.testing.assert_close(bi, (1 - sums / count).float(), rtol=1e-5, atol=1e-6)
    assert bi.shape == (4,) and (bi > 0).all()


def test_ablation_importance_is_loss_increase_when_layer_skipped():
    model = deep_model("gqa")
    batches = rand_batches(2)
    scores = layer_importance(model, batches, method="ablation")

    def mean_loss(m):
        return sum(m(b["input_ids"], labels=b["input_ids"]).loss.item() for b in batches) / len(batches)

    with torch.no_grad():
        base = mean_loss(model)
        for i in (0, 3):
            pruned = copy.deepcopy(model)
            remove_layers(pruned, [i])
            assert scores[i].item() == pytest.approx(mean_loss(pruned) - base, abs=1e-5)
    assert torch.equal(layer_importance(model, batches), block_influence(model, batches))


def test_scores_have_no_side_effects_and_reject_bad_input():
    model = deep_model("gqa")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("influence", "ablation"):
        layer_importance(model, rand_batches(1), method=method)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(layer._forward_hooks) == 0 for layer in model.model.layers)
    with pytest.raises(ValueError, match="method must be one of"):
        layer_importance(model, rand_batches(1), method="gradient")
    with pytest.raises(ValueError, match="empty"):
        block_influence(model, [])


def test_layers_to_remove_picks_lowest_scores():
    assert layers_to_remove(torch.tensor([0.3, 0.1, 0.5, 0.1]), 2) == [1, 3]
    assert layers_to_remove(torch.tensor([0.3, 0.1, 0.5, 0.2]), 0) == []
    with pytest.raises(ValueError, match="keep at least one"):
        layers_to_remove(torch.tensor([0.3, 0.1]), 2)
    with pytest.raises(ValueError, match="NaN"):
        layers_to_remove(torch.tensor([0.3, float("nan")]), 1)
    with pytest.raises(TypeError, match="1-D float"):
        layers_to_remove([0.3, 0.1], 1)
    with pytest.raises(TypeError, match="n must be an int"):
        layers_to_remove(torch.tensor([0.3, 0.1]), 1.0)


# ----------------------------------------------------------------------------- skipping


def test_layer_mask_equals_running_only_the_kept_layers_by_hand():
    model = deep_model("gqa")
    ids = rand_ids()
    with torch.no_grad():
        plain = model(ids).logits
        with layer_mask(model, [1, 2]):
            masked = model(ids).logits
        with layer_gates(model):
            assert torch.equal(model(ids).logits, plain)  # all gates 1: unchanged
        assert torch.equal(model(ids).logits, plain)  # hooks removed
        # oracle: embeddings -> layers 0 and 3 -> norm -> lm_head, called by hand
        inner = model.model
        h = inner.embed_tokens(ids)
        pos = torch.arange(ids.shape[1])[None]
        pe = inner.rotary_emb(h, position_ids=pos)
        causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        for i in (0, 3):
            h = inner.layers[i](h, attention_mask=causal, position_embeddings=pe, position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        oracle = model.lm_head(inner.norm(h))
    torch.testing.assert_close(masked, oracle, rtol=0, atol=1e-5)
    assert not torch.allclose(masked, plain, atol=1e-3)


# ----------------------------------------------------------------------------- removal


@pytest.mark.parametrize("kind", KINDS)
def test_removal_equals_skipped_model_and_generates_with_cache(kind):
    model = deep_model(kind)
    ids = rand_ids()
    with torch.no_grad():
        with layer_mask(model, [1, 2]):
            masked = model(ids).logits
            # greedy decoding of the skipped model, no KV cache: the full prefix every step
            seq = ids[:1]
            for _ in range(6):
                nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
        remove_layers(model, [2, 1])
        pruned = model(ids).logits
        generated = model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True,
                                   pad_token_id=0)
    torch.testing.assert_close(pruned, masked, rtol=0, atol=1e-5)
    assert len(model.model.layers) == model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    if kind == "qwen2":
        assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert torch.equal(generated, seq)


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_removed_model_saves_and_reloads(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    model = deep_model(kind)
    remove_layers(model, [0, 2])
    ids = rand_ids()
    with torch.no_grad():
        expect = model(ids).logits
        model.save_pretrained(tmp_path / "hf")
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        save_pruned(model, tmp_path / "cl")
        ours = load_pruned(tmp_path / "cl")
        assert plain.config.num_hidden_layers == ours.config.num_hidden_layers == 2
        assert torch.equal(plain(ids).logits, expect)
        assert torch.equal(ours(ids).logits, expect)


@pytest.mark.parametrize(
    "layers, exc, match",
    [
        ([0, 1, 2, 3], ValueError, "removing all 4 layers"),
        ([4], ValueError, "out of range"),
        ([-1], ValueError, "out of range"),
        ([1, 1], ValueError, "duplicate"),
        ([0.0], TypeError, "ints"),
        ({0: [1]}, TypeError, "list of indices"),
        (2, TypeError, "list of indices"),
        (torch.tensor([True, False]), TypeError, "1-D integer"),
    ],
)
def test_bad_removals_raise_and_change_nothing(layers, exc, match):
    model = deep_model("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=match):
        remove_layers(model, layers)
    if match != "removing all 4 layers":  # skipping every layer is a valid (identity) mask
        with pytest.raises(exc, match=match):
            layer_mask(model, layers)
    assert len(model.model.layers) == model.config.num_hidden_layers == 4
    assert model.config.layer_types == SLIDING["layer_types"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(layer._forward_hooks) == 0 for layer in model.model.layers)


def test_tensor_indices_and_non_llama_model():
    model = deep_model("gqa")
    remove_layers(model, torch.tensor([3, 0]))
    assert model.config.num_hidden_layers == 2
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16))
    for call in (lambda: remove_layers(gpt2, [0]), lambda: layer_mask(gpt2, [0]),
                 lambda: block_influence(gpt2, rand_batches(1))):
        with pytest.raises(ValueError, match="Llama layout"):
            call()


# ----------------------------------------------------------------------------- committed results

def test_committed_structured_beyond_json_holds_on_the_committed_model():
    """data/results/structured_beyond.json (scripts/structured_beyond.py): the numbers that can be
    recomputed in seconds are recomputed; the orderings the course states are checked as measured."""
    import importlib.util
    import json

    import course_lib
    from course_lib.data import batches

    path = course_lib.data_dir().parent / "scripts" / "structured_beyond.py"
    spec = importlib.util.spec_from_file_location("structured_beyond", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    res = json.loads((course_lib.data_dir() / "results" / "structured_beyond.json").read_text())
    assert res["mode"] == "full" and res["settings"]["calib"] == script.CALIB
    assert res["settings"]["eval_tokens"] == script.EVAL_TOKENS

    model, _ = course_lib.load_course_model()
    n_tokens = res["settings"]["eval_tokens"]
    assert course_lib.perplexity(model, max_tokens=n_tokens) == pytest.approx(res["dense_ppl"], rel=1e-4)
    bi = block_influence(model, batches(**script.CALIB))
    torch.testing.assert_close(bi, torch.tensor(res["depth"]["block_influence"]), rtol=1e-4, atol=1e-5)
    one = res["depth"]["budgets"][0]
    assert layers_to_remove(bi, one["layers_removed"]) == one["block_influence"]["layers"]
    pruned = copy.deepcopy(model)
    remove_layers(pruned, one["block_influence"]["layers"])
    assert course_lib.perplexity(pruned, max_tokens=n_tokens) == pytest.approx(one["block_influence"]["ppl"], rel=1e-4)
    speed = {(r["variant"], r["tokens"]): r for r in res["speed"]}
    for t in res["settings"]["speed"]["tokens"]:
        assert speed[("dense", t)]["flops"] == script.forward_flops(model, t)
        assert speed[(f"depth-{one['layers_removed']}-layers", t)]["flops"] == script.forward_flops(pruned, t)

    for d, c, h in zip(res["depth"]["budgets"], res["channels"]["budgets"], res["heads"]["budgets"]):
        subsets = [s["ppl"] for s in res["depth"]["subsets"] if len(s["layers"]) == d["layers_removed"]]
        assert d["oracle_best"]["ppl"] == min(subsets) and d["all_subsets"]["n"] == len(subsets)
        # block influence: far better than random layers, within 15 % of the best subset
        assert d["block_influence"]["ppl"] < d["random"]["mean"]
        assert d["block_influence"]["ppl"] < d["all_subsets"]["mean"]
        assert d["block_influence"]["ppl"] <= 1.15 * d["oracle_best"]["ppl"]
        # the loss ablation on calibration tokens (one forward per layer) picks better than BI here
        assert d["calibration_ablation"]["ppl"] < d["block_influence"]["ppl"]
        for row in (d, c):
            assert abs(row["param_fraction"] - d["budget"]) < 0.02
        # FLAP's fluctuation score beats mean |a|; its bias compensation does NOT help this model
        assert c["ppl"]["fluctuation"] < c["ppl"]["activation"]
        assert c["ppl"]["activation+compensation"] > c["ppl"]["activation"]
        assert c["ppl"]["fluctuation+compensation"] > c["ppl"]["fluctuation"]
        if h["reachable"]:  # heads cost the most perplexity at the budget they can reach
            assert h["ppl"] > max(d["block_influence"]["ppl"], c["ppl"]["activation"])
    depth, ffn = res["depth"]["budgets"], res["channels"]["budgets"]
    # at 1/6 of the decoder FFN channels beat removing a layer; at 1/3 removing two layers wins
    assert ffn[0]["ppl"]["activation"] < depth[0]["block_influence"]["ppl"]
    assert depth[1]["block_influence"]["ppl"] < ffn[1]["ppl"]["activation"]
    assert not res["heads"]["budgets"][1]["reachable"] and res["heads"]["attention_param_fraction"] < 1 / 3
    # compensation one layer at a time: it hurts most in layer 0, and helps in some layer
    single = res["channels"]["single_layer_half"]
    harm = [r["ppl_compensated"] - r["ppl"] for r in single]
    assert max(range(len(harm)), key=harm.__getitem__) == 0 and min(harm) < 0
