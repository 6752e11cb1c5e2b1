"""Plausible wrong answers to 01's exercises, and correct answers written differently.

Each entry is the whole source of the solution cell (see tests/test_exercise_traps.py).
"""

WRONG = {
    "01-sparsity-report": {
        "global = mean of the per-module values": (
            "def sparsity_report(model, targets=None):\n"
            "    report = {name: int((lin.weight == 0).sum()) / lin.weight.numel()\n"
            "              for name, lin in prunable_linears(model, targets).items()}\n"
            "    report['global'] = sum(report.values()) / len(report)\n"
            "    return report\n"),
        "global over all parameters (embeddings, norms, lm_head)": (
            "def sparsity_report(model, targets=None):\n"
            "    report = {name: int((lin.weight == 0).sum()) / lin.weight.numel()\n"
            "              for name, lin in prunable_linears(model, targets).items()}\n"
            "    report['global'] = (sum(int((p == 0).sum()) for p in model.parameters())\n"
            "                        / sum(p.numel() for p in model.parameters()))\n"
            "    return report\n"),
        "ignores targets": (
            "def sparsity_report(model, targets=None):\n"
            "    report, zeros, total = {}, 0, 0\n"
            "    for name, lin in prunable_linears(model).items():\n"
            "        z = int((lin.weight == 0).sum())\n"
            "        report[name] = z / lin.weight.numel()\n"
            "        zeros, total = zeros + z, total + lin.weight.numel()\n"
            "    report['global'] = zeros / total\n"
            "    return report\n"),
        "fraction as a mean in the weight's dtype": (
            "def sparsity_report(model, targets=None):\n"
            "    linears = prunable_linears(model, targets)\n"
            "    report = {name: (lin.weight == 0).to(lin.weight.dtype).mean().item() for name, lin in linears.items()}\n"
            "    flat = torch.cat([lin.weight.flatten() for lin in linears.values()])\n"
            "    report['global'] = (flat == 0).to(flat.dtype).mean().item()\n"
            "    return report\n"),
        "fraction as a float32 mean": (
            "def sparsity_report(model, targets=None):\n"
            "    linears = prunable_linears(model, targets)\n"
            "    report = {name: (lin.weight == 0).float().mean().item() for name, lin in linears.items()}\n"
            "    flat = torch.cat([lin.weight.flatten() for lin in linears.values()])\n"
            "    report['global'] = (flat == 0).float().mean().item()\n"
            "    return report\n"),
    },
    "01-perplexity-from-losses": {
        "mean of the block perplexities": (
            "def perplexity_from_losses(losses):\n"
            "    return sum(math.exp(b.double().mean().item()) for b in losses) / len(losses)\n"),
        "exp of the mean of block means": (
            "def perplexity_from_losses(losses):\n"
            "    return math.exp(sum(b.double().mean().item() for b in losses) / len(losses))\n"),
        "sums in the input's dtype (float16 overflows)": (
            "def perplexity_from_losses(losses):\n"
            "    flat = torch.cat([b.flatten() for b in losses])\n"
            "    return math.exp(flat.sum().item() / flat.numel())\n"),
        "sums in float32": (
            "def perplexity_from_losses(losses):\n"
            "    flat = torch.cat([b.float().flatten() for b in losses])\n"
            "    return math.exp(flat.sum().item() / flat.numel())\n"),
        "counts len(block), not numel": (
            "def perplexity_from_losses(losses):\n"
            "    total = sum(b.double().sum().item() for b in losses)\n"
            "    return math.exp(total / sum(len(b) for b in losses))\n"),
        "returns a tensor": (
            "def perplexity_from_losses(losses):\n"
            "    flat = torch.cat([b.double().flatten() for b in losses])\n"
            "    return flat.mean().exp()\n"),
    },
}

RIGHT = {
    "01-sparsity-report": {
        "count_nonzero and a running total": (
            "def sparsity_report(model, targets=None):\n"
            "    linears = prunable_linears(model, targets)\n"
            "    zeros = {n: lin.weight.numel() - int(torch.count_nonzero(lin.weight)) for n, lin in linears.items()}\n"
            "    report = {n: zeros[n] / linears[n].weight.numel() for n in linears}\n"
            "    report['global'] = sum(zeros.values()) / sum(lin.weight.numel() for lin in linears.values())\n"
            "    return report\n"),
    },
    "01-perplexity-from-losses": {
        "float64 concatenation": (
            "def perplexity_from_losses(losses):\n"
            "    flat = torch.cat([b.reshape(-1).to(torch.float64) for b in losses])\n"
            "    return float(torch.exp(flat.mean()))\n"),
    },
}
