"""Wanda: scores, per-row / N:M masks, and layer-by-layer pruning of tiny models."""

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import prune

from course_lib.model import prunable_linears
from course_lib.pruning.calibration import input_channel_norms
from course_lib.pruning.common import apply_masks, n_to_remove
from course_lib.pruning.wanda import wanda_mask, wanda_prune, wanda_scores


def random_batches(n_batches=2, batch_size=2, seq_len=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (batch_size, seq_len), generator=g)} for _ in range(n_batches)]


def test_scores_are_abs_weight_times_channel_norm():
    w = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.0, 4.0]])
    norm = torch.tensor([2.0, 1.0, 0.5])
    expected = torch.tensor([[2.0, 2.0, 1.5], [1.0, 0.0, 2.0]])
    torch.testing.assert_close(wanda_scores(w, norm), expected)
    assert wanda_scores(w.half(), norm).dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 24), sparsity=st.floats(0, 0.99), seed=st.integers(0, 2**16))
def test_per_row_mask_removes_exactly_the_lowest_scores_of_each_row(rows, cols, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    norm = torch.rand(cols, generator=g) * 3
    mask = wanda_mask(w, norm, sparsity=sparsity)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    k = n_to_remove(cols, sparsity)
    assert ((~mask).sum(1) == k).all()
    scores = wanda_scores(w, norm)
    for r in range(rows):
        kept, removed = scores[r][mask[r]], scores[r][~mask[r]]
        if kept.numel() and removed.numel():
            assert kept.min() >= removed.max()


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 5), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8)]),
       seed=st.integers(0, 2**16))
def test_nm_mask_keeps_the_n_best_scores_of_every_group(rows, groups, nm, seed):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, groups * m, generator=g)
    norm = torch.rand(groups * m, generator=g)
    mask = wanda_mask(w, norm, n=n, m=m)
    grouped = mask.reshape(rows, groups, m)
    assert (grouped.sum(-1) == n).all()
    scores = wanda_scores(w, norm).reshape(rows, groups, m)
    kept_min = torch.where(grouped, scores, torch.inf).amin(-1)
    removed_max = torch.where(~grouped, scores, -torch.inf).amax(-1)
    assert (kept_min >= removed_max).all()


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(2, 24), sparsity=st.floats(0.01, 0.95), scale=st.floats(0.1, 10),
       seed=st.integers(0, 2**16))
def test_equal_activation_norms_give_per_row_magnitude_pruning(rows, cols, sparsity, scale, seed):
    """Oracle: torch.nn.utils.prune's L1 (magnitude) mask, computed row by row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mask = wanda_mask(w, torch.full((cols,), scale), sparsity=sparsity)
    k = n_to_remove(cols, sparsity)
    for r in range(rows):
        ref = prune.L1Unstructured(amount=k).compute_mask(w[r], default_mask=torch.ones(cols))
        assert torch.equal(mask[r], ref.bool())


def test_a_loud_channel_is_kept_in_every_row():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g)
    w[:, 5] *= 1e-3  # tiny weights: magnitude would remove them ...
    norm = torch.ones(32)
    norm[5] = 1e6  # ... but the channel's activations are huge
    assert not wanda_mask(w, torch.ones(32), sparsity=0.5)[:, 5].any()
    assert wanda_mask(w, norm, sparsity=0.5)[:, 5].all()
    assert wanda_mask(w, norm, n=2, m=4)[:, 5].all()


def test_mask_is_invariant_to_scaling_the_norms():
    g = torch.Generator().manual_seed(0)
    w, norm = torch.randn(8, 16, generator=g), torch.rand(16, generator=g)
    assert torch.equal(wanda_mask(w, norm, sparsity=0.5), wanda_mask(w, 7.0 * norm, sparsity=0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype):
    g = torch.Generator().manual_seed(0)
    w, norm = torch.randn(8, 16, generator=g), torch.rand(16, generator=g)
    assert torch.equal(wanda_mask(w.to(dtype), norm, sparsity=0.5), wanda_mask(w.to(dtype).float(), norm, sparsity=0.5))


def test_bad_arguments():
    w, norm = torch.randn(4, 8), torch.rand(8)
    with pytest.raises(ValueError):
        wanda_mask(w, norm)  # neither
    with pytest.raises(ValueError):
        wanda_mask(w, norm, sparsity=0.5, n=2, m=4)  # both
    with pytest.raises(ValueError):
        wanda_mask(w, norm, sparsity=1.0)
    with pytest.raises(ValueError):
        wanda_mask(w, norm, n=4, m=4)
    with pytest.raises(ValueError, match="divisible"):
        wanda_mask(torch.randn(4, 6), torch.rand(6), n=2, m=4)
    with pytest.raises(ValueError, match="in_features"):
        wanda_scores(w, torch.rand(4))
    with pytest.raises(ValueError, match=">= 0"):
        wanda_scores(w, -norm)
    with pytest.raises(TypeError):
        wanda_scores(w.long(), norm)
    with pytest.raises(TypeError):
        wanda_scores(w, [1.0] * 8)
    with pytest.raises(ValueError):
        wanda_prune(tiny_model("gqa"), random_batches(), n=2, m=5)  # 64 % 5 != 0


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"sparsity": 0.3}, {"n": 2, "m": 4}])
def test_wanda_prune_tiny_models(kind, pattern):
    model = tiny_model(kind)
    dense = {n: mod.weight.detach().clone() for n, mod in prunable_linears(model).items()}
    masks = wanda_prune(model, random_batches(), **pattern)
    assert set(masks) == set(dense)
    for name, mod in prunable_linears(model).items():
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == mod.weight.shape
        assert torch.equal(mod.weight, dense[name] * mask)  # only zeroing, nothing else changed
        if "sparsity" in pattern:
            assert ((~mask).sum(1) == n_to_remove(mod.in_features, pattern["sparsity"])).all()
        else:
            assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()


def test_wanda_prune_is_sequential_layer_by_layer():
    """Layer 0 uses the dense model's norms; layer 1 the norms after layer 0 is pruned."""
    batches = random_batches()
    model = tiny_model("gqa")
    masks = wanda_prune(model, batches, sparsity=0.5)

    ref_model = tiny_model("gqa")
    layer0 = {n: mod for n, mod in prunable_linears(ref_model).items() if n.startswith("model.layers.0.")}
    norms0 = input_channel_norms(ref_model, batches)
    ref0 = {n: wanda_mask(mod.weight, norms0[n], sparsity=0.5) for n, mod in layer0.items()}
    apply_masks(ref_model, ref0)
    norms1 = input_channel_norms(ref_model, batches)  # now sees the pruned layer 0
    for name, mod in prunable_linears(ref_model).items():
        if name.startswith("model.layers.1."):
            assert torch.equal(masks[name], wanda_mask(mod.weight, norms1[name], sparsity=0.5)), name
        else:
            assert torch.equal(masks[name], ref0[name]), name
    dense_norm_masks = {n: wanda_mask(mod.weight, norms0[n], sparsity=0.5)
                        for n, mod in prunable_linears(tiny_model("gqa")).items() if n.startswith("model.layers.1.")}
    assert any(not torch.equal(masks[n], m) for n, m in dense_norm_masks.items())


def test_wanda_prune_targets_and_device():
    model = tiny_model("gqa")
    masks = wanda_prune(model, random_batches(n_batches=1), sparsity=0.5, targets=["down_proj"], device="cpu")
    assert sorted(masks) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert (model.model.layers[0].self_attn.q_proj.weight != 0).all()
