"""`make test` runs the notebooks twice: natively, and as if on another CPU (see the Makefile).

The second pass sets ATEN_CPU_CAPABILITY=default (torch's plain, non-vectorised kernels) and one
thread. These tests prove that the setting reaches torch, in this process and in the Jupyter kernel
that nbval starts for a notebook; without that the second pass would silently test nothing new.
"""

import os

import pytest
import torch

WANTED = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
THREADS = os.environ.get("OMP_NUM_THREADS", "").strip()


def _expected_capability():
    return WANTED.upper()


@pytest.mark.skipif(not WANTED, reason="ATEN_CPU_CAPABILITY is not set (only the second pass of make test sets it)")
def test_torch_runs_the_requested_kernels():
    assert torch.backends.cpu.get_cpu_capability() == _expected_capability()


@pytest.mark.skipif(not WANTED, reason="ATEN_CPU_CAPABILITY is not set (only the second pass of make test sets it)")
def test_the_notebook_kernel_inherits_the_setting():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
        out = []
        kc.execute_interactive(code, timeout=120,
                               output_hook=lambda msg: out.append(msg["content"].get("text", "")))
        capability, threads = "".join(out).split()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert capability == _expected_capability()
    if THREADS:
        assert int(threads) == int(THREADS)


def test_default_capability_changes_low_bits():
    # Why the second pass is worth running: on a CPU with vector units, the plain kernels round
    # differently. Checked in a subprocess, as the capability is fixed when torch starts.
    import subprocess
    import sys

    code = ("import torch; g = torch.Generator().manual_seed(0); x = torch.randn(4096, generator=g);"
            "print(repr(float(torch.exp(x).sum())), torch.backends.cpu.get_cpu_capability())")
    runs = {}
    for cap in ("default", None):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        value, used = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()
        runs[used] = float(value)
    if len(runs) == 1:
        pytest.skip(f"this CPU has no vector kernels beyond the default ({sorted(runs)})")
    values = list(runs.values())
    assert values[0] == pytest.approx(values[1], rel=1e-6)  # the same function ...
    assert values[0] != values[1], runs  # ... rounded differently (measured: 6806.1611 vs 6806.1621)
