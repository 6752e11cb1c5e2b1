"""Does pruning make a Llama-7B linear faster? Dense vs 2:4 vs unstructured CSR, measured soundly.

For the three linear shapes of Llama-7B (weight ``[out, in]``: 4096x4096 for q/k/v/o_proj,
11008x4096 for gate/up_proj, 4096x11008 for down_proj) and a whole MLP block
(``down(silu(gate(x)) * up(x))``), at token counts from 1 (decoding) to 16384 (long
prefill), this times ``y = x @ W.T`` with

* ``dense``            -- the unpruned weight (cuBLAS / MKL): the baseline;
* ``dense-zeros-2:4``  -- the 2:4-pruned weight stored densely, zeros included: the
                          control that shows zeros alone make nothing faster;
* ``2:4-cusparselt`` / ``2:4-cutlass`` -- ``torch.sparse.to_sparse_semi_structured``
                          (Mishra et al. 2021, arXiv:2104.08378), CUDA GPUs with compute
                          capability >= 8.0 only; CUTLASS chosen via
                          ``SparseSemiStructuredTensor._FORCE_CUTLASS``;
* ``csr-50%/70%/90%``  -- unstructured magnitude pruning stored in CSR, computed as
                          ``(W_csr @ x.T).T`` (MKL on CPU, cuSPARSE on GPU; faster here
                          than ``F.linear(x, W_csr)``, which transposes the CSR weight).

Timing follows ``course_lib.timing.benchmark``: warm-up calls, one timed call after an
L2 flush each, median and IQR. Every sparse result is checked against the float32
product with the masked dense weight (max abs error and that error over max |ref|).
Storage bytes come from ``course_lib.sparse_formats.storage_table`` (the formulas)
next to the bytes of the torch objects actually timed (``course_lib.timing.tensor_bytes``).

GPU: float16 and bfloat16. CPU: float32 (torch's CPU CSR matmul has no float16/bfloat16
kernel; the dtype used and the reason are written to the JSON), fewer token counts and
repetitions so that it runs in minutes on a small machine.

    python scripts/benchmark_sparsity.py            # -> data/benchmarks/<device>.json
    python scripts/benchmark_sparsity.py --quick    # < 30 s smoke run, writes only with --out
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.pruning.nm import nm_mask  # noqa: E402
from course_lib.sparse_formats import storage_table  # noqa: E402
from course_lib.timing import benchmark, busy_warning, device_slug, environment, peak_memory, tensor_bytes  # noqa: E402

# weight [out, in] of each Llama-7B linear (hidden 4096, MLP 11008)
LLAMA7B_SHAPES = {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)}
# about /8; 1408 (not 11008/8 = 1376) because CUTLASS 2:4 needs in_features divisible by 64
QUICK_SHAPES = {"q/k/v/o_proj /8": (512, 512), "gate/up_proj /8": (1408, 512), "down_proj /8": (512, 1408)}
CSR_SPARSITIES = (0.5, 0.7, 0.9)
SEMI_BACKENDS = ("cusparselt", "cutlass")
# max |err| / max |ref| beyond which a result is flagged (dense itself is within these)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

SETTINGS = {  # tokens, warmup, reps per mode
    "gpu": dict(tokens=[1, 4, 16, 64, 256, 1024, 4096, 16384], warmup=5, reps=25),
    "cpu": dict(tokens=[1, 4, 16, 64, 256], warmup=1, reps=7),
    "quick": dict(tokens=[1, 16], warmup=0, reps=2),
}


# ----------------------------------------------------------------------------------------
# weights in each format


def unstructured_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``round((1-s)*numel)`` largest |w| of the whole matrix (magnitude pruning)."""
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    flat = weight.detach().abs().flatten().float()
    idx = torch.topk(flat, keep, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    return mask.view_as(weight)


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """CSR copy of ``weight`` whose three parts own exactly their bytes (the dense->CSR
    conversion can leave ``col_indices`` a view of a bigger index buffer)."""
    csr = weight.to_sparse_csr()
    return torch.sparse_csr_tensor(csr.crow_indices().clone(), csr.col_indices().clone(),
                                   csr.values().clone(), size=csr.shape, check_invariants=True)


def semi_structured_unavailable(device: torch.device) -> dict[str, str | None]:
    """``{backend: None if usable, else why not}`` for the 2:4 backends on ``device``."""
    if device.type != "cuda":
        return {b: "needs a CUDA GPU" for b in SEMI_BACKENDS}
    cc = torch.cuda.get_device_capability(device)
    if cc < (8, 0):
        return {b: f"needs compute capability >= 8.0, this GPU has {cc[0]}.{cc[1]}" for b in SEMI_BACKENDS}
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return {"cusparselt": None if cusparselt is not None and cusparselt.is_available()
            else "this torch build has no cuSPARSELt", "cutlass": None}


def to_2_4(weight: torch.Tensor, backend: str) -> torch.Tensor:
    """A 2:4-sparse dense weight -> ``SparseSemiStructuredTensor`` of ``backend``."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    old = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "prototype feature" warning
            return to_sparse_semi_structured(weight)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = old


def dense_linear(x, w):
    return F.linear(x, w)  # x [T, in], w [out, in] (dense or semi-structured) -> [T, out]


def csr_linear(x, w_csr):
    return torch.mm(w_csr, x.t()).t()  # [out, in] @ [in, T] -> [out, T] -> view [T, out]


def make_formats(weight: torch.Tensor, device: torch.device, semi: dict) -> dict:
    """``{backend: (pattern, sparsity, stored weight, linear fn, masked dense weight or None)}``."""
    w24 = weight * nm_mask(weight, 2, 4)
    formats = {"dense": ("none", 0.0, weight, dense_linear, weight),
               "dense-zeros-2:4": ("2:4", 0.5, w24, dense_linear, w24)}
    for backend, why_not in semi.items():
        if why_not is None:
            try:
                formats[f"2:4-{backend}"] = ("2:4", 0.5, to_2_4(w24, backend), dense_linear, w24)
            except Exception as e:  # noqa: BLE001 -- record, keep going
                formats[f"2:4-{backend}"] = ("2:4", 0.5, f"{type(e).__name__}: {e}", None, w24)
    for s in CSR_SPARSITIES:
        ws = weight * unstructured_mask(weight, s)
        try:
            formats[f"csr-{round(s * 100)}%"] = ("unstructured", s, to_csr(ws), csr_linear, ws)
        except Exception as e:  # noqa: BLE001
            formats[f"csr-{round(s * 100)}%"] = ("unstructured", s, f"{type(e).__name__}: {e}", None, ws)
    return formats


def storage_bytes(formats: dict) -> dict:
    """Formula bytes (sparse_formats.storage_table) and measured bytes of the stored objects."""
    dense = formats["dense"][2]
    formula = {"dense": storage_table(dense)["dense"], "2:4": storage_table(formats["dense-zeros-2:4"][4])["2:4"]}
    for name, (pattern, s, stored, fn, masked) in formats.items():
        if name.startswith("csr-"):
            table = storage_table(masked)
            formula[f"{name}/int64"] = table["csr/int64"]
            formula[f"{name}/int32"] = table["csr/int32"]
    measured = {name: tensor_bytes(stored) for name, (_, _, stored, _, _) in formats.items()
                if isinstance(stored, torch.Tensor)}
    return {"formula": formula, "measured": measured}


# ----------------------------------------------------------------------------------------
# one comparison


def _errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    err = (out.float() - ref).abs().max().item()
    return err, err / max(ref.abs().max().item(), 1e-30)


def run_case(kind: str, name: str, shape_label: str, dims: tuple, dtype, tokens: int, candidates: dict,
             reference, device, args, measure_memory: bool) -> list[dict]:
    """Time every candidate ``{backend: (pattern, sparsity, fn or error, ref key)}`` -> rows."""
    rows, dense_ms = [], None
    for backend, (pattern, sparsity, fn, ref_key) in candidates.items():
        row = {"kind": kind, "layer": name, "shape": shape_label, "out_features": dims[0], "in_features": dims[1],
               "tokens": tokens, "dtype": str(dtype).removeprefix("torch."), "backend": backend,
               "pattern": pattern, "sparsity": sparsity}
        if not callable(fn):
            rows.append({**row, "error": fn, "speedup": None})
            continue
        try:
            with torch.no_grad():
                abs_err, rel_err = _errors(fn(), reference(ref_key))
                m = benchmark(fn, warmup=args.warmup, reps=args.reps, device=device, flush_l2=True,
                              cuda_graph=args.cuda_graph, label=backend)
                peak = peak_memory(fn, device=device) if measure_memory else None
        except Exception as e:  # noqa: BLE001 -- an unsupported kernel is a result too
            rows.append({**row, "error": f"{type(e).__name__}: {e}", "speedup": None})
            continue
        if backend == "dense":
            dense_ms = m.median_ms
        row.update({k: v for k, v in m.to_dict().items() if k.endswith("_ms") or k == "n"})
        row["speedup"] = dense_ms / m.median_ms if dense_ms else None
        row["max_abs_err"], row["max_rel_err"] = abs_err, rel_err
        row["error_ok"] = rel_err <= TOLERANCE[dtype]
        if measure_memory:
            row["peak_memory_bytes"] = peak
        rows.append(row)
    return rows


def bench_linear(name, dims, dtype, device, args, semi) -> tuple[list[dict], dict]:
    out_f, in_f = dims
    shape_label = f"{out_f}x{in_f}"
    gen = torch.Generator(device="cpu").manual_seed(0)
    weight = (torch.randn(out_f, in_f, generator=gen) * 0.02).to(device=device, dtype=dtype)
    formats = make_formats(weight, device, semi)
    storage = storage_bytes(formats)
    rows = []
    for tokens in args.tokens:
        x = torch.randn(tokens, in_f, generator=gen).to(device=device, dtype=dtype)
        refs: dict = {}

        def reference(key, x=x, refs=refs):
            masked = formats[key][4]  # several backends share one masked weight: one product each
            if id(masked) not in refs:
                refs[id(masked)] = F.linear(x.float(), masked.float())  # fp32 product, masked weight
            return refs[id(masked)]

        candidates = {}
        for backend, (pattern, s, stored, lin, _) in formats.items():
            fn = (lambda lin=lin, stored=stored, x=x: lin(x, stored)) if lin is not None else stored
            candidates[backend] = (pattern, s, fn, backend)
        rows += run_case("linear", name, shape_label, dims, dtype, tokens, candidates, reference, device, args,
                         measure_memory=False)
        del refs
    return rows, {"layer": name, "shape": shape_label, "dtype": str(dtype).removeprefix("torch."), **storage}


def bench_mlp(hidden, intermediate, dtype, device, args, semi) -> list[dict]:
    """gate, up [inter, hidden]; down [hidden, inter]; y = down(silu(gate(x)) * up(x))."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    weights = {n: (torch.randn(*d, generator=gen) * 0.02).to(device=device, dtype=dtype)
               for n, d in (("gate", (intermediate, hidden)), ("up", (intermediate, hidden)),
                            ("down", (hidden, intermediate)))}
    per_weight = {n: make_formats(w, device, semi) for n, w in weights.items()}
    backends = list(per_weight["gate"])
    rows = []
    for tokens in args.tokens:
        x = torch.randn(tokens, hidden, generator=gen).to(device=device, dtype=dtype)
        refs: dict = {}

        def reference(key, x=x, refs=refs):
            masked = [per_weight[n][key][4] for n in ("gate", "up", "down")]
            if id(masked[0]) not in refs:
                g, u, d = (w.float() for w in masked)
                xf = x.float()
                refs[id(masked[0])] = F.linear(F.silu(F.linear(xf, g)) * F.linear(xf, u), d)
            return refs[id(masked[0])]

        candidates = {}
        for backend in backends:
            parts = [per_weight[n][backend] for n in ("gate", "up", "down")]
            pattern, s = parts[0][0], parts[0][1]
            broken = [p[2] for p in parts if p[3] is None]
            if broken:
                candidates[backend] = (pattern, s, broken[0], backend)
                continue
            (_, _, g, lin, _), (_, _, u, _, _), (_, _, d, _, _) = parts

            def mlp(x=x, g=g, u=u, d=d, lin=lin):
                return lin(F.silu(lin(x, g)) * lin(x, u), d)

            candidates[backend] = (pattern, s, mlp, backend)
        rows += run_case("mlp", "mlp", f"mlp {hidden}-{intermediate}", (hidden, intermediate), dtype, tokens,
                         candidates, reference, device, args, measure_memory=True)
        del refs
    return rows


