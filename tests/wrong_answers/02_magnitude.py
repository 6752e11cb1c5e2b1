"""Plausible wrong answers to 02's exercises, and correct answers written differently.

Each entry is the whole source of the solution cell (see tests/test_exercise_traps.py).
"""

_MASK_HEAD = "def magnitude_mask(weight, sparsity):\n"
_CHECK = ("    if not 0 <= sparsity < 1:\n"
          "        raise ValueError(sparsity)\n")
_SORTED = ("    scores = weight.detach().abs().float().reshape(-1)\n"
           "    order = torch.sort(scores, stable=True).indices\n"
           "    keep = torch.ones(scores.numel(), dtype=torch.bool)\n"
           "    keep[order[:n_remove]] = False\n"
           "    return keep.reshape(weight.shape)\n")

WRONG = {
    "02-magnitude-mask": {
        "counts by truncation": _MASK_HEAD + _CHECK + "    n_remove = int(sparsity * weight.numel())\n" + _SORTED,
        "rounds half up": "import math\n\n" + _MASK_HEAD + _CHECK + "    n_remove = math.floor(sparsity * weight.numel() + 0.5)\n" + _SORTED,
        "unstable sort (ties in arbitrary order)": _MASK_HEAD + _CHECK + (
            "    n_remove = round(sparsity * weight.numel())\n"
            "    scores = weight.detach().abs().float().reshape(-1)\n"
            "    order = torch.argsort(scores)\n"
            "    keep = torch.ones(scores.numel(), dtype=torch.bool)\n"
            "    keep[order[:n_remove]] = False\n"
            "    return keep.reshape(weight.shape)\n"),
        "the chapter's quantile threshold": _MASK_HEAD + _CHECK + (
            "    return weight.abs() > torch.quantile(weight.abs(), sparsity)\n"),
        "kthvalue threshold, every tie removed": _MASK_HEAD + _CHECK + (
            "    n_remove = round(sparsity * weight.numel())\n"
            "    scores = weight.detach().abs().float()\n"
            "    if n_remove == 0:\n"
            "        return torch.ones_like(scores, dtype=torch.bool)\n"
            "    return scores > torch.kthvalue(scores.reshape(-1), n_remove).values\n"),
        "ranks signed values": _MASK_HEAD + _CHECK + (
            "    n_remove = round(sparsity * weight.numel())\n"
            "    scores = weight.detach().float().reshape(-1)\n"
            "    order = torch.sort(scores, stable=True).indices\n"
            "    keep = torch.ones(scores.numel(), dtype=torch.bool)\n"
            "    keep[order[:n_remove]] = False\n"
            "    return keep.reshape(weight.shape)\n"),
        "abs_() modifies the weight": _MASK_HEAD + _CHECK + (
            "    n_remove = round(sparsity * weight.numel())\n"
            "    scores = weight.detach().abs_().float().reshape(-1)\n"
            "    order = torch.sort(scores, stable=True).indices\n"
            "    keep = torch.ones(scores.numel(), dtype=torch.bool)\n"
            "    keep[order[:n_remove]] = False\n"
            "    return keep.reshape(weight.shape)\n"),
        "view(-1) refuses a transposed weight": _MASK_HEAD + _CHECK + (
            "    n_remove = round(sparsity * weight.numel())\n"
            "    scores = weight.detach().abs().float().view(-1)\n"
            "    order = torch.sort(scores, stable=True).indices\n"
            "    keep = torch.ones(scores.numel(), dtype=torch.bool)\n"
            "    keep[order[:n_remove]] = False\n"
            "    return keep.view(weight.shape)\n"),
        "no ValueError for sparsity 1": _MASK_HEAD + "    n_remove = round(sparsity * weight.numel())\n" + _SORTED,
    },
    "02-global-masks": {
        "per-layer masks (scope='layer')": (
            "def global_magnitude_masks(model, sparsity, targets=None):\n"
            "    return {name: magnitude_mask(lin.weight, sparsity)\n"
            "            for name, lin in prunable_linears(model, targets).items()}\n"),
        "ignores targets": (
            "def global_magnitude_masks(model, sparsity, targets=None):\n"
            "    linears = prunable_linears(model)\n"
            "    flat = torch.cat([lin.weight.detach().reshape(-1) for lin in linears.values()])\n"
            "    keep = magnitude_mask(flat, sparsity)\n"
            "    masks, start = {}, 0\n"
            "    for name, lin in linears.items():\n"
            "        masks[name] = keep[start:start + lin.weight.numel()].reshape(lin.weight.shape)\n"
            "        start += lin.weight.numel()\n"
            "    return masks\n"),
        "prunes the model while at it": (
            "def global_magnitude_masks(model, sparsity, targets=None):\n"
            "    linears = prunable_linears(model, targets)\n"
            "    flat = torch.cat([lin.weight.detach().reshape(-1) for lin in linears.values()])\n"
            "    keep = magnitude_mask(flat, sparsity)\n"
            "    masks, start = {}, 0\n"
            "    for name, lin in linears.items():\n"
            "        masks[name] = keep[start:start + lin.weight.numel()].reshape(lin.weight.shape)\n"
            "        start += lin.weight.numel()\n"
            "        with torch.no_grad():\n"
            "            lin.weight.mul_(masks[name])\n"
            "    return masks\n"),
        "one threshold, every tie removed": (
            "def global_magnitude_masks(model, sparsity, targets=None):\n"
            "    linears = prunable_linears(model, targets)\n"
            "    flat = torch.cat([lin.weight.detach().abs().float().reshape(-1) for lin in linears.values()])\n"
            "    threshold = torch.kthvalue(flat, round(sparsity * flat.numel())).values\n"
            "    return {name: lin.weight.detach().abs().float() > threshold for name, lin in linears.items()}\n"),
        "concatenates in name order": (
            "def global_magnitude_masks(model, sparsity, targets=None):\n"
            "    linears = dict(sorted(prunable_linears(model, targets).items()))\n"
            "    flat = torch.cat([lin.weight.detach().reshape(-1) for lin in linears.values()])\n"
            "    keep = magnitude_mask(flat, sparsity)\n"
            "    masks, start = {}, 0\n"
            "    for name, lin in linears.items():\n"
            "        masks[name] = keep[start:start + lin.weight.numel()].reshape(lin.weight.shape)\n"
            "        start += lin.weight.numel()\n"
            "    return masks\n"),
    },
    "02-sensitivity-scan": {
        "never restores (prunes cumulatively)": (
            "def sensitivity_scan(model, sparsity, max_tokens=8192):\n"
            "    results = {}\n"
            "    for name, linear in prunable_linears(model).items():\n"
            "        with torch.no_grad():\n"
            "            linear.weight.mul_(magnitude_mask(linear.weight, sparsity))\n"
            "        results[(int(name.split('.')[2]), name.split('.')[-1])] = course_lib.perplexity(model, max_tokens=max_tokens)\n"
            "    return results\n"),
        "restores from an alias (no clone)": (
            "def sensitivity_scan(model, sparsity, max_tokens=8192):\n"
            "    results = {}\n"
            "    for name, linear in prunable_linears(model).items():\n"
            "        saved = linear.weight.data\n"
            "        with torch.no_grad():\n"
            "            linear.weight.mul_(magnitude_mask(linear.weight, sparsity))\n"
            "        results[(int(name.split('.')[2]), name.split('.')[-1])] = course_lib.perplexity(model, max_tokens=max_tokens)\n"
            "        with torch.no_grad():\n"
            "            linear.weight.copy_(saved)\n"
            "    return results\n"),
        "hard-codes 70 %": (
            "def sensitivity_scan(model, sparsity, max_tokens=8192):\n"
            "    results = {}\n"
            "    for name, linear in prunable_linears(model).items():\n"
            "        m = copy.deepcopy(model)\n"
            "        mag.magnitude_prune(m, 0.7, targets=[name])\n"
            "        results[(int(name.split('.')[2]), name.split('.')[-1])] = course_lib.perplexity(m, max_tokens=max_tokens)\n"
            "    return results\n"),
        "ignores max_tokens": (
            "def sensitivity_scan(model, sparsity, max_tokens=8192):\n"
            "    results = {}\n"
            "    for name, linear in prunable_linears(model).items():\n"
            "        m = copy.deepcopy(model)\n"
            "        mag.magnitude_prune(m, sparsity, targets=[name])\n"
            "        results[(int(name.split('.')[2]), name.split('.')[-1])] = course_lib.perplexity(m, max_tokens=8192)\n"
            "    return results\n"),
        "prunes the whole layer per entry": (
            "def sensitivity_scan(model, sparsity, max_tokens=8192):\n"
            "    results = {}\n"
            "    for name in prunable_linears(model):\n"
            "        layer = int(name.split('.')[2])\n"
            "        m = copy.deepcopy(model)\n"
            "        mag.magnitude_prune(m, sparsity, targets=[n for n in prunable_linears(m) if n.split('.')[2] == str(layer)])\n"
            "        results[(layer, name.split('.')[-1])] = course_lib.perplexity(m, max_tokens=max_tokens)\n"
            "    return results\n"),
    },
}

