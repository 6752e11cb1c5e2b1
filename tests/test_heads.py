"""Head gates, head importance and physical head removal (Michel et al. 2019).

Oracles: zeroing a head's o_proj columns (for the gates), the gated model (for the
physical removal), finite differences of the loss (for the gradient score), and a
direct per-head loop (for the norm score).
"""

import copy
import warnings

import pytest
import torch
import torch.nn.utils.prune
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from course_lib.pruning.heads import (
    add_head_gates,
    head_gates,
    head_importance,
    head_mask,
    remove_heads,
)

KINDS = ("mha", "gqa", "mistral", "qwen2")
IMPLS = ("eager", "sdpa")


def rand_ids(b=2, t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (b, t), generator=g)


def rand_batches(n=2, b=2, t=10):
    return [{"input_ids": rand_ids(b, t, seed=10 + i)} for i in range(n)]


def o_cols_zeroed(model, heads):
    """Independent oracle for a head mask: a copy with the heads' o_proj columns set to 0."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer, hs in heads.items():
            attn = m.model.layers[layer].self_attn
            for h in hs:
                attn.o_proj.weight[:, h * attn.head_dim:(h + 1) * attn.head_dim] = 0
    return m


def n_heads(model):
    return [layer.self_attn.q_proj.out_features // layer.self_attn.head_dim for layer in model.model.layers]


def gqa_plan_is_valid(n_h, n_kv, removed):
    """Oracle for the GQA rule: every KV group that keeps a query head keeps the same number."""
    group = n_h // n_kv
    kept = [sum(1 for h in range(g * group, (g + 1) * group) if h not in removed) for g in range(n_kv)]
    nonzero = [k for k in kept if k]
    return bool(nonzero) and len(set(nonzero)) == 1


def valid_plan(kind):
    """One valid, per-layer different removal for each tiny model kind."""
    return {
        "mha": {0: [1, 5, 6], 1: [0]},  # any subset under MHA
        "gqa": {0: [0, 1, 2, 3], 1: [1, 6]},  # whole group 0 | one head from each group
        "mistral": {0: [2, 3, 6, 7], 1: [4, 5, 6, 7]},  # two per group | whole group 1
        "qwen2": {0: [0, 1, 2, 4, 6], 1: [1, 3, 5, 7]},  # group 0 whole + one from each other | one per group
    }[kind]


# ----------------------------------------------------------------------------- gates


@pytest.mark.parametrize("kind", KINDS)
def test_gates_at_one_are_exact_identity_and_zero_gate_equals_zeroed_o_proj_columns(kind):
    model = tiny_model(kind)
    ids = rand_ids()
    with torch.no_grad():
        plain = model(ids).logits
        with head_gates(model) as gates:
            assert [g.numel() for g in gates] == [8, 8]
            assert torch.equal(model(ids).logits, plain)
            gates.zero_({0: [3], 1: [0, 7]})
            gated = model(ids).logits
        oracle = o_cols_zeroed(model, {0: [3], 1: [0, 7]})(ids).logits
        assert torch.equal(model(ids).logits, plain)  # hooks gone after the with-block
    torch.testing.assert_close(gated, oracle, rtol=0, atol=1e-6)
    assert not torch.allclose(gated, plain)


def test_gates_give_gradients_and_remove_leaves_no_hooks():
    model = tiny_model("gqa")
    gates = add_head_gates(model).requires_grad_()
    loss = model(rand_ids(), labels=rand_ids()).loss
    loss.backward()
    assert all(g.grad is not None and g.grad.shape == (8,) and g.grad.abs().sum() > 0 for g in gates)
    gates.remove()
    assert all(len(layer.self_attn.o_proj._forward_pre_hooks) == 0 for layer in model.model.layers)


def test_head_mask_validates_and_cleans_up_on_error():
    model = tiny_model("gqa")
    with pytest.raises(ValueError, match="out of range"):
        head_mask(model, {0: [8]})
    assert all(len(layer.self_attn.o_proj._forward_pre_hooks) == 0 for layer in model.model.layers)


# ----------------------------------------------------------------------------- importance


def test_norm_importance_is_frobenius_norm_of_o_proj_columns():
    model = tiny_model("gqa")
    scores = head_importance(model, None, method="norm")
    assert scores.shape == (2, 8)
    for i, layer in enumerate(model.model.layers):
        w = layer.self_attn.o_proj.weight
        for h in range(8):
            expect = torch.linalg.matrix_norm(w[:, h * 8:(h + 1) * 8]).item()
            assert scores[i, h].item() == pytest.approx(expect, rel=1e-5)


def loss64(model, ids):
    """Next-token loss computed in float64 (the transformers loss upcasts only to float32)."""
    logits = model(ids).logits[:, :-1].double()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_gradient_importance_equals_head_output_times_its_gradient(kind):
    # dL/d gate_h at 1 = sum over tokens and the head's D features of x * dL/dx, x = o_proj input;
    # computed here with retain_grad on x instead of gates
    model = tiny_model(kind)
    batches = rand_batches(2)
    scores = head_importance(model, batches, method="gradient")
    expect = torch.zeros(2, 8)
    for b in batches:
        seen = {}
        hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, args, i=i: seen.__setitem__(i, args[0]) or args[0].retain_grad())
            for i, layer in enumerate(model.model.layers)]
        model(b["input_ids"], labels=b["input_ids"]).loss.backward()
        for h in hooks:
            h.remove()
        for i, x in seen.items():  # x: [B, T, H*D]
            expect[i] += (x * x.grad).view(*x.shape[:2], 8, 8).sum(dim=(0, 1, 3)).abs().detach()
    torch.testing.assert_close(scores, expect, rtol=1e-4, atol=1e-8)


def test_gradient_importance_matches_finite_differences():
    # central differences of a float64 loss; the model still runs its norms in float32,
    # so only percent-level agreement is possible
    model = tiny_model("gqa").double()
    batches = rand_batches(2)
    scores = head_importance(model, batches, method="gradient")
    eps = 2.0 ** -8  # exact in the float32 gates
    with torch.no_grad(), head_gates(model) as gates:
        for layer, h in [(0, 1), (0, 6), (1, 2), (1, 7)]:
            expect = 0.0
            for b in batches:
                ids = b["input_ids"]
                gates[layer][h] = 1 + eps
                up = loss64(model, ids)
                gates[layer][h] = 1 - eps
                down = loss64(model, ids)
                gates[layer][h] = 1
                expect += ((up - down) / (2 * eps)).abs().item()
            assert expect > 1e-4  # the head matters: the comparison is not vacuous
            assert scores[layer, h].item() == pytest.approx(expect, rel=1e-2)


def test_ablation_importance_is_loss_increase_with_head_columns_zeroed():
    model = tiny_model("gqa")
    batches = rand_batches(2)
    scores = head_importance(model, batches, method="ablation")

    def mean_loss(m):
        with torch.no_grad():
            return sum(m(b["input_ids"], labels=b["input_ids"]).loss.item() for b in batches) / len(batches)

    base = mean_loss(model)
    for layer, h in [(0, 0), (0, 5), (1, 3), (1, 7)]:
        expect = mean_loss(o_cols_zeroed(model, {layer: [h]})) - base
        assert scores[layer, h].item() == pytest.approx(expect, abs=2e-6)


def test_importance_has_no_side_effects():
    model = tiny_model("gqa")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("gradient", "ablation", "norm"):
        head_importance(model, rand_batches(1), method=method)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(layer.self_attn.o_proj._forward_pre_hooks) == 0 for layer in model.model.layers)


def test_importance_after_non_uniform_removal_is_nan_padded():
    model = tiny_model("mha")
    remove_heads(model, {0: [0, 1, 2]})
    scores = head_importance(model, rand_batches(1), method="gradient")
    assert scores.shape == (2, 8)
    assert torch.isnan(scores[0, 5:]).all() and not torch.isnan(scores[0, :5]).any()
    assert not torch.isnan(scores[1]).any()


def test_importance_rejects_bad_input():
    model = tiny_model("gqa")
    with pytest.raises(ValueError, match="method must be one of"):
        head_importance(model, rand_batches(1), method="taylor")
    with pytest.raises(ValueError, match="empty"):
        head_importance(model, [], method="gradient")
    with pytest.raises(TypeError, match="input_ids"):
        head_importance(model, [{"ids": rand_ids()}], method="gradient")
    with pytest.raises(TypeError, match="list of dicts"):
        head_importance(model, {"input_ids": rand_ids()}, method="gradient")
    with pytest.raises(TypeError, match="integer"):
        head_importance(model, [{"input_ids": rand_ids().float()}], method="ablation")
    with pytest.raises(ValueError, match="batch, seq"):
        head_importance(model, [{"input_ids": rand_ids()[0]}], method="gradient")


# ----------------------------------------------------------------------------- removal


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_removal_equals_gated_model_logits_and_cached_generation(kind, impl):
    model = tiny_model(kind, _attn_implementation=impl)
    assert model.config._attn_implementation == impl
    plan = valid_plan(kind)
    ids = rand_ids(2, 10)
    prompt = rand_ids(1, 5, seed=3)
    gen_kw = dict(max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    with torch.no_grad():
        plain = model(ids).logits
        with head_mask(model, plan):
            gated = model(ids).logits
            gated_tokens = model.generate(prompt, **gen_kw)
        remove_heads(model, plan)
        pruned = model(ids).logits
        pruned_tokens = model.generate(prompt, **gen_kw)
        pruned_tokens_nocache = model.generate(prompt, use_cache=False, **gen_kw)
    torch.testing.assert_close(pruned, gated, rtol=0, atol=1e-5)
    assert not torch.allclose(pruned, plain, atol=1e-4)
    assert torch.equal(pruned_tokens, gated_tokens)
    assert torch.equal(pruned_tokens, pruned_tokens_nocache)
    assert n_heads(model) == [8 - len(plan[0]), 8 - len(plan[1])]


def test_removal_slices_the_right_rows_columns_and_biases():
    model = tiny_model("qwen2")  # H=8, K=4 (groups of 2), q/k/v bias
    old = copy.deepcopy(model.model.layers[0].self_attn)
    remove_heads(model, {0: [0, 1, 3, 5, 7]})  # group 0 whole, one head from groups 1..3
    attn = model.model.layers[0].self_attn
    q_rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in (2, 4, 6)])
    kv_rows = torch.cat([torch.arange(g * 8, g * 8 + 8) for g in (1, 2, 3)])
    assert torch.equal(attn.q_proj.weight, old.q_proj.weight[q_rows])
    assert torch.equal(attn.q_proj.bias, old.q_proj.bias[q_rows])
    assert torch.equal(attn.o_proj.weight, old.o_proj.weight[:, q_rows])
    for name in ("k_proj", "v_proj"):
        assert torch.equal(getattr(attn, name).weight, getattr(old, name).weight[kv_rows])
        assert torch.equal(getattr(attn, name).bias, getattr(old, name).bias[kv_rows])
    assert attn.num_key_value_groups == 1
    assert (attn.q_proj.out_features, attn.o_proj.in_features, attn.k_proj.out_features) == (24, 24, 24)


def test_config_updated_only_when_uniform():
    model = tiny_model("gqa")
    # one head from each of the 2 groups, both layers: 6 heads, which LlamaConfig refuses to save
    with pytest.warns(UserWarning, match="not a multiple.*save_pruned"):
        remove_heads(model, {0: [0, 4], 1: [1, 5]})
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (6, 2, 8)
    assert all(layer.self_attn.num_key_value_groups == 3 for layer in model.model.layers)
    with pytest.warns(UserWarning, match="save_pruned"):  # the (untouched) config still says 6 heads
        remove_heads(model, {1: [0, 1, 2]})  # layer 1 loses group 0: now layers differ
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (6, 2, 8)
    assert model.model.layers[1].self_attn.num_key_value_groups == 3
    assert n_heads(model) == [6, 3]


def test_no_warning_when_the_config_class_accepts_the_heads():
    model = tiny_model("qwen2")  # Qwen2Config does not tie heads to hidden_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_heads(model, {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]})
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (4, 4, 8)


def test_repeated_removal_uses_current_indices_and_matches_cumulative_mask():
    model = tiny_model("mha")
    ids = rand_ids()
    with torch.no_grad(), head_mask(model, {0: [0, 2, 3]}):
        gated = model(ids).logits
    remove_heads(model, {0: [0]})      # old heads 1..7 -> new 0..6
    remove_heads(model, {0: [1, 2]})   # new 1, 2 = old 2, 3
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gated, rtol=0, atol=1e-5)


def test_stale_gates_raise():
    model = tiny_model("mha")
    gates = add_head_gates(model)
    remove_heads(model, {0: [0]})
    with pytest.raises(RuntimeError, match="reshaped after the gates"):
        model(rand_ids())
    gates.remove()
    model(rand_ids())


@pytest.mark.parametrize(
    "heads, match",
    [
        ({0: [0]}, "uneven GQA removal"),  # 3 left in group 0, 4 in group 1
        ({0: [0, 1, 4]}, "same number of query heads"),
        ({0: list(range(8))}, "removing all 8 heads"),
        ({0: [1, 1]}, "duplicate"),
        ({0: [8]}, "out of range"),
        ({0: [-1]}, "out of range"),
        ({2: [0]}, "layer 2 out of range"),
    ],
)
def test_removal_errors_leave_model_unchanged(heads, match):
    model = tiny_model("gqa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        remove_heads(model, {1: [0, 4], **heads})  # layer 1's valid part must not be applied
    assert n_heads(model) == [8, 8]
    assert model.config.num_attention_heads == 8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("heads, exc", [([0], TypeError), ({0: [1.0]}, TypeError), ({"0": [1]}, TypeError),
                                        ({0: True}, TypeError), ({0: [True]}, TypeError)])
def test_removal_type_errors(heads, exc):
    with pytest.raises(exc):
        remove_heads(tiny_model("mha"), heads)


def test_removal_refuses_reparametrized_weights():
    model = tiny_model("mha")
    torch.nn.utils.prune.random_unstructured(model.model.layers[0].self_attn.q_proj, "weight", amount=0.5)
    with pytest.raises(ValueError, match="re-parametrization"):
        remove_heads(model, {0: [1]})


def test_non_llama_model_is_rejected():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16))
    for call in (lambda: remove_heads(gpt2, {0: [0]}), lambda: add_head_gates(gpt2),
                 lambda: head_importance(gpt2, rand_batches(1), "gradient"),
                 lambda: head_importance(gpt2, None, "norm")):
        with pytest.raises(ValueError, match="Llama layout"):
            call()


# ----------------------------------------------------------------------------- properties

_GQA = tiny_model("gqa")          # H=8, K=2: groups of 4
_QWEN = tiny_model("qwen2")       # H=8, K=4: groups of 2, biases
_IDS = rand_ids(1, 8)


@pytest.mark.filterwarnings("ignore:the pruned model runs")
@settings(max_examples=25, deadline=None)
@given(data=st.data(), which=st.sampled_from(["gqa", "qwen2"]))
def test_property_any_valid_gqa_plan_equals_gated_model(data, which):
    base = _GQA if which == "gqa" else _QWEN
    n_kv = base.config.num_key_value_heads
    group = 8 // n_kv
    plan = {}
    for layer in (0, 1):
        # drop some whole groups (never all), then the same number r of heads from each other group
        dropped = data.draw(st.sets(st.integers(0, n_kv - 1), max_size=n_kv - 1), label=f"groups{layer}")
        r = data.draw(st.integers(0, group - 1), label=f"r{layer}")
        removed = [h for g in dropped for h in range(g * group, (g + 1) * group)]
        for g in sorted(set(range(n_kv)) - dropped):
            removed += data.draw(st.permutations(range(g * group, (g + 1) * group)), label=f"perm{layer}{g}")[:r]
        plan[layer] = removed
    model = copy.deepcopy(base)
    with torch.no_grad():
        with head_mask(model, plan):
            gated = model(_IDS).logits
        remove_heads(model, plan)
        torch.testing.assert_close(model(_IDS).logits, gated, rtol=0, atol=1e-5)
    assert n_heads(model) == [8 - len(plan[0]), 8 - len(plan[1])]


@pytest.mark.filterwarnings("ignore:the pruned model runs")
@settings(max_examples=25, deadline=None)
@given(removed=st.sets(st.integers(0, 7), max_size=8), which=st.sampled_from(["gqa", "qwen2"]))
def test_property_removal_accepted_iff_gqa_rule_holds(removed, which):
    base = _GQA if which == "gqa" else _QWEN
    model = copy.deepcopy(base)
    if gqa_plan_is_valid(8, base.config.num_key_value_heads, removed):
        remove_heads(model, {0: sorted(removed)})
        assert n_heads(model) == [8 - len(removed), 8]
    else:
        with pytest.raises(ValueError):
            remove_heads(model, {0: sorted(removed)})
        assert n_heads(model) == [8, 8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gates_importance_and_removal():
    model = tiny_model("qwen2").cuda()
    batches = [{"input_ids": rand_ids()}]  # CPU batches are moved to the model's device
    scores = head_importance(model, batches, method="gradient")
    assert scores.shape == (2, 8) and scores.device.type == "cpu" and (scores > 0).all()
    plan = {0: [0, 2, 4, 6], 1: [0, 1]}
    ids = rand_ids().cuda()
    with torch.no_grad():
        with head_mask(model, plan):
            gated = model(ids).logits
        remove_heads(model, plan)
        torch.testing.assert_close(model(ids).logits, gated, rtol=0, atol=1e-4)
    assert model.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
