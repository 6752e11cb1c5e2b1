import json
import os
import re
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.timing import (Measurement, Table, benchmark, compare, cpu_busy_fraction, device_slug, environment,
                               peak_memory, percentile, tensor_bytes)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------- statistics

@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40), st.floats(0, 100))
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-6)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


# ---------------------------------------------------------------------------- CPU timing

def test_sleep_is_timed_in_milliseconds():
    m = benchmark(lambda: time.sleep(0.004), warmup=1, reps=7, device="cpu", flush_l2=False)
    assert isinstance(m, Measurement)
    assert m.n == 7 and len(m.samples_ms) == 7
    assert 4.0 <= m.min_ms <= m.q25_ms <= m.median_ms <= m.q75_ms <= m.max_ms
    assert m.median_ms < 40  # sleep never returns early; a few ms of overshoot at most
    assert m.device == "cpu" and m.threads == torch.get_num_threads()
    assert m.flush_l2 is False and m.flush_bytes == 0 and m.cuda_graph is False


def _matmul(n):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: a @ b


def test_median_agrees_with_torch_utils_benchmark(one_thread):
    """Same op, two independent timers: medians within 2x of each other; and a matmul
    with ~10x the FLOPs must come out several times slower (so a timer that returns a
    constant, or the wrong unit, fails).

    Timer times single calls here (``timeit(1)``), like ``benchmark``: its default
    ``blocked_autorange`` medians are over *blocks* of calls, and on a busy machine almost
    every block contains a preemption, which a per-call median leaves out (without load
    both agree within a few %)."""
    from torch.utils.benchmark import Timer

    ours, theirs = {}, {}
    for name, n in (("small", 450), ("large", 970)):  # 0.18 vs 1.8 GFLOP: ~1 ms vs ~10 ms on one AVX-512 core
        fn = _matmul(n)
        ours[name] = benchmark(fn, warmup=3, reps=21, device="cpu", flush_l2=False).median_ms
        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=1)
        timer.timeit(3)  # warm-up
        theirs[name] = float(np.median([timer.timeit(1).median for _ in range(21)])) * 1e3
        assert 0.5 < ours[name] / theirs[name] < 2.0, (name, ours, theirs)
    assert ours["large"] / ours["small"] > 4, ours


def test_l2_flush_buffer_is_recorded():
    m = benchmark(lambda: torch.ones(4), warmup=0, reps=2, device="cpu", flush_l2=True)
    assert m.flush_l2 is True and 0 < m.flush_bytes <= 256 * 2**20
    assert "L2 flushed" in str(m)


@pytest.mark.parametrize("device, warmup, expected_calls", [(None, 2, 5), ("cpu", 2, 5), (None, 0, 4), ("cpu", 0, 3)])
def test_number_of_calls_and_device_inference(device, warmup, expected_calls):
    calls = []

    def fn():
        calls.append(1)
        return torch.zeros(2)

    m = benchmark(fn, warmup=warmup, reps=3, device=device, flush_l2=False)
    assert len(calls) == expected_calls  # device=None: the inference call is the first warm-up call
    assert m.device == "cpu" and m.n == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only default rule")
def test_fn_without_tensor_output_is_timed_on_cpu_without_cuda():
    assert benchmark(lambda: None, warmup=0, reps=2, flush_l2=False).device == "cpu"