RIGHT = {
    "02-magnitude-mask": {
        "kthvalue plus a count of ties": (
            "def magnitude_mask(weight, sparsity):\n"
            "    if not 0 <= sparsity < 1:\n"
            "        raise ValueError(f'sparsity {sparsity} not in [0, 1)')\n"
            "    flat = weight.detach().abs().float().flatten()\n"
            "    n = round(sparsity * flat.numel())\n"
            "    if n == 0:\n"
            "        return torch.ones(weight.shape, dtype=torch.bool)\n"
            "    t = torch.kthvalue(flat, n).values\n"
            "    below, at = flat < t, flat == t\n"
            "    removed = below | (at & (at.long().cumsum(0) <= n - int(below.sum())))\n"
            "    return (~removed).reshape(weight.shape)\n"),
    },
    "02-global-masks": {
        "own stable argsort over the concatenation": (
            "def global_magnitude_masks(model, sparsity, targets=None):\n"
            "    linears = prunable_linears(model, targets)\n"
            "    sizes = [lin.weight.numel() for lin in linears.values()]\n"
            "    flat = torch.cat([lin.weight.detach().abs().float().flatten() for lin in linears.values()])\n"
            "    keep = torch.ones(flat.numel(), dtype=torch.bool)\n"
            "    keep[torch.argsort(flat, stable=True)[:round(sparsity * flat.numel())]] = False\n"
            "    return {name: part.reshape(lin.weight.shape)\n"
            "            for (name, lin), part in zip(linears.items(), keep.split(sizes))}\n"),
    },
    "02-sensitivity-scan": {
        "prunes a copy per entry with course_lib": (
            "def sensitivity_scan(model, sparsity, max_tokens=8192):\n"
            "    results = {}\n"
            "    for name in prunable_linears(model):\n"
            "        m = copy.deepcopy(model)\n"
            "        mag.magnitude_prune(m, sparsity, targets=[name])\n"
            "        results[(int(name.split('.')[2]), name.split('.')[-1])] = course_lib.perplexity(m, max_tokens=max_tokens)\n"
            "    return results\n"),
    },
}
