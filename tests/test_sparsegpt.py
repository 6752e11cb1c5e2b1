"""SparseGPT: the OBS solver on single layers (against least squares) and on tiny models."""

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.model import prunable_linears
from course_lib.pruning.common import n_to_remove
from course_lib.pruning.magnitude import magnitude_mask
from course_lib.pruning.sparsegpt import sparsegpt_prune, sparsegpt_prune_weight
from course_lib.pruning.wanda import wanda_mask


def random_batches(n_batches=2, batch_size=2, seq_len=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (batch_size, seq_len), generator=g)} for _ in range(n_batches)]


def correlated_inputs(n_tokens, dim, rank=8, seed=0):
    """X [N, dim] with strongly correlated channels (low rank + a little noise) and uneven scales."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_tokens, rank, generator=g)
    x = z @ torch.randn(rank, dim, generator=g) + 0.1 * torch.randn(n_tokens, dim, generator=g)
    return x * torch.rand(dim, generator=g) * 3


def hessian(x):  # [N, in] -> 2/N X^T X
    return 2 * x.T @ x / x.shape[0]


def rel_error(w, w_new, x):
    return ((x @ w.T - x @ w_new.T).norm() / (x @ w.T).norm()).item()


def test_sparsity_zero_leaves_weights_bit_identical():
    x = correlated_inputs(256, 32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = torch.randn(16, 32).to(dtype)
        new, mask = sparsegpt_prune_weight(w, hessian(x), sparsity=0.0, blocksize=8)
        assert mask.all() and new.dtype == dtype and torch.equal(new, w)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(2, 40), sparsity=st.floats(0, 0.95), blocksize=st.integers(1, 48),
       seed=st.integers(0, 2**16))
def test_exact_unstructured_sparsity(rows, cols, sparsity, blocksize, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(64, cols, generator=g)
    original = w.clone()
    new, mask = sparsegpt_prune_weight(w, hessian(x), sparsity=sparsity, blocksize=blocksize)
    assert torch.equal(w, original)  # input not modified
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert (~mask).sum().item() == n_to_remove(rows * cols, sparsity)
    assert (new[~mask] == 0).all()


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 8), groups=st.integers(1, 6), nm=st.sampled_from([(2, 4), (1, 4), (1, 2), (4, 8)]),
       blocks=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_nm_pattern(rows, groups, nm, blocks, seed):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, groups * m, generator=g)
    new, mask = sparsegpt_prune_weight(w, hessian(torch.randn(64, groups * m, generator=g)), n=n, m=m,
                                       blocksize=blocks * m)
    assert (mask.reshape(rows, groups, m).sum(-1) == n).all()
    assert (new[~mask] == 0).all()


def test_obs_update_equals_least_squares_when_the_first_columns_are_pruned():
    """Pruned columns first => the sequential OBS result is the exact constrained optimum:
    w'_K = w H[:, K] H[K, K]^-1 (H dampened), by least squares in float64."""
    x = correlated_inputs(512, 24)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(10, 24, generator=g)
    w[:, :6] *= 1e-4  # the first 6 columns are the obvious ones to prune (25%)
    H = hessian(x)
    new, mask = sparsegpt_prune_weight(w, H, sparsity=0.25, blocksize=24, percdamp=0.01)
    assert (~mask[:, :6]).all() and mask[:, 6:].all()
    Hd = H.double() + 0.01 * torch.diag(H).double().mean() * torch.eye(24, dtype=torch.float64)
    keep = slice(6, None)
    expected = w.double() @ Hd[:, keep] @ torch.linalg.inv(Hd[keep, keep])
    torch.testing.assert_close(new[:, keep].double(), expected, rtol=1e-3, atol=1e-4)


