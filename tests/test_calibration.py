"""The layer-by-layer driver and the calibration statistics, against the full model."""

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.model import prunable_linears
from course_lib.pruning.calibration import (
    ChannelNormStats,
    HessianStats,
    capture_layer_inputs,
    check_calib_batches,
    check_pattern,
    input_channel_norms,
    layerwise_hidden_states,
    layerwise_prune,
)


def random_batches(n_batches=2, batch_size=2, seq_len=12, vocab=97, pad_first=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        batch = {"input_ids": torch.randint(0, vocab, (batch_size, seq_len), generator=g)}
        if pad_first:
            am = torch.ones(batch_size, seq_len, dtype=torch.long)
            am[0, :pad_first] = 0  # left padding in the first sequence
            batch["attention_mask"] = am
        out.append(batch)
    return out


def full_model_hidden_states(model, batch):
    with torch.no_grad():
        return model(**batch, output_hidden_states=True, use_cache=False).hidden_states


MODELS = {
    "mha": lambda: tiny_model("mha"),
    "gqa": lambda: tiny_model("gqa"),
    "qwen2": lambda: tiny_model("qwen2"),
    # one full and one sliding-window layer: each layer must get its own attention mask
    "qwen2-sliding": lambda: tiny_model("qwen2", use_sliding_window=True, sliding_window=4,
                                        layer_types=["full_attention", "sliding_attention"]),
    "mistral-sliding": lambda: tiny_model("mistral", sliding_window=4),
    "gqa-eager": lambda: tiny_model("gqa", _attn_implementation="eager"),
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("pad", [0, 3])
def test_layerwise_outputs_equal_full_model_hidden_states(kind, pad):
    model = MODELS[kind]()
    batches = random_batches(pad_first=pad)
    outs = layerwise_hidden_states(model, batches)
    n_layers = len(model.model.layers)
    assert len(outs) == n_layers
    for b, batch in enumerate(batches):
        ref = full_model_hidden_states(model, batch)  # (embeddings, layer 0, ..., norm(last layer))
        for i in range(n_layers - 1):
            torch.testing.assert_close(outs[i][b], ref[i + 1], rtol=0, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(model.model.norm(outs[-1][b]), ref[-1], rtol=0, atol=1e-6)


def test_sliding_layers_receive_their_own_mask():
    model = MODELS["qwen2-sliding"]()
    _, layer_args = capture_layer_inputs(model, random_batches(n_batches=1, seq_len=12, pad_first=3))
    full = layer_args[0][0][1]["attention_mask"]
    sliding = layer_args[1][0][1]["attention_mask"]
    assert full is not None and sliding is not None and not torch.equal(full, sliding)


def test_capture_leaves_the_model_untouched():
    model = tiny_model("gqa")
    batches = random_batches()
    before = full_model_hidden_states(model, batches[0])[-1]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    layerwise_hidden_states(model, batches, device="cpu")
    assert model.training
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.eval()
    torch.testing.assert_close(full_model_hidden_states(model, batches[0])[-1], before, rtol=0, atol=0)


def test_existing_instance_forward_is_restored():
    model = tiny_model("gqa")
    layer = model.model.layers[1]
    calls = []
    original = layer.forward

    def wrapped(*args, **kwargs):  # stands in for e.g. an accelerate hook
        calls.append(1)
        return original(*args, **kwargs)

    layer.forward = wrapped
    layerwise_hidden_states(model, random_batches(n_batches=1))
    assert layer.__dict__["forward"] is wrapped
    calls.clear()
    model(input_ids=torch.zeros(1, 4, dtype=torch.long))
    assert calls


def inputs_by_hook(model, batches, names):
    """Independent oracle: store every input of each linear, cut out the padding afterwards."""
    modules = dict(model.named_modules())
    store = {n: [] for n in names}
    handles = [modules[n].register_forward_pre_hook(lambda mod, args, n=n: store[n].append(args[0].detach()))
               for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        rows = []
        for x, batch in zip(store[n], batches):
            keep = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()  # [B, T]
            rows.append(x[keep])  # [n_real_tokens, in]
        out[n] = torch.cat(rows).double()
    return out


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
@pytest.mark.parametrize("pad", [0, 3])
def test_input_channel_norms_match_stored_inputs(kind, pad):
    model = tiny_model(kind)
    batches = random_batches(pad_first=pad)
    norms = input_channel_norms(model, batches)
    names = list(prunable_linears(model))
    assert set(norms) == set(names)
    xs = inputs_by_hook(model, batches, names)
    for name in names:
        assert norms[name].shape == (prunable_linears(model)[name].in_features,)
        torch.testing.assert_close(norms[name].double(), torch.linalg.vector_norm(xs[name], dim=0),
                                   rtol=1e-5, atol=1e-6)


def test_q_proj_norms_from_output_hidden_states():
    """Second oracle, no hooks at all: q_proj's input is input_layernorm(hidden_states[i])."""
    model = tiny_model("gqa")
    batches = random_batches()
    norms = input_channel_norms(model, batches, targets=["q_proj"])
    for i, layer in enumerate(model.model.layers):
        with torch.no_grad():
            xs = torch.cat([layer.input_layernorm(full_model_hidden_states(model, b)[i]).reshape(-1, 64)
                            for b in batches])
        torch.testing.assert_close(norms[f"model.layers.{i}.self_attn.q_proj"], xs.norm(dim=0), rtol=1e-5, atol=1e-6)


def test_layerwise_statistics_of_unpruned_model_match_full_forward():
    model = tiny_model("qwen2")
    batches = random_batches(pad_first=2)
    collected = {}

    def prune_linear(name, linear, stats):
        collected[name] = stats.norms()
        return torch.ones_like(linear.weight, dtype=torch.bool)

    masks = layerwise_prune(model, batches, lambda lin: ChannelNormStats(lin.in_features), prune_linear)
    ref = input_channel_norms(model, batches)
    assert set(masks) == set(ref) == set(collected)
    for name in ref:
        torch.testing.assert_close(collected[name], ref[name], rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 7), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_hessian_stats_is_two_over_n_xtx(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(k, 5, generator=g) for k in sizes]
    stats = HessianStats(5)
    for x in xs:
        stats.add(x)
    x = torch.cat(xs).double()
    if x.shape[0] == 0:
        assert stats.n_tokens == 0 and not stats.H.any()
        return
    torch.testing.assert_close(stats.H.double(), 2 * x.T @ x / x.shape[0], rtol=1e-5, atol=1e-6)


def test_layerwise_prune_rejects_linears_outside_decoder_layers():
    model = tiny_model("gqa")
    with pytest.raises(ValueError, match="decoder-layer"):
        layerwise_prune(model, random_batches(), lambda lin: None, lambda *a: None, targets=["lm_head"])


def test_layerwise_prune_rejects_bad_masks():
    model = tiny_model("gqa")
    with pytest.raises(RuntimeError, match="bool"):
        layerwise_prune(model, random_batches(), lambda lin: ChannelNormStats(lin.in_features),
                        lambda name, lin, stats: torch.ones_like(lin.weight))


def test_non_llama_model_is_refused():
    with pytest.raises(ValueError, match="Llama layout"):
        layerwise_hidden_states(torch.nn.Linear(3, 3), random_batches())


@pytest.mark.parametrize("bad, err", [
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, TypeError),  # a single batch
    ([], ValueError),
    ([torch.zeros(2, 3, dtype=torch.long)], TypeError),
    ([{"input_ids": torch.zeros(2, 3)}], TypeError),  # float ids
    ([{"input_ids": torch.zeros(6, dtype=torch.long)}], TypeError),  # 1-D
    ([{"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)}], ValueError),
    ([{"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3)}], ValueError),
])
def test_bad_calibration_batches(bad, err):
    with pytest.raises(err):
        check_calib_batches(bad)


def test_check_pattern():
    assert check_pattern(sparsity=0.5) == (0.5, None, None)
    assert check_pattern(n=2, m=4) == (None, 2, 4)
    for kwargs in ({}, {"sparsity": 0.5, "n": 2, "m": 4}, {"n": 2}, {"m": 4}, {"sparsity": 1.0},
                   {"n": 4, "m": 4}, {"n": 0, "m": 4}):
        with pytest.raises(ValueError):
            check_pattern(**kwargs)
    with pytest.raises(TypeError):
        check_pattern(n=2.0, m=4)
