"""Token streams and batches of the course corpus.

A split is tokenised document by document as ``<s> doc </s>`` and concatenated into one
stream of token ids; fixed-length blocks of that stream are what the model sees.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .corpus import SPLIT_SIZES, SPLITS, generate_split

SEQ_LEN = 256  # block length used for training and evaluation


@lru_cache(maxsize=1)
def course_tokenizer():
    from transformers import AutoTokenizer

    from .paths import course_model_dir

    return AutoTokenizer.from_pretrained(str(course_model_dir()))


def encode_documents(docs: list[str], tokenizer) -> torch.Tensor:
    """``[total_tokens]`` int64: every doc as bos + ids + eos, concatenated."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    for doc in ids:
        stream.append(bos)
        stream.extend(doc)
        stream.append(eos)
    return torch.tensor(stream, dtype=torch.long)


@lru_cache(maxsize=8)
def _split_stream(split: str, n_docs: int) -> torch.Tensor:
    return encode_documents(generate_split(split, n_docs), course_tokenizer())


def split_tokens(split: str = "eval", n_docs: int | None = None) -> torch.Tensor:
    """The token stream of a split of the course corpus, ``[total_tokens]``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    n_docs = SPLIT_SIZES[split] if n_docs is None else n_docs
    if n_docs <= 0:
        raise ValueError(f"n_docs must be positive, got {n_docs}")
    return _split_stream(split, n_docs)


def blocks(stream: torch.Tensor, seq_len: int = SEQ_LEN) -> list[torch.Tensor]:
    """Cut a stream into consecutive blocks of ``seq_len`` (the last may be shorter).

    Every token of the stream appears in exactly one block; a block of length L gives
    L - 1 next-token predictions.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    return [stream[i : i + seq_len] for i in range(0, len(stream), seq_len) if len(stream) - i >= 2]


def batches(
    split: str = "train",
    n_batches: int = 8,
    batch_size: int = 8,
    seq_len: int = SEQ_LEN,
    seed: int = 0,
    n_docs: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` random batches ``{"input_ids": [batch_size, seq_len]}`` from a split.

    Used for calibration (Wanda, SparseGPT), importance scores and fine-tuning. The
    same (split, seed) always gives the same batches.
    """
    for name, value in (("n_batches", n_batches), ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_docs is None:
        # enough documents for the request (about 160 tokens per document), capped by the split
        need = n_batches * batch_size * seq_len
        n_docs = min(SPLIT_SIZES[split], max(64, 2 * need // 150))
    stream = split_tokens(split, n_docs)
    if len(stream) <= seq_len:
        raise ValueError(f"split {split!r} has only {len(stream)} tokens, need more than {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n_batches, batch_size), generator=gen)
    out = []
    for row in starts:
        ids = torch.stack([stream[s : s + seq_len] for s in row.tolist()])
        out.append({"input_ids": ids})
    return out
