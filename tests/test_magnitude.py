"""Magnitude pruning against torch.nn.utils.prune, plus ties, exact counts and big tensors."""

import copy
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from conftest import tiny_model
from course_lib.model import prunable_linears
from course_lib.pruning.common import apply_masks, n_to_remove
from course_lib.pruning.magnitude import (
    keep_mask_from_scores,
    magnitude_mask,
    magnitude_prune,
    magnitude_scores,
    make_permanent,
    masks_from_torch_prune,
    to_torch_prune,
)

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def stable_sort_reference(weight, sparsity):
    """Independent reference of the documented rule: remove the first k of a stable
    ascending sort of |w| (ties: lower flat index first)."""
    scores = weight.detach().abs().double().flatten()
    k = int(round(sparsity * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores, stable=True).indices[:k]] = False
    return keep.reshape(weight.shape)


def distinct_weight(shape, dtype, seed=0):
    """Weights whose magnitudes are all different, exactly representable in fp16/bf16."""
    g = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    assert numel <= 256  # integers up to 256 are exact in bf16 (8-bit mantissa)
    mags = (torch.randperm(numel, generator=g) + 1).double()
    signs = torch.randint(0, 2, (numel,), generator=g).double() * 2 - 1
    return (mags * signs / 64).reshape(shape).to(dtype)


# ---------------------------------------------------------------------------------------
# oracles


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.95])
@pytest.mark.parametrize("shape", [(23, 37), (64, 16), (5,)])
def test_mask_matches_l1_unstructured(sparsity, shape):
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(torch.randn(shape))  # continuous: no ties
    expected = prune.l1_unstructured(copy.deepcopy(layer), "weight", amount=sparsity).weight_mask.bool()
    got = magnitude_mask(layer.weight, sparsity)
    assert got.dtype == torch.bool and got.shape == layer.weight.shape
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_mask_matches_l1_unstructured_low_precision(dtype):
    layer = nn.Linear(16, 12).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(distinct_weight((12, 16), dtype))
    expected = prune.l1_unstructured(copy.deepcopy(layer), "weight", amount=0.6).weight_mask.bool()
    assert torch.equal(magnitude_mask(layer.weight, 0.6), expected)


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layer_scope_matches_l1_unstructured_on_model(kind, sparsity):
    model, oracle = tiny_model(kind), tiny_model(kind)
    masks = magnitude_prune(model, sparsity, scope="layer")
    for name, mod in prunable_linears(oracle).items():
        prune.l1_unstructured(mod, "weight", amount=sparsity)
        assert torch.equal(masks[name], mod.weight_mask.bool()), name
        assert torch.equal(dict(model.named_modules())[name].weight, mod.weight), name
        assert int((~masks[name]).sum()) == n_to_remove(mod.weight.numel(), sparsity)


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.85])
def test_global_scope_matches_global_unstructured(sparsity):
    model, oracle = tiny_model("gqa"), tiny_model("gqa")
    masks = magnitude_prune(model, sparsity, scope="global")
    oracle_linears = prunable_linears(oracle)
    prune.global_unstructured([(m, "weight") for m in oracle_linears.values()],
                              pruning_method=prune.L1Unstructured, amount=sparsity)
    for name, mod in oracle_linears.items():
        assert torch.equal(masks[name], mod.weight_mask.bool()), name
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == n_to_remove(total, sparsity)
    # global really is global: layers end up with different sparsities
    per_layer = {name: (~m).float().mean().item() for name, m in masks.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.01


def test_global_scope_with_targets_only_touches_targets():
    model = tiny_model("gqa")
    before = {n: m.weight.clone() for n, m in prunable_linears(model).items()}
    masks = magnitude_prune(model, 0.5, scope="global", targets={"q_proj", "v_proj"})
    assert set(masks) == {n for n in before if n.endswith(("q_proj", "v_proj"))}
    for name, mod in prunable_linears(model).items():
        if name not in masks:
            assert torch.equal(mod.weight, before[name])


# ---------------------------------------------------------------------------------------
# ties, exact counts, dtypes, large tensors


def test_scores_are_exact_float32():
    w = torch.randn(8, 8).to(torch.bfloat16)
    s = magnitude_scores(w)
    assert s.dtype == torch.float32
    assert torch.equal(s.to(torch.bfloat16), w.abs())


def test_all_equal_weights_remove_lowest_flat_indices():
    w = torch.full((10, 10), -0.5)
    mask = magnitude_mask(w, 0.35)
    assert int((~mask).sum()) == 35
    assert not mask.flatten()[:35].any() and mask.flatten()[35:].all()


def test_ties_at_threshold_follow_flat_order():
    w = torch.tensor([[3.0, 1.0, 2.0, 1.0], [1.0, -1.0, 5.0, 2.0]])
    mask = magnitude_mask(w, 0.5)  # remove 4: the four 1's -> exactly them
    assert torch.equal(mask, torch.tensor([[True, False, True, False], [False, False, True, True]]))
    mask = magnitude_mask(w, 0.25)  # remove 2 of the four tied 1's: the first two in flat order
    assert torch.equal(mask, torch.tensor([[True, False, True, False], [True, True, True, True]]))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), sparsity=st.floats(0, 0.99),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 10_000), levels=st.integers(1, 4))
