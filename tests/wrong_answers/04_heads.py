"""Plausible wrong answers to 04's exercises, and correct answers written differently.

Each entry is the whole source of the solution cell (see tests/test_exercise_traps.py).
"""


def _mha(body: str) -> str:
    return "def remove_heads_mha(attn, heads):\n" + body


_MHA_ROWS = ("    d = attn.head_dim\n"
             "    n = attn.q_proj.out_features // d\n"
             "    kept = [h for h in range(n) if h not in set(heads)]\n"
             "    rows = torch.tensor([h * d + i for h in kept for i in range(d)], dtype=torch.long)\n")


def _gqa(check: str, body: str) -> str:
    return ("def remove_heads_gqa(attn, heads):\n"
            "    d = attn.head_dim\n"
            "    n, k = attn.q_proj.out_features // d, attn.k_proj.out_features // d\n"
            "    g = n // k\n"
            "    heads = [int(h) for h in heads]\n" + check + body)


_GQA_CHECK = ("    if any(not 0 <= h < n for h in heads) or len(set(heads)) != len(heads) or len(heads) == n:\n"
              "        raise ValueError(heads)\n"
              "    kept = [[h for h in range(q * g, (q + 1) * g) if h not in heads] for q in range(k)]\n"
              "    groups = [q for q in range(k) if kept[q]]\n"
              "    if len({len(kept[q]) for q in groups}) != 1:\n"
              "        raise ValueError('uneven')\n")


def _gqa_cut(kv_units: str, groups_line: str) -> str:
    return ("    def rows(units):\n"
            "        return torch.tensor([u * d + i for u in units for i in range(d)], dtype=torch.long)\n"
            "    def cut(lin, r):\n"
            "        lin.weight = torch.nn.Parameter(lin.weight[r].clone())\n"
            "        if lin.bias is not None:\n"
            "            lin.bias = torch.nn.Parameter(lin.bias[r].clone())\n"
            "        lin.out_features = len(r)\n"
            "    q_rows = rows([h for q in groups for h in kept[q]])\n"
            f"    kv_rows = rows({kv_units})\n"
            "    with torch.no_grad():\n"
            "        cut(attn.q_proj, q_rows)\n"
            "        cut(attn.k_proj, kv_rows)\n"
            "        cut(attn.v_proj, kv_rows)\n"
            "        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, q_rows].clone())\n"
            "        attn.o_proj.in_features = len(q_rows)\n" + groups_line)


_ABL = ("def ablation_importance(model, batches):\n"
        "    layers = model.model.layers\n"
        "    d = layers[0].self_attn.head_dim\n"
        "    n = layers[0].self_attn.o_proj.in_features // d\n"
        "    def loss():\n"
        "        return sum(model(input_ids=b['input_ids'], labels=b['input_ids']).loss.item() for b in batches) / len(batches)\n")

