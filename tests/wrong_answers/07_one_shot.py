"""Plausible wrong answers to 07's exercises, and correct answers written differently.

Each entry is the whole source of the solution cell (see tests/test_exercise_traps.py); wrong
variants are the correct answer with one plausible mistake patched in.
"""


def _patch(source: str, old: str, new: str) -> str:
    assert old in source, old
    return source.replace(old, new)


NORMS = '''def channel_norms(model, calib_batches, targets=None):
    linears = prunable_linears(model, targets)
    sum_sq = {name: torch.zeros(mod.in_features, dtype=torch.float64) for name, mod in linears.items()}
    state = {"keep": None}

    def make_hook(name):
        def hook(module, args, output):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1])
            if state["keep"] is not None:
                x = x[state["keep"].to(x.device)]
            sum_sq[name] += x.double().pow(2).sum(dim=0).cpu()
        return hook

    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in linears.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in calib_batches:
                mask = batch.get("attention_mask")
                state["keep"] = None if mask is None else mask.reshape(-1).bool()
                model(input_ids=batch["input_ids"].to(device),
                      attention_mask=None if mask is None else mask.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: s.sqrt().float() for name, s in sum_sq.items()}
'''

SCORES = '''def wanda_scores(weight, act_norm):
    if weight.dim() != 2:
        raise ValueError("weight must be 2-D")
    if act_norm.dim() != 1 or act_norm.shape[0] != weight.shape[1]:
        raise ValueError("act_norm must have shape [in]")
    return weight.detach().float().abs() * act_norm.detach().float().to(weight.device)[None, :]
'''

MASK = '''def wanda_mask(weight, act_norm, sparsity=None, n=None, m=None):
    if sparsity is not None and (n is not None or m is not None):
        raise ValueError("give either sparsity or n and m, not both")
    scores = wanda_scores(weight, act_norm)
    in_features = scores.shape[1]
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ValueError("sparsity must be in [0, 1)")
        group, keep = in_features, in_features - round(sparsity * in_features)
    else:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)) or not 0 < n < m:
            raise ValueError("need ints 0 < n < m")
        if in_features % m:
            raise ValueError("in_features is not divisible by m")
        group, keep = m, n
    groups = scores.reshape(-1, group)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    mask.scatter_(1, order[:, :keep], True)
    return mask.reshape(weight.shape)
'''