def test_bad_arguments():
    fn = lambda: torch.zeros(1)  # noqa: E731
    with pytest.raises(TypeError, match="callable"):
        benchmark(42)
    with pytest.raises(ValueError, match="reps must be >= 1"):
        benchmark(fn, reps=0)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        benchmark(fn, warmup=-1)
    with pytest.raises(TypeError, match="reps must be an int"):
        benchmark(fn, reps=2.5)
    with pytest.raises(ValueError, match="CPU or CUDA"):
        benchmark(fn, device="meta")
    with pytest.raises(ValueError, match="cuda_graph"):
        benchmark(fn, device="cpu", cuda_graph=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda.is_available"):
            benchmark(fn, device="cuda")


def test_measurement_str_dict_row():
    m = benchmark(lambda: time.sleep(0.001), warmup=0, reps=3, device="cpu", flush_l2=False, label="nap")
    text = str(m)
    assert "\n" not in text and text.startswith("nap: median ") and " ms " in text and "n=3" in text
    d = m.to_dict()
    json.dumps(d)
    assert d["median_ms"] == m.median_ms and d["iqr_ms"] == pytest.approx(m.q75_ms - m.q25_ms)
    assert "samples_ms" not in d and len(m.to_dict(samples=True)["samples_ms"]) == 3
    assert m.row() == tuple(d[c] for c in Measurement.COLUMNS)


# ---------------------------------------------------------------------------- compare

def test_compare_speedup_and_table():
    table = compare({"slow": lambda: time.sleep(0.008), "fast": lambda: time.sleep(0.002)},
                    baseline="slow", warmup=0, reps=5, device="cpu", flush_l2=False)
    assert isinstance(table, Table) and len(table) == 2
    assert table["slow"]["speedup"] == 1.0
    assert 2.0 < table["fast"]["speedup"] < 5.0  # ~8/2, minus sleep overshoot
    assert table["fast"]["median_ms"] == table.measurements["fast"].median_ms
    assert [r["name"] for r in table] == ["slow", "fast"]
    text = str(table)
    assert "slow (baseline)" in text and "fast" in text and len(text.splitlines()) == 3
    md = table.to_markdown().splitlines()
    assert md[0].startswith("| name |") and md[1].startswith("|---") and len(md) == 4
    with pytest.raises(KeyError):
        table["missing"]


def test_compare_default_baseline_and_errors():
    fns = {"a": lambda: torch.zeros(1), "b": lambda: torch.zeros(2)}
    assert compare(fns, warmup=0, reps=2, device="cpu", flush_l2=False).baseline == "a"
    with pytest.raises(ValueError, match="not one of the candidates"):
        compare(fns, baseline="c")
    with pytest.raises(ValueError, match="non-empty"):
        compare({})
    with pytest.raises(TypeError, match="not a callable"):
        compare({"a": 3})


# ---------------------------------------------------------------------------- memory

def test_cpu_peak_memory_counts_temporaries_and_outputs():
    def fn():
        kept = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB, returned
        temp = torch.empty(500_000, dtype=torch.float32)  # 2 MB, alive together with `kept`
        del temp
        return kept

    assert 6_000_000 <= peak_memory(fn) < 6_000_000 + 4096


def test_cpu_peak_memory_is_a_peak_not_a_total():
    def fn():
        for _ in range(3):
            tmp = torch.empty(2_000_000, dtype=torch.float32)  # 8 MB, freed each round
            del tmp
        return None

    assert 8_000_000 <= peak_memory(fn, device="cpu") < 8_000_000 + 4096


def test_cpu_peak_memory_in_place_op_allocates_nothing_big():
    x = torch.randn(1_000_000)
    assert peak_memory(lambda: x.mul_(1.0)) < 1024
    out = peak_memory(lambda: x * 2)
    assert out == pytest.approx(tensor_bytes(x), abs=1024)


def test_tensor_bytes():
    w = torch.randn(64, 48)
    assert tensor_bytes(w) == 64 * 48 * 4
    assert tensor_bytes([w, w[:3], w.t()]) == 64 * 48 * 4  # views share the storage: counted once
    assert tensor_bytes(w[:3].clone()) == 3 * 48 * 4
    w[w.abs() < 1] = 0
    nnz = int((w != 0).sum())
    csr = w.to_sparse_csr()
    compact = torch.sparse_csr_tensor(csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone(),
                                      size=csr.shape)
    assert tensor_bytes(compact) == nnz * (4 + 8) + (64 + 1) * 8  # values, int64 column indices, row pointers
    # the CPU dense->CSR conversion leaves col_indices a view of a larger index buffer: counted whole
    held = sum(t.untyped_storage().nbytes() for t in (csr.crow_indices(), csr.col_indices(), csr.values()))
    assert tensor_bytes(csr) == held >= tensor_bytes(compact)
    assert tensor_bytes(w.half().to_sparse_coo()) == nnz * (2 + 2 * 8)
    lin = torch.nn.Linear(10, 5)
    assert tensor_bytes(lin) == (50 + 5) * 4
    assert tensor_bytes({"a": lin, "b": [lin.weight]}) == (50 + 5) * 4
    with pytest.raises(TypeError, match="counts tensors"):
        tensor_bytes("weights")


def test_environment_and_slug():
    env = environment("cpu")
    for key in ("cpu", "torch", "torch_threads", "device"):
        assert key in env
    json.dumps(env)
    slug = device_slug("cpu")
    assert re.fullmatch(r"cpu-[a-z0-9]+(-[a-z0-9]+)*", slug), slug


# ---------------------------------------------------------------------------- CUDA

@needs_cuda
def test_cuda_matmul_timing_and_graph():
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    fn = lambda: a @ a  # noqa: E731
    eager = benchmark(fn, warmup=3, reps=20)
    graph = benchmark(fn, warmup=3, reps=20, cuda_graph=True)
    assert eager.device.startswith("cuda") and eager.threads is None and eager.flush_bytes > 0
    assert graph.cuda_graph and 0.3 < graph.median_ms / eager.median_ms < 1.5
    assert 0.001 < eager.median_ms < 100


@needs_cuda
def test_cuda_peak_memory_known_allocation():
    n = 2**24
    assert peak_memory(lambda: torch.empty(n, dtype=torch.uint8, device="cuda")) == n


# ---------------------------------------------------------------------------- the benchmark scripts (--quick)

def test_csr_break_even_interpolates_log_speedup(load_script):
    bs = load_script("benchmark_sparsity")
    rows = [{"kind": "linear", "shape": "s", "dtype": "float32", "tokens": 1, "backend": f"csr-{p}%",
             "sparsity": p / 100, "speedup": v} for p, v in ((50, 0.5), (70, 0.8), (90, 2.0))]
    rows.append({**rows[0], "backend": "dense", "sparsity": 0.0, "speedup": 1.0})
    (entry,) = bs.csr_break_even(rows)
    t = -np.log(0.8) / (np.log(2.0) - np.log(0.8))
    assert entry["break_even_sparsity"] == pytest.approx(0.7 + 0.2 * t)
    slower = [{**r, "speedup": r["speedup"] / 10} for r in rows if r["backend"] != "dense"]
    assert bs.csr_break_even(slower)[0]["break_even_sparsity"] is None


def test_sparsity_helpers(load_script):
    bs = load_script("benchmark_sparsity")
    w = torch.randn(64, 128)
    mask = bs.unstructured_mask(w, 0.7)
    assert mask.dtype == torch.bool and int(mask.sum()) == round(0.3 * w.numel())
    assert w.abs()[mask].min() >= w.abs()[~mask].max()  # magnitude pruning keeps the largest
    csr = bs.to_csr(w * mask)
    assert torch.equal(csr.to_dense(), w * mask)
    x = torch.randn(5, 128)
    torch.testing.assert_close(bs.csr_linear(x, csr), torch.nn.functional.linear(x, w * mask))
    assert all(bs.semi_structured_unavailable(torch.device("cpu")).values())


def test_benchmark_sparsity_quick(tmp_path, load_script):
    bs = load_script("benchmark_sparsity")
    out = tmp_path / "bench.json"
    result = bs.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(result["results"]))
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1 and env["cpu"]
    rows = saved["results"]
    dtypes = {r["dtype"] for r in rows}
    assert dtypes == set(saved["settings"]["dtypes"])
    backends = {r["backend"] for r in rows}
    assert {"dense", "dense-zeros-2:4", "csr-50%", "csr-70%", "csr-90%"} <= backends
    if not torch.cuda.is_available():
        assert dtypes == {"float32"} and "float16" in saved["settings"]["dtype_note"]
        assert set(saved["settings"]["semi_structured_unavailable"]) == {"cusparselt", "cutlass"}
    assert {r["kind"] for r in rows} == {"linear", "mlp"}
    assert len(rows) == 4 * 2 * len(backends)  # (3 shapes + MLP) x 2 token counts x backends
    for r in rows:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["q25_ms"] <= r["median_ms"] <= r["q75_ms"] and r["n"] == 2
        assert r["error_ok"], r
        if r["backend"] == "dense":
            assert r["speedup"] == 1.0
        if r["backend"] == "dense-zeros-2:4" and r["dtype"] == "float32":
            assert r["max_abs_err"] == 0.0  # the same dense kernel on the masked weight: the reference itself
        if r["kind"] == "mlp":  # at least the output [T, hidden]
            assert r["peak_memory_bytes"] >= r["tokens"] * r["out_features"] * getattr(torch, r["dtype"]).itemsize
    for s in saved["storage"]:
        out_f, in_f = map(int, s["shape"].split("x"))
        numel, v = out_f * in_f, {"float32": 4, "float16": 2, "bfloat16": 2}[s["dtype"]]
        assert s["formula"]["dense"] == s["measured"]["dense"] == s["measured"]["dense-zeros-2:4"] == numel * v
        assert s["formula"]["2:4"] == numel // 2 * v + numel // 2 * 2 // 8  # half the values + 2 bits each
        for p in (50, 70, 90):
            assert s["measured"][f"csr-{p}%"] == s["formula"][f"csr-{p}%/int64"]
    assert len(saved["csr_break_even"]) == 8
    assert saved["timing_check"][0].get("ratio", 1) > 0

    import matplotlib

    matplotlib.use("Agg")
    from course_lib.plotting import plot_speedup

    ax = plot_speedup(saved)
    assert len(ax.get_lines()) == 3 * (len(backends) - 1) + 2  # non-dense backends x 3 shapes, + 1x and 2x
    import matplotlib.pyplot as plt

    plt.close("all")


