"""Plausible wrong answers to 05's exercises, and correct answers written differently.

Each entry is the whole source of the solution cell (see tests/test_exercise_traps.py); wrong
variants are the correct answer with one plausible mistake patched in.
"""


def _patch(source: str, old: str, new: str) -> str:
    assert old in source, old
    return source.replace(old, new)


REMOVE = '''def remove_channels(gate, up, down, channels):
    n_channels, hidden = gate.shape
    if up.shape != gate.shape or down.shape != (hidden, n_channels):
        raise ValueError("shapes do not fit a SwiGLU MLP")
    channels = [int(c) for c in channels]
    bad = [c for c in channels if not 0 <= c < n_channels]
    if bad:
        raise ValueError(f"channel indices {bad} out of range")
    if len(set(channels)) != len(channels):
        raise ValueError("duplicate channel indices")
    if len(channels) == n_channels:
        raise ValueError("cannot remove every channel of the MLP")
    keep = torch.ones(n_channels, dtype=torch.bool)
    keep[channels] = False
    kept = keep.nonzero().squeeze(1).to(gate.device)
    return gate[kept].clone(), up[kept].clone(), down[:, kept].clone()
'''

SCORES = '''def activation_scores(acts):
    acts = list(acts)
    if not acts:
        raise ValueError("acts is empty")
    total = sum(a.detach().double().abs().reshape(-1, a.shape[-1]).sum(dim=0) for a in acts)
    count = sum(a.numel() // a.shape[-1] for a in acts)
    return (total / count).float()


def taylor_scores(acts, grads):
    acts, grads = list(acts), list(grads)
    if not acts:
        raise ValueError("acts is empty")
    if len(acts) != len(grads):
        raise ValueError("lists differ in length")
    total = 0
    for a, g in zip(acts, grads):
        if a.shape != g.shape:
            raise ValueError("shapes differ")
        per_batch = (a.detach().double() * g.detach().double()).reshape(-1, a.shape[-1]).sum(dim=0)
        total = total + per_batch.abs()
    return total.float()
'''

WRONG = {
    "05-remove-channels": {
        "keeps the listed channels instead of removing them": _patch(
            REMOVE, "return gate[kept].clone(), up[kept].clone(), down[:, kept].clone()",
            "idx = torch.tensor(channels, dtype=torch.long)\n    return gate[idx].clone(), up[idx].clone(), down[:, idx].clone()"),
        "cuts columns of gate/up and rows of down (wrong axis)": _patch(
            _patch(REMOVE, "if up.shape != gate.shape or down.shape != (hidden, n_channels):",
                   "if False:"),
            "return gate[kept].clone(), up[kept].clone(), down[:, kept].clone()",
            "return gate[:, kept].clone(), up[:, kept].clone(), down[kept].clone()"),
        "negative indices wrap around": _patch(REMOVE, "if not 0 <= c < n_channels]", "if not -n_channels <= c < n_channels]"),
        "duplicates silently ignored": _patch(REMOVE, '''    if len(set(channels)) != len(channels):
        raise ValueError("duplicate channel indices")
''', ""),
        "casts to float32": _patch(REMOVE, "return gate[kept].clone(), up[kept].clone(), down[:, kept].clone()",
                                   "return gate[kept].float(), up[kept].float(), down[:, kept].float()"),
        "sorts the caller's list in place": _patch(REMOVE, "    channels = [int(c) for c in channels]\n",
                                                   "    channels.sort()\n"),
        "an empty list of channels (float index tensor)": _patch(
            REMOVE, "keep[channels] = False", "keep[torch.tensor(channels)] = False"),
    },
    "05-channel-scores": {
        "Taylor: |a g| per token": _patch(SCORES, "(a.detach().double() * g.detach().double()).reshape",
                                          "(a.detach().double() * g.detach().double()).abs().reshape"),
        "Taylor: |.| once, after summing the batches": _patch(
            _patch(SCORES, "total = total + per_batch.abs()", "total = total + per_batch"),
            "return total.float()", "return total.abs().float()"),
        "activation: mean of the per-batch means": _patch(
            SCORES, '''    total = sum(a.detach().double().abs().reshape(-1, a.shape[-1]).sum(dim=0) for a in acts)
    count = sum(a.numel() // a.shape[-1] for a in acts)
    return (total / count).float()''',
            '''    means = [a.detach().double().abs().reshape(-1, a.shape[-1]).mean(dim=0) for a in acts]
    return (sum(means) / len(means)).float()'''),
        "returns float64": _patch(SCORES, "return (total / count).float()", "return total / count"),
        "no check that the lists match (zip truncates)": _patch(SCORES, '''    if len(acts) != len(grads):
        raise ValueError("lists differ in length")
''', ""),
        "an empty list divides by zero": _patch(SCORES, '''    acts = list(acts)
    if not acts:
        raise ValueError("acts is empty")
''', ""),
    },
}

RIGHT = {
    "05-remove-channels": {
        "index_select with a list of kept indices": '''def remove_channels(gate, up, down, channels):
    I, H = gate.shape
    if tuple(up.shape) != (I, H) or tuple(down.shape) != (H, I):
        raise ValueError("shapes do not fit")
    drop = set()
    for c in channels:
        c = int(c)
        if c < 0 or c >= I or c in drop:
            raise ValueError(f"bad channel {c}")
        drop.add(c)
    keep = [j for j in range(I) if j not in drop]
    if not keep:
        raise ValueError("nothing left")
    idx = torch.tensor(keep, dtype=torch.long, device=gate.device)
    return gate.index_select(0, idx), up.index_select(0, idx), down.index_select(1, idx)
''',
    },
    "05-channel-scores": {
        "einsum and torch.cat": '''def activation_scores(acts):
    if len(acts) == 0:
        raise ValueError("empty")
    flat = torch.cat([a.double().reshape(-1, a.shape[-1]) for a in acts])
    return flat.abs().mean(0).to(torch.float32)


def taylor_scores(acts, grads):
    if len(acts) == 0 or len(acts) != len(grads) or any(a.shape != g.shape for a, g in zip(acts, grads)):
        raise ValueError("bad input")
    out = torch.zeros(acts[0].shape[-1], dtype=torch.float64)
    for a, g in zip(acts, grads):
        out += torch.einsum("btj,btj->j", a.double(), g.double()).abs()
    return out.to(torch.float32)
''',
    },
}