# ----------------------------------------------------------------------------------------
# timing cross-check and summary


def timing_check(device: torch.device, dtype, args) -> dict:
    """Our median vs an independent timer on one dense matmul: ``triton.testing.do_bench``
    on CUDA (same protocol: events, L2 flush; should agree within 3%),
    ``torch.utils.benchmark.Timer`` on CPU (no flush there, so ours runs without it)."""
    n_tok, (out_f, in_f) = (4096, (4096, 4096)) if device.type == "cuda" else (16, (4096, 4096))
    if args.quick:
        n_tok, out_f, in_f = 16, 512, 512
    x = torch.randn(n_tok, in_f, device=device, dtype=dtype)
    w = torch.randn(out_f, in_f, device=device, dtype=dtype)
    fn = lambda: F.linear(x, w)  # noqa: E731
    what = f"dense F.linear, x [{n_tok}, {in_f}], W [{out_f}, {in_f}], {str(dtype).removeprefix('torch.')}"
    if device.type == "cuda":
        try:
            import triton.testing
        except ImportError:
            return {"op": what, "skipped": "triton is not installed"}
        ours = benchmark(fn, warmup=10, reps=100, device=device, flush_l2=True).median_ms
        try:
            theirs = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        except TypeError:  # older triton: no return_mode
            theirs = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
            theirs = theirs[0] if isinstance(theirs, (list, tuple)) else theirs
        ref_name, tolerance = "triton.testing.do_bench (median)", 0.03
    else:
        from torch.utils.benchmark import Timer

        ours = benchmark(fn, warmup=2, reps=max(args.reps, 5), device=device, flush_l2=False).median_ms
        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        theirs = timer.blocked_autorange(min_run_time=0.2).median * 1e3
        ref_name, tolerance = "torch.utils.benchmark.Timer (median)", 0.25
    ratio = ours / theirs
    return {"op": what, "reference": ref_name, "ours_ms": ours, "reference_ms": theirs, "ratio": ratio,
            "tolerance": tolerance, "agrees": abs(ratio - 1) <= tolerance}


