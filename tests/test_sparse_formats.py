"""Storage bytes of each format, checked against the tensors torch (or numpy) really builds."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from course_lib.pruning.nm import nm_mask
from course_lib.sparse_formats import (
    bitmask_bytes,
    compress_2_4,
    coo_bytes,
    csr_break_even_sparsity,
    csr_bytes,
    decompress_2_4,
    dense_bytes,
    masked_dense_bytes,
    nm_compressed_bytes,
    shrunk_bytes,
    storage_table,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def sparse_weight(shape, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) < sparsity] = 0
    return w.to(dtype)


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def random_2_4(rows, cols, dtype=torch.float32, seed=0):
    """2:4-sparse weight; some groups keep fewer than 2 nonzeros."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w = w * nm_mask(torch.rand(rows, cols, generator=g).float(), 2, 4)
    w[torch.rand(rows, cols, generator=g) < 0.2] = 0
    return w.to(dtype)


# ---------------------------------------------------------------------------------------
# against real tensors


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_csr_and_coo_int64_match_torch(dtype, sparsity):
    w = sparse_weight((13, 24), sparsity, dtype)
    w[3] = 0  # an empty row
    csr = w.to_sparse_csr()
    assert csr.crow_indices().dtype == torch.int64
    assert csr_bytes(w, torch.int64) == nbytes(csr.crow_indices(), csr.col_indices(), csr.values())
    coo = w.to_sparse_coo().coalesce()
    assert coo_bytes(w, torch.int64) == nbytes(coo.indices(), coo.values())
    assert dense_bytes(w) == nbytes(w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_int32_matches_torch(dtype):
    w = sparse_weight((17, 40), 0.7, dtype)
    ref = w.to_sparse_csr()
    csr = torch.sparse_csr_tensor(ref.crow_indices().int(), ref.col_indices().int(), ref.values(), w.shape,
                                  check_invariants=True)
    assert csr.crow_indices().dtype == torch.int32 and csr.col_indices().dtype == torch.int32
    assert torch.equal(csr.to_dense(), w)
    assert csr_bytes(w, torch.int32) == nbytes(csr.crow_indices(), csr.col_indices(), csr.values())


def test_coo_int32_matches_explicit_arrays():
    w = sparse_weight((11, 20), 0.6)
    rows, cols = np.nonzero(w.numpy())  # torch's COO only has int64 indices: build int32 COO by hand
    arrays = [rows.astype(np.int32), cols.astype(np.int32), w.numpy()[rows, cols]]
    assert coo_bytes(w, torch.int32) == sum(a.nbytes for a in arrays)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_with_mask_matches_torch_prune_buffers(dtype):
    layer = nn.Linear(24, 10).to(dtype)
    prune.custom_from_mask(layer, "weight", torch.rand(10, 24) > 0.5)
    stored = dict(layer.named_parameters())["weight_orig"], dict(layer.named_buffers())["weight_mask"]
    assert stored[1].dtype == dtype  # torch keeps the mask in the weight's dtype, not bool
    assert masked_dense_bytes(layer.weight) == nbytes(*stored) == 2 * dense_bytes(layer.weight)


@pytest.mark.parametrize("shape", [(5, 8), (7, 9), (1, 3)])
def test_bitmask_matches_numpy_packbits(shape):
    w = sparse_weight(shape, 0.5, torch.float16)
    packed = np.packbits((w != 0).numpy().reshape(-1))
    assert bitmask_bytes(w) == packed.nbytes + nbytes(w[w != 0])


def test_shrunk_matches_physical_removal():
    w = sparse_weight((12, 20), 0.3, torch.bfloat16)
    w[[1, 5, 6]] = 0
    w[:, [0, 7, 19]] = 0
    keep_rows = (w != 0).any(dim=1)
    keep_cols = (w != 0).any(dim=0)
    small = w[keep_rows][:, keep_cols].contiguous()
    assert small.shape == (9, 17)
    assert shrunk_bytes(w) == nbytes(small)
    assert shrunk_bytes(torch.zeros(4, 4)) == 0


def test_storage_table():
    w = random_2_4(16, 32, torch.float16)
    table = storage_table(w)
    assert table == {
        "dense": dense_bytes(w), "dense+mask": 2 * dense_bytes(w),
        "csr/int64": csr_bytes(w), "csr/int32": csr_bytes(w, torch.int32),
        "coo/int64": coo_bytes(w), "coo/int32": coo_bytes(w, torch.int32),
        "bitmask": bitmask_bytes(w), "2:4": nm_compressed_bytes(w), "shrunk": shrunk_bytes(w),
    }
    assert table["2:4"] * 16 == table["dense"] * 9
    unstructured = sparse_weight((16, 32), 0.5, torch.float16)
    assert "2:4" not in storage_table(unstructured)  # 2:4 cannot store it
    assert "1:4" in storage_table(w * nm_mask(w, 1, 4), n=1, m=4)
    assert all(isinstance(v, int) for v in table.values())


# ---------------------------------------------------------------------------------------
# N:M and 2:4 compression


@pytest.mark.parametrize("dtype", DTYPES)
def test_2_4_fp16_is_nine_sixteenths(dtype):
    w = random_2_4(64, 128, dtype)
    expected = 64 * 128 // 2 * w.element_size() + 64 * 128 // 2 * 2 // 8
    assert nm_compressed_bytes(w) == expected
    if dtype != torch.float32:
        assert nm_compressed_bytes(w) * 16 == dense_bytes(w) * 9
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        nm_compressed_bytes(torch.randn(4, 8))
    assert nm_compressed_bytes(torch.randn(4, 8), check_pattern=False) == 16 * 4 + 4
    assert nm_compressed_bytes(torch.randn(4, 16) * 0, 3, 8) == 24 * 4 + math.ceil(24 * 3 / 8)


def test_compress_2_4_layout_by_hand():
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 2.0, 0.0, 0.0]])
    values, meta = compress_2_4(w)
    assert torch.equal(values, torch.tensor([[5.0, 7.0, 1.0, 2.0]]))
    # positions 1, 3, 0, 1 -> bits 01 | 11<<2 | 00<<4 | 01<<6
    assert meta.dtype == torch.uint8 and meta.tolist() == [1 | 3 << 2 | 0 << 4 | 1 << 6]
    empty_values, empty_meta = compress_2_4(torch.zeros(1, 4))  # fewer than 2 nonzeros: lowest zeros kept
    assert empty_values.tolist() == [[0.0, 0.0]] and empty_meta.tolist() == [0 | 1 << 2]


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 9), seed=st.integers(0, 10_000),
       dtype=st.sampled_from(DTYPES + [torch.float64]))
