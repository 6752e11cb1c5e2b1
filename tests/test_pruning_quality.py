"""scripts/pruning_quality.py: its core function in a tiny configuration, and the committed JSON.

The committed ``data/results/pruning_quality.json`` must belong to the committed course
model (its dense perplexity is recomputed) and show the orderings the course teaches
(Sun et al. 2023, arXiv:2306.11695; Frantar & Alistarh 2023, arXiv:2301.00774): SparseGPT
well below magnitude pruning at 50 % and at N:M; Wanda below magnitude at N:M and below a
global threshold, and level with per-layer magnitude at 50 % unstructured on this small model.
Given outlier features by a function-preserving reparametrisation (course_lib.outliers), the
same model shows the papers' ordering: Wanda (unchanged, exactly) and SparseGPT well below
magnitude, which gets worse the more outlier dimensions there are.
"""

import importlib.util
import json
import math

import pytest
import torch

import course_lib
from course_lib.data import batches


def _load_script():
    path = course_lib.data_dir().parent / "scripts" / "pruning_quality.py"
    spec = importlib.util.spec_from_file_location("pruning_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def committed():
    return json.loads((course_lib.data_dir() / "results" / "pruning_quality.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(script):
    model, _ = course_lib.load_course_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = batches("train", n_batches=2, batch_size=2, seq_len=64, seed=0)
    result = script.measure(model, calib, sparsities=(0.0, 0.5), patterns=((2, 4),), max_tokens=1024,
                            progress=False)
    return model, before, result


def test_tiny_run_structure(script, tiny_run):
    _, _, result = tiny_run
    assert set(result) == {"dense_ppl", "results"}
    keys = {(r["method"], r["pattern"], r["sparsity"]) for r in result["results"]}
    expected = {(m, "unstructured", s) for m in script.METHODS for s in (0.0, 0.5)}
    expected |= {(m, "2:4", 0.5) for m in script.NM_METHODS}
    assert keys == expected
    for row in result["results"]:
        assert set(row) == {"method", "pattern", "sparsity", "measured_sparsity", "ppl", "prune_s"}
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1
        assert row["prune_s"] >= 0


def test_tiny_run_sparsities_are_exact(tiny_run):
    _, _, result = tiny_run
    for row in result["results"]:
        # every pruner removes exactly round(s * numel) per linear (or per row / group), and all
        # linears of the course model have sizes where 50 % is exact; nothing is zero before pruning
        assert row["measured_sparsity"] == pytest.approx(row["sparsity"], abs=1e-6), row


def test_tiny_run_sparsity_zero_is_the_dense_model(tiny_run):
    _, _, result = tiny_run
    for row in result["results"]:
        if row["sparsity"] == 0.0:
            assert row["ppl"] == pytest.approx(result["dense_ppl"], rel=1e-6), row["method"]


def test_tiny_run_restores_the_model(tiny_run):
    model, before, _ = tiny_run
    after = model.state_dict()
    assert all((after[k] == v).all() for k, v in before.items())


def test_prune_refuses_bad_requests(script):
    model, _ = course_lib.load_course_model()
    with pytest.raises(ValueError, match="method"):
        script.prune(model, "random", None, sparsity=0.5)
    with pytest.raises(ValueError, match="N:M"):
        script.prune(model, "magnitude-global", None, n=2, m=4)
    with pytest.raises(ValueError, match="either"):
        script.prune(model, "wanda", None, sparsity=0.5, n=2, m=4)


def test_committed_json_structure(script, committed):
    settings = committed["settings"]
    assert settings["methods"] == list(script.METHODS)
    assert settings["patterns"] == ["2:4", "4:8"]
    assert [round(s, 1) for s in settings["sparsities"]] == [round(0.1 * i, 1) for i in range(10)]
    assert settings["calibration"]["tokens"] >= 4096
    assert {"torch", "transformers"} <= set(committed["environment"])
    assert committed["wall_time_s"] > 0
    n_rows = len(script.METHODS) * 10 + len(script.NM_METHODS) * 2
    assert len(committed["results"]) == n_rows


def test_committed_json_belongs_to_the_committed_model(committed):
    model, _ = course_lib.load_course_model()
    max_tokens = committed["settings"]["eval"]["max_tokens"]
    assert course_lib.perplexity(model, max_tokens=max_tokens) == pytest.approx(committed["dense_ppl"], rel=1e-3)


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("2:4", 0.5), ("4:8", 0.5)])
def test_committed_sparsegpt_beats_magnitude_clearly(script, committed, pattern, sparsity):
    # SparseGPT's weight update repairs what the mask removes (Frantar & Alistarh 2023)
    dense = committed["dense_ppl"]
    magnitude = script.lookup(committed, "magnitude-layer", pattern, sparsity)
    sparsegpt = script.lookup(committed, "sparsegpt", pattern, sparsity)
    assert sparsegpt - dense < 0.75 * (magnitude - dense)
    if pattern == "unstructured":
        assert sparsegpt < script.lookup(committed, "magnitude-global", pattern, sparsity)


def test_committed_wanda_beats_magnitude_at_n_m_and_matches_it_unstructured(script, committed):
    # Wanda wins where the comparison group is small (N:M groups of 4 or 8 inputs) and beats a
    # global threshold; per output row at 50 % it only matches magnitude on the course model,
    # which has no outlier features (those emerge in LLMs of billions of parameters, Dettmers
    # et al. 2022) -- notebook 07 measures the input-channel norms that explain it.
    for pattern in ("2:4", "4:8"):
        assert script.lookup(committed, "wanda", pattern, 0.5) < script.lookup(committed, "magnitude-layer", pattern, 0.5)
    wanda50 = script.lookup(committed, "wanda", "unstructured", 0.5)
    assert wanda50 < script.lookup(committed, "magnitude-global", "unstructured", 0.5)
    assert wanda50 <= 1.02 * script.lookup(committed, "magnitude-layer", "unstructured", 0.5)


def test_committed_perplexity_grows_with_sparsity(script, committed):
    # the same method on more sparsity never gets better by more than noise (1 %) -- a sanity
    # check that rows are not mixed up; at 0 % every method is the dense model
    for method in script.METHODS:
        ppls = [script.lookup(committed, method, "unstructured", round(0.1 * i, 1)) for i in range(10)]
        assert ppls[0] == pytest.approx(committed["dense_ppl"], rel=1e-6)
        assert all(b >= a * 0.99 for a, b in zip(ppls, ppls[1:])), (method, ppls)


def test_tiny_outlier_run_keeps_wanda_and_restores_the_model(script, tiny_run):
    model, before, plain = tiny_run
    calib = batches("train", n_batches=2, batch_size=2, seq_len=64, seed=0)
    out = script.measure_outliers(model, calib, counts=(2,), methods=("magnitude-layer", "wanda"),
                                  max_tokens=1024, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert out["counts"] == [2] and len(out["rows"]) == 4
    for row in out["rows"]:
        assert row["k"] == 2 and row["channels"] == [0, 96]
        assert row["dense_ppl"] == pytest.approx(plain["dense_ppl"], rel=1e-4)
        if row["method"] == "wanda":  # Wanda's score is invariant to the reparametrisation
            same = script.lookup(plain, "wanda", row["pattern"], 0.5)
            assert row["ppl"] == pytest.approx(same, rel=1e-4)


def test_outlier_channels():
    _script = _load_script()
    assert _script.outlier_channels(192, 4) == [0, 48, 96, 144]
    with pytest.raises(ValueError, match="k must be"):
        _script.outlier_channels(192, 0)


def test_committed_outlier_features_give_the_papers_ordering(script, committed):
    out = committed["outlier_features"]
    assert out["counts"] == list(script.OUTLIER_COUNTS) and out["scale"] == script.OUTLIER_SCALE
    dense = committed["dense_ppl"]

    def ppl(k, method, pattern):
        return next(r["ppl"] for r in out["rows"] if (r["k"], r["method"], r["pattern"]) == (k, method, pattern))

    for pattern in ("unstructured", "2:4"):
        magnitude = [ppl(k, "magnitude-layer", pattern) for k in out["counts"]]
        # magnitude throws the shrunken columns away: worse than on the plain model, and worse with k
        assert magnitude[0] > script.lookup(committed, "magnitude-layer", pattern, 0.5)
        assert magnitude == sorted(magnitude)
        for k in out["counts"]:
            # Wanda is exactly invariant; SparseGPT nearly (its damping depends on diag(H))
            assert ppl(k, "wanda", pattern) == pytest.approx(script.lookup(committed, "wanda", pattern, 0.5), rel=1e-3)
            assert ppl(k, "sparsegpt", pattern) == pytest.approx(script.lookup(committed, "sparsegpt", pattern, 0.5),
                                                                 rel=0.02)
        k = out["counts"][-1]
        for method in ("wanda", "sparsegpt"):  # "well below": less than half of magnitude's damage
            assert ppl(k, method, pattern) - dense < 0.5 * (ppl(k, "magnitude-layer", pattern) - dense)
    assert all(r["dense_ppl"] == pytest.approx(dense, rel=1e-4) for r in out["rows"])
