"""N:M (semi-structured) sparsity: keep ``n`` of every ``m`` consecutive weights.

Along the input dimension (the last dim of an ``nn.Linear`` weight ``[out, in]``) the
weights are cut into groups of ``m`` consecutive entries, and in every group only the
``n`` with the largest score survive (score = ``|w|`` by default; Wanda/SparseGPT-style
scores can be passed instead). 2:4 is the pattern that NVIDIA Ampere and newer GPUs
accelerate in their sparse tensor cores (Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks", arXiv:2104.08378; Zhou et al. 2021, "Learning N:M Fine-grained
Structured Sparse Neural Networks From Scratch", arXiv:2102.04010): the hardware stores
the 2 kept values of each group plus a 2-bit position for each of them, and skips the
zeros in the matmul.

Ties: inside a group, among equal scores the **lower index is kept** (a stable
descending sort of the group's scores; the first ``n`` survive).

:func:`to_semi_structured` swaps the pruned weights of a model for
``torch.sparse.to_sparse_semi_structured`` tensors, which run the sparse kernels
(cuSPARSELt by default, or CUTLASS when
``torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS`` is set). It only works on
CUDA GPUs of compute capability >= 8.0, for the dtypes and shapes that backend accepts;
:func:`semi_structured_support` says whether a weight qualifies and, if not, why.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import prunable_linears
from .common import apply_masks, check_nm, check_weight
from .magnitude import magnitude_scores

MIN_CUDA_CAPABILITY = (8, 0)


def _check_groups(shape, m: int, what: str = "weight") -> None:
    if len(shape) == 0:
        raise ValueError(f"{what} must have at least one dimension to form N:M groups")
    if shape[-1] % m != 0:
        raise ValueError(
            f"{what} has {shape[-1]} entries along its last (input) dimension, not divisible by m={m}: "
            f"N:M groups are {m} consecutive input weights"
        )


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask keeping the ``n`` largest scores of every ``m`` consecutive weights along
    the last dim (``weight [out, in]`` -> groups ``[out, in // m, m]``).

    ``scores`` (default ``|weight|``) must have the weight's shape. Ties inside a group:
    the lower index is kept. ``in % m != 0`` raises ``ValueError``.
    """
    check_weight(weight)
    n, m = check_nm(n, m)
    _check_groups(weight.shape, m)
    if scores is None:
        scores = magnitude_scores(weight)
    else:
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
        if scores.dtype == torch.bool or scores.is_complex():
            raise TypeError(f"scores must be real numbers, got {scores.dtype}")
        if scores.shape != weight.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)}, weight has {tuple(weight.shape)}")
        if scores.is_floating_point() and torch.isnan(scores).any():
            raise ValueError("scores contain NaN; a NaN score cannot be ranked")
        scores = scores.detach()
    groups = scores.reshape(-1, m)  # [n_groups, m]
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices  # [n_groups, m]
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(weight.shape).to(weight.device)