def test_structured_flops_match_flop_counter(load_script):
    """block_flops (the script's analytic count) == torch's FlopCounterMode on a block
    whose attention is the eager matmul version (so the attention FLOPs are counted too),
    for an MHA block and for a GQA block (k/v_proj counted with the KV heads)."""
    from torch.utils.flop_counter import FlopCounterMode

    st_ = load_script("benchmark_structured")
    hidden, head_dim, inter, tokens = 256, 32, 352, 10
    for heads, kv_heads, dense_kv in ((3, None, None), (6, 2, 2)):
        cfg = st_.block_config(hidden, heads, head_dim, inter, kv_heads)
        cfg._attn_implementation = "eager"
        dense = st_.random_state(hidden, 8, head_dim, 704, kv_heads=dense_kv)
        block = st_.build_block(cfg, st_.sliced_state(dense, head_dim, heads, inter, kv_heads), "cpu", torch.float32)
        kv = heads if kv_heads is None else kv_heads
        assert block.self_attn.q_proj.weight.shape == (heads * head_dim, hidden)
        assert block.self_attn.k_proj.weight.shape == block.self_attn.v_proj.weight.shape == (kv * head_dim, hidden)
        assert block.self_attn.o_proj.weight.shape == (hidden, heads * head_dim)
        assert block.mlp.down_proj.weight.shape == (hidden, inter)
        x = torch.randn(1, tokens, hidden)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            block(x, position_embeddings=st_.rope(cfg, tokens, "cpu", torch.float32))
        assert counter.get_total_flops() == st_.block_flops(tokens, hidden, heads, head_dim, inter, kv_heads)
    # the formula itself: q and o with the query heads, k and v with the KV heads
    assert st_.block_flops(1, 4096, 32, 128, 11008, 8) == 2 * (4096 * (2 * 4096 + 2 * 1024) + 3 * 4096 * 11008) + 4 * 4096
    assert st_.block_flops(5, 64, 4, 16, 100) == st_.block_flops(5, 64, 4, 16, 100, 4)


