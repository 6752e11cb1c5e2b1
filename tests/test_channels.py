"""FFN channel importance, channel masks and physical channel removal.

Oracles: the MLP recomputed by hand from its input (activation score), retain_grad on
down_proj's input (Taylor score), a per-channel loop (norm score), zeroed down_proj
columns (the mask) and the masked model (the physical removal).
"""

import copy

import pytest
import torch
import torch.nn.utils.prune
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from course_lib.pruning.channels import (
    channel_gates,
    channel_importance,
    channel_mask,
    remove_ffn_channels,
)

KINDS = ("mha", "gqa", "mistral", "qwen2")


def rand_ids(b=2, t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (b, t), generator=g)


def rand_batches(n=2, b=2, t=10):
    return [{"input_ids": rand_ids(b, t, seed=10 + i)} for i in range(n)]


def down_cols_zeroed(model, channels):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer, cs in channels.items():
            m.model.layers[layer].mlp.down_proj.weight[:, cs] = 0
    return m


def widths(model):
    return [layer.mlp.down_proj.in_features for layer in model.model.layers]


# ----------------------------------------------------------------------------- mask / gates


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_channel_mask_equals_zeroed_down_proj_columns(kind):
    model = tiny_model(kind)
    ids = rand_ids()
    chans = {0: [0, 5, 95], 1: list(range(40))}
    with torch.no_grad():
        plain = model(ids).logits
        with channel_mask(model, chans) as gates:
            assert [g.numel() for g in gates] == [96, 96]
            masked = model(ids).logits
        assert torch.equal(model(ids).logits, plain)  # hooks removed
        oracle = down_cols_zeroed(model, chans)(ids).logits
    torch.testing.assert_close(masked, oracle, rtol=0, atol=1e-6)
    assert not torch.allclose(masked, plain)
    assert all(len(layer.mlp.down_proj._forward_pre_hooks) == 0 for layer in model.model.layers)


def test_channel_gates_at_one_are_identity():
    model = tiny_model("gqa")
    ids = rand_ids()
    with torch.no_grad():
        plain = model(ids).logits
        with channel_gates(model):
            assert torch.equal(model(ids).logits, plain)


# ----------------------------------------------------------------------------- importance


def test_activation_importance_is_mean_abs_of_recomputed_mlp_activation():
    model = tiny_model("gqa")
    batches = rand_batches(2)
    scores = channel_importance(model, batches, method="activation")
    # oracle: capture each MLP's input x and recompute act_fn(gate(x)) * up(x) by hand
    sums, count = torch.zeros(2, 96, dtype=torch.float64), 0
    with torch.no_grad():
        for b in batches:
            xs = {}
            hooks = [layer.mlp.register_forward_pre_hook(lambda mod, args, i=i: xs.__setitem__(i, args[0]))
                     for i, layer in enumerate(model.model.layers)]
            model(b["input_ids"])
            for h in hooks:
                h.remove()
            for i, x in xs.items():
                mlp = model.model.layers[i].mlp
                a = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
                sums[i] += a.abs().double().sum(dim=(0, 1))
            count += b["input_ids"].numel()
    torch.testing.assert_close(scores, (sums / count).float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_taylor_importance_is_abs_sum_of_activation_times_gradient(kind):
    model = tiny_model(kind)
    batches = rand_batches(2)
    scores = channel_importance(model, batches, method="taylor")
    expect = torch.zeros(2, 96)
    for b in batches:
        acts = {}
        hooks = [layer.mlp.down_proj.register_forward_pre_hook(
            lambda mod, args, i=i: acts.__setitem__(i, args[0]) or args[0].retain_grad())
            for i, layer in enumerate(model.model.layers)]
        model(b["input_ids"], labels=b["input_ids"]).loss.backward()
        for h in hooks:
            h.remove()
        for i, a in acts.items():  # a: [B, T, I]
            expect[i] += (a * a.grad).sum(dim=(0, 1)).abs().detach()
    assert expect.min() > 0
    torch.testing.assert_close(scores, expect, rtol=1e-4, atol=1e-9)


def test_norm_importance_is_l2_norm_of_down_proj_columns():
    model = tiny_model("gqa")
    scores = channel_importance(model, None, method="norm")
    assert scores.shape == (2, 96)
    for i, layer in enumerate(model.model.layers):
        for j in (0, 17, 95):
            assert scores[i, j].item() == pytest.approx(layer.mlp.down_proj.weight[:, j].norm().item(), rel=1e-6)


def test_importance_no_side_effects_and_nan_padding():
    model = tiny_model("gqa")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("activation", "taylor", "norm"):
        channel_importance(model, rand_batches(1), method=method)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(layer.mlp.down_proj._forward_pre_hooks) == 0 for layer in model.model.layers)
    remove_ffn_channels(model, {1: list(range(10))})
    scores = channel_importance(model, rand_batches(1), method="activation")
    assert scores.shape == (2, 96) and torch.isnan(scores[1, 86:]).all() and not torch.isnan(scores[:, :86]).any()


