"""Claims a notebook makes from a measurement, asserted with a tolerance that holds on every machine.

A perplexity after fine-tuning, a SparseGPT update or a pair of logits computed two ways depends on
floating-point details: the CPU's vector width (torch picks AVX-512, AVX2 or plain kernels at run
time, ``ATEN_CPU_CAPABILITY`` forces one), the thread count, the order of a reduction. Printing such
a number to four digits makes a notebook's committed output true on one machine only. The cells
that print such numbers are ignored by nbval (``# NBVAL_IGNORE_OUTPUT``) and call these functions
instead: each asserts what the prose says (an equality up to float32 rounding, an ordering, a
ratio), raises ``AssertionError`` with the measured values when it does not hold, and returns a
one-line verdict whose text does not depend on the low bits.

Every tolerance used in the notebooks is a measured spread times a safety factor; the notebooks say
which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def _check_tolerance(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def relative_max_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``, computed in float64.

    The scale is the reference's largest entry, not each entry: logits near zero carry the same
    absolute rounding error as large ones, so an entrywise relative error would be meaningless there.
    """
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise TypeError("actual and expected must be torch.Tensors")
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if actual.numel() == 0:
        raise ValueError("cannot compare empty tensors")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        raise ValueError("tensors contain inf or nan")
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def assert_same_function(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float,
                         what: str = "outputs") -> str:
    """Assert two computations of the same function agree up to float rounding.

    ``max |actual - expected| <= rtol * max |expected|``. Returns a verdict that prints the bound,
    never the measured difference (whose digits depend on the machine).
    """
    rtol = _check_tolerance("rtol", rtol)
    rel = relative_max_diff(actual, expected)
    if rel > rtol:
        raise AssertionError(f"{what} differ: max |diff| / max |reference| = {rel:.3g} > rtol {rtol:g}")
    return f"{what} agree: max |diff| <= {rtol:g} x max |reference| (float32 rounding)"


def assert_ordered(values: Mapping[str, float], order: Sequence[str], *, rel_margin: float = 0.0,
                   what: str = "value") -> str:
    """Assert ``values[order[0]] < values[order[1]] < ...``, each step by a relative margin.

    ``values[b] > values[a] * (1 + rel_margin)`` for every consecutive pair ``a, b`` of ``order``
    (lower is better for perplexity: list the best first). ``rel_margin`` is how much larger the
    next value must be, relative; choose it above the spread measured across machines so that the
    verdict cannot flip on another CPU.
    """
    rel_margin = _check_tolerance("rel_margin", rel_margin)
    if len(order) < 2:
        raise ValueError(f"order needs at least two names, got {list(order)}")
    if len(set(order)) != len(order):
        raise ValueError(f"order names a value twice: {list(order)}")
    missing = [k for k in order if k not in values]
    if missing:
        raise KeyError(f"no value for {missing}; have {sorted(values)}")
    for a, b in zip(order, order[1:]):
        va, vb = float(values[a]), float(values[b])
        if not (math.isfinite(va) and math.isfinite(vb)):
            raise AssertionError(f"{what} of {a!r} or {b!r} is not finite: {va}, {vb}")
        if not vb > va * (1 + rel_margin):
            raise AssertionError(f"expected {what} {a!r} ({va:.4g}) < {b!r} ({vb:.4g}) by more than "
                                 f"{rel_margin:.0%}; it is not")
    margin = f" (each by more than {rel_margin:.0%})" if rel_margin else ""
    return f"{what}: " + " < ".join(order) + margin


def assert_close(value: float, reference: float, *, rtol: float, what: str = "value") -> str:
    """Assert ``|value - reference| <= rtol * |reference|``; returns a verdict without low digits."""
    rtol = _check_tolerance("rtol", rtol)
    value, reference = float(value), float(reference)
    if not (math.isfinite(value) and math.isfinite(reference)):
        raise AssertionError(f"{what}: not finite ({value}, {reference})")
    if abs(value - reference) > rtol * abs(reference):
        raise AssertionError(f"{what} = {value:.6g}, expected {reference:.6g} within {rtol:.2%}")
    return f"{what} within {rtol:.2%} of {reference:.4g}"


def assert_between(value: float, low: float, high: float, *, what: str = "value") -> str:
    """Assert ``low < value < high``; returns a verdict naming the bounds only."""
    value = float(value)
    if not low < high:
        raise ValueError(f"need low < high, got {low}, {high}")
    if not low < value < high:
        raise AssertionError(f"{what} = {value:.6g}, expected between {low:g} and {high:g}")
    return f"{what} between {low:g} and {high:g}"
