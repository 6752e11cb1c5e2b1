"""Perplexity: the one yardstick every method in the course is judged by.

By default it scores the course corpus in the course tokenizer's ids. Any other model and
text go through ``documents=`` + ``tokenizer=`` (+ ``separator=``, ``seq_len=``) or a ready
stream ``tokens=``; a model whose vocabulary is not the course tokenizer's is refused
without them, since course ids would mean nothing to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import SEQ_LEN, blocks, course_tokenizer, encode_documents, split_tokens

# Above this many logits ([batch, seq-1, vocab] entries; 2^24 = 64 MiB in float32) the loss is
# computed on chunks of positions from the final hidden states, never on the full logits tensor.
MAX_LOGITS = 1 << 24


def _chunked_losses(model, input_ids: torch.Tensor, max_logits: int) -> torch.Tensor:
    """``token_losses`` without the full logits: lm_head + cross-entropy over chunks of positions."""
    head = model.get_output_embeddings()
    if head is None or getattr(model.config, "final_logit_softcapping", None) or hasattr(model, "logit_scale"):
        raise ValueError(f"{type(model).__name__}: chunked loss needs a plain lm_head (no logit softcapping "
                         "or scaling); raise max_logits")
    hidden = model.model(input_ids=input_ids).last_hidden_state  # [B, T, hidden]
    n_batch, n_pos = input_ids.shape[0], input_ids.shape[1] - 1
    step = max(1, max_logits // (n_batch * head.out_features))
    out = []
    for t0 in range(0, n_pos, step):
        t1 = min(t0 + step, n_pos)
        logits = head(hidden[:, t0:t1]).float()  # [B, t1-t0, V]
        targets = input_ids[:, t0 + 1:t1 + 1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        out.append(nll.view(targets.shape))
    return torch.cat(out, dim=1)


@torch.no_grad()
def token_losses(model, input_ids: torch.Tensor, max_logits: int = MAX_LOGITS) -> torch.Tensor:
    """Per-token negative log-likelihood (nats), ``[batch, seq-1]`` float32.

    Entry ``[b, t]`` is ``-log p(input_ids[b, t+1] | input_ids[b, :t+1])``. When the logits
    would exceed ``max_logits`` entries (e.g. batch 16 x 2048 x 49k vocabulary: 6.4 GB in
    float32), they are computed chunk by chunk of positions (same values up to float rounding).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [batch, seq] with seq >= 2, got {tuple(input_ids.shape)}")
    if not isinstance(max_logits, int) or max_logits <= 0:
        raise ValueError(f"max_logits must be a positive int, got {max_logits!r}")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    vocab = model.get_input_embeddings().num_embeddings
    if input_ids.shape[0] * (input_ids.shape[1] - 1) * vocab > max_logits:
        return _chunked_losses(model, input_ids, max_logits)
    logits = model(input_ids=input_ids).logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def _check_course_vocab(model) -> None:
    vocab = model.get_input_embeddings().num_embeddings
    course = len(course_tokenizer())
    if vocab != course:
        raise ValueError(
            f"this model has a vocabulary of {vocab} tokens, the course tokenizer {course}: scoring the "
            "course corpus in course ids would be meaningless. Pass documents=[...] with tokenizer=<the "
            "model's tokenizer> (and separator=..., seq_len=...), or a stream tokens=<ids in its vocabulary>")


def perplexity(model, split: str = "eval", max_tokens: int | None = None,
               batch_size: int | None = None, tokens: torch.Tensor | None = None, *,
               documents: list[str] | None = None, tokenizer=None, separator=None,
               seq_len: int = SEQ_LEN) -> float:
    """Exact token-weighted perplexity ``exp(sum NLL / n_predictions)`` over a token stream.

    The stream is one of (in this order of precedence):

    * ``tokens``: a given 1-D stream of ids;
    * ``documents`` (list of str) encoded with ``tokenizer`` (the model's own) by
      :func:`course_lib.data.encode_documents`, each document followed by ``separator`` (e.g.
      ``"<|endoftext|>"``; ``None``: the course layout ``bos doc eos``);
    * the course corpus ``split`` (only for a model with the course tokenizer's vocabulary).

    It is cut into blocks of ``seq_len`` tokens (the course uses 256, the LLM papers 2048);
    every block predicts its tokens after the first, and the NLL of all predictions is summed
    in float64, so the result does not depend on ``batch_size`` beyond float rounding.
    ``max_tokens`` keeps only the stream's first ``max_tokens`` tokens. Works on CPU or CUDA
    (the model's device), in any dtype (the loss is computed in float32).
    """
    if tokens is not None:
        stream = tokens
    elif documents is not None:
        if tokenizer is None:
            raise ValueError("documents= needs tokenizer= (the model's own tokenizer)")
        stream = encode_documents(documents, tokenizer, separator=separator)
    else:
        if tokenizer is not None or separator is not None:
            raise ValueError("tokenizer= and separator= apply to documents=; give documents=[...] too")
        stream = split_tokens(split)  # validates the split first
        _check_course_vocab(model)
    if not isinstance(stream, torch.Tensor) or stream.dim() != 1:
        raise ValueError(f"tokens must be a 1-D stream of ids, got shape {tuple(getattr(stream, 'shape', ()))}")
    vocab = model.get_input_embeddings().num_embeddings
    if len(stream) and (int(stream.min()) < 0 or int(stream.max()) >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}) (the model's vocabulary), got "
                         f"{int(stream.min())}..{int(stream.max())}: was the text encoded with another tokenizer?")
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        stream = stream[:max_tokens]
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    batch_size = batch_size or 16
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    chunks = blocks(stream, seq_len)
    full = [c for c in chunks if len(c) == seq_len]
    rest = [c for c in chunks if len(c) != seq_len]
    total_nll, total_n = 0.0, 0
    try:
        for i in range(0, len(full), batch_size):
            nll = token_losses(model, torch.stack(full[i : i + batch_size]))
            total_nll += nll.double().sum().item()
            total_n += nll.numel()
        for c in rest:
            nll = token_losses(model, c[None])
            total_nll += nll.double().sum().item()
            total_n += nll.numel()
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_n)


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on ``test`` of a unigram model fitted on ``train`` (add-one smoothing).

    Like the model, it predicts every token of ``test`` after the first.
    """
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[test[1:]].mean().item())
