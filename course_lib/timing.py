"""Measuring speed and memory soundly, on CPU and on CUDA.

Published speedups of sparse kernels disagree wildly (2:4 on GPUs anywhere from 0.1x
to 1.9x; pruning that makes nothing faster on CPU) mostly because of *how* they were
measured. The protocol here avoids the usual traps:

* **Asynchronous GPUs.** A CUDA call returns before the kernel has run, so wall-clock
  time around it measures the launch, not the work. Each call is bracketed by a pair of
  ``torch.cuda.Event`` s recorded on the stream, and the device is synchronised before
  the times are read (as in ``triton.testing.do_bench``, Tillet et al. 2019).
* **Warm caches.** Called in a loop, a weight that fits in the L2 cache is read from
  there after the first call, but in a real model the other layers have evicted it long
  before the next token. With ``flush_l2=True`` (default) a buffer of at least twice the
  cache is zeroed between calls (outside the timed region): on CUDA twice
  ``L2_cache_size`` (256 MB when torch cannot tell), on CPU twice the largest cache the
  kernel reports in sysfs, capped at 256 MB.
* **One-off costs.** The first calls pay for lazy initialisation, cuBLAS/MKL workspace
  allocation and kernel selection: ``warmup`` calls are made and thrown away.
* **Launch overhead.** Small GPU ops can be dominated by the CPU cost of launching
  kernels; ``cuda_graph=True`` captures ``fn`` once into a CUDA graph and times its
  replays, which removes that overhead (what a serving engine with graphs would see).
* **Noise.** Every call is timed separately and summarised by the median and the
  inter-quartile range (q25..q75), which a few slow outliers (another process, a page
  fault) barely move; the mean would.

``benchmark(fn)`` returns a :class:`Measurement`; ``compare({...}, baseline=...)`` a
:class:`Table` of medians and speedups; ``peak_memory(fn)`` the peak bytes ``fn``
allocates. ``fn`` takes no arguments: bind inputs with a lambda or ``functools.partial``.
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field

import torch

FALLBACK_FLUSH_BYTES = 256 * 2**20  # when the cache size is unknown (and the CPU cap)

__all__ = [
    "Measurement", "Table", "benchmark", "compare", "peak_memory", "tensor_bytes",
    "environment", "device_slug", "percentile", "cpu_busy_fraction", "busy_warning",
]


# ----------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Measurement:
    """Summary of ``n`` timed calls, all times in milliseconds."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    n: int
    device: str  # "cpu", "cuda:0", ...
    threads: int | None  # torch.get_num_threads() for CPU timings, None on CUDA
    flush_l2: bool
    flush_bytes: int  # size of the buffer zeroed between calls (0 when not flushing)
    cuda_graph: bool
    label: str = ""
    samples_ms: tuple = field(default=(), repr=False, compare=False)  # every call, in order

    COLUMNS = ("label", "median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms", "n", "device", "threads")

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    def row(self) -> tuple:
        """The values of :attr:`COLUMNS`, in that order (one line of a CSV/table)."""
        return tuple(getattr(self, c) for c in self.COLUMNS)

    def to_dict(self, samples: bool = False) -> dict:
        """All fields as a JSON-serialisable dict (``samples=True`` adds every call's time)."""
        d = asdict(self)
        d["iqr_ms"] = self.iqr_ms
        d["samples_ms"] = list(self.samples_ms)
        if not samples:
            del d["samples_ms"]
        return d

    def __str__(self) -> str:
        where = self.device + (f", {self.threads} threads" if self.threads is not None else "")
        extras = [where, "L2 flushed" if self.flush_l2 else "warm cache"]
        if self.cuda_graph:
            extras.append("CUDA graph")
        head = f"{self.label}: " if self.label else ""
        return (f"{head}median {_fmt(self.median_ms)} ms (IQR {_fmt(self.q25_ms)}-{_fmt(self.q75_ms)}, "
                f"min {_fmt(self.min_ms)}, max {_fmt(self.max_ms)}, n={self.n}; {', '.join(extras)})")


def _fmt(ms: float) -> str:
    return f"{ms:.4g}"


