"""Parallel, sharded grading into a real PostgreSQL gradebook, on the small fixture assignment.

A throwaway PostgreSQL server (initdb into a temporary folder, a Unix socket there, password
authentication) is started for this module and stopped after it; every test that needs it skips,
with the reason, where none can be started (no PostgreSQL binaries, no psycopg2, no user to run it
as). The same submissions are graded four ways and every score compared: serially into SQLite,
with 2 jobs into PostgreSQL, as two shards running at the same time into one PostgreSQL database,
and one shard again (idempotent).
"""

import copy
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from course_lib import grading

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grading import AID, FIXTURE, ROOT, _cell, _source  # noqa: E402

# candidate student ids; the test uses the first ones that put students in both of 2 shards
CANDIDATES = [f"student{i:02d}" for i in range(20)]


# ---- shards and options, no grading ---------------------------------------------------------

def test_parse_shard_accepts_k_of_n_and_says_what_is_wrong():
    assert grading.parse_shard("2/3") == (2, 3)
    for bad, why in [("0/3", "1 <= K <= N"), ("4/3", "1 <= K <= N"), ("1", "K/N"), ("a/b", "K/N"), ("1/0", "1 <= K")]:
        with pytest.raises(ValueError, match=why):
            grading.parse_shard(bad)


def test_shards_partition_students_the_same_in_every_process():
    n = 3
    shards = {s: [k for k in range(1, n + 1) if grading.in_shard(s, k, n)] for s in CANDIDATES}
    assert all(len(ks) == 1 for ks in shards.values())  # each student in exactly one shard
    assert len({ks[0] for ks in shards.values()}) == n  # and no shard empty for 20 students
    code = ("import sys; from course_lib.grading import in_shard; "
            f"print([[k for k in range(1, {n} + 1) if in_shard(s, k, {n})] for s in {CANDIDATES!r}])")
    for seed in ("1", "2"):  # Python's hash() would differ between these two
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
        assert eval(out) == [shards[s] for s in CANDIDATES]


@pytest.mark.parametrize("args, message", [(["--jobs", "0"], "--jobs must be >= 1"),
                                           (["--shard", "3/2"], "1 <= K <= N"),
                                           (["--threads", "0"], "--threads must be >= 1"),
                                           (["--assignment", "99_nope"], "unknown assignment")])
