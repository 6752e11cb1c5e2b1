import math

import pytest
import torch

from course_lib.claims import (assert_between, assert_close, assert_ordered, assert_same_function,
                               relative_max_diff)


def test_relative_max_diff_uses_the_reference_scale():
    e = torch.tensor([10.0, 0.0, -20.0])
    a = e + torch.tensor([0.0, 1e-3, 0.0])
    assert math.isclose(relative_max_diff(a, e), 1e-3 / 20, rel_tol=1e-6)
    assert relative_max_diff(e, e) == 0.0
    assert relative_max_diff(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_max_diff(torch.ones(2), torch.zeros(2)) == math.inf


def test_same_function_passes_rounding_and_catches_a_real_difference():
    torch.manual_seed(0)
    x, w = torch.randn(64, 384), torch.randn(384, 192)
    ref = (x.double() @ w.double()).float()
    reordered = sum(x[:, i::4] @ w[i::4] for i in range(4))  # same sum, another order, float32
    verdict = assert_same_function(reordered, ref, rtol=1e-5, what="logits")
    assert "agree" in verdict and "e-" not in verdict.split("<=")[0]
    broken = ref.clone()
    broken[3, 5] += 1e-3 * ref.abs().max()
    with pytest.raises(AssertionError, match="differ"):
        assert_same_function(broken, ref, rtol=1e-5)


def test_same_function_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        assert_same_function(torch.ones(2), torch.ones(3), rtol=1e-5)
    with pytest.raises(ValueError, match="nan"):
        assert_same_function(torch.tensor([math.nan]), torch.ones(1), rtol=1e-5)
    with pytest.raises(ValueError, match="rtol"):
        assert_same_function(torch.ones(1), torch.ones(1), rtol=-1)
    with pytest.raises(TypeError):
        assert_same_function([1.0], torch.ones(1), rtol=1e-5)
    with pytest.raises(TypeError):
        assert_same_function(torch.ones(1), torch.ones(1), rtol=True)


def test_ordered_with_margin():
    v = {"a": 2.0, "b": 2.1, "c": 5.0}
    assert assert_ordered(v, ["a", "b", "c"]) == "value: a < b < c"
    assert "10%" in assert_ordered(v, ["a", "c"], rel_margin=0.1)
    with pytest.raises(AssertionError, match="'a'"):
        assert_ordered(v, ["a", "b"], rel_margin=0.1)  # 2.1 is only 5 % above 2.0
    with pytest.raises(AssertionError):
        assert_ordered(v, ["c", "a"])
    with pytest.raises(KeyError, match="'z'"):
        assert_ordered(v, ["a", "z"])
    with pytest.raises(ValueError):
        assert_ordered(v, ["a"])
    with pytest.raises(ValueError):
        assert_ordered(v, ["a", "a"])
    with pytest.raises(AssertionError, match="not finite"):
        assert_ordered({"a": 1.0, "b": math.inf}, ["a", "b"])


def test_close_and_between():
    assert "1.00%" in assert_close(2.01, 2.0, rtol=0.01)
    with pytest.raises(AssertionError, match="2.03"):
        assert_close(2.03, 2.0, rtol=0.01)
    assert assert_between(1.5, 1, 2) == "value between 1 and 2"
    with pytest.raises(AssertionError):
        assert_between(2.5, 1, 2)
    with pytest.raises(ValueError):
        assert_between(1.5, 2, 1)