def test_exact_count_and_tie_rule(rows, cols, sparsity, dtype, seed, levels):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randint(-levels, levels + 1, (rows, cols), generator=g).to(dtype)) / 4  # many ties and zeros
    mask = magnitude_mask(w, sparsity)
    assert int((~mask).sum()) == n_to_remove(w.numel(), sparsity)
    assert torch.equal(mask, stable_sort_reference(w, sparsity))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), sparsity=st.floats(0, 0.99),
       seed=st.integers(0, 10_000), ties=st.booleans())
def test_idempotent(rows, cols, sparsity, seed, ties):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-2, 3, (rows, cols), generator=g).float() if ties else torch.randn(rows, cols, generator=g)
    mask = magnitude_mask(w, sparsity)
    assert torch.equal(magnitude_mask(w * mask, sparsity), mask)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), s1=st.floats(0, 0.99), s2=st.floats(0, 0.99),
       seed=st.integers(0, 10_000), ties=st.booleans())
def test_never_revives_a_pruned_weight(rows, cols, s1, s2, seed, ties):
    s1, s2 = min(s1, s2), max(s1, s2)
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-2, 3, (rows, cols), generator=g).float() if ties else torch.randn(rows, cols, generator=g)
    first = magnitude_mask(w, s1)
    second = magnitude_mask(w * first, s2)
    assert not (second & ~first).any()


_MODEL = {}


def cached_copy(kind="mha"):
    """A fresh deep copy of one tiny model per kind (building HF models is the slow part)."""
    if kind not in _MODEL:
        _MODEL[kind] = tiny_model(kind)
    return copy.deepcopy(_MODEL[kind])


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0, 0.99), seed=st.integers(0, 100))
def test_model_counts_exact_both_scopes(sparsity, seed):
    for scope in ("layer", "global"):
        model = cached_copy("mha")
        with torch.no_grad():  # fresh random weights per example, with some exact ties
            g = torch.Generator().manual_seed(seed)
            for mod in prunable_linears(model).values():
                mod.weight.copy_(torch.randint(-50, 51, mod.weight.shape, generator=g) / 50)
        masks = magnitude_prune(model, sparsity, scope=scope)
        removed = {n: int((~m).sum()) for n, m in masks.items()}
        if scope == "layer":
            assert all(removed[n] == n_to_remove(m.numel(), sparsity) for n, m in masks.items())
        else:
            assert sum(removed.values()) == n_to_remove(sum(m.numel() for m in masks.values()), sparsity)
        for name, mod in prunable_linears(model).items():
            assert not mod.weight[~masks[name]].any()