def test_compress_2_4_round_trip(rows, groups, seed, dtype):
    w = random_2_4(rows, 4 * groups, dtype, seed)
    values, meta = compress_2_4(w)
    assert values.shape == (rows, 2 * groups) and values.dtype == dtype
    assert meta.shape == (math.ceil(rows * 4 * groups / 8),)
    back = decompress_2_4(values, meta, w.shape)
    assert back.dtype == dtype and torch.equal(back, w)
    assert nbytes(values, meta) == nm_compressed_bytes(w, 2, 4)


def test_compress_2_4_bad_input():
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        compress_2_4(torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    with pytest.raises(ValueError, match="divisible by 4"):
        compress_2_4(torch.zeros(2, 6))
    with pytest.raises(TypeError, match="floating"):
        compress_2_4(torch.zeros(2, 4, dtype=torch.int8))
    values, meta = compress_2_4(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="corrupt"):
        decompress_2_4(values, torch.zeros_like(meta), (2, 8))  # positions (0, 0)
    with pytest.raises(ValueError, match="values"):
        decompress_2_4(values[:, :2], meta, (2, 8))
    with pytest.raises(ValueError, match="metadata"):
        decompress_2_4(values, meta.int(), (2, 8))


# ---------------------------------------------------------------------------------------
# CSR break-even


@pytest.mark.parametrize("dtype,index_dtype,limit", [
    (torch.float16, torch.int64, 0.8), (torch.bfloat16, torch.int32, 2 / 3),
    (torch.float32, torch.int64, 2 / 3), (torch.float32, torch.int32, 0.5),
])
def test_csr_break_even_limit(dtype, index_dtype, limit):
    assert csr_break_even_sparsity(dtype, index_dtype) == pytest.approx(limit)
    # large matrices approach the limit from above (the row pointers cost a little)
    big = csr_break_even_sparsity(dtype, index_dtype, shape=(4096, 4096))
    assert limit < big < limit + 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shape", [(6, 10), (3, 12), (1, 1)])  # (3, 12): break-even hit exactly
def test_csr_break_even_against_byte_counts(dtype, index_dtype, shape):
    threshold = csr_break_even_sparsity(dtype, index_dtype, shape=shape)
    numel = shape[0] * shape[1]
    order = torch.randperm(numel)
    for nnz in range(numel + 1):
        w = torch.zeros(numel, dtype=dtype)
        w[order[:nnz]] = 1.0
        w = w.reshape(shape)
        sparsity = 1 - nnz / numel
        csr, dense = csr_bytes(w, index_dtype), dense_bytes(w)
        assert (csr < dense) == (sparsity > threshold + 1e-9), (nnz, csr, dense)
        if abs(sparsity - threshold) < 1e-9 and threshold < 1:
            assert csr == dense, (nnz, csr, dense)  # exactly at the break-even point
    if shape == (1, 1):
        assert threshold == 1.0  # CSR never wins on a 1x1 matrix


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        dense_bytes(torch.zeros(4))
    with pytest.raises(ValueError, match="index_dtype"):
        csr_bytes(torch.zeros(2, 2), torch.int16)
    with pytest.raises(TypeError, match="floating"):
        csr_bytes(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError):
        csr_break_even_sparsity(torch.int32)
    with pytest.raises(ValueError, match="shape"):
        csr_break_even_sparsity(torch.float16, shape=(0, 3))
    with pytest.raises(ValueError, match="strided"):
        dense_bytes(torch.eye(3).to_sparse_csr())
    with pytest.raises(ValueError, match="divisible"):
        nm_compressed_bytes(torch.zeros(2, 6))


# ---------------------------------------------------------------------------------------
# CUDA: torch's own packed semi-structured tensors


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)),
                    reason="semi-structured sparse tensors need a CUDA GPU of compute capability >= 8.0")
