"""N:M pruning against torch.ao.pruning.WeightNormSparsifier, ties, properties, and
torch.sparse semi-structured tensors (CUDA)."""

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.ao.pruning import WeightNormSparsifier

from conftest import tiny_model
from course_lib.model import prunable_linears
from course_lib.pruning.nm import is_nm_sparse, nm_mask, nm_prune, semi_structured_support, to_semi_structured

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
HAS_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def weight_norm_sparsifier_mask(weight: torch.Tensor) -> torch.Tensor:
    """2:4 mask from torch.ao.pruning: blocks of 1x4 along the input dim, 2 zeros per
    block; sparsity_level=1.0 makes every block a 2:4 block (the tensor-level mask is all
    zeros and the block mask decides)."""
    holder = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        holder[0].weight.copy_(weight)
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(holder, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    return holder[0].parametrizations.weight[0].mask.bool()


def reference_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Plain-Python reference of the documented rule: per group keep the n largest
    scores, ties -> lower index kept."""
    flat = scores.reshape(-1, m).tolist()
    keep = []
    for group in flat:
        kept = set(sorted(range(m), key=lambda j: (-group[j], j))[:n])
        keep.append([j in kept for j in range(m)])
    return torch.tensor(keep, dtype=torch.bool).reshape(scores.shape)


# ---------------------------------------------------------------------------------------
# oracle


@pytest.mark.parametrize("shape", [(8, 16), (24, 32), (7, 64), (1, 4)])
def test_2_4_matches_weight_norm_sparsifier(shape):
    w = torch.randn(shape)  # continuous: no ties
    assert torch.equal(nm_mask(w, 2, 4), weight_norm_sparsifier_mask(w))


def test_2_4_prune_matches_weight_norm_sparsifier_on_model():
    model = tiny_model("qwen2")
    dense = {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}
    masks = nm_prune(model)  # default n=2, m=4
    for name, mod in prunable_linears(model).items():
        expected = weight_norm_sparsifier_mask(dense[name])
        assert torch.equal(masks[name], expected), name
        assert torch.equal(mod.weight, dense[name] * expected), name
        assert is_nm_sparse(mod.weight, 2, 4)


# ---------------------------------------------------------------------------------------
# ties and properties


def test_tie_rule_lower_index_kept():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                      [1.0, -3.0, 3.0, 1.0, 2.0, -2.0, 2.0, 5.0]])
    # all-equal groups keep their first two; |2|, |-2|, |2|, |5| keeps 5 and the first tied 2
    expected = torch.tensor([[True, True, False, False, True, True, False, False],
                             [False, True, True, False, True, False, False, True]])
    assert torch.equal(nm_mask(w, 2, 4), expected)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 6), m=st.integers(2, 8), data=st.data(),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 10_000), ties=st.booleans())
def test_nm_properties(rows, groups, m, data, dtype, seed, ties):
    n = data.draw(st.integers(1, m - 1))
    g = torch.Generator().manual_seed(seed)
    shape = (rows, groups * m)
    w = (torch.randint(-3, 4, shape, generator=g) if ties else torch.randn(shape, generator=g)).to(dtype)
    mask = nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert (mask.reshape(-1, m).sum(-1) == n).all()  # exactly n kept per group
    assert is_nm_sparse(w * mask, n, m)
    assert torch.equal(mask, reference_nm(w.abs().double(), n, m))
    assert torch.equal(nm_mask(w * mask, n, m), mask)  # idempotent
    if n > 1:  # pruning further to (n-1):m never revives a pruned weight
        assert not (nm_mask(w * mask, n - 1, m) & ~mask).any()


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), groups=st.integers(1, 4), m=st.integers(2, 6), data=st.data(),
       seed=st.integers(0, 10_000))
def test_is_nm_sparse_matches_counting(rows, groups, m, data, seed):
    n = data.draw(st.integers(1, m - 1))
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 2, (rows, groups * m), generator=g).float() * torch.randn(rows, groups * m, generator=g)
    expected = all(sum(1 for x in grp if x != 0) <= n for grp in t.reshape(-1, m).tolist())
    assert is_nm_sparse(t, n, m) == expected


def test_custom_scores_are_used():
    w = torch.randn(6, 16)
    scores = torch.rand(6, 16)
    mask = nm_mask(w, 2, 4, scores=scores)
    assert torch.equal(mask, reference_nm(scores.double(), 2, 4))
    assert not torch.equal(mask, nm_mask(w, 2, 4))  # not just |w|
    model = tiny_model("gqa")
    linears = prunable_linears(model, targets={"up_proj"})
    score_dict = {name: torch.rand_like(mod.weight) for name, mod in linears.items()}
    dense = {name: mod.weight.detach().clone() for name, mod in linears.items()}
    masks = nm_prune(model, 1, 4, scores=score_dict, targets={"up_proj"})
    assert set(masks) == set(linears)
    for name in masks:
        assert torch.equal(masks[name], reference_nm(score_dict[name].double(), 1, 4))
        assert torch.equal(linears[name].weight, dense[name] * masks[name])


def test_bad_input():
    w = torch.randn(4, 10)
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(w, 2, 4)
    for n, m in ((4, 4), (0, 4), (5, 4), (-1, 2)):
        with pytest.raises(ValueError, match="0 < n < m"):
            nm_mask(torch.randn(4, 8), n, m)
    with pytest.raises(TypeError):
        nm_mask(torch.randn(4, 8), 2.0, 4)
    with pytest.raises(TypeError, match="floating"):
        nm_mask(torch.ones(4, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="shape"):
        nm_mask(torch.randn(4, 8), scores=torch.rand(4, 4))
    with pytest.raises(ValueError, match="NaN"):
        nm_mask(torch.randn(1, 4), scores=torch.tensor([[1.0, float("nan"), 0.0, 2.0]]))
    with pytest.raises(ValueError, match="divisible"):
        is_nm_sparse(torch.randn(3, 6), 2, 4)
    model = tiny_model("gqa")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="missing"):
        nm_prune(model, scores={"model.layers.0.mlp.up_proj": torch.rand(96, 64)})
    with pytest.raises(ValueError, match="divisible"):
        nm_prune(model, 2, 7)  # 64 % 7 != 0
    with pytest.raises(ValueError, match="Llama layout"):
        nm_prune(nn.Linear(8, 8))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing changed


# ---------------------------------------------------------------------------------------
# torch.sparse semi-structured tensors


def test_support_reasons_without_gpu_are_named():
    fp16_24 = torch.randn(32, 64).half() * nm_mask(torch.randn(32, 64), 2, 4)
    ok, reason = semi_structured_support(fp16_24)  # a CPU tensor
    assert not ok and "cuda" in reason.lower()
    ok, reason = semi_structured_support(torch.randn(32, 64).half().cpu())
    assert not ok and "not 2:4 sparse" in reason
    ok, reason = semi_structured_support(torch.float64, shape=(32, 64))
    assert not ok and "dtype torch.float64" in reason
    ok, reason = semi_structured_support(torch.float16, shape=(10, 64))
    assert not ok and "shape (10, 64)" in reason
    ok, reason = semi_structured_support(torch.float16, shape=(8, 8, 8))
    assert not ok and "2-D" in reason
    with pytest.raises(TypeError):
        semi_structured_support("float16")
    with pytest.raises(ValueError, match="shape"):
        semi_structured_support(torch.float16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_to_semi_structured_without_cuda_raises():
    model = tiny_model("gqa").half()
    nm_prune(model)
    before = {n: m.weight.clone() for n, m in prunable_linears(model).items()}
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        to_semi_structured(model)
    assert all(torch.equal(m.weight, before[n]) for n, m in prunable_linears(model).items())


@pytest.mark.skipif(not HAS_SM80, reason="semi-structured sparse tensors need a CUDA GPU of compute capability >= 8.0")
@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_model_equals_dense_masked(backend, dtype, monkeypatch):
    from torch.sparse import SparseSemiStructuredTensor

    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        pytest.skip("this torch build has no cuSPARSELt")
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", backend == "cutlass")
    # mha + intermediate 128: every linear is a multiple of 32x64, which both backends accept
    model = tiny_model("qwen2", num_key_value_heads=8, intermediate_size=128).to("cuda", dtype)
    nm_prune(model)
    ids = torch.randint(0, 97, (3, 17), device="cuda")
    with torch.no_grad():
        dense_logits = model(input_ids=ids).logits.float()
        layer = model.model.layers[0].mlp.up_proj
        x = torch.randn(5, 7, 64, device="cuda", dtype=dtype)
        dense_up = layer(x).float()
    for name, mod in prunable_linears(model).items():
        ok, reason = semi_structured_support(mod.weight)
        assert ok, f"{name}: {reason}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" warning
        converted = to_semi_structured(model)
    assert set(converted) == set(prunable_linears(model))
    assert isinstance(layer.weight, SparseSemiStructuredTensor)
    assert layer.weight.BACKEND == backend
    with torch.no_grad():
        torch.testing.assert_close(layer(x).float(), dense_up, rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(model(input_ids=ids).logits.float(), dense_logits, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="already"):
        to_semi_structured(model)


@pytest.mark.skipif(not HAS_SM80, reason="semi-structured sparse tensors need a CUDA GPU of compute capability >= 8.0")
def test_to_semi_structured_refuses_dense_weights_on_gpu(monkeypatch):
    from torch.sparse import SparseSemiStructuredTensor

    if not torch.backends.cusparselt.is_available():
        monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", True)
    model = tiny_model("gqa").to("cuda", torch.float16)  # not pruned
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        to_semi_structured(model)
    ok, reason = semi_structured_support(model.model.layers[0].mlp.up_proj.weight.float())
    assert not ok and "float32" in reason
