import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.plotting import plot_memory, plot_speedup  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rows():
    rows = []
    for shape, factor in (("4096x4096", 1.0), ("11008x4096", 1.2)):
        for tokens in (1, 16, 256):
            rows.append({"kind": "linear", "shape": shape, "backend": "dense", "tokens": tokens, "speedup": 1.0})
            rows.append({"kind": "linear", "shape": shape, "backend": "2:4-cutlass", "tokens": tokens,
                         "speedup": factor * (1 + tokens / 512)})
            rows.append({"kind": "linear", "shape": shape, "backend": "csr-90%", "tokens": tokens,
                         "speedup": 0.5 / tokens})
    rows.append({"kind": "linear", "shape": "4096x4096", "backend": "2:4-cusparselt", "tokens": 1, "speedup": None})
    rows.append({"kind": "mlp", "shape": "mlp", "backend": "csr-90%", "tokens": 1, "speedup": 3.0})
    return rows


def _data_lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith(("1x", "2x"))}


def test_plot_speedup_lines_points_and_reference_lines():
    ax = plot_speedup(_rows())
    assert isinstance(ax, matplotlib.axes.Axes)
    assert ax.get_xscale() == "log"
    lines = _data_lines(ax)
    # dense is the 1x line, the failed cuSPARSELt row and the mlp row are left out
    assert set(lines) == {"2:4-cutlass 4096x4096", "2:4-cutlass 11008x4096", "csr-90% 4096x4096", "csr-90% 11008x4096"}
    line = lines["2:4-cutlass 11008x4096"]
    assert list(line.get_xdata()) == [1, 16, 256]
    assert list(line.get_ydata()) == pytest.approx([1.2 * (1 + t / 512) for t in (1, 16, 256)])
    refs = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().startswith(("1x", "2x"))}
    assert set(refs) == {"1x (dense)", "2x (2:4 physical limit)"}
    assert list(refs["1x (dense)"].get_ydata()) == [1, 1]
    assert list(refs["2x (2:4 physical limit)"].get_ydata()) == [2, 2]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "2x (2:4 physical limit)" in legend and "1x (dense)" in legend


def test_plot_speedup_options_and_given_axes():
    fig, ax = plt.subplots()
    out = plot_speedup({"results": _rows()}, ax=ax, backends="csr-90%", kind="mlp", logy=False)
    assert out is ax and ax.get_yscale() == "linear"
    assert list(_data_lines(ax)) == ["csr-90% mlp"]


def test_plot_speedup_labels_dtype_when_several():
    rows = [{"shape": "s", "backend": "2:4-cutlass", "tokens": 8, "speedup": 1.5, "dtype": d}
            for d in ("float16", "bfloat16")]
    assert set(_data_lines(plot_speedup(rows))) == {"2:4-cutlass s float16", "2:4-cutlass s bfloat16"}


def test_plot_speedup_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        plot_speedup([{"shape": "s", "backend": "dense", "tokens": 1, "speedup": 1.0}])
    with pytest.raises(ValueError, match="lacks 'tokens'"):
        plot_speedup([{"shape": "s", "backend": "csr", "speedup": 1.0}])
    with pytest.raises(ValueError, match="'results'"):
        plot_speedup({"rows": []})
    with pytest.raises(TypeError, match="list of dict rows"):
        plot_speedup("results.json")


def test_plot_memory_bars_relative_to_dense():
    w = torch.zeros(64, 128, dtype=torch.float16)
    table = {"dense": w.numel() * 2, "2:4": w.numel() * 9 // 16, "csr/int64": 3 * w.numel()}
    ax = plot_memory(table)
    assert isinstance(ax, matplotlib.axes.Axes)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([1.0, 9 / 32, 1.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["dense", "2:4", "csr/int64"]
    texts = [t.get_text() for t in ax.texts]
    assert texts[1].startswith("0.28x") and "MiB" in texts[1]


def test_plot_memory_bad_input():
    with pytest.raises(ValueError, match="no 'dense'"):
        plot_memory({"csr": 10})
    with pytest.raises(ValueError, match="non-empty"):
        plot_memory({})
    with pytest.raises(TypeError, match="non-negative ints"):
        plot_memory({"dense": 10, "csr": 2.5})
    with pytest.raises(ValueError, match="0 bytes"):
        plot_memory({"dense": 0})


def _real_results():
    rows = [{"method": m, "pattern": p, "ppl": v} for (m, p), v in {
        ("magnitude-layer", "unstructured"): 500.0, ("wanda", "unstructured"): 70.0,
        ("sparsegpt", "unstructured"): 65.0, ("magnitude-layer", "2:4"): 1400.0, ("wanda", "2:4"): 200.0,
        ("sparsegpt", "2:4"): 120.0}.items()]
    curve = [{"method": m, "calib_tokens": t, "ppl": 100.0 - t / 100} for m in ("wanda", "sparsegpt")
             for t in (1024, 2048, 4096)]
    structured = [{"method": "heads (gradient)", "ppl": 90.0}, {"method": "ffn channels", "ppl": 80.0}]
    return {"dense_ppl": 38.0, "results": rows, "calibration_curve": curve, "structured": structured}


def test_plot_real_pruning_and_calibration_curve():
    from course_lib.plotting import plot_calibration_curve, plot_real_pruning

    ax = plot_real_pruning(_real_results())
    heights = sorted(round(b.get_height()) for b in ax.patches)
    assert heights == [65, 70, 80, 90, 120, 200, 500, 1400]
    assert ax.get_yscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["50 %", "2:4", "heads / FFN"]
    ax = plot_calibration_curve(_real_results())
    assert [list(line.get_xdata()) for line in ax.get_lines()[:2]] == [[1024, 2048, 4096]] * 2
    with pytest.raises(ValueError, match="dense_ppl"):
        plot_real_pruning({"results": []})
    bad = _real_results()
    bad["results"] = bad["results"][1:]
    with pytest.raises(ValueError, match="no row for magnitude-layer"):
        plot_real_pruning(bad)