def test_first_block_mask_is_obs_saliency_w2_over_cholesky_diag2():
    """Within one block the mask removes the lowest w^2 / U_jj^2, U the upper Cholesky
    factor of the dampened H^-1 (here from float64 inv + cholesky, not the solver's path)."""
    x = correlated_inputs(512, 24)
    H = hessian(x).double()
    w = torch.randn(10, 24)
    _, mask = sparsegpt_prune_weight(w, H.float(), sparsity=0.4, blocksize=24, percdamp=0.05)
    Hd = H + 0.05 * torch.diag(H).mean() * torch.eye(24, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)
    saliency = w.double() ** 2 / torch.diag(U)[None, :] ** 2
    k = n_to_remove(w.numel(), 0.4)
    removed = torch.zeros(w.numel(), dtype=torch.bool)
    removed[torch.argsort(saliency.flatten())[:k]] = True
    assert torch.equal(mask, ~removed.reshape(w.shape))


def test_lazy_block_updates_do_not_change_the_result():
    """For N:M the mask is picked every m columns, whatever the block: blocksize only batches updates."""
    x = correlated_inputs(512, 32)
    w = torch.randn(12, 32)
    small, mask_small = sparsegpt_prune_weight(w, hessian(x), n=2, m=4, blocksize=4)
    large, mask_large = sparsegpt_prune_weight(w, hessian(x), n=2, m=4, blocksize=32)
    assert torch.equal(mask_small, mask_large)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"sparsity": 0.7}, {"n": 2, "m": 4}])
def test_reconstruction_error_beats_magnitude_and_matches_or_beats_wanda(pattern):
    x = correlated_inputs(2048, 64, seed=1)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 64, generator=g)
    new, _ = sparsegpt_prune_weight(w, hessian(x), blocksize=16, **pattern)
    if "sparsity" in pattern:
        magnitude = w * magnitude_mask(w, pattern["sparsity"])
    else:
        from course_lib.pruning.nm import nm_mask
        magnitude = w * nm_mask(w, 2, 4)
    wanda = w * wanda_mask(w, x.norm(dim=0), **pattern)
    err_sgpt, err_mag, err_wanda = rel_error(w, new, x), rel_error(w, magnitude, x), rel_error(w, wanda, x)
    assert err_sgpt < 0.7 * err_mag
    assert err_sgpt < 1.05 * err_wanda


def test_dead_inputs_are_pruned_first_and_touch_nothing_else():
    x = correlated_inputs(256, 16)
    x[:, [3, 9]] = 0  # two channels never fire
    w = torch.randn(8, 16)
    H = hessian(x)
    new, mask = sparsegpt_prune_weight(w, H, sparsity=2 / 16, blocksize=16)  # exactly 16 weights = 2 columns
    assert (~mask[:, [3, 9]]).all() and mask.sum() == 8 * 14
    # removing a dead input costs nothing and changes no kept weight
    torch.testing.assert_close(new[:, mask.all(0)], w[:, mask.all(0)], rtol=0, atol=1e-6)
    # with more sparsity the kept weights of a dead column are left as they were (not zeroed)
    x[:, 3] = 0
    new, mask = sparsegpt_prune_weight(w, hessian(x), sparsity=0.01, blocksize=16)  # 1 weight
    assert (~mask).sum() == 1 and not mask[:, [3, 9]].all()
    kept_dead = mask[:, [3, 9]]
    assert torch.equal(new[:, [3, 9]][kept_dead], w[:, [3, 9]][kept_dead])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weight(dtype):
    x = correlated_inputs(256, 32)
    w = torch.randn(8, 32)
    new, mask = sparsegpt_prune_weight(w.to(dtype), hessian(x), sparsity=0.5, blocksize=8)
    ref, ref_mask = sparsegpt_prune_weight(w.to(dtype).float(), hessian(x), sparsity=0.5, blocksize=8)
    assert new.dtype == dtype and torch.equal(mask, ref_mask)
    torch.testing.assert_close(new, ref.to(dtype), rtol=0, atol=0)