def csr_break_even(rows: list[dict]) -> list[dict]:
    """Sparsity at which CSR matches dense, per (kind, shape, dtype, tokens): linear
    interpolation of log(speedup) between the measured sparsities."""
    out = []
    keys = sorted({(r["kind"], r["shape"], r["dtype"], r["tokens"]) for r in rows})
    for key in keys:
        pts = sorted((r["sparsity"], r["speedup"]) for r in rows
                     if (r["kind"], r["shape"], r["dtype"], r["tokens"]) == key
                     and r["backend"].startswith("csr-") and r.get("speedup"))
        if not pts:
            continue
        entry = {"kind": key[0], "shape": key[1], "dtype": key[2], "tokens": key[3],
                 "speedups": {f"{round(s * 100)}%": sp for s, sp in pts}}
        if pts[0][1] >= 1:
            entry.update(break_even_sparsity=None, note=f"CSR already faster at {pts[0][0]:.0%}")
        elif pts[-1][1] < 1:
            entry.update(break_even_sparsity=None, note=f"CSR slower than dense even at {pts[-1][0]:.0%}")
        else:
            for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
                if v0 < 1 <= v1:
                    t = (0 - math.log(v0)) / (math.log(v1) - math.log(v0))
                    entry.update(break_even_sparsity=s0 + t * (s1 - s0), note="interpolated")
                    break
        out.append(entry)
    return out


