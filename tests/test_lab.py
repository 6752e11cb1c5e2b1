"""`make lab` starts JupyterLab, which answers on its REST API; then we stop it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_rest_api(tmp_path):
    port, token = _free_port(), "course-test-token"
    stamp = tmp_path / "installed"
    stamp.touch()  # the environment running this test is installed already: skip make's install step
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    cmd = ["make", "-s", "lab", f"VENV={sys.prefix}", f"STAMP={stamp}", f"PORT={port}",
           f"LAB_ARGS=--no-browser --ip=127.0.0.1 --IdentityProvider.token={token} --ServerApp.open_browser=False"
           + (" --allow-root" if os.geteuid() == 0 else "")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                             headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    status = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert status is not None, f"JupyterLab did not answer: {proc.stdout.read1().decode() if proc.poll() is not None else 'still starting'}"
        assert "started" in status
        # it serves notebooks/ (the student notebooks)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents",
                                     headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            names = {item["name"] for item in json.loads(resp.read())["content"]}
        expected = {p.name for p in (ROOT / "notebooks").iterdir() if not p.name.startswith(".")}
        assert names == expected
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass  # it already exited (the assertion above says why)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_nbgrader_extensions_are_enabled():
    jupyter = [sys.executable, "-m", "jupyter"]
    lab = subprocess.run(jupyter + ["labextension", "list"], capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", lab.stdout + lab.stderr)
    assert re.search(r"@jupyter/nbgrader v\S+ enabled OK", text), text
    server = subprocess.run(jupyter + ["server", "extension", "list"], capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", server.stdout + server.stderr)
    assert re.search(r"nbgrader\S* enabled", text), text


def _dry_run(target, *args, tmp_path):
    stamp = tmp_path / "installed"
    stamp.touch()
    out = subprocess.run(["make", "-n", "-s", target, f"VENV={sys.prefix}", f"STAMP={stamp}", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return next(line for line in out.splitlines() if "jupyter lab" in line).split()


def test_port_and_lab_args_as_readme_shows(tmp_path):
    """`make lab PORT=9999` and `make lab LAB_ARGS="--port 9999"` both give one --port; as root
    --allow-root is added once (JupyterLab refuses root without it); the exchange is created and
    the course folder is on JUPYTER_CONFIG_PATH (the Assignments tab reads nbgrader_config.py)."""
    cmd = _dry_run("lab", "PORT=9999", tmp_path=tmp_path)
    assert "--port=9999" in cmd and "--notebook-dir=notebooks" in cmd
    cmd = _dry_run("lab", "LAB_ARGS=--port 9998 --no-browser", tmp_path=tmp_path)
    assert [a for a in cmd if a.startswith("--port")] == ["--port"] and "9998" in cmd
    root_flags = cmd.count("--allow-root")
    assert root_flags == (1 if os.geteuid() == 0 else 0)
    cmd = _dry_run("lab-instructor", "LAB_ARGS=--allow-root", tmp_path=tmp_path)
    assert cmd.count("--allow-root") == 1 and "--notebook-dir=." in cmd
    assert f'JUPYTER_CONFIG_PATH="{ROOT}' in " ".join(cmd)