WRONG = {
    "07-channel-norms": {
        "hooks left in place": _patch(NORMS, "            handle.remove()\n", "            pass\n"),
        "padded tokens counted": _patch(NORMS, "            if state[\"keep\"] is not None:\n"
                                        "                x = x[state[\"keep\"].to(x.device)]\n", ""),
        "attention mask not passed to the model": _patch(
            NORMS, "model(input_ids=batch[\"input_ids\"].to(device),\n"
                   "                      attention_mask=None if mask is None else mask.to(device))",
            "model(input_ids=batch[\"input_ids\"].to(device))"),
        "per-batch norms summed": _patch(
            _patch(NORMS, "sum_sq[name] += x.double().pow(2).sum(dim=0).cpu()",
                   "sum_sq[name] += x.double().pow(2).sum(dim=0).sqrt().cpu()"),
            "return {name: s.sqrt().float()", "return {name: s.float()"),
        "root mean square instead of the norm": _patch(
            _patch(NORMS, "sum_sq[name] += x.double().pow(2).sum(dim=0).cpu()",
                   "sum_sq[name] += x.double().pow(2).mean(dim=0).cpu() / len(calib_batches)"),
            "return {name: s.sqrt().float()", "return {name: s.sqrt().float()"),
        "mode not restored": _patch(NORMS, "        model.train(was_training)\n", ""),
        "ignores targets": _patch(NORMS, "linears = prunable_linears(model, targets)",
                                  "linears = prunable_linears(model)"),
        "returns float64": _patch(NORMS, "return {name: s.sqrt().float()", "return {name: s.sqrt()"),
    },
    "07-wanda-scores": {
        "squares the norm": _patch(SCORES, "act_norm.detach().float()", "act_norm.detach().float().pow(2)"),
        "no absolute value": _patch(SCORES, "weight.detach().float().abs()", "weight.detach().float()"),
        "keeps the weight's dtype": _patch(SCORES, "weight.detach().float().abs() * act_norm.detach().float()",
                                           "weight.detach().abs() * act_norm.detach().to(weight.dtype)"),
        "norm along the output axis": _patch(SCORES, "[None, :]", "[:, None]"),
        "no shape check (broadcasts a [out, in] norm)": _patch(SCORES, '''    if act_norm.dim() != 1 or act_norm.shape[0] != weight.shape[1]:
        raise ValueError("act_norm must have shape [in]")
''', ""),
    },
    "07-wanda-mask": {
        "compares within the whole layer, not per row": _patch(
            MASK, "groups = scores.reshape(-1, group)",
            "groups = scores.reshape(1, -1) if group == in_features else scores.reshape(-1, group)").replace(
            "group, keep = in_features, in_features - round(sparsity * in_features)",
            "group, keep = in_features, (in_features - round(sparsity * in_features)) * scores.shape[0]"),
        "int() instead of round()": _patch(MASK, "round(sparsity * in_features)", "int(sparsity * in_features)"),
        "sparsity read as the fraction kept": _patch(MASK, "in_features - round(sparsity * in_features)",
                                                     "round(sparsity * in_features)"),
        "ties: keeps the higher index": _patch(
            MASK, "order = torch.sort(groups, dim=1, descending=True, stable=True).indices",
            "order = torch.sort(groups, dim=1, stable=True).indices.flip(1)"),
        "ignores n and m (always per row, 1 - n/m)": _patch(
            MASK, "group, keep = m, n", "group, keep = in_features, in_features * n // m"),
        "both patterns given: sparsity wins": _patch(MASK, '''    if sparsity is not None and (n is not None or m is not None):
        raise ValueError("give either sparsity or n and m, not both")
''', ""),
    },
}

RIGHT = {
    "07-channel-norms": {
        "masked multiply, float32 sums": '''def channel_norms(model, calib_batches, targets=None):
    lins = prunable_linears(model, targets)
    acc = {k: torch.zeros(v.in_features) for k, v in lins.items()}
    cur = {}

    def hook_for(k):
        def hook(mod, inp, out):
            x = inp[0].float()
            if cur.get("m") is not None:
                x = x * cur["m"][..., None]
            acc[k] += (x * x).sum(dim=tuple(range(x.dim() - 1)))
        return hook

    mode = model.training
    hs = []
    try:
        for k, v in lins.items():
            hs.append(v.register_forward_hook(hook_for(k)))
        model.eval()
        with torch.no_grad():
            for b in calib_batches:
                am = b.get("attention_mask")
                cur["m"] = None if am is None else am.float()
                model(input_ids=b["input_ids"], attention_mask=am)
    finally:
        for h in hs:
            h.remove()
        model.train(mode)
    return {k: v.sqrt() for k, v in acc.items()}
''',
    },
    "07-wanda-scores": {
        "abs of the float32 product": '''def wanda_scores(weight, act_norm):
    if weight.ndim != 2 or tuple(act_norm.shape) != (weight.shape[1],):
        raise ValueError("need weight [out, in] and act_norm [in]")
    return (weight.to(torch.float32) * act_norm.to(torch.float32)).abs()
''',
    },
    "07-wanda-mask": {
        "rank of each score within its group": '''def wanda_mask(weight, act_norm, sparsity=None, n=None, m=None):
    if (sparsity is None) == (n is None and m is None):
        raise ValueError("exactly one pattern")
    s = wanda_scores(weight, act_norm)
    cols = s.shape[1]
    if sparsity is not None:
        if not (0 <= sparsity < 1):
            raise ValueError("sparsity out of range")
        size, keep = cols, cols - round(sparsity * cols)
    else:
        if type(n) is not int or type(m) is not int or not (0 < n < m) or cols % m:
            raise ValueError("bad n, m")
        size, keep = m, n
    g = s.reshape(-1, size)
    rank = g.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    return (rank < keep).reshape(weight.shape)
''',
    },
}
