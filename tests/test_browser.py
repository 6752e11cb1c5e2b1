"""JupyterLab as students and instructors use it, started by the Makefile's targets and driven by a
real browser (Debian's chromium through its chromedriver, with selenium).

One temporary course: the seven assignments in solutions/ and, in notebooks/, the student version
of the small grading fixture (answered), so that running and validating it takes seconds. Two
servers on free localhost ports, started with `make lab` (students: notebooks/) and
`make lab-instructor` (the course root), each with PORT= and LAB_ARGS= as README shows. The REST
checks run without a browser; the browser tests skip, with the reason, where chromium,
chromedriver or selenium is missing (`.ci/run` installs them). A failing browser test saves a
screenshot and the page's HTML into its tmp folder and prints the path.
"""

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from course_lib import grading

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grading import AID, FIXTURE, _cell, _source  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "course-browser-test"
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def _wait(port, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited {proc.returncode}: {proc.stdout.read().decode()[-3000:]}")
        try:
            _get(port, "/api/status")
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("JupyterLab did not answer in time")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course folder with the Makefile, the configuration and the 7 assignments' sources (the
    fixture's answered student notebook is added by `servers`, while JupyterLab starts)."""
    root = tmp_path_factory.mktemp("course")
    (root / "notebooks").mkdir()
    for name in ("Makefile", "pyproject.toml", "nbgrader_config.py"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "solutions", root / "solutions")
    (root / "installed").touch()  # this environment is installed: make's install step has nothing to do
    return root


def _student_notebook(course, scratch):
    """notebooks/00_fixture: the fixture's student version (made by nbgrader), answered."""
    shutil.copytree(FIXTURE / "solutions", scratch / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", scratch / "nbgrader_config.py")
    grading.release(scratch, [AID])
    student = nbformat.read(scratch / "notebooks" / AID / f"{AID}.ipynb", as_version=4)
    answered = copy.deepcopy(student)
    for gid in ("fx-n-removed", "fx-my-mask", "fx-zero-fraction"):
        _cell(answered, gid).source = _cell(_source(), gid).source
    (course / "notebooks" / AID).mkdir(parents=True)
    nbformat.write(answered, course / "notebooks" / AID / f"{AID}.ipynb")


@pytest.fixture(scope="module")
def servers(course, tmp_path_factory):
    """{'student': port, 'instructor': port}: `make lab` and `make lab-instructor`, both running."""
    runtime = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime / "runtime"), JUPYTER_CONFIG_DIR=str(runtime / "cfg"),
               JUPYTERLAB_WORKSPACES_DIR=str(runtime / "workspaces"), JUPYTER_DATA_DIR=str(runtime / "data"))
    env.pop("JUPYTER_CONFIG_PATH", None)
    args = f"--no-browser --ip=127.0.0.1 --IdentityProvider.token={TOKEN}"
    procs, ports = {}, {}
    t0 = time.monotonic()
    try:
        for who, target in (("student", "lab"), ("instructor", "lab-instructor")):
            ports[who] = _free_port()
            procs[who] = subprocess.Popen(
                ["make", "-s", target, f"VENV={sys.prefix}", f"STAMP={course / 'installed'}", f"PORT={ports[who]}",
                 f"LAB_ARGS={args}"], cwd=course, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)
        _student_notebook(course, tmp_path_factory.mktemp("release"))  # while both start
        for who in procs:
            _wait(ports[who], procs[who])
        print(f"both JupyterLab servers up in {time.monotonic() - t0:.1f} s")
        yield ports
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


# ---- without a browser: what each server serves --------------------------------------------

def test_student_lab_serves_notebooks_and_the_assignment_list_works(servers, course):
    status, body = _get(servers["student"], "/api/contents")
    assert {item["name"] for item in json.loads(body)["content"]} == {AID}
    with pytest.raises(urllib.error.HTTPError) as err:  # the sources are not the students' to see
        _get(servers["student"], "/api/contents/solutions")
    assert err.value.code == 404
    # the Assignments tab's calls: a working (course-local) exchange, not "Error fetching courses!"
    status, body = _get(servers["student"], "/courses")
    assert json.loads(body) == {"success": True, "value": []}, body
    status, body = _get(servers["student"], "/assignments?course_id=pruning-llms")
    assert json.loads(body)["success"] is True, body
    assert (course / "exchange").is_dir()  # made by the make target


def test_instructor_lab_serves_the_course_root(servers):
    status, body = _get(servers["instructor"], "/api/contents/solutions")
    assert {item["name"] for item in json.loads(body)["content"]} == set(ASSIGNMENTS)
    for aid in ASSIGNMENTS:  # where the Formgrader's assignment links point
        status, _ = _get(servers["instructor"], f"/api/contents/solutions/{aid}/{aid}.ipynb?content=0")
        assert status == 200


