"""Why does CSR at 90 % beat dense at 4-64 tokens but not at 1 token on a CPU? A probe.

``scripts/benchmark_sparsity.py`` found, on a Llama-7B ``q_proj`` ``[4096, 4096]`` in float32,
CSR-90 % slower than dense for one token (0.89x) and 2-3x faster at 4-64 tokens, with the CSR
time itself *smaller* at 4 tokens than at 1. This script separates the candidate causes:

* **the dense baseline**: per token, MKL's dense kernel is a bandwidth-bound GEMV at 1 token and
  a poorly blocked GEMM at 4-16 tokens (time per token falls, but not as fast as the FLOPs);
* **threads**: each product is timed with 1 and with 2 threads; a path that does not scale with
  threads runs single-threaded;
* **the call**: ``torch.mm(W_csr, x.T)`` (MKL ``mkl_sparse_?_mm``, torch's ``addmm`` path) against
  ``torch.mv(W_csr, x[0])`` (MKL ``mkl_sparse_?_mv``) at one token;
* **index width**: torch's CSR indices are int64; the same matrix with int32 indices.

It writes ``data/benchmarks/csr-token-scaling-<device>.json`` with every median and IQR, which
notebook 06 reads. Timings depend on the machine; run it on an idle one.

    python scripts/csr_token_scaling.py              # -> data/benchmarks/csr-token-scaling-<device>.json
    python scripts/csr_token_scaling.py --quick --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.timing import benchmark, device_slug, environment  # noqa: E402

TOKENS = [1, 2, 4, 8, 16, 32, 64]
THREADS = [1, 2]
WARMUP, REPS = 2, 15


def csr_weight(out_features: int, in_features: int, sparsity: float, index_dtype=torch.int64, seed: int = 0):
    """A magnitude-pruned random weight in CSR with indices of ``index_dtype``, and its dense twin."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    keep = w.numel() - int(round(sparsity * w.numel()))
    thresh = w.abs().flatten().kthvalue(w.numel() - keep).values
    w = torch.where(w.abs() > thresh, w, torch.zeros(()))
    csr = w.to_sparse_csr()
    csr = torch.sparse_csr_tensor(csr.crow_indices().to(index_dtype), csr.col_indices().to(index_dtype).clone(),
                                  csr.values().clone(), size=w.shape, check_invariants=True)
    return w, csr


def measure(shape=(4096, 4096), sparsity=0.9, tokens=TOKENS, threads=THREADS, warmup=WARMUP, reps=REPS, log=print):
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.manual_seed(0)
    dense_full = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    w, csr64 = csr_weight(*shape, sparsity)
    _, csr32 = csr_weight(*shape, sparsity, index_dtype=torch.int32)
    rows = []

    def record(op, t, n_threads, fn, check):
        out = fn()
        err = float((out - check).abs().max() / check.abs().max())
        m = benchmark(fn, warmup=warmup, reps=reps, device="cpu")
        rows.append({"op": op, "tokens": t, "threads": n_threads, "median_ms": m.median_ms, "iqr_ms": m.iqr_ms,
                     "rel_err": err})
        log(f"{op:<24} tokens {t:>3} threads {n_threads}: {m.median_ms:8.3f} ms (IQR {m.iqr_ms:.3f})")

    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for t in tokens:
            x = torch.randn(t, shape[1], generator=torch.Generator().manual_seed(2 + t))
            ref = x @ w.T
            record("dense F.linear", t, n_threads, lambda: F.linear(x, dense_full), x @ dense_full.T)
            record("csr mm, int64 indices", t, n_threads, lambda: torch.mm(csr64, x.t()).t(), ref)
            record("csr mm, int32 indices", t, n_threads, lambda: torch.mm(csr32, x.t()).t(), ref)
            if t == 1:
                record("csr mv, int64 indices", t, n_threads, lambda: torch.mv(csr64, x[0]).unsqueeze(0), ref)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shape, few reps; writes only with --out")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    env = environment(torch.device("cpu"))
    if args.quick:
        rows = measure(shape=(512, 512), tokens=[1, 4], warmup=0, reps=2)
    else:
        rows = measure()
    result = {"script": "scripts/csr_token_scaling.py", "environment": env,
              "settings": {"shape": [4096, 4096], "sparsity": 0.9, "dtype": "float32", "tokens": TOKENS,
                           "threads": THREADS, "warmup": WARMUP, "reps": REPS, "timer": "course_lib.timing.benchmark (median)"}
              if not args.quick else {"quick": True},
              "results": rows, "wall_seconds": time.perf_counter() - t0}
    out = args.out or (None if args.quick else str(ROOT / "data/benchmarks" / f"csr-token-scaling-{device_slug(torch.device('cpu'))}.json"))
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
