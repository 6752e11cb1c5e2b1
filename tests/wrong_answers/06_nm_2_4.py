"""Plausible wrong answers to 06's exercises, and correct answers written differently.

Each entry is the whole source of the solution cell (see tests/test_exercise_traps.py). Variants
of one cell are written as the correct answer with one plausible mistake patched in, and the patch
is asserted to change the source.
"""


def _patch(source: str, old: str, new: str) -> str:
    assert old in source, old
    return source.replace(old, new)


NM_MASK = '''def nm_mask(weight, n=2, m=4):
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        raise TypeError("weight must be a floating-point torch.Tensor")
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"n and m must be ints, got {n!r}, {m!r}")
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got n={n}, m={m}")
    if weight.dim() == 0 or weight.shape[-1] % m:
        raise ValueError("the last dimension is not divisible by m")
    groups = weight.detach().abs().reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(weight.shape)
'''

COMPRESSED = '''import math


def compressed_2_4_bytes(weight):
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        raise TypeError("weight must be a floating-point torch.Tensor")
    if weight.dim() != 2:
        raise ValueError("weight must be 2-D")
    rows, cols = weight.shape
    if cols % 4:
        raise ValueError("columns not divisible by 4")
    if ((weight != 0).reshape(-1, 4).sum(dim=1) > 2).any():
        raise ValueError("weight is not 2:4 sparse")
    kept = rows * cols // 2
    return kept * weight.element_size() + math.ceil(kept * 2 / 8)
'''

TABLE = '''from course_lib.pruning.nm import nm_mask as reference_nm_mask


def format_matmuls(weight):
    rows, cols = weight.shape
    w_un = weight * magnitude_mask(weight, 0.5)
    w_24 = weight * reference_nm_mask(weight, 2, 4)
    csr = to_csr(w_un)
    values, metadata = sparse_formats.compress_2_4(w_24)
    kept = weight.norm(dim=1).argsort(descending=True, stable=True)[: rows // 2].sort().values
    w_rows = weight[kept].clone()
    return {
        "dense": (tensor_bytes(weight), lambda x: x @ weight.T),
        "unstructured-dense": (tensor_bytes(w_un), lambda x: x @ w_un.T),
        "unstructured-csr": (tensor_bytes(csr), lambda x: (csr @ x.T).T),
        "2:4-dense": (tensor_bytes(w_24), lambda x: x @ w_24.T),
        "2:4-compressed": (tensor_bytes([values, metadata]),
                           lambda x: x @ sparse_formats.decompress_2_4(values, metadata, (rows, cols)).T),
        "rows-shrunk": (tensor_bytes(w_rows), lambda x: x @ w_rows.T),
    }


def speed_memory_table(weight, tokens=(1, 16), reps=5):
    formats = format_matmuls(weight)
    w64 = weight.double()
    kept = weight.norm(dim=1).argsort(descending=True, stable=True)[: weight.shape[0] // 2].sort().values
    references = {
        "dense": w64, "unstructured-dense": w64 * magnitude_mask(weight, 0.5),
        "2:4-dense": w64 * reference_nm_mask(weight, 2, 4), "rows-shrunk": w64[kept],
    }
    references["unstructured-csr"] = references["unstructured-dense"]
    references["2:4-compressed"] = references["2:4-dense"]
    table = []
    for t in tokens:
        x = torch.randn(t, weight.shape[1], generator=torch.Generator().manual_seed(t))
        rows = []
        for name in FORMATS:
            nbytes, fn = formats[name]
            with torch.no_grad():
                err = (fn(x).double() - x.double() @ references[name].T).abs().max().item()
                median = benchmark(lambda: fn(x), warmup=1, reps=reps, device="cpu").median_ms
            rows.append({"format": name, "tokens": t, "bytes": nbytes,
                         "bytes_vs_dense": nbytes / formats["dense"][0], "median_ms": median,
                         "speedup": None, "max_abs_err": err})
        for row in rows:
            row["speedup"] = rows[0]["median_ms"] / row["median_ms"]
        table += rows
    return table
'''

