"""Movement pruning: the score rule, the cubic schedule, and the prune-while-fine-tuning loop
(against analytic gradients and a reference loop built on torch.nn.utils.prune)."""

import copy

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize, prune

from course_lib.model import prunable_linears
from course_lib.pruning.common import model_sparsity, n_to_remove
from course_lib.pruning.magnitude import magnitude_mask
from course_lib.pruning.movement import (
    cubic_sparsity,
    gradient_sensitivity_prune,
    gradient_sensitivity_scores,
    gradual_magnitude_prune,
    movement_prune,
    movement_score_update,
    movement_scores,
    random_prune,
)


def random_batches(n_batches=2, batch_size=2, seq_len=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (batch_size, seq_len), generator=g)} for _ in range(n_batches)]


# --------------------------------------------------------------------------- lm_head as a linear model

def lm_head_loss(model, batch):
    """A linear regression through the model's lm_head [97, 64]: mean_n ||W x_n - y_n||^2."""
    return (model.lm_head(batch["x"]) - batch["y"]).pow(2).sum(-1).mean()


def analytic_grad(w, batch):  # d/dW mean_n ||W x_n - y_n||^2 = 2/N (X W^T - Y)^T X
    x, y = batch["x"].double(), batch["y"].double()
    return 2 * (x @ w.double().T - y).T @ x / x.shape[0]


def regression_batches(n_batches=2, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(n, 64, generator=g), "y": torch.randn(n, 97, generator=g)} for _ in range(n_batches)]


def test_score_update_is_minus_weight_times_grad():
    g = torch.Generator().manual_seed(0)
    s, w, grad = (torch.randn(3, 4, generator=g) for _ in range(3))
    s_before = s.clone()
    out = movement_score_update(s, w, grad)
    torch.testing.assert_close(out, s_before - w * grad, rtol=0, atol=0)
    assert torch.equal(s, s_before)  # pure
    # moving away from zero (w > 0, gradient step increases w, i.e. grad < 0) raises the score
    assert movement_score_update(torch.zeros(1), torch.tensor([1.0]), torch.tensor([-1.0])) > 0
    assert movement_score_update(torch.zeros(1), torch.tensor([-1.0]), torch.tensor([1.0])) > 0
    assert movement_score_update(torch.zeros(1), torch.tensor([1.0]), torch.tensor([1.0])) < 0
    with pytest.raises(ValueError):
        movement_score_update(s, w, torch.randn(4, 3))
    with pytest.raises(TypeError):
        movement_score_update(s, w.long(), grad)


def test_frozen_scores_equal_analytic_sums():
    model = tiny_model("gqa")
    batches = regression_batches()
    w = model.lm_head.weight.detach().clone()
    mv = movement_scores(model, batches, targets=["lm_head"], loss_fn=lm_head_loss)
    gs = gradient_sensitivity_scores(model, batches, targets=["lm_head"], loss_fn=lm_head_loss)
    grads = [analytic_grad(w, b) for b in batches]
    torch.testing.assert_close(mv["lm_head"].double(), -sum(w.double() * g for g in grads), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gs["lm_head"].double(), sum(g.abs() for g in grads), rtol=1e-4, atol=1e-6)
    assert torch.equal(model.lm_head.weight, w) and model.lm_head.weight.grad is None
    assert not parametrize.is_parametrized(model.lm_head)