# ---- in the browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (it comes with the dev extras: pip install -e '.[dev]')")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as exc:  # noqa: BLE001 -- e.g. a chromium that cannot start here
        pytest.skip(f"chromium could not be started through chromedriver: {type(exc).__name__}: {str(exc)[:300]}")
    driver.set_page_load_timeout(60)
    driver.shots = tmp_path
    yield driver
    driver.quit()


@contextlib.contextmanager
def _screenshot_on_failure(driver):
    """Save a screenshot and the page's HTML into the test's tmp folder when the block fails."""
    try:
        yield
    except BaseException:
        shot = driver.shots / "failure.png"
        try:
            driver.save_screenshot(str(shot))
            (driver.shots / "failure.html").write_text(driver.page_source)
            print(f"\nscreenshot of the failure: {shot} (and failure.html)")
        except Exception as exc:  # noqa: BLE001 -- the original failure matters more
            print(f"\nno screenshot: {exc}")
        raise


def _until(driver, what, seconds=60, message=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(what, message)


def _button(driver, label):
    """The notebook toolbar's button whose label is ``label`` (or None)."""
    for el in driver.find_elements("css selector", ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-ToolbarButtonComponent"
                                                   "-label"):
        if el.text.strip() == label:
            return el
    return None


def test_student_runs_an_exercise_and_validates(servers, browser):
    with _screenshot_on_failure(browser):
        t0 = time.monotonic()
        driver, port = browser, servers["student"]
        driver.get(f"http://127.0.0.1:{port}/lab/tree/{AID}/{AID}.ipynb?token={TOKEN}")
        cells = _until(driver, lambda d: [c for c in d.find_elements("css selector", ".jp-NotebookPanel .jp-CodeCell")]
                       if len(d.find_elements("css selector", ".jp-NotebookPanel .jp-CodeCell")) >= 8 else False,
                       90, "the notebook's code cells did not appear")
        _until(driver, lambda d: "Idle" in d.find_element("css selector", "body").text or
               d.find_elements("css selector", ".jp-Notebook-ExecutionIndicator[data-status='idle']"),
               90, "the kernel did not become idle")
        # run the setup cell, exercise 1 and its visible test, as a student does (Shift+Enter)
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        for index in (0, 2, 3):
            driver.execute_script("arguments[0].scrollIntoView()", cells[index])
            cells[index].find_element("css selector", ".jp-InputArea-prompt").click()
            ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
            _until(driver, lambda d: d.find_elements("css selector", ".jp-NotebookPanel .jp-CodeCell")[index]
                   .find_element("css selector", ".jp-InputArea-prompt").text.strip() not in ("[ ]:", "[*]:", ""),
                   60, f"code cell {index} did not run")
        prompts = [driver.find_elements("css selector", ".jp-NotebookPanel .jp-CodeCell")[i]
                   .find_element("css selector", ".jp-InputArea-prompt").text.strip() for i in (0, 2, 3)]
        assert prompts == ["[1]:", "[2]:", "[3]:"], prompts
        errors = driver.find_elements("css selector", ".jp-NotebookPanel .jp-OutputArea-output[data-mime-type="
                                                      "'application/vnd.jupyter.stderr']")
        assert not [e.text for e in errors if "Error" in e.text]
        # Validate: nbgrader runs the notebook in its own kernel (measurement cells skipped) and says so
        button = _until(driver, lambda d: _button(d, "Validate"), 30, "no Validate button in the notebook toolbar")
        t1 = time.monotonic()
        driver.execute_script("arguments[0].closest('jp-button, button').click()", button)
        dialog = _until(driver, lambda d: next((e for e in d.find_elements("css selector", ".jp-Dialog")
                                                if "Validation Results" in e.text), None), 120,
                        "no Validation Results dialog")
        assert "Success! Your notebook passes all the tests." in dialog.text, dialog.text
        print(f"Validate took {time.monotonic() - t1:.1f} s; the student part {time.monotonic() - t0:.1f} s")


def test_instructor_formgrader_lists_every_assignment(servers, browser):
    with _screenshot_on_failure(browser):
        driver, port = browser, servers["instructor"]
        driver.get(f"http://127.0.0.1:{port}/formgrader?token={TOKEN}")
        _until(driver, lambda d: all(aid in d.find_element("css selector", "body").text for aid in ASSIGNMENTS), 90,
               "the Formgrader did not list all the assignments")
        body = driver.find_element("css selector", "body").text
        assert "exchange directory" not in body.lower(), body  # no warning: the course-local exchange exists
        links = {a.get_attribute("href") for a in driver.find_elements("css selector", "a")}
        for aid in ASSIGNMENTS:  # each assignment's name links to its source folder, which this server serves
            assert any(h and h.rstrip("/").endswith(f"/solutions/{aid}") for h in links), (aid, sorted(links))
