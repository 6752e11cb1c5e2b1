"""Figures of the course, one independent function per figure.

Every function draws on the matplotlib ``Axes`` it is given (or a new figure's) and
returns that ``Axes``, so notebooks can place several figures side by side and tests
can inspect what was drawn. matplotlib is imported lazily: importing ``course_lib``
never needs it.

Timing and memory figures (results of ``scripts/benchmark_sparsity.py``):

* :func:`plot_speedup` -- speedup over dense against the number of tokens in the
  batch, per weight shape and kernel. Two reference lines: 1x (no gain) and 2x, the
  physical limit of 2:4 sparsity (Mishra et al. 2021, arXiv:2104.08378): it halves
  the multiply-adds and the bytes of weight read, so no 2:4 kernel can do better.
* :func:`plot_memory` -- bytes of one weight in each storage format, relative to dense.

Pruning quality on the real pretrained model (``data/results/pruning_quality_real.json``, written
by ``scripts/pruning_quality.py --model real``):

* :func:`plot_real_pruning` -- perplexity bars per method at 50 % and 2:4, dense as a line;
* :func:`plot_calibration_curve` -- Wanda and SparseGPT at 50 % against calibration tokens.
"""

from __future__ import annotations

TWO_FOUR_LIMIT = 2.0  # 2:4 keeps half the weights: at most half the work and half the weight bytes


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.5))
    return ax


def _rows(results) -> list[dict]:
    """Accept the rows themselves or a benchmark file's dict with a ``"results"`` list."""
    if isinstance(results, dict):
        if "results" not in results:
            raise ValueError("results must be a list of rows or a dict with a 'results' list (a benchmark JSON)")
        results = results["results"]
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"results must be a list of dict rows, got {type(results).__name__}")
    return list(results)


def plot_speedup(results, ax=None, *, backends=None, kind: str = "linear", logy: bool = True):
    """Speedup over dense vs number of tokens, one line per (shape, backend[, dtype]).

    ``results``: rows (dicts) with keys ``shape`` (e.g. ``"4096x11008"``), ``backend``
    (e.g. ``"2:4-cusparselt"``, ``"csr-90%"``), ``tokens`` (int) and ``speedup`` (dense
    median / this median; ``None`` for runs that failed, which are skipped), optionally
    ``dtype`` and ``kind`` -- as written by ``scripts/benchmark_sparsity.py``, whose whole
    JSON dict is accepted too. Only rows of ``kind`` (``"linear"`` or ``"mlp"``) are drawn
    when rows carry a kind; ``backends`` restricts the backends (default: all but dense,
    which is the 1x line). The x axis is logarithmic, and so is y unless ``logy=False``.
    """
    rows = _rows(results)
    rows = [r for r in rows if r.get("kind", kind) == kind and r.get("speedup") is not None]
    if backends is not None:
        backends = [backends] if isinstance(backends, str) else list(backends)
        rows = [r for r in rows if r["backend"] in backends]
    else:
        rows = [r for r in rows if r["backend"] != "dense"]
    if not rows:
        raise ValueError(f"no rows with a speedup to plot (kind={kind!r}, backends={backends!r})")
    for r in rows:
        for key in ("shape", "backend", "tokens", "speedup"):
            if key not in r:
                raise ValueError(f"row {r!r} lacks {key!r}; rows need shape, backend, tokens and speedup")
    ax = _axes(ax)
    several_dtypes = len({r.get("dtype") for r in rows}) > 1
    groups: dict[tuple, list] = {}
    for r in rows:
        key = (r["backend"], str(r["shape"])) + ((r.get("dtype"),) if several_dtypes else ())
        groups.setdefault(key, []).append((int(r["tokens"]), float(r["speedup"])))

    import matplotlib.pyplot as plt

    backend_names = sorted({k[0] for k in groups})
    shape_names = sorted({k[1] for k in groups})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for key in sorted(groups):
        points = sorted(groups[key])
        b = backend_names.index(key[0])
        s = shape_names.index(key[1])
        ax.plot([p[0] for p in points], [p[1] for p in points], label=" ".join(str(k) for k in key),
                color=colors[b % len(colors)], linestyle=styles[s % len(styles)],
                marker=markers[s % len(markers)], markersize=4)
    ax.axhline(1.0, color="black", linewidth=1, label="1x (dense)")
    ax.axhline(TWO_FOUR_LIMIT, color="tab:red", linewidth=1, linestyle="--", label="2x (2:4 physical limit)")
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log", base=2)
    ax.set_xlabel("tokens in the batch (log scale)")
    ax.set_ylabel("speedup over dense")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return ax


