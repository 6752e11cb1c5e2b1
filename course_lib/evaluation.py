"""Perplexity: the one yardstick every method in the course is judged by."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import SEQ_LEN, blocks, split_tokens


@torch.no_grad()
def token_losses(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood (nats), ``[batch, seq-1]`` float32.

    Entry ``[b, t]`` is ``-log p(input_ids[b, t+1] | input_ids[b, :t+1])``.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [batch, seq] with seq >= 2, got {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    logits = model(input_ids=input_ids).logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def perplexity(model, split: str = "eval", max_tokens: int | None = None,
               batch_size: int | None = None, tokens: torch.Tensor | None = None) -> float:
    """Exact token-weighted perplexity ``exp(sum NLL / n_predictions)`` over a split.

    The split's token stream is cut into blocks of 256 tokens; every block predicts its
    tokens after the first, and the NLL of all predictions is summed in float64, so the
    result does not depend on ``batch_size`` beyond float rounding. ``max_tokens`` keeps
    only the stream's first ``max_tokens`` tokens (fast estimates in sweeps); ``tokens``
    evaluates a given 1-D stream instead of a split. Works on CPU or CUDA (the model's
    device), in any dtype (the loss is computed in float32).
    """
    stream = split_tokens(split) if tokens is None else tokens
    if stream.dim() != 1:
        raise ValueError(f"tokens must be a 1-D stream of ids, got shape {tuple(stream.shape)}")
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        stream = stream[:max_tokens]
    batch_size = batch_size or 16
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    chunks = blocks(stream, SEQ_LEN)
    full = [c for c in chunks if len(c) == SEQ_LEN]
    rest = [c for c in chunks if len(c) != SEQ_LEN]
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
