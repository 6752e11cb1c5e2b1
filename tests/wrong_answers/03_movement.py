"""Plausible wrong answers to 03's exercises, and correct answers written differently."""

WRONG = {
    "03-movement-update": {
        "float16 product": '''def movement_update(scores, weight, grad):
    return scores.float() - (weight * grad).float()
''',
        "in place": '''def movement_update(scores, weight, grad):
    scores -= weight.float() * grad.float()
    return scores
''',
        "aliasing .float() view": '''def movement_update(scores, weight, grad):
    out = scores.float()  # the same tensor when scores is already float32
    out -= weight.float() * grad.float()
    return out
''',
        "wrong sign": '''def movement_update(scores, weight, grad):
    return scores.float() + weight.float() * grad.float()
''',
        "input dtype kept": '''def movement_update(scores, weight, grad):
    return scores - weight * grad
''',
        "gradient magnitude": '''def movement_update(scores, weight, grad):
    return scores.float() + (weight.float() * grad.float()).abs()
''',
    },
    "03-cubic-schedule": {
        "linear ramp": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if not 0 <= step <= total_steps or warmup_steps + cooldown_steps > total_steps:
        raise ValueError("out of range")
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= total_steps - cooldown_steps:
        return float(final_sparsity)
    p = (step - warmup_steps) / (total_steps - warmup_steps - cooldown_steps)
    return initial_sparsity + (final_sparsity - initial_sparsity) * p
''',
        "division before the branches": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if not 0 <= step <= total_steps or warmup_steps + cooldown_steps > total_steps:
        raise ValueError("out of range")
    p = (step - warmup_steps) / (total_steps - warmup_steps - cooldown_steps)
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= total_steps - cooldown_steps:
        return float(final_sparsity)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - p) ** 3
''',
        "cooldown left out of the ramp's length": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if not 0 <= step <= total_steps or warmup_steps + cooldown_steps > total_steps:
        raise ValueError("out of range")
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= total_steps - cooldown_steps:
        return float(final_sparsity)
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - p) ** 3
''',
        "initial sparsity ignored in the ramp": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if not 0 <= step <= total_steps or warmup_steps + cooldown_steps > total_steps:
        raise ValueError("out of range")
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= total_steps - cooldown_steps:
        return float(final_sparsity)
    p = (step - warmup_steps) / (total_steps - warmup_steps - cooldown_steps)
    return final_sparsity * (1 - (1 - p) ** 3)
''',
        "no range checks": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= total_steps - cooldown_steps:
        return float(final_sparsity)
    p = (step - warmup_steps) / (total_steps - warmup_steps - cooldown_steps)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - p) ** 3
''',
        "warmup + cooldown not checked": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if not 0 <= step <= total_steps:
        raise ValueError("step out of range")
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= total_steps - cooldown_steps:
        return float(final_sparsity)
    p = (step - warmup_steps) / (total_steps - warmup_steps - cooldown_steps)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - p) ** 3
''',
    },
    "03-topk-mask": {
        "quantile threshold": '''def topk_keep_mask(scores, n_remove):
    return scores > torch.quantile(scores.float(), n_remove / scores.numel())
''',
        "descending sort, ties the wrong way": '''def topk_keep_mask(scores, n_remove):
    flat = scores.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:flat.numel() - n_remove]] = True
    return keep.reshape(scores.shape)
''',
        "per row (wrong axis)": '''def topk_keep_mask(scores, n_remove):
    rows = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    k = n_remove // rows.shape[0]
    order = torch.sort(rows, dim=1, stable=True).indices
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep.scatter_(1, order[:, :k], False)
    return keep.reshape(scores.shape)
''',
        "column-major ties": '''def topk_keep_mask(scores, n_remove):
    t = scores.t() if scores.dim() == 2 else scores
    order = torch.sort(t.reshape(-1), stable=True).indices
    keep = torch.ones(t.numel(), dtype=torch.bool)
    keep[order[:n_remove]] = False
    keep = keep.reshape(t.shape)
    return keep.t() if scores.dim() == 2 else keep
''',
        "kthvalue threshold": '''def topk_keep_mask(scores, n_remove):
    if n_remove == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores > scores.reshape(-1).kthvalue(n_remove).values
''',
        "float mask": '''def topk_keep_mask(scores, n_remove):
    flat = scores.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel())
    keep[order[:n_remove]] = 0
    return keep.reshape(scores.shape)
''',
    },
}

RIGHT = {
    "03-movement-update": {
        "addcmul": '''def movement_update(scores, weight, grad):
    return torch.addcmul(scores.to(torch.float32), weight.to(torch.float32), grad.to(torch.float32), value=-1.0)
''',
    },
    "03-cubic-schedule": {
        "1 - (1 - p)^3 form": '''def cubic_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
    if step < 0 or step > total_steps:
        raise ValueError("step out of range")
    if warmup_steps + cooldown_steps > total_steps:
        raise ValueError("warmup + cooldown too long")
    ramp = total_steps - warmup_steps - cooldown_steps
    if step < warmup_steps:
        return float(initial_sparsity)
    if step >= warmup_steps + ramp:
        return float(final_sparsity)
    p = (step - warmup_steps) / ramp
    return initial_sparsity + (final_sparsity - initial_sparsity) * (1.0 - (1.0 - p) ** 3)
''',
    },
    "03-topk-mask": {
        "argsort + scatter": '''def topk_keep_mask(scores, n_remove):
    flat = scores.flatten()
    drop = torch.argsort(flat, stable=True)[:n_remove]
    return torch.ones_like(flat, dtype=torch.bool).scatter(0, drop, False).view(scores.shape)
''',
    },
}
