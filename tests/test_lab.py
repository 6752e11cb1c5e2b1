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
