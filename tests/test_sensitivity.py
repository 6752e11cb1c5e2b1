"""course_lib.sensitivity: the scan equals pruning a fresh copy one module at a time."""

import copy
import math

import pytest
import torch
from conftest import tiny_model

from course_lib.evaluation import perplexity
from course_lib.model import DECODER_LINEARS, prunable_linears
from course_lib.pruning.magnitude import magnitude_prune
from course_lib.sensitivity import as_grid, module_name, sensitivity_scan

VOCAB = 97  # the tiny models' vocabulary


def _stream(n=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=gen)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_matches_pruning_a_fresh_copy(kind):
    model = tiny_model(kind)
    tokens = _stream()
    scan = sensitivity_scan(model, 0.7, tokens=tokens, max_tokens=None, progress=False)
    assert list(scan) == [(layer, t) for layer in range(2) for t in DECODER_LINEARS]
    for (layer, t), ppl in scan.items():
        oracle = copy.deepcopy(model)
        magnitude_prune(oracle, 0.7, targets=[module_name(layer, t)])
        assert ppl == pytest.approx(perplexity(oracle, tokens=tokens), rel=1e-9)


def test_model_unchanged_and_zero_sparsity_is_dense():
    model = tiny_model("gqa")
    state = _state(model)
    tokens = _stream()
    dense = perplexity(model, tokens=tokens)
    scan = sensitivity_scan(model, 0.0, tokens=tokens, progress=False)
    assert all(v == pytest.approx(dense, rel=1e-12) for v in scan.values())
    sensitivity_scan(model, 0.9, tokens=tokens, progress=False)
    assert _same_state(model, state)


def test_pruning_hurts_more_at_higher_sparsity_somewhere():
    model = tiny_model("mha")
    tokens = _stream()
    dense = perplexity(model, tokens=tokens)
    scan = sensitivity_scan(model, 0.95, tokens=tokens, progress=False)
    assert max(abs(v - dense) for v in scan.values()) > 0


def test_restores_weights_when_evaluation_fails():
    model = tiny_model("gqa")
    state = _state(model)
    calls = {"n": 0}

    def failing_mask(weight, sparsity):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        mask = torch.ones_like(weight, dtype=torch.bool)
        mask[0] = False
        return mask

    with pytest.raises(RuntimeError, match="boom"):
        sensitivity_scan(model, 0.5, tokens=_stream(), mask_fn=failing_mask, progress=False)
    assert _same_state(model, state)


def test_custom_mask_fn_is_used_and_subsets():
    model = tiny_model("gqa")
    tokens = _stream()
    seen = []

    def row_mask(weight, sparsity):
        seen.append(tuple(weight.shape))
        mask = torch.ones_like(weight, dtype=torch.bool)
        mask[: weight.shape[0] // 2] = False
        return mask

    scan = sensitivity_scan(model, 0.5, tokens=tokens, layers=[1], module_types=["v_proj", "down_proj"],
                            mask_fn=row_mask, progress=False)
    assert list(scan) == [(1, "v_proj"), (1, "down_proj")]
    linears = prunable_linears(model)
    assert seen == [tuple(linears["model.layers.1.self_attn.v_proj"].weight.shape),
                    tuple(linears["model.layers.1.mlp.down_proj"].weight.shape)]
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        w = prunable_linears(oracle)["model.layers.1.mlp.down_proj"].weight
        w[: w.shape[0] // 2] = 0
    assert scan[(1, "down_proj")] == pytest.approx(perplexity(oracle, tokens=tokens), rel=1e-9)


def test_max_tokens_is_passed_on():
    model = tiny_model("gqa")
    tokens = _stream(600)
    scan = sensitivity_scan(model, 0.5, tokens=tokens, max_tokens=100, layers=0, module_types="q_proj",
                            progress=False)
    oracle = copy.deepcopy(model)
    magnitude_prune(oracle, 0.5, targets=["model.layers.0.self_attn.q_proj"])
    assert scan[(0, "q_proj")] == pytest.approx(perplexity(oracle, tokens=tokens[:100]), rel=1e-9)


def test_as_grid():
    scan = {(0, "q_proj"): 1.0, (0, "up_proj"): 2.0, (2, "q_proj"): 3.0}
    grid, layers, types = as_grid(scan)
    assert layers == [0, 2] and types == ["q_proj", "up_proj"]
    assert grid[0].tolist() == [1.0, 2.0] and grid[1, 0] == 3.0 and math.isnan(grid[1, 1])
    with pytest.raises(ValueError):
        as_grid({})


def test_bad_input():
    model = tiny_model("gqa")
    tokens = _stream()
    with pytest.raises(ValueError, match="out of range"):
        sensitivity_scan(model, 0.5, tokens=tokens, layers=[2], progress=False)
    with pytest.raises(TypeError):
        sensitivity_scan(model, 0.5, tokens=tokens, layers=["0"], progress=False)
    with pytest.raises(ValueError, match="not one of"):
        sensitivity_scan(model, 0.5, tokens=tokens, module_types=["lm_head"], progress=False)
    with pytest.raises(ValueError):
        sensitivity_scan(model, 1.0, tokens=tokens, progress=False)
    with pytest.raises(TypeError):
        sensitivity_scan(model, 0.5, tokens=tokens, mask_fn="magnitude", progress=False)
    with pytest.raises(TypeError, match="bool mask"):
        sensitivity_scan(model, 0.5, tokens=tokens, mask_fn=lambda w, s: (w != 0).float(), layers=0,
                         module_types="q_proj", progress=False)
    with pytest.raises(ValueError, match="Llama layout"):
        sensitivity_scan(torch.nn.Linear(2, 2), 0.5, tokens=tokens, progress=False)
    with pytest.raises(ValueError, match="module_type"):
        module_name(0, "gate")


def test_refuses_torch_prune_reparametrisation():
    from torch.nn.utils import prune

    model = tiny_model("gqa")
    prune.l1_unstructured(model.model.layers[0].self_attn.q_proj, "weight", amount=0.3)
    with pytest.raises(ValueError, match="make_permanent"):
        sensitivity_scan(model, 0.5, tokens=_stream(), progress=False)


def test_allocate_sparsity_keeps_the_total_and_spares_the_sensitive():
    import pytest as _pytest

    from course_lib.sensitivity import allocate_sparsity

    scan = {(0, "a"): 3.0, (0, "b"): 1.5, (1, "a"): 2.0, (1, "b"): 1.1}
    sizes = {(0, "a"): 100, (0, "b"): 300, (1, "a"): 200, (1, "b"): 400}
    alloc = allocate_sparsity(scan, sizes, 0.7, spread=0.1)
    assert list(alloc) == list(scan)
    # (0, a) then (1, a) then (0, b) are needed to hold half of the 1000 weights
    assert alloc[0, "a"] == alloc[1, "a"] == alloc[0, "b"] == _pytest.approx(0.6)
    assert alloc[1, "b"] == _pytest.approx((0.7 * 1000 - 0.6 * 600) / 400)
    assert sum(alloc[k] * sizes[k] for k in scan) == _pytest.approx(0.7 * 1000)
    assert allocate_sparsity(scan, sizes, 0.5, spread=0.0) == {k: 0.5 for k in scan}
    with _pytest.raises(ValueError):
        allocate_sparsity(scan, sizes, 0.9, spread=0.5)  # spread larger than... the rest would exceed 1
    with _pytest.raises(ValueError):
        allocate_sparsity(scan, {(0, "a"): 1}, 0.5)
    with _pytest.raises(ValueError):
        allocate_sparsity({(0, "a"): 1.0}, {(0, "a"): 10}, 0.5)
