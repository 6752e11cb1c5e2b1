import math

import pytest
import torch

from course_lib import roofline, sparse_formats


def test_sparse_weight_bytes_match_sparse_formats():
    for v, dtype in ((2, torch.float16), (4, torch.float32)):
        w = torch.zeros(64, 128, dtype=dtype)
        assert roofline.sparse_weight_bytes(64, 128, v) == sparse_formats.nm_compressed_bytes(w)
    assert roofline.sparse_weight_bytes(4096, 4096, 2) / (4096 * 4096 * 2) == 9 / 16
    assert roofline.sparse_weight_bytes(4096, 4096, 1) / (4096 * 4096) == 5 / 8  # int8 / fp8


def test_memory_bound_limit_is_the_byte_ratio_and_compute_bound_limit_is_twice_the_efficiency():
    s1 = roofline.speedup_curve([1], 11008, 4096, min_tokens=1)[0]
    dense_b = 11008 * 4096 * 2 + (4096 + 11008) * 2
    sparse_b = roofline.sparse_weight_bytes(11008, 4096) + (4096 + 11008) * 2
    assert math.isclose(s1, dense_b / sparse_b, rel_tol=1e-12) and 1.7 < s1 < 16 / 9
    big = roofline.speedup_curve([1 << 16], 11008, 4096, kernel_efficiency=0.7)[0]
    assert math.isclose(big, 1.4, rel_tol=1e-9)
    assert all(s <= 2 for s in roofline.speedup_curve([1, 8, 64, 512, 4096], 4096, 4096))


def test_padding_to_the_minimum_tile_costs_at_small_token_counts():
    padded = roofline.linear_time_s(1, 4096, 4096, sparse=True, min_tokens=8, **roofline.GPUS["H100-SXM"])
    exact = roofline.linear_time_s(8, 4096, 4096, sparse=True, min_tokens=8, **roofline.GPUS["H100-SXM"])
    assert padded == exact


def test_ridge_and_argument_checks():
    assert math.isclose(roofline.ridge_tokens(4096, 4096), 2 * 312e12 / (2 * 2039e9))
    with pytest.raises(ValueError):
        roofline.linear_time_s(0, 4, 4, bandwidth_gbs=1, dense_tflops=1)
    with pytest.raises(ValueError):
        roofline.linear_time_s(1, 4, 4, bandwidth_gbs=1, dense_tflops=1, sparse=True, kernel_efficiency=1.5)
