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


def separator_id(tokenizer, separator) -> int:
    """A document separator given as a token string (``"<|endoftext|>"``) or an id -> its id."""
    vocab = len(tokenizer)
    if isinstance(separator, bool) or not isinstance(separator, (str, int)):
        raise TypeError(f"separator must be a token string or an int id, got {type(separator).__name__}")
    if isinstance(separator, int):
        if not 0 <= separator < vocab:
            raise ValueError(f"separator id {separator} is outside the vocabulary [0, {vocab})")
        return separator
    if separator not in tokenizer.get_vocab():
        raise ValueError(f"separator {separator!r} is not a single token of this tokenizer; give a token of "
                         "its vocabulary (e.g. its end-of-text token) or an id")
    return tokenizer.convert_tokens_to_ids(separator)


def encode_documents(docs: list[str], tokenizer, separator=None) -> torch.Tensor:
    """``[total_tokens]`` int64 of the documents, concatenated.

    ``separator=None``: every doc as bos + ids + eos (the course layout). A ``separator`` (token
    string or id) instead: ``sep doc_1 sep doc_2 ... doc_n sep``, the layout of pre-training
    streams (SmolLM2 and GPT-2 use ``<|endoftext|>``; there bos/eos may be chat markers).
    """
    if isinstance(docs, str) or not all(isinstance(d, str) for d in docs):
        raise TypeError("docs must be a list of strings (one per document)")
    if not docs:
        raise ValueError("docs is empty: give at least one document")
    ids = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    if separator is None:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        for doc in ids:
            stream.append(bos)
            stream.extend(doc)
            stream.append(eos)
    else:
        sep = separator_id(tokenizer, separator)
        stream.append(sep)
        for doc in ids:
            stream.extend(doc)
            stream.append(sep)
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
    *,
    tokens: torch.Tensor | None = None,
    documents: list[str] | None = None,
    tokenizer=None,
    separator=None,
) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` random batches ``{"input_ids": [batch_size, seq_len]}`` of one token stream.

    The stream is ``tokens`` (1-D ids) if given, else ``documents`` encoded with ``tokenizer``
    (and ``separator``, see :func:`encode_documents`), else the course corpus ``split``.
    Used for calibration (Wanda, SparseGPT), importance scores and fine-tuning. The
    same (stream, seed) always gives the same batches.
    """
    for name, value in (("n_batches", n_batches), ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if tokens is not None or documents is not None:
        if tokens is not None and documents is not None:
            raise ValueError("give tokens= or documents=, not both")
        if documents is not None:
            if tokenizer is None:
                raise ValueError("documents= needs tokenizer= (the model's own tokenizer)")
            tokens = encode_documents(documents, tokenizer, separator=separator)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D stream of ids, got {tuple(getattr(tokens, 'shape', ()))}")
        stream, source = tokens.long(), "the given stream"
    else:
        if tokenizer is not None or separator is not None:
            raise ValueError("tokenizer= and separator= apply to documents=; give documents=[...] too")
        if n_docs is None:
            # enough documents for the request (about 160 tokens per document), capped by the split
            need = n_batches * batch_size * seq_len
            n_docs = min(SPLIT_SIZES[split], max(64, 2 * need // 150))
        stream, source = split_tokens(split, n_docs), f"split {split!r}"
    if len(stream) <= seq_len:
        raise ValueError(f"{source} has only {len(stream)} tokens, need more than {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n_batches, batch_size), generator=gen)
    out = []
    for row in starts:
        ids = torch.stack([stream[s : s + seq_len] for s in row.tolist()])
        out.append({"input_ids": ids})
    return out