class Table:
    """Rows of :func:`compare`: ``name, median_ms, q25_ms, q75_ms, iqr_ms, speedup``.

    ``speedup`` is ``baseline median / row median`` (> 1 means faster than the baseline).
    Iterate over it for the row dicts, index it by candidate name, print it, or call
    :meth:`to_markdown`. ``measurements`` keeps the full :class:`Measurement` of each.
    """

    columns = ("name", "median_ms", "q25_ms", "q75_ms", "iqr_ms", "speedup")

    def __init__(self, measurements: dict, baseline: str):
        self.baseline = baseline
        self.measurements = dict(measurements)
        base = self.measurements[baseline].median_ms
        self.rows = [
            {"name": name, "median_ms": m.median_ms, "q25_ms": m.q25_ms, "q75_ms": m.q75_ms,
             "iqr_ms": m.iqr_ms, "speedup": base / m.median_ms if m.median_ms > 0 else math.inf}
            for name, m in self.measurements.items()
        ]

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, name: str) -> dict:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {[r['name'] for r in self.rows]}")

    def _cells(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            tag = " (baseline)" if r["name"] == self.baseline else ""
            out.append([r["name"] + tag, _fmt(r["median_ms"]), _fmt(r["q25_ms"]), _fmt(r["q75_ms"]),
                        _fmt(r["iqr_ms"]), f"{r['speedup']:.2f}x"])
        return out

    def __str__(self) -> str:
        header = ["name", "median ms", "q25 ms", "q75 ms", "IQR ms", "speedup"]
        cells = self._cells()
        widths = [max(len(x) for x in col) for col in zip(header, *cells)]
        lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
        for row in cells:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        header = ["name", "median ms", "q25 ms", "q75 ms", "IQR ms", "speedup"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 5) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Table(baseline={self.baseline!r}, rows={len(self.rows)})"


# ----------------------------------------------------------------------------------------
# statistics


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default ``method="linear"``)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summarise(times_ms, *, device, threads, flush_bytes, cuda_graph, label) -> Measurement:
    return Measurement(
        median_ms=percentile(times_ms, 50), q25_ms=percentile(times_ms, 25), q75_ms=percentile(times_ms, 75),
        min_ms=min(times_ms), max_ms=max(times_ms), n=len(times_ms), device=device, threads=threads,
        flush_l2=flush_bytes > 0, flush_bytes=flush_bytes, cuda_graph=cuda_graph, label=label,
        samples_ms=tuple(times_ms),
    )


# ----------------------------------------------------------------------------------------
# devices and cache flushing


def _tensors_in(obj):
    """Tensors in a (nested) return value: tensor, list/tuple, dict values, or objects
    with tensor attributes are not searched beyond these containers."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors_in(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors_in(x)


def _check_device(device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device, got {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but torch.cuda.is_available() is False")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _device_of_output(out) -> torch.device:
    """The rule for ``device=None``: where ``fn``'s output lives -- the first CUDA tensor
    found in it, else CPU if it holds tensors; if it holds none, CUDA when available,
    else CPU."""
    devices = [t.device for t in _tensors_in(out)]
    for d in devices:
        if d.type == "cuda":
            return _check_device(d)
    if devices:
        return torch.device("cpu")
    return _check_device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _cpu_cache_bytes() -> int | None:
    """Largest cache the kernel reports for cpu0 (usually the shared L3), or None."""
    sizes = []
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            if entry.startswith("index"):
                with open(os.path.join(root, entry, "size")) as f:
                    text = f.read().strip()
                m = re.fullmatch(r"(\d+)([KMG]?)", text)
                if m:
                    sizes.append(int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    except OSError:
        return None
    return max(sizes) if sizes else None


def _flush_bytes(device: torch.device) -> int:
    """Bytes to zero between calls so that the cache holds none of ``fn``'s data."""
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
        return 2 * l2 if l2 > 0 else FALLBACK_FLUSH_BYTES
    cache = _cpu_cache_bytes()
    return min(2 * cache, FALLBACK_FLUSH_BYTES) if cache else FALLBACK_FLUSH_BYTES