WRONG = {
    "06-nm-mask": {
        "keeps the n smallest": _patch(NM_MASK, "descending=True, stable=True", "descending=False, stable=True"),
        "ties: keeps the higher index (topk)": _patch(
            NM_MASK, "order = torch.sort(groups, dim=1, descending=True, stable=True).indices",
            "order = torch.topk(groups, m, dim=1).indices"),
        "groups down the columns (wrong axis)": _patch(
            NM_MASK, "groups = weight.detach().abs().reshape(-1, m)",
            "groups = weight.detach().abs().transpose(-1, -2).reshape(-1, m)").replace(
            "return keep.reshape(weight.shape)",
            "return keep.reshape(weight.transpose(-1, -2).shape).transpose(-1, -2)"),
        "ignores n (always keeps 2)": _patch(NM_MASK, "order[:, :n]", "order[:, :2]"),
        "returns a float mask": _patch(NM_MASK, "return keep.reshape(weight.shape)",
                                       "return keep.reshape(weight.shape).to(weight.dtype)"),
        "no argument checks": _patch(NM_MASK, '''    if weight.dim() == 0 or weight.shape[-1] % m:
        raise ValueError("the last dimension is not divisible by m")
''', ""),
        "flattens leading dimensions": _patch(NM_MASK, "return keep.reshape(weight.shape)",
                                              "return keep.reshape(-1, weight.shape[-1])"),
    },
    "06-compressed-bytes": {
        "2 bits for every position, not every kept value": _patch(COMPRESSED, "math.ceil(kept * 2 / 8)",
                                                                  "math.ceil(rows * cols * 2 / 8)"),
        "rounds up row by row": _patch(COMPRESSED, "math.ceil(kept * 2 / 8)", "rows * math.ceil(cols // 2 * 2 / 8)"),
        "rounds down": _patch(COMPRESSED, "math.ceil(kept * 2 / 8)", "kept * 2 // 8"),
        "assumes 2-byte values": _patch(COMPRESSED, "kept * weight.element_size()", "kept * 2"),
        "returns a float": _patch(COMPRESSED, "math.ceil(kept * 2 / 8)", "kept * 2 / 8"),
        "counts the nonzeros as the kept values": _patch(COMPRESSED, "kept = rows * cols // 2",
                                                         "kept = int((weight != 0).sum())"),
        "does not check the 2:4 pattern": _patch(COMPRESSED, '''    if ((weight != 0).reshape(-1, 4).sum(dim=1) > 2).any():
        raise ValueError("weight is not 2:4 sparse")
''', ""),
    },
    "06-speed-memory-table": {
        "CSR bytes of a naive to_sparse_csr() (full-size column buffer)": _patch(
            TABLE, '"unstructured-csr": (tensor_bytes(csr)', '"unstructured-csr": (tensor_bytes(w_un.to_sparse_csr())'),
        "CSR bytes with int32 indices": _patch(
            TABLE, '"unstructured-csr": (tensor_bytes(csr)',
            '"unstructured-csr": (sparse_formats.csr_bytes(w_un, torch.int32)'),
        "2:4 bytes without the metadata": _patch(TABLE, "tensor_bytes([values, metadata])", "tensor_bytes(values)"),
        "rows-shrunk keeps the first half of the rows": _patch(
            TABLE, "w_rows = weight[kept].clone()", "w_rows = weight[: rows // 2].clone()"),
        "rows-shrunk keeps the rows in norm order": _patch(
            TABLE, "[: rows // 2].sort().values\n    w_rows", "[: rows // 2]\n    w_rows"),
        "speedup inverted": _patch(TABLE, 'row["speedup"] = rows[0]["median_ms"] / row["median_ms"]',
                                   'row["speedup"] = row["median_ms"] / rows[0]["median_ms"]'),
        "error against the unpruned weight for every format": _patch(
            TABLE, "x.double() @ references[name].T", "x.double() @ (w64 if name != 'rows-shrunk' else w64[kept]).T"),
        "formats outer, tokens inner": _patch(TABLE, "        table += rows\n    return table",
                                              "        table += rows\n    return sorted(table, key=lambda r: FORMATS.index(r['format']))"),
        "bytes_vs_dense as dense / bytes": _patch(TABLE, '"bytes_vs_dense": nbytes / formats["dense"][0]',
                                                  '"bytes_vs_dense": formats["dense"][0] / nbytes'),
    },
}

RIGHT = {
    "06-nm-mask": {
        "argsort of a position-penalised score": '''def nm_mask(weight, n=2, m=4):
    if not isinstance(weight, torch.Tensor) or not torch.is_floating_point(weight):
        raise TypeError("floating weight needed")
    if type(n) is not int or type(m) is not int:
        raise TypeError("n, m must be int")
    if not (0 < n < m) or weight.dim() == 0 or weight.shape[-1] % m != 0:
        raise ValueError("bad n, m or shape")
    g = weight.detach().abs().reshape(-1, m)
    rank = torch.argsort(torch.argsort(g, dim=1, descending=True, stable=True), dim=1)  # rank of each entry
    return (rank < n).reshape(weight.shape)
''',
    },
    "06-compressed-bytes": {
        "bits counted then rounded with -(-x // 8)": '''def compressed_2_4_bytes(weight):
    if not torch.is_tensor(weight) or not torch.is_floating_point(weight):
        raise TypeError("floating weight needed")
    if weight.ndim != 2 or weight.shape[1] % 4 != 0:
        raise ValueError("need a 2-D weight with a multiple of 4 columns")
    if int((weight.reshape(-1, 4) != 0).sum(1).max()) > 2:
        raise ValueError("not 2:4")
    kept = weight.numel() // 2
    return int(kept * weight.element_size() + -(-(2 * kept) // 8))
''',
    },
    "06-speed-memory-table": {
        "formulas from sparse_formats, rows by topk": _patch(
            _patch(_patch(TABLE, '"unstructured-csr": (tensor_bytes(csr)',
                          '"unstructured-csr": (sparse_formats.csr_bytes(w_un, torch.int64)'),
                   "tensor_bytes([values, metadata])", "sparse_formats.nm_compressed_bytes(w_24)"),
            "csr = to_csr(w_un)", "csr = w_un.to_sparse_csr()"),
    },
}