WRONG = {
    "04-remove-heads-mha": {
        "forgets k_proj and v_proj": _mha(_MHA_ROWS + (
            "    with torch.no_grad():\n"
            "        attn.q_proj.weight = torch.nn.Parameter(attn.q_proj.weight[rows].clone())\n"
            "        attn.q_proj.out_features = len(rows)\n"
            "        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, rows].clone())\n"
            "        attn.o_proj.in_features = len(rows)\n")),
        "cuts o_proj's rows (wrong axis)": _mha(_MHA_ROWS + (
            "    with torch.no_grad():\n"
            "        for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):\n"
            "            lin = getattr(attn, name)\n"
            "            lin.weight = torch.nn.Parameter(lin.weight[rows].clone())\n"
            "            lin.out_features = len(rows)\n")),
        "leaves the biases": _mha(_MHA_ROWS + (
            "    with torch.no_grad():\n"
            "        for name in ('q_proj', 'k_proj', 'v_proj'):\n"
            "            lin = getattr(attn, name)\n"
            "            lin.weight = torch.nn.Parameter(lin.weight[rows].clone())\n"
            "            lin.out_features = len(rows)\n"
            "        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, rows].clone())\n"
            "        attn.o_proj.in_features = len(rows)\n")),
        "one head at a time, indices shift": _mha(
            "    d = attn.head_dim\n"
            "    with torch.no_grad():\n"
            "        for h in heads:\n"
            "            n = attn.q_proj.out_features // d\n"
            "            rows = torch.tensor([j * d + i for j in range(n) if j != h for i in range(d)], dtype=torch.long)\n"
            "            for name in ('q_proj', 'k_proj', 'v_proj'):\n"
            "                lin = getattr(attn, name)\n"
            "                lin.weight = torch.nn.Parameter(lin.weight[rows].clone())\n"
            "                if lin.bias is not None:\n"
            "                    lin.bias = torch.nn.Parameter(lin.bias[rows].clone())\n"
            "                lin.out_features = len(rows)\n"
            "            attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, rows].clone())\n"
            "            attn.o_proj.in_features = len(rows)\n"),
        "never updates in/out_features": _mha(_MHA_ROWS + (
            "    with torch.no_grad():\n"
            "        for name in ('q_proj', 'k_proj', 'v_proj'):\n"
            "            lin = getattr(attn, name)\n"
            "            lin.weight = torch.nn.Parameter(lin.weight[rows].clone())\n"
            "            if lin.bias is not None:\n"
            "                lin.bias = torch.nn.Parameter(lin.bias[rows].clone())\n"
            "        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, rows].clone())\n")),
        "cuts o_proj's bias too": _mha(_MHA_ROWS + (
            "    with torch.no_grad():\n"
            "        for name in ('q_proj', 'k_proj', 'v_proj'):\n"
            "            lin = getattr(attn, name)\n"
            "            lin.weight = torch.nn.Parameter(lin.weight[rows].clone())\n"
            "            if lin.bias is not None:\n"
            "                lin.bias = torch.nn.Parameter(lin.bias[rows].clone())\n"
            "            lin.out_features = len(rows)\n"
            "        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, rows].clone())\n"
            "        if attn.o_proj.bias is not None:\n"
            "            attn.o_proj.bias = torch.nn.Parameter(attn.o_proj.bias[rows].clone())\n"
            "        attn.o_proj.in_features = len(rows)\n")),
    },
    "04-remove-heads-gqa": {
        "never sets num_key_value_groups": _gqa(_GQA_CHECK, _gqa_cut("groups", "")),
        "keeps the k/v rows of an emptied group": _gqa(
            _GQA_CHECK, _gqa_cut("range(k)", "    attn.num_key_value_groups = len(kept[groups[0]])\n")),
        "num_key_value_groups = kept query heads / original K": _gqa(
            _GQA_CHECK, _gqa_cut("groups", "    attn.num_key_value_groups = len(q_rows) // d // k\n")),
        "checks only evenness": _gqa(
            "    kept = [[h for h in range(q * g, (q + 1) * g) if h not in heads] for q in range(k)]\n"
            "    groups = [q for q in range(k) if kept[q]]\n"
            "    if len({len(kept[q]) for q in groups}) > 1:\n"
            "        raise ValueError('uneven')\n",
            _gqa_cut("groups", "    attn.num_key_value_groups = len(kept[groups[0]])\n")),
        "cuts first, checks evenness after": _gqa(
            "    if any(not 0 <= h < n for h in heads) or len(set(heads)) != len(heads) or len(heads) == n:\n"
            "        raise ValueError(heads)\n"
            "    kept = [[h for h in range(q * g, (q + 1) * g) if h not in heads] for q in range(k)]\n"
            "    groups = [q for q in range(k) if kept[q]]\n",
            _gqa_cut("groups", "    attn.num_key_value_groups = len(kept[groups[0]])\n")
            + "    if len({len(kept[q]) for q in groups}) != 1:\n"
              "        raise ValueError('uneven')\n"),
        "groups as h % K (interleaved)": _gqa(
            "    if any(not 0 <= h < n for h in heads) or len(set(heads)) != len(heads) or len(heads) == n:\n"
            "        raise ValueError(heads)\n"
            "    kept = [[h for h in range(n) if h % k == q and h not in heads] for q in range(k)]\n"
            "    groups = [q for q in range(k) if kept[q]]\n"
            "    if len({len(kept[q]) for q in groups}) != 1:\n"
            "        raise ValueError('uneven')\n",
            _gqa_cut("groups", "    attn.num_key_value_groups = len(kept[groups[0]])\n")),
    },
    "04-ablation-importance": {
        "leaves the hooks on": _ABL + (
            "    state = {}\n"
            "    def make(i):\n"
            "        def hook(module, args):\n"
            "            if state.get('layer') != i:\n"
            "                return None\n"
            "            x = args[0].clone()\n"
            "            x[..., state['head'] * d:(state['head'] + 1) * d] = 0\n"
            "            return (x,)\n"
            "        return hook\n"
            "    for i, layer in enumerate(layers):\n"
            "        layer.self_attn.o_proj.register_forward_pre_hook(make(i))\n"
            "    out = torch.zeros(len(layers), n)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i in range(len(layers)):\n"
            "            for h in range(n):\n"
            "                state.update(layer=i, head=h)\n"
            "                out[i, h] = loss() - base\n"
            "    state.clear()\n"
            "    return out\n"),
        "zeroes o_proj's output rows": _ABL + (
            "    out = torch.zeros(len(layers), n)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i, layer in enumerate(layers):\n"
            "            w = layer.self_attn.o_proj.weight\n"
            "            for h in range(n):\n"
            "                saved = w[h * d:(h + 1) * d].clone()\n"
            "                w[h * d:(h + 1) * d] = 0\n"
            "                out[i, h] = loss() - base\n"
            "                w[h * d:(h + 1) * d] = saved\n"
            "    return out\n"),
        "zeroes the head's queries": _ABL + (
            "    out = torch.zeros(len(layers), n)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i, layer in enumerate(layers):\n"
            "            q = layer.self_attn.q_proj\n"
            "            for h in range(n):\n"
            "                saved_w = q.weight[h * d:(h + 1) * d].clone()\n"
            "                saved_b = None if q.bias is None else q.bias[h * d:(h + 1) * d].clone()\n"
            "                q.weight[h * d:(h + 1) * d] = 0\n"
            "                if q.bias is not None:\n"
            "                    q.bias[h * d:(h + 1) * d] = 0\n"
            "                out[i, h] = loss() - base\n"
            "                q.weight[h * d:(h + 1) * d] = saved_w\n"
            "                if q.bias is not None:\n"
            "                    q.bias[h * d:(h + 1) * d] = saved_b\n"
            "    return out\n"),
        "restores from a view (no clone)": _ABL + (
            "    out = torch.zeros(len(layers), n)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i, layer in enumerate(layers):\n"
            "            w = layer.self_attn.o_proj.weight\n"
            "            for h in range(n):\n"
            "                saved = w[:, h * d:(h + 1) * d]\n"
            "                w[:, h * d:(h + 1) * d] = 0\n"
            "                out[i, h] = loss() - base\n"
            "                w[:, h * d:(h + 1) * d] = saved\n"
            "    return out\n"),
        "sign reversed": _ABL + (
            "    out = torch.zeros(len(layers), n)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i, layer in enumerate(layers):\n"
            "            w = layer.self_attn.o_proj.weight\n"
            "            for h in range(n):\n"
            "                saved = w[:, h * d:(h + 1) * d].clone()\n"
            "                w[:, h * d:(h + 1) * d] = 0\n"
            "                out[i, h] = base - loss()\n"
            "                w[:, h * d:(h + 1) * d] = saved\n"
            "    return out\n"),
        "returns float64": _ABL + (
            "    out = torch.zeros(len(layers), n, dtype=torch.float64)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i, layer in enumerate(layers):\n"
            "            w = layer.self_attn.o_proj.weight\n"
            "            for h in range(n):\n"
            "                saved = w[:, h * d:(h + 1) * d].clone()\n"
            "                w[:, h * d:(h + 1) * d] = 0\n"
            "                out[i, h] = loss() - base\n"
            "                w[:, h * d:(h + 1) * d] = saved\n"
            "    return out\n"),
    },
}