def test_structured_gqa_kept_query_heads_keep_their_kv_heads(load_script):
    """Removing the last query head of each KV group: the kept heads listed group by group
    keep their KV heads in the pruned block (h' // 3 == h // 4), and the pruned block equals
    the dense GQA block with the removed heads' o_proj columns zeroed. Slicing the first 24 of
    32 query heads instead (the MHA recipe) gives the wrong KV heads and fails the check."""
    st_ = load_script("benchmark_structured")
    assert st_.kept_query_heads(32, 8) == [h for h in range(32) if h % 4 != 3]
    assert st_.kept_query_heads(8, 2) == [0, 1, 2, 4, 5, 6]
    kept = st_.kept_query_heads(32, 8)
    assert [h // 4 for h in kept] == [i // 3 for i in range(24)]  # same KV head before and after
    hidden, heads, kv, d, inter, tokens = 128, 8, 2, 16, 96, 7
    dense = st_.random_state(hidden, heads, d, inter, kv_heads=kv)
    full_cfg = st_.block_config(hidden, heads, d, inter, kv)
    ref_block = st_.build_block(full_cfg, st_.gated_state(dense, d, st_.kept_query_heads(heads, kv), inter),
                                "cpu", torch.float32)
    cfg = st_.block_config(hidden, 6, d, inter, kv)
    x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(0))
    pe = st_.rope(cfg, tokens, "cpu", torch.float32)
    with torch.no_grad():
        ref = ref_block(x, position_embeddings=pe)
        right = st_.build_block(cfg, st_.sliced_state(dense, d, st_.kept_query_heads(heads, kv), inter, kv),
                                "cpu", torch.float32)(x, position_embeddings=pe)
        wrong = st_.build_block(cfg, st_.sliced_state(dense, d, 6, inter, kv), "cpu", torch.float32)(
            x, position_embeddings=pe)
    sliced = st_.sliced_state(dense, d, st_.kept_query_heads(heads, kv), inter, kv)
    assert torch.equal(sliced["self_attn.k_proj.weight"], dense["self_attn.k_proj.weight"])  # KV heads stay
    assert sliced["self_attn.q_proj.weight"].shape == (6 * d, hidden)
    assert sliced["self_attn.o_proj.weight"].shape == (hidden, 6 * d)
    torch.testing.assert_close(right, ref, rtol=0, atol=1e-5)
    assert (wrong - ref).abs().max() > 100 * (right - ref).abs().max() + 1e-4