# ----------------------------------------------------------------------------------------
# timing


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def benchmark(fn, *, warmup: int = 3, reps: int = 30, device=None, flush_l2: bool = True,
              cuda_graph: bool = False, label: str = "") -> Measurement:
    """Time ``fn()`` ``reps`` times after ``warmup`` untimed calls -> :class:`Measurement`.

    ``device=None`` infers the device from ``fn``'s output (one extra call, counted as
    the first warm-up call): CUDA if it returns a CUDA tensor, CPU if it returns CPU
    tensors; a ``fn`` that returns no tensor is timed on CUDA when CUDA is available,
    else on CPU -- pass ``device="cpu"`` to time CPU-only code on a GPU machine.

    CUDA: each call is bracketed by CUDA events on the current stream; the L2 cache is
    flushed before each call (``flush_l2``); ``cuda_graph=True`` captures ``fn`` into a
    CUDA graph after the warm-up and times graph replays instead. CPU: each call is
    timed with ``time.perf_counter_ns`` after the flush buffer (see the module doc) is
    zeroed; the thread count is recorded.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    warmup = _check_count(warmup, "warmup", 0)
    reps = _check_count(reps, "reps", 1)
    if device is None:
        device = _device_of_output(fn())
        warmup = max(warmup - 1, 0)
    else:
        device = _check_device(device)
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph=True needs a CUDA device (CUDA graphs do not exist on CPU)")
    flush_bytes = _flush_bytes(device) if flush_l2 else 0
    kw = dict(warmup=warmup, reps=reps, flush_bytes=flush_bytes)
    if device.type == "cuda":
        with torch.cuda.device(device):
            times = _time_cuda(fn, device=device, cuda_graph=cuda_graph, **kw)
        threads = None
    else:
        times = _time_cpu(fn, **kw)
        threads = torch.get_num_threads()
    return _summarise(times, device=str(device), threads=threads, flush_bytes=flush_bytes,
                      cuda_graph=cuda_graph, label=label)


def _time_cpu(fn, *, warmup: int, reps: int, flush_bytes: int) -> list[float]:
    buf = torch.empty(flush_bytes // 4, dtype=torch.int32) if flush_bytes else None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if buf is not None:
            buf.zero_()  # evict fn's data from the caches (multi-threaded: every core's L2)
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def _capture_graph(fn, device: torch.device):
    """Capture ``fn`` into a CUDA graph (after side-stream warm-up, as torch recommends)."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as e:  # capture forbids syncs, host copies, some libraries' setup
        raise RuntimeError(f"fn could not be captured into a CUDA graph ({type(e).__name__}: {e}); "
                           "time it with cuda_graph=False") from e
    return graph