def test_above_2_pow_24_elements_fast():
    torch.manual_seed(0)
    w = torch.randn(2**24 + 5).to(torch.float16)  # fp16: plenty of exact ties
    start = time.perf_counter()
    mask = magnitude_mask(w, 0.5)
    elapsed = time.perf_counter() - start
    k = n_to_remove(w.numel(), 0.5)
    assert int((~mask).sum()) == k
    scores = w.abs().float()
    threshold = scores[~mask].max()
    assert threshold <= scores[mask].min()
    tied = (scores == threshold).nonzero().flatten()
    tied_removed = ~mask[tied]  # removed ties all come before the kept ties (flat order)
    assert tied_removed.any() and not tied_removed[int(tied_removed.sum()):].any()
    assert elapsed < 5, f"magnitude_mask took {elapsed:.1f}s on 2**24+5 elements"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_matches_cpu(dtype):
    w = (torch.randint(-8, 9, (257, 130)).to(dtype)) / 8  # ties
    got = magnitude_mask(w.cuda(), 0.6)
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), magnitude_mask(w, 0.6))
    big = torch.randn(2**24 + 5, device="cuda", dtype=torch.float16)
    assert int((~magnitude_mask(big, 0.3)).sum()) == n_to_remove(big.numel(), 0.3)


# ---------------------------------------------------------------------------------------
# torch.nn.utils.prune reparametrisation


def test_to_torch_prune_roundtrip_and_make_permanent():
    model, reference = tiny_model("qwen2"), tiny_model("qwen2")
    masks = {n: magnitude_mask(m.weight, 0.5) for n, m in prunable_linears(model).items()}
    to_torch_prune(model, masks)
    apply_masks(reference, masks)
    modules = dict(model.named_modules())
    for name in masks:
        assert isinstance(modules[name].weight_orig, nn.Parameter)
        assert "weight_mask" in dict(modules[name].named_buffers())
    back = masks_from_torch_prune(model)
    assert back.keys() == masks.keys()
    assert all(torch.equal(back[n], masks[n]) and back[n].dtype == torch.bool for n in masks)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-6)
    done = make_permanent(model)
    assert sorted(done) == sorted(f"{n}.weight" for n in masks)
    for name in masks:
        mod = modules[name]
        assert isinstance(mod.weight, nn.Parameter) and not hasattr(mod, "weight_orig")
        assert torch.equal(mod.weight, dict(reference.named_modules())[name].weight)
    assert masks_from_torch_prune(model) == {}
    assert make_permanent(model) == []


def test_masks_from_torch_prune_reads_torch_own_pruning():
    model = tiny_model("gqa")
    q = model.model.layers[0].self_attn.q_proj
    prune.l1_unstructured(q, "weight", amount=0.4)
    masks = masks_from_torch_prune(model)
    assert list(masks) == ["model.layers.0.self_attn.q_proj"]
    assert torch.equal(masks["model.layers.0.self_attn.q_proj"], q.weight_mask != 0)


def test_prune_refuses_reparametrised_model():
    model = tiny_model("gqa")
    to_torch_prune(model, {"model.layers.0.mlp.up_proj": torch.ones(96, 64, dtype=torch.bool)})
    with pytest.raises(ValueError, match="make_permanent"):
        magnitude_prune(model, 0.5)


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_input():
    w = torch.randn(4, 4)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            magnitude_mask(w, bad)
    with pytest.raises(TypeError):
        magnitude_mask(w, "0.5")
    with pytest.raises(TypeError, match="floating"):
        magnitude_mask(torch.ones(4, 4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        magnitude_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="n_remove"):
        keep_mask_from_scores(torch.ones(3), 4)
    model = tiny_model("gqa")
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(model, 0.5, scope="row")
    with pytest.raises(ValueError, match="unknown target"):
        magnitude_prune(model, 0.5, targets=["qq_proj"])
    with pytest.raises(ValueError, match="no linear"):
        magnitude_prune(model, 0.5, scope="global", targets=[])
    with pytest.raises(ValueError, match="no module"):
        to_torch_prune(model, {"model.nope": torch.ones(2, 2, dtype=torch.bool)})
    q = "model.layers.0.self_attn.q_proj"
    with pytest.raises(ValueError, match="shape"):
        to_torch_prune(model, {q: torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        to_torch_prune(model, {q: torch.ones(64, 64)})
    assert masks_from_torch_prune(model) == {}  # nothing was installed by the failed calls