def test_benchmark_structured_quick(tmp_path, load_script):
    st_ = load_script("benchmark_structured")
    out = tmp_path / "structured.json"
    result = st_.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    rows = {(r["variant"], r["tokens"]): r for r in saved["results"]}
    names = ("dense", "heads-25%", "ffn-50%", "gqa-dense", "gqa-q-25%")
    assert set(rows) == {(v, t) for v in names for t in (1, 16)}
    baseline = {"dense": "dense", "heads-25%": "dense", "ffn-50%": "dense", "gqa-dense": "gqa-dense",
                "gqa-q-25%": "gqa-dense"}
    h, d, i = 512, 128, 1376
    gh, gkv, gd = 8, 2, 64
    v = getattr(torch, saved["settings"]["dtype"]).itemsize
    for t in (1, 16):
        for name in names:
            assert rows[(name, t)]["baseline"] == baseline[name]
            assert saved["settings"]["variants"][name]["baseline"] == baseline[name]
        assert rows[("dense", t)]["speedup"] == rows[("gqa-dense", t)]["speedup"] == 1.0
        assert rows[("heads-25%", t)]["num_attention_heads"] == rows[("heads-25%", t)]["num_key_value_heads"] == 3
        assert rows[("ffn-50%", t)]["intermediate_size"] == i // 2
        assert (rows[("gqa-dense", t)]["num_attention_heads"], rows[("gqa-dense", t)]["num_key_value_heads"]) == (gh, gkv)
        assert (rows[("gqa-q-25%", t)]["num_attention_heads"], rows[("gqa-q-25%", t)]["num_key_value_heads"]) == (6, gkv)
        dense = st_.block_flops(t, h, 4, d, i)
        assert rows[("heads-25%", t)]["flop_speedup"] == pytest.approx(dense / st_.block_flops(t, h, 3, d, i))
        assert rows[("ffn-50%", t)]["flop_speedup"] == pytest.approx(dense / st_.block_flops(t, h, 4, d, i // 2))
        gqa = 2 * t * (h * (2 * gh * gd + 2 * gkv * gd) + 3 * h * i) + 4 * t * t * gh * gd
        gqa_q = 2 * t * (h * (2 * 6 * gd + 2 * gkv * gd) + 3 * h * i) + 4 * t * t * 6 * gd
        assert rows[("gqa-dense", t)]["flops"] == gqa and rows[("gqa-q-25%", t)]["flops"] == gqa_q
        assert rows[("gqa-q-25%", t)]["flop_speedup"] == pytest.approx(gqa / gqa_q)
        assert rows[("gqa-q-25%", t)]["flop_ratio"] == pytest.approx(gqa_q / gqa)
        norms = 2 * h
        assert rows[("ffn-50%", t)]["param_bytes"] == (4 * h * 4 * d + 3 * h * i // 2 + norms) * v
        assert rows[("gqa-q-25%", t)]["param_bytes"] == (h * (2 * 6 * gd + 2 * gkv * gd) + 3 * h * i + norms) * v
        assert rows[("gqa-q-25%", t)]["param_ratio"] == pytest.approx(
            rows[("gqa-q-25%", t)]["param_bytes"] / rows[("gqa-dense", t)]["param_bytes"])
        for variant in names:
            r = rows[(variant, t)]
            assert r["median_ms"] > 0 and r["peak_memory_bytes"] >= t * h * v
            assert r["speedup_vs_flops"] == pytest.approx(r["speedup"] / r["flop_speedup"])
            assert r["speedup"] == pytest.approx(rows[(r["baseline"], t)]["median_ms"] / r["median_ms"])
    checks = saved["equivalence_checks"]
    assert len(checks) == 6 and all(c["ok"] for c in checks)
    assert {(c["variant"], c["baseline"]) for c in checks} == {("heads-25%", "dense"), ("ffn-50%", "dense"),
                                                               ("gqa-q-25%", "gqa-dense")}
    if v == 4:
        assert all(c["max_rel_err"] < 1e-5 for c in checks)
    assert result["settings"]["dims"] == {"hidden": h, "heads": 4, "head_dim": d, "intermediate": i}
    assert result["settings"]["gqa_dims"] == {"hidden": h, "heads": gh, "kv_heads": gkv, "head_dim": gd,
                                              "intermediate": i}
    assert saved["settings"]["variants"]["gqa-q-25%"]["kept_query_heads"] == [0, 1, 2, 4, 5, 6]


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="cpu_busy_fraction reads /proc/stat (Linux only)")
def test_cpu_busy_fraction_sees_a_spinning_thread():
    quiet = cpu_busy_fraction(0.3)
    assert 0.0 <= quiet <= 1.0
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        busy = cpu_busy_fraction(0.5)
    finally:
        stop.set()
        worker.join()
    # one spinning thread takes a whole core: 1/cpu_count of the machine, minus scheduling noise
    assert busy >= 0.8 / os.cpu_count(), (quiet, busy)


def test_busy_warning_records_the_measurement(monkeypatch):
    import course_lib.timing as timing
    monkeypatch.setattr(timing, "cpu_busy_fraction", lambda interval_s: 0.6)
    env = {"cpu_count": 2}
    assert "60% of 2 CPUs" in timing.busy_warning(env) and env["cpu_busy_at_start"] == 0.6
    assert env["warning"].endswith("CPU timings are unreliable")
    monkeypatch.setattr(timing, "cpu_busy_fraction", lambda interval_s: 0.1)
    env = {"cpu_count": 2}
    assert timing.busy_warning(env) is None and "warning" not in env


@pytest.mark.parametrize("bad", [0, -1, 61, "1", None])
def test_cpu_busy_fraction_rejects_bad_interval(bad):
    with pytest.raises(ValueError, match="interval_s"):
        cpu_busy_fraction(bad)


def test_csr_token_scaling_probe_computes_the_same_product_every_way(load_script):
    """scripts/csr_token_scaling.py: every op (dense, CSR mm with int64 and int32 indices, CSR mv) is
    timed on the same pruned weight and agrees with the dense product; the CSR weight has the asked
    sparsity and index width."""
    probe = load_script("csr_token_scaling")
    w, csr32 = probe.csr_weight(64, 96, 0.9, index_dtype=torch.int32)
    assert csr32.col_indices().dtype == torch.int32 and csr32.crow_indices().dtype == torch.int32
    assert int((w != 0).sum()) == csr32.values().numel() == 64 * 96 - round(0.9 * 64 * 96)
    rows = probe.measure(shape=(64, 96), tokens=[1, 3], threads=[1], warmup=0, reps=2, log=lambda *_: None)
    ops = {(r["op"], r["tokens"]) for r in rows}
    assert ops == {(op, t) for op in ("dense F.linear", "csr mm, int64 indices", "csr mm, int32 indices")
                   for t in (1, 3)} | {("csr mv, int64 indices", 1)}
    for r in rows:
        assert r["median_ms"] > 0
        if r["op"] != "dense F.linear":  # the dense row multiplies the unpruned weight, its own reference
            assert r["rel_err"] < 1e-5, r