def plot_memory(table: dict, ax=None, *, baseline: str = "dense"):
    """Bars of a weight's bytes per storage format, relative to ``baseline`` (dense).

    ``table`` is ``{format name: bytes}``, e.g. ``course_lib.sparse_formats.storage_table``.
    Each bar is labelled with its ratio and its size in MiB; the line at 1 is dense.
    """
    if not isinstance(table, dict) or not table:
        raise ValueError("table must be a non-empty dict {format name: bytes}")
    if baseline not in table:
        raise ValueError(f"table has no {baseline!r} entry to compare with; it has {list(table)}")
    for name, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"bytes must be non-negative ints, got {name!r}: {value!r}")
    if table[baseline] == 0:
        raise ValueError(f"the {baseline!r} entry is 0 bytes: nothing to be relative to")
    ax = _axes(ax)
    names = list(table)
    ratios = [table[n] / table[baseline] for n in names]
    bars = ax.bar(names, ratios, color=["tab:gray" if n == baseline else "tab:blue" for n in names])
    for bar, name, ratio in zip(bars, names, ratios):
        ax.annotate(f"{ratio:.2f}x\n{table[name] / 2**20:.1f} MiB", (bar.get_x() + bar.get_width() / 2, ratio),
                    ha="center", va="bottom", fontsize="small")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_ylabel(f"bytes relative to {baseline}")
    ax.set_ylim(0, max(ratios) * 1.25)
    ax.tick_params(axis="x", labelrotation=30)
    return ax


REAL_METHODS = ("magnitude-layer", "wanda", "sparsegpt")


def load_real_results(path=None) -> dict:
    """The committed real-model JSON (default ``data/results/pruning_quality_real.json``)."""
    import json
    from pathlib import Path

    from .paths import data_dir

    path = Path(path) if path is not None else data_dir() / "results" / "pruning_quality_real.json"
    return json.loads(path.read_text())


def _check_real(results) -> dict:
    if not isinstance(results, dict) or "results" not in results or "dense_ppl" not in results:
        raise ValueError("results must be the dict of scripts/pruning_quality.py --model real "
                         "(with 'dense_ppl' and 'results'); see load_real_results()")
    return results


def plot_real_pruning(results, ax=None, *, methods=REAL_METHODS, patterns=("unstructured", "2:4")):
    """Grouped bars (log scale): perplexity of each method at each pattern; dense as a line.

    ``results``: the real-model JSON (:func:`load_real_results`) or a :func:`measure_real` dict.
    Structured rows (heads, FFN channels), if present, are added as one more group.
    """
    results = _check_real(results)
    ax = _axes(ax)
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        values = []
        for pattern in patterns:
            hit = [r["ppl"] for r in results["results"] if r["method"] == method and r["pattern"] == pattern]
            if not hit:
                raise ValueError(f"no row for {method} {pattern} in results")
            values.append(hit[0])
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(patterns))]
        bars = ax.bar(xs, values, width, label=method)
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                        fontsize="small")
    labels = ["50 %" if p == "unstructured" else p for p in patterns]
    structured = results.get("structured", [])
    for k, row in enumerate(structured):
        x = len(patterns) + (k - (len(structured) - 1) / 2) * width
        bar = ax.bar([x], [row["ppl"]], width, color="tab:gray", label="structured" if k == 0 else None)[0]
        ax.annotate(f"{row['method'].split()[0]}\n{row['ppl']:.3g}", (bar.get_x() + bar.get_width() / 2, row["ppl"]),
                    ha="center", va="bottom", fontsize="small")
    if structured:
        labels.append("heads / FFN")
    ax.axhline(results["dense_ppl"], color="black", linewidth=1, label=f"dense {results['dense_ppl']:.3g}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("perplexity (log scale)")
    ax.legend(fontsize="small")
    return ax


def plot_calibration_curve(results, ax=None):
    """Perplexity at 50 % against calibration tokens (log x), one line per method, dense as a line."""
    results = _check_real(results)
    curve = results.get("calibration_curve")
    if not curve:
        raise ValueError("results has no 'calibration_curve'")
    ax = _axes(ax)
    for method in dict.fromkeys(r["method"] for r in curve):
        rows = sorted((r["calib_tokens"], r["ppl"]) for r in curve if r["method"] == method)
        ax.plot([t for t, _ in rows], [p for _, p in rows], marker="o", label=method)
    ax.axhline(results["dense_ppl"], color="black", linewidth=1, label="dense")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("calibration tokens")
    ax.set_ylabel("perplexity at 50 % sparsity")
    ax.legend(fontsize="small")
    return ax