def test_bad_options_are_refused_with_the_reason(tmp_path, capsys, args, message):
    shutil.copytree(FIXTURE / "solutions", tmp_path / "solutions")
    with pytest.raises(SystemExit) as exc:
        grading.main(["--root", str(tmp_path), "--skip-release", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


# ---- a throwaway PostgreSQL server -----------------------------------------------------------

def _pg_bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return shutil.which(name) or (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A URL template ``postgresql://...{db}...`` of a fresh server; createdb(name) makes a database."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary; .ci/run does)")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql (.ci/run does)")
    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="course-pg-"))
    password = secrets.token_hex(12)
    (base / "pw").write_text(password)
    if run_as:
        shutil.chown(base, "postgres")
        shutil.chown(base / "pw", "postgres")
    data, log = base / "data", base / "log"
    proc = subprocess.run(run_as + [initdb, "-D", str(data), "-U", "grader", "--pwfile", str(base / "pw"),
                                    "--auth", "scram-sha-256", "-E", "UTF8"], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"initdb failed: {proc.stderr.strip()[-300:]}")
    opts = f"-k {base} -c listen_addresses='' -p 5432"  # a Unix socket in our folder only, no TCP port
    proc = subprocess.run(run_as + [pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        text = log.read_text()[-300:] if log.exists() else proc.stderr
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {text}")
    url = f"postgresql+psycopg2://grader:{password}@/{{db}}?host={base}&port=5432"

    def createdb(name):
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", user="grader", password=password, host=str(base), port=5432)
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return url.format(db=name)

    try:
        yield createdb
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _students():
    """Two students, one in each of 2 shards (chosen by the hash, not by hand): they hand in the
    solution and a partial answer (exercise 1 only). Two keep the module's grading runs short."""
    one = [s for s in CANDIDATES if grading.in_shard(s, 1, 2)]
    two = [s for s in CANDIDATES if grading.in_shard(s, 2, 2)]
    return [one[0], two[0]]


def _course(tmp_path, name, db_url=None):
    root = tmp_path / name
    shutil.copytree(FIXTURE / "solutions", root / "solutions")
    config = (ROOT / "nbgrader_config.py").read_text() + "\nc.Execute.timeout = 20\n"
    if db_url:
        config += f"c.CourseDirectory.db_url = {db_url!r}\n"
    (root / "nbgrader_config.py").write_text(config)
    grading.release(root, [AID])
    release = nbformat.read(root / "notebooks" / AID / f"{AID}.ipynb", as_version=4)
    sol = _source()
    partial = copy.deepcopy(release)
    _cell(partial, "fx-n-removed").source = _cell(sol, "fx-n-removed").source
    for student, nb in zip(_students(), [sol, partial]):
        folder = root / "submitted" / student / AID
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{AID}.ipynb")
    return root


def _grade(root, *args):
    return subprocess.Popen([sys.executable, "-m", "course_lib.grading", "--root", str(root), "--skip-release",
                             "--no-feedback", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _all_scores(db_url):
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        out = {}
        for sub in gb.assignment_submissions(AID):
            out[sub.student.id] = {g.name: g.score for nb in sub.notebooks for g in nb.grades}
        return out


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory):
    """The reference: `make grade JOBS=2` into the course's SQLite gradebook."""
    tmp = tmp_path_factory.mktemp("sqlite")
    root = _course(tmp, "course")
    stamp = tmp / "installed"
    stamp.touch()  # this environment is installed already: skip make's install step
    proc = subprocess.run(["make", "-s", "grade", f"VENV={sys.prefix}", f"STAMP={stamp}", "JOBS=2",
                           f"GRADE_ARGS=--root {root} --skip-release --no-feedback"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _all_scores(grading._db_url(root))


def test_sqlite_reference_run_scores_as_expected(sqlite_run):
    solution, partial = _students()
    assert sqlite_run[solution] == {"fx-n-removed-tests": 1, "fx-my-mask-tests": 2, "fx-zero-fraction-tests": 1}
    assert sqlite_run[partial] == {"fx-n-removed-tests": 1, "fx-my-mask-tests": 0, "fx-zero-fraction-tests": 0}


def test_parallel_grading_into_postgresql_equals_sqlite(postgres, sqlite_run, tmp_path):
    url = postgres("parallel")
    root = _course(tmp_path, "course", url)
    proc = _grade(root, "--jobs", "2")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert _all_scores(url) == sqlite_run  # every test cell of every student


def test_two_concurrent_shards_into_one_postgresql_equal_one_run(postgres, sqlite_run, tmp_path):
    url = postgres("sharded")
    root = _course(tmp_path, "course", url)
    shards = [_grade(root, "--shard", f"{k}/2", "--jobs", "1") for k in (1, 2)]  # at the same time
    outs = [p.communicate(timeout=900)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outs
    for k, out in zip((1, 2), outs):  # each shard graded its own students only
        mine = {s for s in _students() if grading.in_shard(s, k, 2)}
        assert {s for s in _students() if f"{s}/{AID}:" in out} == mine
    assert _all_scores(url) == sqlite_run
    for k in (1, 2):  # one csv per shard, with exactly its students
        rows = (root / f"grades-{k}of2.csv").read_text().splitlines()[1:]
        assert sorted(r.split(",")[0] for r in rows) == sorted(s for s in _students() if grading.in_shard(s, k, 2))
    again = _grade(root, "--shard", "1/2")
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out
    assert _all_scores(url) == sqlite_run  # re-running a shard changes nothing, duplicates nothing
