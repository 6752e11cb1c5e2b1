"""How much does one-shot pruning hurt? Eval perplexity of the course model after magnitude,
Wanda and SparseGPT pruning, from 0 % to 90 % unstructured sparsity and at 2:4 and 4:8.

Methods (all prune the q/k/v/o/gate/up/down linears of every decoder layer, nothing else;
none of them retrains):

* ``magnitude-layer``  -- every linear loses its smallest ``|w|`` (Han et al. 2015); for N:M
                          the n largest ``|w|`` of every m consecutive inputs survive;
* ``magnitude-global`` -- one ``|w|`` threshold over all linears together (unstructured only:
                          an N:M pattern is per group, so it has no global variant);
* ``wanda``            -- ``|W_ij| * ||X_j||_2`` compared per output row (Sun et al. 2023,
                          arXiv:2306.11695), calibrated layer by layer;
* ``sparsegpt``        -- OBS-style mask selection *and* update of the kept weights
                          (Frantar & Alistarh 2023, arXiv:2301.00774), layer by layer.

Expected, as in the papers (e.g. LLaMA-2-7B on WikiText-2 at 2:4: magnitude 54.59, Wanda
11.02, SparseGPT 10.17, dense 5.12 -- Sun et al. 2023, also listed in the authors'
repository README, github.com/locuslab/wanda): Wanda and SparseGPT far below magnitude.

The course model has no outlier features, and Wanda's lead over magnitude comes from them. So
the script measures a second time on the same model given outlier features by
``course_lib.outliers.add_outlier_features``. The reparametrisation leaves the model's
function unchanged, but it hands magnitude the same trap that real LLMs do.

Calibration: ``course_lib.data.batches("train", ...)`` with a fixed seed (the papers use
128 sequences of 2048 tokens from C4; the course model sees 256-token blocks of its own
corpus). Perplexity: ``course_lib.perplexity`` on the eval split (all of it by default).

    python scripts/pruning_quality.py            # -> data/results/pruning_quality.json (minutes, 2 CPU cores)
    python scripts/pruning_quality.py --quick    # smoke run; prints only (writes with --out)

``tests/test_pruning_quality.py`` runs :func:`measure` in a tiny configuration and checks
the committed JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import course_lib  # noqa: E402
from course_lib.data import batches  # noqa: E402
from course_lib.outliers import add_outlier_features  # noqa: E402
from course_lib.pruning.common import model_sparsity  # noqa: E402
from course_lib.pruning.magnitude import magnitude_prune  # noqa: E402
from course_lib.pruning.nm import is_nm_sparse, nm_prune  # noqa: E402
from course_lib.pruning.sparsegpt import sparsegpt_prune  # noqa: E402
from course_lib.pruning.wanda import wanda_prune  # noqa: E402

METHODS = ("magnitude-layer", "magnitude-global", "wanda", "sparsegpt")
NM_METHODS = ("magnitude-layer", "wanda", "sparsegpt")  # magnitude N:M has no "global" variant
SPARSITIES = tuple(round(0.1 * i, 1) for i in range(10))  # 0.0, 0.1, ..., 0.9
PATTERNS = ((2, 4), (4, 8))
CALIB = dict(split="train", n_batches=16, batch_size=4, seq_len=256, seed=0)  # 16 x 4 x 256 = 16,384 tokens
SPARSEGPT = dict(blocksize=128, percdamp=0.01)
# outlier features: k evenly spaced hidden dims (j * hidden // k), activations x20, weights /20
OUTLIER_COUNTS, OUTLIER_SCALE = (4, 16), 20.0
OUTLIER_METHODS = ("magnitude-layer", "wanda", "sparsegpt")
DEFAULT_OUT = ROOT / "data" / "results" / "pruning_quality.json"


def prune(model, method: str, calib_batches, sparsity: float | None = None, n: int | None = None,
          m: int | None = None) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with one method -> ``{module_name: keep-mask}``.

    Exactly one of ``sparsity`` (unstructured) or ``n, m`` (N:M).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (sparsity is None) == (n is None and m is None):
        raise ValueError("give either sparsity or n and m")
    if method == "wanda":
        return wanda_prune(model, calib_batches, sparsity=sparsity, n=n, m=m)
    if method == "sparsegpt":
        return sparsegpt_prune(model, calib_batches, sparsity=sparsity, n=n, m=m, **SPARSEGPT)
    if sparsity is None:
        if method != "magnitude-layer":
            raise ValueError(f"{method} has no N:M variant; use magnitude-layer")
        return nm_prune(model, n, m)
    return magnitude_prune(model, sparsity, scope=method.split("-")[1])


def _configs(methods, sparsities, patterns):
    for s in sparsities:
        for method in methods:
            yield method, "unstructured", dict(sparsity=float(s))
    for n, m in patterns:
        for method in methods:
            if method in NM_METHODS:
                yield method, f"{n}:{m}", dict(n=n, m=m)


def measure(model, calib_batches, sparsities=SPARSITIES, patterns=PATTERNS, methods=METHODS,
            max_tokens: int | None = None, progress: bool = True) -> dict:
    """Perplexity of ``model`` after each (method, pattern) -> ``{"dense_ppl", "results"}``.

    ``results`` is a list of rows ``{"method", "pattern" ("unstructured" / "2:4" / ...),
    "sparsity" (target fraction removed), "measured_sparsity" (fraction of zeros over the
    pruned linears), "ppl", "prune_s"}``. The weights are restored after every row, so
    ``model`` comes back unchanged.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    configs = list(_configs(methods, sparsities, patterns))
    dense = course_lib.perplexity(model, max_tokens=max_tokens)
    rows = []
    steps = configs
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(configs, desc="prune + eval")
    try:
        for method, pattern, kwargs in steps:
            start = time.perf_counter()
            prune(model, method, calib_batches, **kwargs)
            prune_s = time.perf_counter() - start
            if pattern != "unstructured" and not all(is_nm_sparse(mod.weight, kwargs["n"], kwargs["m"])
                                                     for mod in course_lib.prunable_linears(model).values()):
                raise RuntimeError(f"{method} did not produce a {pattern} pattern")
            rows.append({
                "method": method,
                "pattern": pattern,
                "sparsity": kwargs.get("sparsity", 1 - kwargs.get("n", 0) / kwargs.get("m", 1)),
                "measured_sparsity": model_sparsity(model)["global"],
                "ppl": course_lib.perplexity(model, max_tokens=max_tokens),
                "prune_s": prune_s,
            })
            model.load_state_dict(state)
    finally:
        model.load_state_dict(state)
    return {"dense_ppl": dense, "results": rows}