def print_summary(result: dict) -> None:
    env = result["environment"]
    print(f"\n== {env.get('gpu', env['cpu'])} | torch {env['torch']} | {env['torch_threads']} threads | "
          f"dtypes {result['settings']['dtypes']} ==")
    rows = result["results"]
    groups = sorted({(r["kind"], r["shape"], r["dtype"]) for r in rows}, key=str)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    for kind, shape, dtype in groups:
        sel = [r for r in rows if (r["kind"], r["shape"], r["dtype"]) == (kind, shape, dtype)]
        print(f"\n{kind} {shape} {dtype}: dense median ms, then speedup over dense")
        print("tokens".rjust(7) + "dense ms".rjust(10) + "".join(b.rjust(17) for b in backends[1:]))
        for tokens in sorted({r["tokens"] for r in sel}):
            by = {r["backend"]: r for r in sel if r["tokens"] == tokens}
            dense = by.get("dense", {}).get("median_ms")
            line = str(tokens).rjust(7) + (f"{dense:.3f}" if dense else "-").rjust(10)
            for b in backends[1:]:
                r = by.get(b)
                cell = "n/a" if r is None else ("error" if r.get("speedup") is None else f"{r['speedup']:.2f}x")
                if r is not None and r.get("error_ok") is False:
                    cell += "!"
                line += cell.rjust(17)
            print(line)
    print("\nCSR break-even sparsity (CSR as fast as dense):")
    for e in result["csr_break_even"]:
        where = f"{e['break_even_sparsity']:.0%}" if e["break_even_sparsity"] is not None else e["note"]
        print(f"  {e['kind']:6s} {e['shape']:>14s} {e['dtype']:8s} tokens {e['tokens']:>5d}: {where}")
    worst: dict = {}
    for r in rows:
        if "max_rel_err" in r:
            worst[(r["backend"], r["dtype"])] = max(worst.get((r["backend"], r["dtype"]), 0.0), r["max_rel_err"])
    print("\nlargest error vs the float32 masked-dense product (max|err| / max|ref|):")
    for (b, d), e in worst.items():
        print(f"  {b:18s} {d:8s} {e:.2e}")
    bad = [r for r in rows if r.get("error_ok") is False]
    if bad:
        print(f"  WARNING: {len(bad)} results exceed the tolerance {', '.join(map(str, TOLERANCE.values()))}")
    errors = [r for r in rows if "error" in r]
    if errors:
        print(f"\n{len(errors)} runs failed, e.g. {errors[0]['backend']}: {errors[0]['error'][:200]}")
    print("\nstorage bytes (formula / measured object), per weight:")
    for s in result["storage"]:
        d = s["formula"]["dense"]
        cells = ", ".join(f"{k} {v / d:.3f}" for k, v in s["formula"].items() if k != "dense")
        print(f"  {s['shape']:>10s} {s['dtype']:8s} dense {d / 2**20:.1f} MiB; relative: {cells}")
        meas = ", ".join(f"{k} {v / d:.3f}" for k, v in s["measured"].items() if k != "dense")
        print(f"  {'':>10s} {'':8s} measured objects: {meas}")
    for check in result["timing_check"]:
        if "ratio" in check:
            print(f"\ntiming check vs {check['reference']}: ours {check['ours_ms']:.4f} ms, "
                  f"theirs {check['reference_ms']:.4f} ms, ratio {check['ratio']:.3f} "
                  f"({'agrees' if check['agrees'] else 'DISAGREES'} within {check['tolerance']:.0%})")
        else:
            print(f"\ntiming check skipped: {check['skipped']}")