def test_bad_arguments():
    w, H = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ValueError, match="multiple of m"):
        sparsegpt_prune_weight(w, H, n=2, m=4, blocksize=6)
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt_prune_weight(w, H, sparsity=0.5, blocksize=0)
    with pytest.raises(ValueError, match="percdamp"):
        sparsegpt_prune_weight(w, H, sparsity=0.5, percdamp=-1)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune_weight(w, torch.eye(4), sparsity=0.5)
    with pytest.raises(ValueError):
        sparsegpt_prune_weight(w, H)
    with pytest.raises(ValueError, match="divisible"):
        sparsegpt_prune_weight(torch.randn(4, 6), torch.eye(6), n=1, m=4, blocksize=4)
    with pytest.raises(ValueError, match="positive definite"):
        sparsegpt_prune_weight(w, -torch.eye(8), sparsity=0.5, percdamp=0.0)
    with pytest.raises(TypeError):
        sparsegpt_prune_weight(w.long(), H, sparsity=0.5)


def layer_inputs(model, batches, name):
    mod = dict(model.named_modules())[name]
    xs = []
    h = mod.register_forward_pre_hook(lambda m, args: xs.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    h.remove()
    return torch.cat(xs)


@pytest.mark.parametrize("kind, pattern", [("gqa", {"sparsity": 0.5}), ("qwen2", {"n": 2, "m": 4})])
def test_sparsegpt_prune_tiny_models(kind, pattern):
    batches = random_batches()
    model = tiny_model(kind)
    masks = sparsegpt_prune(model, batches, blocksize=32, **pattern)
    linears = prunable_linears(model)
    assert set(masks) == set(linears)
    for name, mod in linears.items():
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == mod.weight.shape
        assert (mod.weight[~mask] == 0).all()
        if "sparsity" in pattern:
            assert (~mask).sum() == n_to_remove(mod.weight.numel(), 0.5)
        else:
            assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    # layer 0 is calibrated on the dense model's inputs: redo it from an independent Hessian
    dense = tiny_model(kind)
    for name, mod in prunable_linears(dense).items():
        if name.startswith("model.layers.0."):
            ref, ref_mask = sparsegpt_prune_weight(mod.weight, hessian(layer_inputs(dense, batches, name)),
                                                   blocksize=32, **pattern)
            assert torch.equal(masks[name], ref_mask), name
            torch.testing.assert_close(linears[name].weight, ref, rtol=1e-4, atol=1e-5)


def test_sparsegpt_keeps_the_model_closer_than_magnitude():
    batches = random_batches(n_batches=4)
    model = tiny_model("gqa")
    with torch.no_grad():
        ref = [model(**b).logits for b in batches]
    sparsegpt_prune(model, batches, sparsity=0.5)
    from course_lib.pruning.magnitude import magnitude_prune

    mag = tiny_model("gqa")
    magnitude_prune(mag, 0.5)
    with torch.no_grad():
        err_sgpt = sum((model(**b).logits - r).norm() for b, r in zip(batches, ref))
        err_mag = sum((mag(**b).logits - r).norm() for b, r in zip(batches, ref))
    assert err_sgpt < err_mag


def test_sparsegpt_prune_zero_sparsity_is_identity():
    model = tiny_model("qwen2")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = sparsegpt_prune(model, random_batches(n_batches=1), sparsity=0.0)
    assert all(m.all() for m in masks.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_layer_by_layer_from_cpu_model():
    batches = random_batches()
    cpu_model = tiny_model("gqa")
    masks = sparsegpt_prune(cpu_model, batches, sparsity=0.5, device="cuda")
    assert next(cpu_model.parameters()).device.type == "cpu"
    assert all(m.device.type == "cpu" for m in masks.values())
    ref_model = tiny_model("gqa")
    ref_masks = sparsegpt_prune(ref_model, batches, sparsity=0.5)
    agree = sum((masks[n] == ref_masks[n]).float().mean().item() for n in masks) / len(masks)
    assert agree > 0.98