RIGHT = {
    "04-remove-heads-mha": {
        "boolean row mask": (
            "def remove_heads_mha(attn, heads):\n"
            "    d = attn.head_dim\n"
            "    n = attn.q_proj.out_features // d\n"
            "    keep = torch.ones(n, dtype=torch.bool)\n"
            "    keep[list(heads)] = False\n"
            "    rows = keep.repeat_interleave(d)\n"
            "    with torch.no_grad():\n"
            "        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):\n"
            "            lin.weight = torch.nn.Parameter(lin.weight[rows].clone())\n"
            "            if lin.bias is not None:\n"
            "                lin.bias = torch.nn.Parameter(lin.bias[rows].clone())\n"
            "            lin.out_features = int(rows.sum())\n"
            "        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, rows].clone())\n"
            "        attn.o_proj.in_features = int(rows.sum())\n"),
    },
    "04-remove-heads-gqa": {
        "validates with sets": _gqa(
            "    if min(heads, default=0) < 0 or max(heads, default=0) >= n or len(set(heads)) < len(heads) or len(heads) >= n:\n"
            "        raise ValueError(f'bad heads {heads}')\n"
            "    kept = [[h for h in range(q * g, (q + 1) * g) if h not in set(heads)] for q in range(k)]\n"
            "    groups = [q for q in range(k) if kept[q]]\n"
            "    if len(set(map(len, (kept[q] for q in groups)))) != 1:\n"
            "        raise ValueError('uneven')\n",
            _gqa_cut("groups", "    attn.num_key_value_groups = len(kept[groups[0]])\n")),
    },
    "04-ablation-importance": {
        "zero and restore o_proj's columns": _ABL + (
            "    out = torch.zeros(len(layers), n)\n"
            "    with torch.no_grad():\n"
            "        base = loss()\n"
            "        for i, layer in enumerate(layers):\n"
            "            w = layer.self_attn.o_proj.weight\n"
            "            for h in range(n):\n"
            "                saved = w[:, h * d:(h + 1) * d].clone()\n"
            "                w[:, h * d:(h + 1) * d] = 0\n"
            "                out[i, h] = loss() - base\n"
            "                w[:, h * d:(h + 1) * d] = saved\n"
            "    return out\n"),
    },
}
