import pytest
import torch

import course_lib
from course_lib.training import cosine_lr, train
from conftest import tiny_model


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern: token t+1 = token t + 1 (mod 97)
    starts = torch.randint(0, 97, (n, 4, 1), generator=g)
    return [{"input_ids": (s + torch.arange(16)) % 97} for s in starts]


def test_train_reduces_loss_and_keeps_masked_weights_zero():
    model = tiny_model("gqa")
    name = "model.layers.0.mlp.up_proj"
    weight = model.get_submodule(name).weight
    mask = torch.rand(weight.shape) > 0.5
    losses = train(model, iter(_batches(40)), steps=40, lr=3e-3, masks={name: mask}, progress=False)
    assert losses[-1] < losses[0] * 0.8
    assert torch.all(weight[~mask] == 0)
    assert (weight[mask] != 0).float().mean() > 0.99


def test_finetune_on_course_data_keeps_masks_and_is_deterministic():
    model, _ = course_lib.load_course_model()
    name = "model.layers.1.self_attn.q_proj"
    w = model.get_submodule(name).weight
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    losses = course_lib.finetune(model, steps=3, lr=1e-4, masks={name: mask}, batch_size=2, seq_len=64,
                                 progress=False)
    assert len(losses) == 3 and all(l == l for l in losses)
    assert torch.all(w[~mask] == 0)
    model2, _ = course_lib.load_course_model()
    losses2 = course_lib.finetune(model2, steps=3, lr=1e-4, masks={name: mask}, batch_size=2, seq_len=64,
                                  progress=False)
    assert losses == pytest.approx(losses2, rel=1e-6)


def test_bad_masks_are_rejected():
    model = tiny_model("gqa")
    w = model.model.layers[0].mlp.up_proj.weight
    with pytest.raises(TypeError, match="bool"):
        train(model, iter(_batches(1)), 1, 1e-3, masks={"model.layers.0.mlp.up_proj": torch.ones_like(w)})
    with pytest.raises(ValueError, match="shape"):
        train(model, iter(_batches(1)), 1, 1e-3,
              masks={"model.layers.0.mlp.up_proj": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no module"):
        train(model, iter(_batches(1)), 1, 1e-3, masks={"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="lr"):
        train(model, iter(_batches(1)), 1, 0.0)


def test_cosine_schedule_endpoints():
    assert cosine_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, warmup=10, min_ratio=0.1) == pytest.approx(0.1)