@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(128, 128), (256, 512)])
def test_2_4_bytes_match_torch_semi_structured(backend, dtype, shape):
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        pytest.skip("this torch build has no cuSPARSELt")
    w = random_2_4(*shape, dtype=dtype).cuda()
    cls = SparseSemiStructuredTensorCUTLASS if backend == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sparse = cls.from_dense(w)
    parts = [t for t in (sparse.packed, sparse.meta) if t is not None]
    assert nbytes(*parts) == nm_compressed_bytes(w)
    assert torch.equal(sparse.to_dense(), w)


def test_torch_prune_holds_three_dense_copies_in_ram_and_saves_two():
    import torch.nn.utils.prune as prune_

    from course_lib.sparse_formats import torch_prune_ram_bytes

    layer = torch.nn.Linear(24, 8, bias=False).half()
    prune_.l1_unstructured(layer, "weight", amount=0.5)
    copies = (layer.weight_orig, layer.weight_mask, layer.weight)
    assert len({t.untyped_storage().data_ptr() for t in copies}) == 3
    assert sum(t.untyped_storage().nbytes() for t in copies) == torch_prune_ram_bytes(layer.weight) == 3 * 8 * 24 * 2
    state = layer.state_dict()
    assert set(state) == {"weight_orig", "weight_mask"}
    assert sum(t.untyped_storage().nbytes() for t in state.values()) == masked_dense_bytes(layer.weight)