# ----------------------------------------------------------------------------------------


def cpu_dtype() -> tuple:
    """float16 when this torch can multiply a float16 CSR matrix on CPU, else float32."""
    try:
        w = torch.eye(4, dtype=torch.float16).to_sparse_csr()
        torch.mm(w, torch.ones(4, 2, dtype=torch.float16))
        return [torch.float16], "float16 CSR matmul works on this CPU build"
    except RuntimeError as e:
        return [torch.float32], f"float32 on CPU: torch's CPU CSR matmul has no float16 kernel ({e})"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: shapes /8, 2 token counts, 2 reps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="output JSON (default data/benchmarks/<device>.json; "
                                               "--quick writes only when --out is given)")
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--dtypes", nargs="+", default=None, help="e.g. float16 bfloat16 (GPU default), float32")
    p.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays (no launch overhead)")
    p.add_argument("--no-mlp", action="store_true", help="skip the MLP block")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    for key, value in SETTINGS[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dtypes:
        dtypes, dtype_note = [getattr(torch, d) for d in args.dtypes], "chosen with --dtypes"
    elif device.type == "cuda":
        dtypes, dtype_note = ([torch.float16] if args.quick else [torch.float16, torch.bfloat16]), "GPU default"
    else:
        dtypes, dtype_note = cpu_dtype()
    shapes = QUICK_SHAPES if args.quick else LLAMA7B_SHAPES
    hidden, inter = (512, 1408) if args.quick else (4096, 11008)
    semi = semi_structured_unavailable(device)
    started = time.time()
    env = environment(device)
    if device.type == "cpu" and busy_warning(env):
        print("WARNING:", env["warning"], flush=True)
    if env.get("cpu_affinity", env["torch_threads"]) < env["torch_threads"]:
        print(f"WARNING: {env['torch_threads']} torch threads on {env['cpu_affinity']} usable cores", flush=True)
    result = {
        "script": "scripts/benchmark_sparsity.py", "mode": mode, "environment": env,
        "settings": {"tokens": args.tokens, "warmup": args.warmup, "reps": args.reps, "flush_l2": True,
                     "cuda_graph": args.cuda_graph, "dtypes": [str(d).removeprefix("torch.") for d in dtypes],
                     "dtype_note": dtype_note, "csr_sparsities": list(CSR_SPARSITIES),
                     "shapes": {k: list(v) for k, v in shapes.items()}, "mlp": [hidden, inter],
                     "semi_structured_unavailable": {k: v for k, v in semi.items() if v},
                     "csr_matmul": "(W_csr @ x.T).T", "tolerance": {str(k): v for k, v in TOLERANCE.items()}},
        "results": [], "storage": [], "timing_check": [],
    }
    for dtype in dtypes:
        for name, dims in shapes.items():
            print(f"{str(dtype):15s} {name:18s} {dims} ...", flush=True)
            rows, storage = bench_linear(name, dims, dtype, device, args, semi)
            result["results"] += rows
            result["storage"].append(storage)
        if not args.no_mlp:
            print(f"{str(dtype):15s} mlp block {hidden}-{inter} ...", flush=True)
            result["results"] += bench_mlp(hidden, inter, dtype, device, args, semi)
        result["timing_check"].append(timing_check(device, dtype, args))
    result["csr_break_even"] = csr_break_even(result["results"])
    env["loadavg_1m_end"] = environment(device).get("loadavg_1m")
    result["wall_seconds"] = time.time() - started
    print_summary(result)
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "data" / "benchmarks" / f"{device_slug(device)}.json"
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
