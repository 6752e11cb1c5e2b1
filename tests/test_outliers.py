"""course_lib.outliers: outlier features by a function-preserving reparametrisation.

Scaling by a power of two is exact in floating point, so with ``scale=2**k`` the model must
compute *bit-identical* logits and Wanda must choose *identical* masks, while magnitude
pruning, which sees only ``|W|``, must throw the shrunken columns away.
"""

import copy

import pytest
import torch

from conftest import tiny_model
from course_lib.model import prunable_linears
from course_lib.outliers import add_outlier_features
from course_lib.pruning.magnitude import magnitude_prune
from course_lib.pruning.wanda import wanda_prune

KINDS = ("mha", "gqa", "mistral", "qwen2")
CHANNELS = [3, 17, 40]


def _calib(n_batches=2, batch_size=2, seq_len=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (batch_size, seq_len), generator=g)} for _ in range(n_batches)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale, channels", [(64.0, CHANNELS), (37.3, torch.tensor(CHANNELS))])
def test_logits_unchanged(kind, scale, channels):
    model = tiny_model(kind)
    ids = _calib(1)[0]["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
        add_outlier_features(model, channels, scale=scale)
        after = model(input_ids=ids).logits
    if scale == 64.0:  # a power of two: every product is exactly the same, so are the logits
        assert torch.equal(before, after)
    else:  # any other scale: equal up to float rounding
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_activations_become_outliers_and_weights_shrink():
    model = tiny_model("gqa")
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    norm_before = model.model.layers[1].post_attention_layernorm.weight.detach().clone()
    add_outlier_features(model, CHANNELS, scale=16.0)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q[:, CHANNELS], q_before[:, CHANNELS] / 16)
    others = [c for c in range(q.shape[1]) if c not in CHANNELS]
    assert torch.equal(q[:, others], q_before[:, others])
    assert torch.equal(model.model.layers[1].post_attention_layernorm.weight[CHANNELS], norm_before[CHANNELS] * 16)
    # o_proj and down_proj do not read a norm's output: untouched
    fresh = tiny_model("gqa")
    for name in ("o_proj", "down_proj"):
        block = "self_attn" if name == "o_proj" else "mlp"
        assert torch.equal(getattr(getattr(model.model.layers[0], block), name).weight,
                           getattr(getattr(fresh.model.layers[0], block), name).weight)


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(n=2, m=4)])
def test_wanda_masks_invariant(pattern):
    model = tiny_model("gqa")
    calib = _calib()
    plain = wanda_prune(copy.deepcopy(model), calib, **pattern)
    outl = wanda_prune(add_outlier_features(copy.deepcopy(model), CHANNELS, scale=256.0), calib, **pattern)
    assert plain.keys() == outl.keys()
    for name in plain:
        assert torch.equal(plain[name], outl[name]), name


def test_magnitude_removes_the_shrunken_columns():
    model = add_outlier_features(tiny_model("gqa"), CHANNELS, scale=1024.0)
    masks = magnitude_prune(model, 0.5, scope="layer")
    readers = [n for n in prunable_linears(model) if n.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))]
    assert len(readers) == 2 * 5
    for name in readers:
        assert not masks[name][:, CHANNELS].any(), name  # every weight of those columns removed
    plain = magnitude_prune(tiny_model("gqa"), 0.5, scope="layer")
    assert all(plain[n][:, CHANNELS].any() for n in readers)


@pytest.mark.parametrize("channels, err", [
    ([], ValueError), ([64], ValueError), ([-1], ValueError), ([3, 3], ValueError),
    ([1.0], TypeError), ([True], TypeError), ("3", TypeError),
    (torch.tensor([0.0, 1.0]), TypeError), (torch.tensor([True]), TypeError), (torch.tensor([[1]]), TypeError),
])
def test_bad_channels(channels, err):
    model = tiny_model("gqa")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(err, match="channels"):
        add_outlier_features(model, channels)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing changed


@pytest.mark.parametrize("scale", [0, -2.0, float("nan"), float("inf"), True, "2"])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        add_outlier_features(tiny_model("gqa"), [1], scale=scale)


def test_not_a_llama():
    with pytest.raises(ValueError, match="Llama layout"):
        add_outlier_features(torch.nn.Linear(4, 4), [0])
