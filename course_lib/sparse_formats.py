"""How many bytes a pruned weight really takes, format by format.

Zeroing weights saves nothing by itself: a dense tensor full of zeros is as big as
before. Memory is saved only when the zeros are *not stored*, and every sparse format
pays for that with indices or metadata. For a 2-D weight ``[R, C]`` with ``nnz``
nonzeros, values of ``v`` bytes (2 for fp16/bf16, 4 for fp32) and indices of ``i``
bytes (8 for int64, 4 for int32):

=================  ====================================================================
format             bytes
=================  ====================================================================
dense              ``R*C*v``
dense+mask         ``2*R*C*v``: torch.nn.utils.prune keeps ``weight_orig`` and a
                   ``weight_mask`` buffer *of the weight's dtype* (not bool)
csr/<idx>          ``nnz*(v+i) + (R+1)*i`` (values, column indices, row pointers)
coo/<idx>          ``nnz*(v+2i)`` (values, row and column index of each)
bitmask            ``nnz*v + ceil(R*C/8)`` (values + one bit per position)
n:m                ``K*v + ceil(K*ceil(log2 m)/8)`` with ``K = R*C*n/m`` kept values, each
                   with its position inside its group of ``m``; fp16 2:4 is 9/16 of dense
shrunk             ``R'*C'*v``: rows and columns that are entirely zero physically removed
=================  ====================================================================

CSR beats dense only above the break-even sparsity ``i/(v+i)`` (plus a sliver for the row
pointers): 80% for fp16 with int64 indices, 50% for fp32 with int32 -- which is why
unstructured sparsity rarely saves memory at the 50% that LLM pruning reaches, while 2:4
(Mishra et al. 2021, arXiv:2104.08378) and physically removed rows/columns do.

:func:`compress_2_4` / :func:`decompress_2_4` implement the 2:4 format in plain torch
(values ``[R, C/2]`` + 2-bit positions packed four to a ``uint8``); the GPU kernels
(CUTLASS, cuSPARSELt) store the same information, in their own layouts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .pruning.common import check_nm, check_weight

INDEX_DTYPES = (torch.int64, torch.int32)


def _check_2d(weight) -> torch.Tensor:
    check_weight(weight)
    if weight.dim() != 2:
        raise ValueError(f"storage formats here are for 2-D weights [out, in], got shape {tuple(weight.shape)}")
    if weight.layout != torch.strided:
        raise ValueError(f"pass the dense (strided) weight, got layout {weight.layout}")
    return weight


def _index_size(index_dtype) -> int:
    if index_dtype not in INDEX_DTYPES:
        raise ValueError(f"index_dtype must be one of {INDEX_DTYPES}, got {index_dtype!r}")
    return torch.empty((), dtype=index_dtype).element_size()


def _value_size(dtype) -> int:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def _nnz(weight: torch.Tensor) -> int:
    return int((weight != 0).sum())


def dense_bytes(weight: torch.Tensor) -> int:
    """``R*C*v``: every entry stored, zeros included."""
    _check_2d(weight)
    return weight.numel() * weight.element_size()


def masked_dense_bytes(weight: torch.Tensor) -> int:
    """torch.nn.utils.prune's reparametrisation: ``weight_orig`` + ``weight_mask``, both
    in the weight's dtype (``2*R*C*v``). The ``weight`` it recomputes before each
    forward is a third dense copy in memory, not counted (it is not saved)."""
    return 2 * dense_bytes(weight)


def csr_bytes(weight: torch.Tensor, index_dtype=torch.int64) -> int:
    """CSR: values + column index per nonzero + ``R+1`` row pointers."""
    _check_2d(weight)
    i = _index_size(index_dtype)
    return _nnz(weight) * (weight.element_size() + i) + (weight.shape[0] + 1) * i


def coo_bytes(weight: torch.Tensor, index_dtype=torch.int64) -> int:
    """COO: values + (row, column) index pair per nonzero."""
    _check_2d(weight)
    i = _index_size(index_dtype)
    return _nnz(weight) * (weight.element_size() + 2 * i)


def bitmask_bytes(weight: torch.Tensor) -> int:
    """Nonzero values + one bit per position (``ceil(R*C/8)`` bytes, packed over the
    whole row-major tensor)."""
    _check_2d(weight)
    return _nnz(weight) * weight.element_size() + math.ceil(weight.numel() / 8)


def nm_compressed_bytes(weight: torch.Tensor, n: int = 2, m: int = 4, check_pattern: bool = True) -> int:
    """N:M compressed: the ``n`` kept values of each group of ``m`` plus a
    ``ceil(log2 m)``-bit position per kept value (2 bits for 2:4).

    With ``check_pattern`` (default) the weight must be N:M sparse -- otherwise this
    format cannot hold it and ``ValueError`` is raised.
    """
    from .pruning.nm import is_nm_sparse

    _check_2d(weight)
    n, m = check_nm(n, m)
    if weight.shape[1] % m:
        raise ValueError(f"in_features={weight.shape[1]} is not divisible by m={m}")
    if check_pattern and not is_nm_sparse(weight, n, m):
        raise ValueError(f"weight is not {n}:{m} sparse, the {n}:{m} format cannot store it")
    kept = weight.numel() // m * n
    position_bits = math.ceil(math.log2(m))
    return kept * weight.element_size() + math.ceil(kept * position_bits / 8)


def shrunk_bytes(weight: torch.Tensor) -> int:
    """The dense weight once its all-zero rows and all-zero columns are removed
    (what structured pruning achieves by physically shrinking the layer)."""
    _check_2d(weight)
    nonzero = weight != 0
    rows = int(nonzero.any(dim=1).sum())
    cols = int(nonzero.any(dim=0).sum())
    return rows * cols * weight.element_size()


def storage_table(weight: torch.Tensor, n: int = 2, m: int = 4) -> dict[str, int]:
    """``{format name: bytes}`` for one 2-D weight.

    Keys: ``"dense"``, ``"dense+mask"``, ``"csr/int64"``, ``"csr/int32"``,
    ``"coo/int64"``, ``"coo/int32"``, ``"bitmask"``, ``"shrunk"``, and ``f"{n}:{m}"``
    (e.g. ``"2:4"``) only when the weight is N:M sparse (otherwise that format cannot
    store it; call :func:`nm_compressed_bytes` with ``check_pattern=False`` for the
    figure a 2:4-pruned weight of that shape would take).
    """
    from .pruning.nm import is_nm_sparse

    _check_2d(weight)
    n, m = check_nm(n, m)
    table = {"dense": dense_bytes(weight), "dense+mask": masked_dense_bytes(weight)}
    for index_dtype in INDEX_DTYPES:
        table[f"csr/{str(index_dtype).removeprefix('torch.')}"] = csr_bytes(weight, index_dtype)
    for index_dtype in INDEX_DTYPES:
        table[f"coo/{str(index_dtype).removeprefix('torch.')}"] = coo_bytes(weight, index_dtype)
    table["bitmask"] = bitmask_bytes(weight)
    if weight.shape[1] % m == 0 and is_nm_sparse(weight, n, m):
        table[f"{n}:{m}"] = nm_compressed_bytes(weight, n, m)
    table["shrunk"] = shrunk_bytes(weight)
    return table


def csr_break_even_sparsity(dtype, index_dtype=torch.int64, shape=None) -> float:
    """The sparsity above which CSR takes fewer bytes than dense.

    From ``nnz*(v+i) + (R+1)*i < R*C*v`` with ``nnz = (1-s)*R*C``::

        s > 1 - (R*C*v - (R+1)*i) / ((v+i)*R*C)

    ``shape=None`` gives the large-matrix limit ``i / (v+i)`` (row pointers negligible):
    0.8 for fp16/int64, 2/3 for fp32/int64 or fp16/int32, 0.5 for fp32/int32. With a
    ``shape=(R, C)`` the row pointers are included; if even an all-zero matrix is not
    smaller in CSR the answer is 1.0 (no sparsity is above it).
    """
    v, i = _value_size(dtype), _index_size(index_dtype)
    if shape is None:
        return i / (v + i)
    rows, cols = (int(s) for s in shape)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"shape must be two positive ints (R, C), got {shape!r}")
    numel = rows * cols
    s = 1 - Fraction(numel * v - (rows + 1) * i, (v + i) * numel)
    return float(min(s, Fraction(1)))


# ----------------------------------------------------------------------------------------
# 2:4 compression in plain torch


def compress_2_4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2:4-sparse weight ``[R, C]`` -> ``(values [R, C/2], metadata uint8 [ceil(R*C/8)])``.

    Each group of 4 consecutive entries of a row keeps 2 values (its nonzeros, topped up
    with its lowest-index zeros when it has fewer than 2) in column order, and the 2-bit
    position (0..3) of each. The positions of all kept values, in row-major order, are
    packed four to a byte, the first in the lowest bits. Any float dtype; exact round trip
    with :func:`decompress_2_4` (a ``-0.0`` that is not kept comes back as ``0.0``).
    """
    _check_2d(weight)
    rows, cols = weight.shape
    if cols % 4:
        raise ValueError(f"in_features={cols} is not divisible by 4, cannot form 2:4 groups")
    groups = weight.detach().reshape(rows, cols // 4, 4)  # [R, C/4, 4]
    nonzero = groups != 0
    if (nonzero.sum(dim=-1) > 2).any():
        raise ValueError("weight is not 2:4 sparse: some group of 4 consecutive weights has more than 2 nonzeros")
    # rank positions: nonzeros first, then by index; keep the first two, in index order
    priority = (~nonzero).to(torch.int64) * 4 + torch.arange(4, device=weight.device)  # [R, C/4, 4]
    positions = priority.argsort(dim=-1)[..., :2].sort(dim=-1).values  # [R, C/4, 2]
    values = groups.gather(-1, positions).reshape(rows, cols // 2)  # [R, C/2]
    return values.contiguous(), _pack_2bit(positions.reshape(-1))


def decompress_2_4(values: torch.Tensor, metadata: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`compress_2_4`: the dense ``[R, C]`` weight."""
    rows, cols = (int(s) for s in shape)
    if cols % 4 or rows <= 0 or cols <= 0:
        raise ValueError(f"shape must be (R, C) with C a positive multiple of 4, got {tuple(shape)}")
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (rows, cols // 2):
        raise ValueError(f"values must be a tensor of shape {(rows, cols // 2)}")
    n_meta = math.ceil(rows * cols / 8)
    if not isinstance(metadata, torch.Tensor) or metadata.dtype != torch.uint8 or tuple(metadata.shape) != (n_meta,):
        raise ValueError(f"metadata must be a uint8 tensor of shape ({n_meta},)")
    positions = _unpack_2bit(metadata, rows * cols // 2).reshape(rows, cols // 4, 2)  # [R, C/4, 2]
    if (positions[..., 0] >= positions[..., 1]).any():
        raise ValueError("corrupt metadata: the two positions of a group must be increasing")
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, positions.to(values.device), values.reshape(rows, cols // 4, 2))
    return dense.reshape(rows, cols)


def _pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """int codes in 0..3 ``[K]`` -> uint8 ``[ceil(K/4)]``, code j in bits 2*(j%4)."""
    k = codes.numel()
    padded = torch.zeros(math.ceil(k / 4) * 4, dtype=torch.int64, device=codes.device)
    padded[:k] = codes
    shifts = torch.tensor([0, 2, 4, 6], device=codes.device)
    return (padded.reshape(-1, 4) << shifts).sum(dim=-1).to(torch.uint8)


def _unpack_2bit(packed: torch.Tensor, k: int) -> torch.Tensor:
    shifts = torch.tensor([0, 2, 4, 6], device=packed.device)
    return ((packed.to(torch.int64)[:, None] >> shifts) & 3).reshape(-1)[:k]


def torch_prune_ram_bytes(weight: torch.Tensor) -> int:
    """Bytes that ``torch.nn.utils.prune`` holds in memory for one pruned weight: ``weight_orig``
    (the parameter), ``weight_mask`` (a buffer of the weight's dtype) and the ``weight`` attribute
    it recomputes as their product before each forward -- three dense copies (``3*R*C*v``). A saved
    state dict holds the first two (:func:`masked_dense_bytes`)."""
    return 3 * dense_bytes(weight)