def is_nm_sparse(tensor: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive entries along the last dim has at most
    ``n`` nonzeros. The last dim must be divisible by ``m``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    n, m = check_nm(n, m)
    _check_groups(tensor.shape, m, "tensor")
    nonzeros = (tensor != 0).reshape(-1, m).sum(dim=-1)  # [n_groups]
    return bool((nonzeros <= n).all())


def nm_prune(model: nn.Module, n: int = 2, m: int = 4, scores: dict | None = None,
             targets=None) -> dict[str, torch.Tensor]:
    """N:M-prune the target linears in place; returns ``{module_name: mask}``.

    ``scores``: optional ``{module_name: score tensor}`` with an entry for every target
    (default ``|weight|`` for all).
    """
    n, m = check_nm(n, m)
    linears = prunable_linears(model, targets)
    if scores is not None:
        if not isinstance(scores, dict):
            raise TypeError(f"scores must be a dict {{module_name: tensor}}, got {type(scores).__name__}")
        missing = [name for name in linears if name not in scores]
        extra = [name for name in scores if name not in linears]
        if missing or extra:
            raise ValueError(f"scores must have exactly one entry per target; missing {missing}, not targets {extra}")
    for name, mod in linears.items():
        if hasattr(mod, "weight_orig"):
            raise ValueError(f"{name!r} is reparametrised by torch.nn.utils.prune; call make_permanent(model) first")
        check_weight(mod.weight)
        _check_groups(mod.weight.shape, m, f"weight of {name!r}")
    masks = {
        name: nm_mask(mod.weight, n, m, None if scores is None else scores[name].to(mod.weight.device))
        for name, mod in linears.items()
    }
    return apply_masks(model, masks)


# ----------------------------------------------------------------------------------------
# torch.sparse semi-structured (2:4) tensors


def _semi_structured_backend():
    """The class ``torch.sparse.to_sparse_semi_structured`` would use right now."""
    from torch.sparse.semi_structured import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        return SparseSemiStructuredTensorCUTLASS
    return SparseSemiStructuredTensorCUSPARSELT


def _required_pattern(dtype) -> tuple[int, int]:
    # float32 (TF32 tensor cores) is handled as 1:2 (pairs), 16- and 8-bit types as 2:4.
    return (1, 2) if dtype == torch.float32 else (2, 4)


def _support_problems(weight_or_dtype, shape=None, device=None) -> tuple[list[tuple[str, str]], str]:
    """([(kind, message)], backend name); kind is 'env' (machine) or 'weight' (the tensor)."""
    from torch.sparse.semi_structured import SparseSemiStructuredTensor

    weight = None
    if isinstance(weight_or_dtype, SparseSemiStructuredTensor):
        return [("weight", "weight is already a semi-structured sparse tensor")], weight_or_dtype.BACKEND
    if isinstance(weight_or_dtype, torch.Tensor):
        weight = weight_or_dtype
        if shape is not None or device is not None:
            raise ValueError("pass either a weight tensor, or a dtype with shape= (and device=)")
        dtype, shape, device = weight.dtype, tuple(weight.shape), weight.device
    elif isinstance(weight_or_dtype, torch.dtype):
        dtype = weight_or_dtype
        if shape is None:
            raise ValueError("with a dtype, pass the weight's shape too: "
                             "semi_structured_support(dtype, shape=(out, in))")
        shape = tuple(int(s) for s in shape)
        device = torch.device("cuda" if device is None else device)
    else:
        raise TypeError(f"expected a weight tensor or a torch.dtype, got {type(weight_or_dtype).__name__}")

    backend = _semi_structured_backend()
    problems = []
    if device.type != "cuda":
        problems.append(("env", f"weight is on {device.type}: semi-structured sparse tensors need a CUDA device"))
    elif not torch.cuda.is_available():
        problems.append(("env", "CUDA is not available (torch.cuda.is_available() is False)"))
    else:
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CUDA_CAPABILITY:
            problems.append(("env", f"GPU compute capability {capability[0]}.{capability[1]} < 8.0: "
                                    "2:4 sparse tensor cores need Ampere (sm_80) or newer"))
        if backend.BACKEND == "cusparselt" and not torch.backends.cusparselt.is_available():
            problems.append(("env", "this torch build has no cuSPARSELt; set "
                                    "torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = True for CUTLASS"))

    constraints = backend._DTYPE_SHAPE_CONSTRAINTS
    linear_dtypes = [d for d in constraints if d.is_floating_point and "float8" not in str(d)]
    if dtype not in linear_dtypes:
        problems.append(("weight", f"dtype {dtype} is not supported by the {backend.BACKEND} backend for "
                                   f"linear layers (supported: {', '.join(str(d) for d in linear_dtypes)})"))
    if len(shape) != 2:
        problems.append(("weight", f"weight must be 2-D [out, in], got shape {shape}"))
    elif dtype in constraints:
        min_rows, min_cols = constraints[dtype].sparse_min_rows, constraints[dtype].sparse_min_cols
        rows, cols = shape
        if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
            problems.append(("weight", f"shape {shape} is not supported for {dtype} by {backend.BACKEND}: both "
                                       f"dims must be positive multiples of ({min_rows}, {min_cols})"))
    if weight is not None and len(shape) == 2 and dtype in linear_dtypes:
        n, m = _required_pattern(dtype)
        if shape[1] % m == 0 and not is_nm_sparse(weight, n, m):
            problems.append(("weight", f"weight is not {n}:{m} sparse (some group of {m} consecutive input "
                                       f"weights has more than {n} nonzeros); prune it with nm_prune first"))
    return problems, backend.BACKEND


def semi_structured_support(weight_or_dtype, shape=None, device=None) -> tuple[bool, str]:
    """Can this weight become a ``torch.sparse`` semi-structured (2:4) tensor here?

    ``semi_structured_support(weight)`` checks the tensor itself (device, dtype, shape
    and its 2:4 pattern); ``semi_structured_support(torch.float16, shape=(out, in))``
    checks a dtype and shape on ``device`` (default ``"cuda"``). Returns ``(ok, reason)``;
    ``reason`` lists every problem found, separated by ``"; "``.
    """
    problems, backend = _support_problems(weight_or_dtype, shape, device)
    if problems:
        return False, "; ".join(message for _, message in problems)
    return True, f"supported by the {backend} backend"


@torch.no_grad()
def to_semi_structured(model: nn.Module, targets=None) -> list[str]:
    """Replace each target linear's (2:4-pruned) weight by a semi-structured sparse
    tensor (``torch.sparse.to_sparse_semi_structured``); returns the converted names.

    Everything is checked before anything is converted. A machine that cannot do it
    raises ``RuntimeError``; a weight that cannot (dtype, shape, not 2:4) ``ValueError``;
    both name the module and the reason. The model's outputs are those of the dense
    masked model (up to the kernels' float rounding).
    """
    from torch.sparse.semi_structured import to_sparse_semi_structured

    linears = prunable_linears(model, targets)
    env, bad = [], []
    for name, mod in linears.items():
        if hasattr(mod, "weight_orig"):
            raise ValueError(f"{name!r} is reparametrised by torch.nn.utils.prune; call make_permanent(model) first")
        problems, _ = _support_problems(mod.weight.detach())
        env += [msg for kind, msg in problems if kind == "env"]
        bad += [f"{name}: {msg}" for kind, msg in problems if kind == "weight"]
    if env:
        raise RuntimeError("cannot use semi-structured sparse tensors here: " + "; ".join(dict.fromkeys(env)))
    if bad:
        raise ValueError("cannot convert to semi-structured sparse tensors: " + " | ".join(bad))
    for mod in linears.values():
        sparse = to_sparse_semi_structured(mod.weight.detach().contiguous())
        mod.weight = nn.Parameter(sparse, requires_grad=False)
    return list(linears)