def test_importance_rejects_bad_input():
    model = tiny_model("gqa")
    with pytest.raises(ValueError, match="method must be one of"):
        channel_importance(model, rand_batches(1), method="gradient")
    with pytest.raises(ValueError, match="empty"):
        channel_importance(model, [], method="activation")
    with pytest.raises(ValueError, match="only 'input_ids'"):
        channel_importance(model, [{"input_ids": rand_ids(), "labels": rand_ids()}], method="taylor")


# ----------------------------------------------------------------------------- removal


@pytest.mark.parametrize("kind", KINDS)
def test_removal_equals_masked_model(kind):
    model = tiny_model(kind)
    ids = rand_ids()
    chans = {0: [0, 3, 50, 95], 1: list(range(10, 70))}
    with torch.no_grad():
        plain = model(ids).logits
        with channel_mask(model, chans):
            masked = model(ids).logits
        remove_ffn_channels(model, chans)
        pruned = model(ids).logits
    torch.testing.assert_close(pruned, masked, rtol=0, atol=1e-5)
    assert not torch.allclose(pruned, plain, atol=1e-4)
    assert widths(model) == [92, 36]
    assert [layer.mlp.intermediate_size for layer in model.model.layers] == [92, 36]
    assert model.config.intermediate_size == 96  # non-uniform: config untouched


def test_removal_slices_rows_and_columns_including_biases():
    model = tiny_model("gqa", mlp_bias=True)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.bias.normal_()
            layer.mlp.up_proj.bias.normal_()
            layer.mlp.down_proj.bias.normal_()
    old = copy.deepcopy(model.model.layers[0].mlp)
    ids = rand_ids()
    with torch.no_grad(), channel_mask(model, {0: [1, 2, 90]}):
        masked = model(ids).logits
    remove_ffn_channels(model, {0: [1, 2, 90]})
    mlp = model.model.layers[0].mlp
    kept = torch.tensor([j for j in range(96) if j not in (1, 2, 90)])
    for name in ("gate_proj", "up_proj"):
        assert torch.equal(getattr(mlp, name).weight, getattr(old, name).weight[kept])
        assert torch.equal(getattr(mlp, name).bias, getattr(old, name).bias[kept])
    assert torch.equal(mlp.down_proj.weight, old.down_proj.weight[:, kept])
    assert torch.equal(mlp.down_proj.bias, old.down_proj.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked, rtol=0, atol=1e-5)


def test_uniform_removal_updates_config():
    model = tiny_model("qwen2")
    remove_ffn_channels(model, {0: list(range(32)), 1: list(range(64, 96))})
    assert model.config.intermediate_size == 64
    assert widths(model) == [64, 64]


@pytest.mark.parametrize(
    "chans, exc, match",
    [
        ({0: list(range(96))}, ValueError, "removing all 96 channels"),
        ({0: [96]}, ValueError, "out of range"),
        ({0: [-1]}, ValueError, "out of range"),
        ({0: [3, 3]}, ValueError, "duplicate"),
        ({5: [0]}, ValueError, "layer 5 out of range"),
        ({0: [0.5]}, TypeError, "ints"),
        ([0, 1], TypeError, "dict"),
    ],
)
def test_removal_errors_leave_model_unchanged(chans, exc, match):
    model = tiny_model("gqa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=match):
        remove_ffn_channels(model, {1: [0, 1], **chans} if isinstance(chans, dict) else chans)
    assert widths(model) == [96, 96]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_removal_accepts_tensor_indices_and_refuses_reparametrized_weights():
    model = tiny_model("gqa")
    remove_ffn_channels(model, {0: torch.tensor([4, 2])})
    assert widths(model) == [94, 96]
    torch.nn.utils.prune.l1_unstructured(model.model.layers[1].mlp.up_proj, "weight", amount=0.3)
    with pytest.raises(ValueError, match="re-parametrization"):
        remove_ffn_channels(model, {1: [0]})


def test_non_llama_model_is_rejected():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16))
    for call in (lambda: remove_ffn_channels(gpt2, {0: [0]}), lambda: channel_gates(gpt2),
                 lambda: channel_mask(gpt2, {0: [0]}),
                 lambda: channel_importance(gpt2, rand_batches(1), "activation")):
        with pytest.raises(ValueError, match="Llama layout"):
            call()


