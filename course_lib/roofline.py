"""A roofline model of one linear layer, dense vs 2:4, against the number of tokens.

A model, not a measurement: the time of ``y = x W^T`` (``x [T, C]``, ``W [R, C]``) is the larger of
the time to move its bytes at the memory bandwidth and the time to do its ``2*T*R*C`` flops at the
tensor-core peak. 2:4 changes both terms:

* **bytes**: the weight shrinks to half its values plus 2 bits of metadata per kept value
  (``sparse_formats.nm_compressed_bytes``): 9/16 of dense in float16/bfloat16, 5/8 in int8/fp8;
* **flops**: the sparse tensor cores double the peak at best; ``kernel_efficiency`` (<= 1) is the
  fraction of that doubling a real kernel reaches;
* **padding**: the sparse kernels need the dense operand padded to a minimum number of rows
  (``min_tokens``); torch 2.13's ``SparseSemiStructuredTensorCUTLASS`` and ``...CUSPARSELT``
  give ``dense_min_rows`` 8 for float16/bfloat16 and 16 for int8 (and float8_e4m3fn, cuSPARSELt only).

Hardware constants (:data:`GPUS`) are the NVIDIA datasheet peaks (dense tensor-core throughput
without sparsity; the datasheets quote the sparse figure as twice that).
"""

from __future__ import annotations

import math

# NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM: 2,039 GB/s, FP16 tensor 312 TFLOPS dense);
# NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: 3.35 TB/s, FP16 tensor 989 TFLOPS dense).
GPUS = {
    "A100-SXM-80GB": {"bandwidth_gbs": 2039.0, "dense_tflops": 312.0},
    "H100-SXM": {"bandwidth_gbs": 3350.0, "dense_tflops": 989.0},
}


def _check(tokens, out_features, in_features, value_bytes):
    for name, v in (("tokens", tokens), ("out_features", out_features), ("in_features", in_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if value_bytes not in (1, 2, 4):
        raise ValueError(f"value_bytes must be 1, 2 or 4, got {value_bytes!r}")


def sparse_weight_bytes(out_features: int, in_features: int, value_bytes: int = 2) -> int:
    """Bytes of a 2:4 weight: half the values plus 2 bits per kept value (rounded up once)."""
    kept = out_features * in_features // 2
    return kept * value_bytes + math.ceil(kept * 2 / 8)


def linear_time_s(tokens: int, out_features: int, in_features: int, *, bandwidth_gbs: float, dense_tflops: float,
                  value_bytes: int = 2, sparse: bool = False, kernel_efficiency: float = 1.0,
                  min_tokens: int = 1) -> float:
    """Roofline time in seconds of one linear on ``tokens`` tokens, dense or 2:4 sparse."""
    _check(tokens, out_features, in_features, value_bytes)
    if not 0 < kernel_efficiency <= 1:
        raise ValueError(f"kernel_efficiency must be in (0, 1], got {kernel_efficiency!r}")
    rows = max(tokens, math.ceil(tokens / min_tokens) * min_tokens) if sparse else tokens
    weight = (sparse_weight_bytes(out_features, in_features, value_bytes) if sparse
              else out_features * in_features * value_bytes)
    moved = weight + rows * (in_features + out_features) * value_bytes
    flops = 2 * rows * out_features * in_features
    peak = dense_tflops * 1e12 * (2 * kernel_efficiency if sparse else 1.0)
    return max(moved / (bandwidth_gbs * 1e9), flops / peak)


def speedup_curve(tokens, out_features: int, in_features: int, *, gpu: str = "A100-SXM-80GB", value_bytes: int = 2,
                  kernel_efficiency: float = 1.0, min_tokens: int = 8) -> list[float]:
    """Dense time / 2:4 time at each token count, on one of :data:`GPUS`."""
    hw = GPUS[gpu]
    return [linear_time_s(t, out_features, in_features, value_bytes=value_bytes, **hw) /
            linear_time_s(t, out_features, in_features, value_bytes=value_bytes, sparse=True,
                          kernel_efficiency=kernel_efficiency, min_tokens=min_tokens, **hw) for t in tokens]


def ridge_tokens(out_features: int, in_features: int, *, gpu: str = "A100-SXM-80GB", value_bytes: int = 2) -> float:
    """Token count where the dense linear turns from memory- to compute-bound (weight bytes dominating)."""
    hw = GPUS[gpu]
    # 2*T*R*C / peak = R*C*v / bw  ->  T = v * peak / (2 * bw)
    return value_bytes * hw["dense_tflops"] * 1e12 / (2 * hw["bandwidth_gbs"] * 1e9)