def test_training_loop_accumulates_minus_sum_w_grad_over_cycled_batches():
    """lr = 0 and sparsity 0: W is constant, so S after 5 steps over 2 cycled batches is
    -W * (2 G_0 + 2 G_1 + G_0)."""
    model = tiny_model("gqa")
    batches = regression_batches()
    w = model.lm_head.weight.detach().clone()
    seen = []
    masks = movement_prune(model, batches, final_sparsity=0.0, steps=5, lr=0.0, targets=["lm_head"],
                           warmup_steps=0, cooldown_steps=0, loss_fn=lm_head_loss, progress=False,
                           callback=lambda **kw: seen.append(kw["scores"]["lm_head"].clone()))
    g0, g1 = (analytic_grad(w, b) for b in batches)
    torch.testing.assert_close(seen[-1].double(), -w.double() * (3 * g0 + 2 * g1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(seen[0].double(), -w.double() * g0, rtol=1e-4, atol=1e-6)
    assert masks["lm_head"].all() and torch.equal(model.lm_head.weight, w)


def test_frozen_scores_on_the_language_model_loss():
    """Default loss: causal LM cross-entropy; oracle: autograd on an untouched copy."""
    model = tiny_model("qwen2")
    batches = random_batches()
    ref = copy.deepcopy(model)
    scores = movement_scores(model, batches, targets=["v_proj"])
    expected = {}
    for b in batches:
        ref.zero_grad()
        ref(input_ids=b["input_ids"], labels=b["input_ids"]).loss.backward()
        for name, mod in prunable_linears(ref, ["v_proj"]).items():
            expected[name] = expected.get(name, 0) - mod.weight.detach() * mod.weight.grad
    assert set(scores) == set(expected)
    for name in scores:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- schedule

def test_schedule_values():
    assert cubic_sparsity(0, 10, 0.8) == 0.0
    assert cubic_sparsity(10, 10, 0.8) == 0.8
    assert cubic_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(5, 10, 0.8, initial_sparsity=0.2) == pytest.approx(0.8 - 0.6 * 0.5**3)
    # flat during warmup and cooldown, ramp in between
    assert [cubic_sparsity(t, 10, 0.5, warmup_steps=2, cooldown_steps=3) for t in (0, 1, 2)] == [0, 0, 0]
    assert [cubic_sparsity(t, 10, 0.5, warmup_steps=2, cooldown_steps=3) for t in (7, 8, 9, 10)] == [0.5] * 4
    assert cubic_sparsity(3, 10, 0.5, warmup_steps=2, cooldown_steps=3) == pytest.approx(0.5 * (1 - 0.8**3))
    assert cubic_sparsity(0, 4, 0.5, warmup_steps=2, cooldown_steps=2) == 0.0
    assert cubic_sparsity(2, 4, 0.5, warmup_steps=2, cooldown_steps=2) == 0.5


@settings(max_examples=25, deadline=None)
@given(total=st.integers(1, 60), final=st.floats(0, 0.99), initial_frac=st.floats(0, 1),
       warm=st.integers(0, 30), cool=st.integers(0, 30))
def test_schedule_is_monotone_between_its_endpoints(total, final, initial_frac, warm, cool):
    warm, cool = min(warm, total), min(cool, total - min(warm, total))
    initial = final * initial_frac
    values = [cubic_sparsity(t, total, final, initial, warm, cool) for t in range(total + 1)]
    assert values[0] == (initial if warm > 0 or total > cool else final)
    assert values[-1] == final
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    assert all(initial - 1e-12 <= v <= final + 1e-12 for v in values)


@pytest.mark.parametrize("kwargs", [
    dict(step=11, total_steps=10, final_sparsity=0.5),
    dict(step=-1, total_steps=10, final_sparsity=0.5),
    dict(step=0, total_steps=0, final_sparsity=0.5),
    dict(step=0, total_steps=10, final_sparsity=1.0),
    dict(step=0, total_steps=10, final_sparsity=0.3, initial_sparsity=0.5),
    dict(step=0, total_steps=10, final_sparsity=0.5, warmup_steps=6, cooldown_steps=5),
    dict(step=0, total_steps=10, final_sparsity=0.5, warmup_steps=-1),
])
def test_schedule_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cubic_sparsity(**kwargs)


# --------------------------------------------------------------------------- pruning while fine-tuning

@pytest.mark.parametrize("scope", ["layer", "global"])
def test_exact_sparsity_every_step_and_pruned_weights_are_zero(scope):
    model = tiny_model("gqa")
    targets = ["q_proj", "down_proj"]
    linears = prunable_linears(model, targets)
    params_before = {n: m.weight for n, m in linears.items()}
    steps, final = 6, 0.6
    checked = []

    def check(step, sparsity, masks, scores, loss):
        assert sparsity == cubic_sparsity(step, steps, final, 0.0, 1, 2)
        removed = {n: int((~m).sum()) for n, m in masks.items()}
        if scope == "layer":
            assert all(removed[n] == n_to_remove(mod.weight.numel(), sparsity) for n, mod in linears.items())
        else:
            assert sum(removed.values()) == n_to_remove(sum(mod.weight.numel() for mod in linears.values()), sparsity)
        for n, mod in linears.items():  # the weight the forward used is masked
            assert (mod.weight[~masks[n]] == 0).all()
        checked.append(step)

    masks = movement_prune(model, random_batches(), final, steps=steps, lr=1e-3, targets=targets, scope=scope,
                           warmup_steps=1, cooldown_steps=2, callback=check, progress=False)
    assert checked == list(range(steps))
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == n_to_remove(total, final) or scope == "layer"
    for n, mod in prunable_linears(model, targets).items():
        assert not parametrize.is_parametrized(mod)
        assert mod.weight is params_before[n]  # same Parameter object, now W * M
        assert (mod.weight[~masks[n]] == 0).all() and (mod.weight[masks[n]] != 0).all()
        if scope == "layer":
            assert int((~masks[n]).sum()) == n_to_remove(mod.weight.numel(), final)
    sp = model_sparsity(model, targets)
    assert sp["global"] == pytest.approx(final, abs=1e-3)
    # pruned weights stay zero: the model is a plain model again, nothing brings them back
    with torch.no_grad():
        model(input_ids=random_batches()[0]["input_ids"])
    assert all((mod.weight[~masks[n]] == 0).all() for n, mod in prunable_linears(model, targets).items())


def reference_movement_loop(model, batches, final, steps, lr, targets, warmup, cooldown):
    """Independent loop: torch.nn.utils.prune holds W and the mask, torch.topk picks it."""
    linears = prunable_linears(model, targets)
    for mod in linears.values():
        prune.custom_from_mask(mod, "weight", torch.ones_like(mod.weight))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    scores = {n: torch.zeros_like(m.weight) for n, m in linears.items()}

    def topk_mask(s, sparsity):
        keep = s.numel() - n_to_remove(s.numel(), sparsity)
        mask = torch.zeros(s.numel())
        mask[torch.topk(s.flatten(), keep).indices] = 1
        return mask.reshape(s.shape)

    model.train()
    for step in range(steps):
        sparsity = cubic_sparsity(step, steps, final, 0.0, warmup, cooldown)
        for n, mod in linears.items():
            mod.weight_mask.copy_(topk_mask(scores[n], sparsity))
        batch = batches[step % len(batches)]
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        used = {n: mod.weight for n, mod in linears.items()}  # W' = W_orig * mask of this forward
        for w in used.values():
            w.retain_grad()
        loss.backward()
        for n, mod in linears.items():
            scores[n] = scores[n] - mod.weight_orig.detach() * used[n].grad
        opt.step()
        opt.zero_grad()
    masks = {}
    for n, mod in linears.items():
        masks[n] = topk_mask(scores[n], final).bool()
        mod.weight_mask.copy_(masks[n])
        prune.remove(mod, "weight")
    return masks


def test_movement_prune_matches_a_reference_loop():
    batches = random_batches(n_batches=3)
    model = tiny_model("gqa")
    ref_model = copy.deepcopy(model)
    kwargs = dict(final=0.5, steps=5, lr=3e-3, targets=["q_proj", "up_proj"], warmup=1, cooldown=1)
    masks = movement_prune(model, batches, kwargs["final"], kwargs["steps"], lr=kwargs["lr"],
                           targets=kwargs["targets"], warmup_steps=1, cooldown_steps=1, progress=False)
    ref_masks = reference_movement_loop(ref_model, batches, **kwargs)
    assert set(masks) == set(ref_masks)
    for n in masks:
        assert torch.equal(masks[n], ref_masks[n]), n
    ref_params = dict(ref_model.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-5, atol=1e-6)


def test_movement_keeps_weights_growing_away_from_zero_where_magnitude_does_not():
    """lm_head as a linear regression with X = I: half the weights start large (1.0) but
    are pulled to 0, the other half start small (0.1) but are pulled to 3. After a short
    fine-tuning the shrinking ones are still the largest, so magnitude keeps them;
    movement keeps the growing ones."""
    g = torch.Generator().manual_seed(0)
    model = tiny_model("gqa")
    numel = model.lm_head.weight.numel()
    growing = torch.zeros(numel, dtype=torch.bool)
    growing[torch.randperm(numel, generator=g)[: numel // 2]] = True
    growing = growing.reshape(model.lm_head.weight.shape)
    sign = torch.where(torch.rand(growing.shape, generator=g) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        model.lm_head.weight.copy_(sign * torch.where(growing, 0.1, 1.0))
    target_w = sign * torch.where(growing, 3.0, 0.0)  # [97, 64]
    x = torch.eye(64)
    batches = [{"x": x, "y": x @ target_w.T}]
    mag_model = copy.deepcopy(model)
    common = dict(final_sparsity=0.5, steps=10, lr=0.01, targets=["lm_head"], warmup_steps=8, cooldown_steps=0,
                  loss_fn=lm_head_loss, progress=False)

    masks = movement_prune(model, batches, **common)
    assert torch.equal(masks["lm_head"], growing)

    mag_masks = gradual_magnitude_prune(mag_model, batches, **common)
    assert torch.equal(mag_masks["lm_head"], ~growing)
    # and the one-shot magnitude mask of the movement-tuned dense weights would disagree too
    assert not torch.equal(magnitude_mask(sign * torch.where(growing, 0.2, 0.9), 0.5), growing)


@pytest.mark.parametrize("prune_fn", [gradient_sensitivity_prune, gradual_magnitude_prune, random_prune])
def test_baselines_share_the_loop(prune_fn):
    model = tiny_model("qwen2")
    seen = []
    masks = prune_fn(model, random_batches(), 0.5, steps=4, lr=1e-3, targets=["gate_proj"], warmup_steps=1,
                     cooldown_steps=1, progress=False, callback=lambda **kw: seen.append(kw["sparsity"]))
    assert seen == [cubic_sparsity(t, 4, 0.5, 0.0, 1, 1) for t in range(4)]
    for n, mod in prunable_linears(model, ["gate_proj"]).items():
        assert int((~masks[n]).sum()) == n_to_remove(mod.weight.numel(), 0.5)
        assert (mod.weight[~masks[n]] == 0).all()


def test_gradient_sensitivity_scores_accumulate_abs_grad_in_the_loop():
    model = tiny_model("gqa")
    batches = regression_batches()
    w = model.lm_head.weight.detach().clone()
    seen = []
    gradient_sensitivity_prune(model, batches, 0.0, steps=3, lr=0.0, targets=["lm_head"], warmup_steps=0,
                               cooldown_steps=0, loss_fn=lm_head_loss, progress=False,
                               callback=lambda **kw: seen.append(kw["scores"]["lm_head"].clone()))
    g0, g1 = (analytic_grad(w, b) for b in batches)
    torch.testing.assert_close(seen[-1].double(), 2 * g0.abs() + g1.abs(), rtol=1e-4, atol=1e-6)


def test_failure_restores_a_plain_dense_model():
    model = tiny_model("gqa")
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()

    def failing_loss(model, batch):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        movement_prune(model, random_batches(), 0.5, steps=3, targets=["q_proj"], loss_fn=failing_loss,
                       progress=False)
    q = model.model.layers[0].self_attn.q_proj
    assert not parametrize.is_parametrized(q) and torch.equal(q.weight, before)


@pytest.mark.parametrize("kwargs, err", [
    (dict(scope="row"), ValueError),
    (dict(lr=-1.0), ValueError),
    (dict(steps=0), ValueError),
    (dict(final_sparsity=1.0), ValueError),
    (dict(warmup_steps=3, cooldown_steps=3), ValueError),
    (dict(batches=[]), ValueError),
    (dict(batches=[torch.zeros(2, 3, dtype=torch.long)]), TypeError),
    (dict(targets=["nope"]), ValueError),
])
def test_prune_rejects_bad_arguments(kwargs, err):
    args = dict(batches=random_batches(n_batches=1), final_sparsity=0.5, steps=4, progress=False)
    args.update(kwargs)
    with pytest.raises(err):
        movement_prune(tiny_model("gqa"), **args)


def test_random_prune_grows_one_fixed_random_mask():
    """The random control: the masks of successive steps are nested and do not depend on the data."""
    seen = []
    common = dict(final_sparsity=0.75, steps=6, lr=1e-3, targets=["lm_head"], warmup_steps=1, cooldown_steps=1,
                  loss_fn=lm_head_loss, progress=False)
    masks = random_prune(tiny_model("gqa"), regression_batches(seed=0), seed=5,
                         callback=lambda **kw: seen.append(kw["masks"]["lm_head"].clone()), **common)
    for a, b in zip(seen, seen[1:]):
        assert not (b & ~a).any()  # nothing pruned comes back
    other = random_prune(tiny_model("gqa"), regression_batches(seed=3), seed=5, **common)
    assert torch.equal(masks["lm_head"], other["lm_head"])
    third = random_prune(tiny_model("gqa"), regression_batches(seed=0), seed=6, **common)
    assert not torch.equal(masks["lm_head"], third["lm_head"])


def test_movement_scores_with_their_own_adam():
    """score_lr: S follows Adam on dL/dS = W * dL/dW' (lr 0 on the weights keeps W fixed: an oracle by hand)."""
    model = tiny_model("gqa")
    batches = regression_batches()
    w = model.lm_head.weight.detach().clone()
    seen = []
    movement_prune(model, batches, final_sparsity=0.0, steps=3, lr=0.0, targets=["lm_head"], warmup_steps=0,
                   cooldown_steps=0, loss_fn=lm_head_loss, progress=False, score_lr=1e-2,
                   callback=lambda **kw: seen.append(kw["scores"]["lm_head"].detach().clone()))
    s = torch.zeros_like(w, requires_grad=True)
    opt = torch.optim.Adam([s], lr=1e-2)
    for b in [batches[0], batches[1], batches[0]]:
        s.grad = (w.double() * analytic_grad(w, b)).float()
        opt.step()
    torch.testing.assert_close(seen[-1], s.detach(), rtol=1e-3, atol=1e-6)
    # scale-equivariance: the top-k of Adam scores from 0 does not depend on score_lr
    m1 = movement_prune(tiny_model("gqa"), random_batches(), 0.6, steps=5, lr=1e-3, targets=["q_proj"],
                        progress=False, score_lr=1e-2)
    m2 = movement_prune(tiny_model("gqa"), random_batches(), 0.6, steps=5, lr=1e-3, targets=["q_proj"],
                        progress=False, score_lr=1e-1)
    assert all(torch.equal(m1[n], m2[n]) for n in m1)
    with pytest.raises(ValueError):
        movement_prune(tiny_model("gqa"), random_batches(), 0.5, steps=2, progress=False, score_lr=0.0)