def outlier_channels(hidden: int, k: int) -> list[int]:
    """``k`` evenly spaced hidden dimensions: an arbitrary choice, not the most important ones."""
    if not 0 < k <= hidden:
        raise ValueError(f"k must be in 1..{hidden}, got {k}")
    return [j * (hidden // k) for j in range(k)]


def measure_outliers(model, calib_batches, counts=OUTLIER_COUNTS, scale: float = OUTLIER_SCALE,
                     methods=OUTLIER_METHODS, max_tokens: int | None = None, progress: bool = True) -> dict:
    """:func:`measure` at 50 % and 2:4 on copies of ``model`` with ``k`` outlier features, for
    each ``k`` in ``counts`` -> ``{"scale", "counts", "rows"}``. Each row carries ``k``, ``channels`` and
    ``dense_ppl`` (the reparametrised model: equal to the original up to rounding)."""
    rows = []
    for k in counts:
        channels = outlier_channels(model.config.hidden_size, k)
        twin = add_outlier_features(copy.deepcopy(model), channels, scale)
        part = measure(twin, calib_batches, (0.5,), ((2, 4),), methods, max_tokens=max_tokens, progress=progress)
        rows += [{**r, "k": k, "channels": channels, "dense_ppl": part["dense_ppl"]} for r in part["results"]]
    return {"scale": scale, "counts": list(counts), "channel_rule": "j * (hidden // k), j = 0..k-1", "rows": rows}


def lookup(results: dict, method: str, pattern: str = "unstructured", sparsity: float | None = None) -> float:
    """The perplexity of one row of a :func:`measure` result (or of the JSON file)."""
    for row in results["results"]:
        if row["method"] == method and row["pattern"] == pattern and (
                sparsity is None or abs(row["sparsity"] - sparsity) < 1e-9):
            return row["ppl"]
    raise KeyError(f"no row for {method} {pattern} sparsity={sparsity}")


def table(results: dict) -> str:
    """A plain-text table: one row per sparsity/pattern, one column per method."""
    methods = list(dict.fromkeys(r["method"] for r in results["results"]))
    keys = list(dict.fromkeys((r["pattern"], r["sparsity"]) for r in results["results"]))
    lines = [f"{'pattern':>14}" + "".join(f"{m:>18}" for m in methods),
             f"{'dense':>14}" + f"{results['dense_ppl']:>18.4g}"]
    for pattern, sparsity in keys:
        label = f"{sparsity:.0%}" if pattern == "unstructured" else pattern
        cells = []
        for method in methods:
            try:
                cells.append(f"{lookup(results, method, pattern, sparsity):>18.4g}")
            except KeyError:
                cells.append(f"{'-':>18}")
        lines.append(f"{label:>14}" + "".join(cells))
    return "\n".join(lines)


def environment() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                                "--quick writes only with --out)")
    ap.add_argument("--quick", action="store_true", help="3 sparsities, 2:4 only, 2 calibration batches, "
                                                         "8192 eval tokens, 4 outlier dims only")
    ap.add_argument("--max-tokens", type=int, default=None, help="evaluate on the first N eval tokens only")
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.manual_seed(0)
    calib = dict(CALIB)
    sparsities, patterns, max_tokens = SPARSITIES, PATTERNS, args.max_tokens
    if args.quick:
        calib.update(n_batches=2)
        sparsities, patterns, max_tokens = (0.0, 0.5, 0.7), ((2, 4),), max_tokens or 8192
    model, _ = course_lib.load_course_model()
    calib_batches = batches(**calib)
    results = measure(model, calib_batches, sparsities, patterns, METHODS, max_tokens=max_tokens)
    results["outlier_features"] = measure_outliers(model, calib_batches, counts=(4,) if args.quick else OUTLIER_COUNTS,
                                                  max_tokens=max_tokens)
    wall = time.time() - t0
    print(table(results))
    print(f"\nwith outlier features (x{OUTLIER_SCALE:g}; the model's function unchanged):")
    for r in results["outlier_features"]["rows"]:
        print(f"  k={r['k']:3d} {r['method']:16s} {r['pattern']:13s} ppl {r['ppl']:8.4g}   (dense {r['dense_ppl']:.4g})")
    print(f"wall time {wall:.1f} s")

    out = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)
    if out is None:
        return results
    record = {
        "description": "Eval-split perplexity of the course model after one-shot pruning of every decoder "
                       "linear (q/k/v/o/gate/up/down), no retraining. Written by scripts/pruning_quality.py.",
        "model": "data/course-model",
        "settings": {
            "methods": list(METHODS),
            "sparsities": list(sparsities),
            "patterns": [f"{n}:{m}" for n, m in patterns],
            "calibration": {**calib, "tokens": calib["n_batches"] * calib["batch_size"] * calib["seq_len"],
                            "source": "course_lib.data.batches"},
            "eval": {"split": "eval", "max_tokens": max_tokens},
            "sparsegpt": SPARSEGPT,
        },
        "environment": environment(),
        "wall_time_s": round(wall, 1),
        **results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