def _time_cuda(fn, *, warmup: int, reps: int, flush_bytes: int, device: torch.device,
               cuda_graph: bool) -> list[float]:
    buf = torch.empty(flush_bytes // 4, dtype=torch.int32, device=device) if flush_bytes else None
    for _ in range(warmup):
        if buf is not None:
            buf.zero_()
        fn()
    call = fn
    if cuda_graph:
        graph = _capture_graph(fn, device)
        call = graph.replay
        for _ in range(max(warmup, 1)):
            call()
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if buf is not None:
            buf.zero_()  # runs on the stream before the start event: not timed
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def compare(candidates: dict, baseline: str | None = None, **benchmark_kwargs) -> Table:
    """Benchmark every ``{name: fn}`` with the same settings -> :class:`Table` with the
    speedup of each over ``baseline`` (a key of ``candidates``; default: the first one).

    Candidates are timed one after the other, in the dict's order, each with its own
    warm-up. ``benchmark_kwargs`` go to :func:`benchmark` (``warmup``, ``reps``,
    ``device``, ``flush_l2``, ``cuda_graph``).
    """
    if not isinstance(candidates, dict) or not candidates:
        raise ValueError("candidates must be a non-empty dict {name: fn}")
    for name, fn in candidates.items():
        if not isinstance(name, str):
            raise TypeError(f"candidate names must be str, got {name!r}")
        if not callable(fn):
            raise TypeError(f"candidate {name!r} is a {type(fn).__name__}, not a callable")
    if baseline is None:
        baseline = next(iter(candidates))
    if baseline not in candidates:
        raise ValueError(f"baseline {baseline!r} is not one of the candidates {list(candidates)}")
    if "label" in benchmark_kwargs:
        raise TypeError("compare() labels each measurement with its candidate name; do not pass label=")
    measurements = {name: benchmark(fn, label=name, **benchmark_kwargs) for name, fn in candidates.items()}
    return Table(measurements, baseline)


# ----------------------------------------------------------------------------------------
# memory


def peak_memory(fn, *, device=None) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it.

    ``fn`` is called once first and its result dropped (lazy initialisation, workspace
    allocation), then measured on a second call. ``device=None`` follows the rule of
    :func:`benchmark` (the first call tells).

    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
      ``memory_allocated`` at the start -- tensors only, not the caching allocator's
      reserved-but-free blocks nor memory libraries (cuBLAS, cuSPARSELt) allocate
      themselves.
    * CPU: torch keeps no CPU allocator statistics, so the call runs under the torch
      profiler with ``profile_memory=True``, which reports every allocation and free of
      torch's CPU allocator; the peak of their running sum is returned. This counts
      every tensor torch allocates during ``fn`` (temporaries and the returned ones), but
      not memory that libraries (MKL, oneDNN) or Python objects allocate on their own,
      nor allocations made on worker threads the profiler does not follow.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    first = fn()
    device = _device_of_output(first) if device is None else _check_device(device)
    del first
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            out = fn()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(max(peak, 0))
    return _cpu_peak_memory(fn)


def _cpu_peak_memory(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError("this torch's profiler exposes no memory events; CPU peak memory is unavailable")
    events = [e for e in results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def tensor_bytes(obj) -> int:
    """Bytes of the distinct storages held by ``obj``: a tensor (dense, sparse
    COO/CSR/CSC/BSR/BSC or ``torch.sparse`` semi-structured), an ``nn.Module``
    (parameters and buffers), or a list/tuple/dict of these.

    A storage shared by several tensors (views, tied weights) counts once, and counts
    whole: a small view of a big tensor keeps the whole buffer alive.
    """
    seen: set = set()
    return _tensor_bytes(obj, seen)


def _tensor_bytes(obj, seen: set) -> int:
    if isinstance(obj, torch.nn.Module):
        return sum(_tensor_bytes(t, seen) for t in (*obj.parameters(), *obj.buffers()))
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(x, seen) for x in obj.values())
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"tensor_bytes counts tensors, modules and containers of them, got {type(obj).__name__}")
    semi = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    if semi is not None and isinstance(obj, semi):
        parts = [getattr(obj, a, None) for a in ("packed", "meta", "packed_t", "meta_t",
                                                  "compressed_swizzled_bitmask")]
        return sum(_tensor_bytes(p, seen) for p in parts if p is not None)
    layout = obj.layout
    if layout == torch.sparse_coo:
        return _tensor_bytes([obj._indices(), obj._values()], seen)
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return _tensor_bytes([obj.crow_indices(), obj.col_indices(), obj.values()], seen)
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return _tensor_bytes([obj.ccol_indices(), obj.row_indices(), obj.values()], seen)
    storage = obj.untyped_storage()
    key = (str(obj.device), storage.data_ptr(), storage.nbytes())
    if key in seen or storage.nbytes() == 0:
        return 0
    seen.add(key)
    return storage.nbytes()


# ----------------------------------------------------------------------------------------
# environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def environment(device=None) -> dict:
    """What a benchmark result depends on: CPU model, GPU name and compute capability,
    torch / CUDA / cuSPARSELt versions, thread count, usable cores, load average."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else _check_device(device)
    env = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkl": torch.backends.mkl.is_available(),
        "cuda": torch.version.cuda,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        env["loadavg_1m"] = os.getloadavg()[0]
    except (AttributeError, OSError):
        pass
    try:  # cores this process may run on (taskset/cgroups): fewer than torch_threads oversubscribes them
        env["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["gpu_memory_bytes"] = props.total_memory
        env["l2_cache_bytes"] = getattr(props, "L2_cache_size", None)
        cusparselt = getattr(torch.backends, "cusparselt", None)
        env["cusparselt_available"] = bool(cusparselt and cusparselt.is_available())
        env["cusparselt_version"] = cusparselt.version() if env["cusparselt_available"] else None
    else:
        env["cpu_cache_bytes"] = _cpu_cache_bytes()
    return env


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together since boot, from ``/proc/stat`` (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def cpu_busy_fraction(interval_s: float = 1.0) -> float | None:
    """Fraction of all CPUs' time spent busy during the next ``interval_s`` seconds, while
    this process sleeps: 0.0 on an idle machine, 0.5 when one of two cores is taken by
    another job. ``None`` where ``/proc/stat`` is unavailable (not Linux).

    Unlike the 1-minute load average, which decays over minutes and still reads about 1.7
    right after a two-minute job ended, this measures what competes with a benchmark now."""
    if not (isinstance(interval_s, (int, float)) and 0 < interval_s <= 60):
        raise ValueError(f"interval_s must be a number of seconds in (0, 60], got {interval_s!r}")
    before = _cpu_ticks()
    time.sleep(interval_s)
    after = _cpu_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def busy_warning(env: dict, *, interval_s: float = 1.0, threshold: float = 0.25) -> str | None:
    """Measure :func:`cpu_busy_fraction` into ``env["cpu_busy_at_start"]`` and return a
    warning (also stored as ``env["warning"]``) when other work used more than
    ``threshold`` of the CPUs; ``None`` when the machine was quiet or the check is unavailable."""
    busy = cpu_busy_fraction(interval_s)
    env["cpu_busy_at_start"] = busy
    if busy is None or busy <= threshold:
        return None
    env["warning"] = (f"machine busy at start ({busy:.0%} of {env.get('cpu_count') or '?'} CPUs in use "
                      f"by other work over {interval_s:g} s): CPU timings are unreliable")
    return env["warning"]


def device_slug(device=None) -> str:
    """A file-name-safe name of the hardware: ``"nvidia-h200"``, ``"cpu-intel-xeon-processor"``."""
    env = environment(device)
    name = env["gpu"] if "gpu" in env else "cpu-" + env["cpu"]
    name = re.sub(r"\((r|tm|c)\)", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
