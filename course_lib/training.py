"""Training loops: the course model's pre-training and the short (masked) fine-tuning
that the notebooks use to let a pruned model recover."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from torch import nn

from .data import SEQ_LEN, batches


def cosine_lr(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _check_masks(model: nn.Module, masks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``{module_name: bool mask}`` -> [(weight, mask)], validated."""
    if masks is None:
        return []
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict {{module_name: bool tensor}}, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    pairs = []
    for name, mask in masks.items():
        if name not in modules or not isinstance(getattr(modules[name], "weight", None), torch.Tensor):
            raise ValueError(f"mask for {name!r}: the model has no module with a weight of that name")
        weight = modules[name].weight
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask for {name!r} must be a bool tensor (True = keep)")
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        pairs.append((weight, mask.to(weight.device)))
    return pairs


def train(
    model: nn.Module,
    batch_iter: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    warmup: int = 0,
    min_lr_ratio: float = 1.0,
    weight_decay: float = 0.0,
    masks: dict[str, torch.Tensor] | None = None,
    grad_clip: float | None = 1.0,
    progress: bool = True,
    desc: str = "train",
    on_step=None,
) -> list[float]:
    """AdamW on next-token loss for ``steps`` batches; returns the loss of every step.

    With ``masks`` the masked-out weights are zero before the first step and are set
    back to exactly zero after every optimizer step, so a pruned model stays pruned.
    ``on_step(step, loss)`` is called after each step (for logging, checkpoints).
    """
    from tqdm.auto import tqdm

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    pairs = _check_masks(model, masks)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    with torch.no_grad():
        for w, m in pairs:
            w.mul_(m)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        batch = next(batch_iter)
        ids = batch["input_ids"].to(device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup, min_lr_ratio)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if pairs:
            for w, m in pairs:
                if w.grad is not None:
                    w.grad.mul_(m)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if pairs:
            with torch.no_grad():
                for w, m in pairs:
                    w.mul_(m)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return losses


def finetune(
    model: nn.Module,
    steps: int,
    lr: float,
    masks: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    seq_len: int = SEQ_LEN,
    progress: bool = True,
) -> list[float]:
    """Short fine-tuning on the train split (constant lr after 10 % warm-up).

    ``masks`` (``{module_name: bool tensor}``, True = keep) keeps pruned weights
    exactly zero throughout. Deterministic for a given ``seed`` on a given machine.
    Returns the per-step losses.
    """
    torch.manual_seed(seed)
    data = batches("train", n_batches=max(steps, 1), batch_size=batch_size, seq_len=seq_len, seed=seed + 1)
    return train(model, iter(data), steps, lr, warmup=max(1, steps // 10), masks=masks,
                 progress=progress, desc="finetune")


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