# ----------------------------------------------------------------------------- property

_BASE = tiny_model("qwen2")
_IDS = rand_ids(1, 8)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sets(st.integers(0, 95), max_size=95), min_size=2, max_size=2))
def test_property_any_removal_equals_masked_model(removed):
    model = copy.deepcopy(_BASE)
    chans = {i: sorted(s) for i, s in enumerate(removed)}
    with torch.no_grad():
        with channel_mask(model, chans):
            masked = model(_IDS).logits
        remove_ffn_channels(model, chans)
        torch.testing.assert_close(model(_IDS).logits, masked, rtol=0, atol=1e-5)
    assert widths(model) == [96 - len(s) for s in removed]


# ----------------------------------------------------------------------------- bias compensation (FLAP)

from course_lib.pruning import load_pruned, save_pruned  # noqa: E402
from course_lib.pruning.channels import (  # noqa: E402
    channel_fluctuation,
    channel_mean_mask,
    channel_means,
    compensation_biases,
    remove_ffn_channels_compensated,
)


def mlp_inputs(model, batches):
    """Every layer's MLP input on every calibration token: ``{layer: [N, hidden]}``."""
    xs = {i: [] for i in range(len(model.model.layers))}
    hooks = [layer.mlp.register_forward_pre_hook(lambda mod, args, i=i: xs[i].append(args[0].reshape(-1, 64)))
             for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for b in batches:
            model(b["input_ids"])
    for h in hooks:
        h.remove()
    return {i: torch.cat(v) for i, v in xs.items()}


def test_channel_means_and_fluctuation_against_recomputed_activations():
    model = tiny_model("qwen2")
    batches = rand_batches(2)
    xs = mlp_inputs(model, batches)
    means, fluct = channel_means(model, batches), channel_fluctuation(model, batches)
    for i, x in xs.items():
        mlp = model.model.layers[i].mlp
        a = (torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)).double()  # [N, I]
        torch.testing.assert_close(means[i], a.mean(0).float(), rtol=1e-5, atol=1e-7)
        expect = a.var(0, unbiased=True) * mlp.down_proj.weight.double().pow(2).sum(0)
        torch.testing.assert_close(fluct[i], expect.float(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_compensated_removal_equals_mean_filled_model(kind):
    model = tiny_model(kind)
    batches = rand_batches(2)
    means = channel_means(model, batches)
    chans = {0: [0, 3, 50, 95], 1: list(range(10, 70))}
    ids = rand_ids()
    with torch.no_grad():
        plain = model(ids).logits
        with channel_mean_mask(model, chans, means):
            filled = model(ids).logits
        with channel_mask(model, chans):
            zeroed = model(ids).logits
        biases = remove_ffn_channels_compensated(model, chans, means)
        pruned = model(ids).logits
    torch.testing.assert_close(pruned, filled, rtol=0, atol=1e-5)
    assert not torch.allclose(pruned, zeroed, atol=1e-4) and not torch.allclose(pruned, plain, atol=1e-4)
    assert widths(model) == [92, 36] and set(biases) == {0, 1}
    if kind in ("mha", "gqa"):  # Llama: the config now builds biases on every MLP linear
        assert model.config.mlp_bias is True
        assert all(getattr(layer.mlp, n).bias is not None for layer in model.model.layers
                   for n in ("gate_proj", "up_proj", "down_proj"))


def test_compensation_is_exact_for_constant_channels():
    # Llama with MLP biases; channels whose gate/up rows are zero output a_j = silu(b_gate) * b_up
    # on every token, so replacing them by their mean changes nothing
    model = tiny_model("gqa", mlp_bias=True)
    const = {0: [2, 7, 40], 1: list(range(30))}
    with torch.no_grad():
        for i, cs in const.items():
            mlp = model.model.layers[i].mlp
            for name in ("gate_proj", "up_proj"):
                getattr(mlp, name).weight[cs] = 0
                getattr(mlp, name).bias[cs] = torch.randn(len(cs))
    batches = rand_batches(1)
    means = channel_means(model, batches)
    for i, cs in const.items():
        mlp = model.model.layers[i].mlp
        expect = torch.nn.functional.silu(mlp.gate_proj.bias[cs]) * mlp.up_proj.bias[cs]
        torch.testing.assert_close(means[i, cs], expect.detach(), rtol=1e-5, atol=1e-6)
        assert channel_fluctuation(model, batches)[i, cs].abs().max() < 1e-9
    ids = rand_ids()
    with torch.no_grad():
        plain = model(ids).logits
        uncompensated = copy.deepcopy(model)
        remove_ffn_channels(uncompensated, const)
        remove_ffn_channels_compensated(model, const, means)
        torch.testing.assert_close(model(ids).logits, plain, rtol=0, atol=2e-5)
        assert not torch.allclose(uncompensated(ids).logits, plain, atol=1e-3)


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_compensation_lowers_calibration_output_error_by_the_bias_norm(kind):
    # per layer, on the calibration tokens: error without compensation = mean ||r_t||^2 with r_t the
    # removed channels' contribution; with it, mean ||r_t - mean r||^2 = that minus ||bias||^2
    model = tiny_model(kind)
    batches = rand_batches(2)
    xs = mlp_inputs(model, batches)
    chans = {0: list(range(0, 96, 2)), 1: list(range(48))}
    means = channel_means(model, batches)
    with torch.no_grad():
        dense = {i: model.model.layers[i].mlp(x) for i, x in xs.items()}
        plain, comp = copy.deepcopy(model), copy.deepcopy(model)
        remove_ffn_channels(plain, chans)
        biases = remove_ffn_channels_compensated(comp, chans, means)
        for i, x in xs.items():
            err_plain = (plain.model.layers[i].mlp(x) - dense[i]).pow(2).sum(-1).mean().item()
            err_comp = (comp.model.layers[i].mlp(x) - dense[i]).pow(2).sum(-1).mean().item()
            assert err_comp < err_plain
            assert err_plain - err_comp == pytest.approx(biases[i].pow(2).sum().item(), rel=1e-3)
    torch.testing.assert_close(compensation_biases(model, chans, means)[1], biases[1])


@pytest.mark.parametrize("kind", ["gqa", "mistral", "qwen2"])
def test_compensated_model_saves_and_reloads(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(kind)
    means = channel_means(model, rand_batches(1))
    ids = rand_ids()
    uneven = copy.deepcopy(model)
    remove_ffn_channels_compensated(uneven, {0: [1, 2, 3], 1: list(range(40))}, means)
    with torch.no_grad():
        save_pruned(uneven, tmp_path / "uneven")
        torch.testing.assert_close(load_pruned(tmp_path / "uneven")(ids).logits, uneven(ids).logits, rtol=0, atol=0)
        if kind == "gqa":  # uniform widths + config.mlp_bias: plain from_pretrained works too
            remove_ffn_channels_compensated(model, {0: list(range(16)), 1: list(range(16, 32))}, means)
            model.save_pretrained(tmp_path / "hf")
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_compensation_rejects_bad_means_and_changes_nothing():
    model = tiny_model("gqa")
    means = channel_means(model, rand_batches(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_nan = means.clone()
    bad_nan[1, 5] = float("nan")
    for m, exc, match in [(means[:1], ValueError, "shape"), (means[:, :50], ValueError, "shape"),
                          (bad_nan, ValueError, "NaN"), (means.tolist(), TypeError, "float tensor"),
                          (means.long(), TypeError, "float tensor")]:
        with pytest.raises(exc, match=match):
            remove_ffn_channels_compensated(model, {1: [0, 1]}, m)
    with pytest.raises(ValueError, match="removing all 96"):
        remove_ffn_channels_compensated(model, {0: list(range(96))}, means)
    with pytest.raises(ValueError, match="duplicate"):
        channel_mean_mask(model, {0: [1, 1]}, means)
    assert widths(model) == [96, 96] and model.config.mlp_bias is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(layer.mlp.down_proj._forward_pre_hooks) == 0 for layer in model.model.layers)


def test_recorded_down_bias_must_be_true(tmp_path):
    import json

    model = tiny_model("qwen2")
    remove_ffn_channels_compensated(model, {0: [1, 2]}, channel_means(model, rand_batches(1)))
    save_pruned(model, tmp_path)
    record = json.loads((tmp_path / "pruned_structure.json").read_text())
    assert [layer.get("down_proj_bias") for layer in record["layers"]] == [True, None]
    record["layers"][0]["down_proj_bias"] = False
    (tmp_path / "pruned_structure.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="must be true"):
        load_pruned(tmp_path)
