"""Structured pruning beyond heads and channels, at equal parameter budgets on the course model.

Four ways to remove a fixed share of the decoder's parameters (~1/6 and ~1/3: one and two
of the six layers' worth), none retrained:

* **depth** -- whole decoder layers (``course_lib.pruning.depth``), chosen by
  - block influence, ``BI = 1 - mean cos(layer input, layer output)`` on calibration
    tokens (ShortGPT: Men et al. 2024, arXiv:2403.03853);
  - random layers (``RANDOM_SEEDS`` seeds; because every subset is measured anyway, the
    mean over *all* subsets -- the exact expectation of a random pick -- is reported too);
  - the perplexity-ablation oracle: each layer removed alone, eval perplexity measured;
    its greedy choice (the lowest single-layer perplexities) and the best subset of all
    (exhaustive). The oracle reads the data it is judged on: a ceiling, not a method.
* **FFN channels** -- the same number removed from every layer's MLP, by mean ``|a_j|``
  (``"activation"``) or by FLAP's fluctuation score, each with and without FLAP's bias
  compensation (An et al. 2024, arXiv:2312.11983; ``remove_ffn_channels_compensated``).
* **heads** -- query heads by Michel et al.'s gradient score (arXiv:1905.10650), the
  uniform GQA-legal plan closest to the budget (attention holds too few parameters for
  the 1/3 budget; the JSON says how much it could give).

Then CPU time of a forward pass (``course_lib.timing.benchmark``, one thread, L2 flushed,
the variants timed round-robin) of each pruned model against the dense one, beside the FLOP ratio (``2 * T * linear
weights`` incl. ``lm_head``, plus ``4 * T^2 * H * D`` per layer for attention).

Calibration: ``course_lib.data.batches("train", ...)`` (``CALIB``); perplexity:
``course_lib.perplexity(max_tokens=EVAL_TOKENS)`` on the eval split, the same tokens for
every row.

    python scripts/structured_beyond.py          # -> data/results/structured_beyond.json (~2-3 min, 2 cores)
    python scripts/structured_beyond.py --quick  # smoke run, prints only (writes with --out)

``tests/test_depth.py`` checks the committed JSON against the committed model.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import course_lib  # noqa: E402
from course_lib.data import batches  # noqa: E402
from course_lib.pruning.channels import (  # noqa: E402
    channel_fluctuation,
    channel_importance,
    channel_means,
    remove_ffn_channels,
    remove_ffn_channels_compensated,
)
from course_lib.pruning.depth import block_influence, layer_importance, layers_to_remove, remove_layers  # noqa: E402
from course_lib.pruning.heads import attention_shape, head_importance, remove_heads  # noqa: E402
from course_lib.timing import benchmark, busy_warning, environment, percentile  # noqa: E402

CALIB = dict(split="train", n_batches=8, batch_size=4, seq_len=256, seed=0)  # 8,192 tokens
EVAL_TOKENS = 16384  # the first 16,384 tokens of the eval split (64 blocks of 256)
BUDGETS = (1 / 6, 1 / 3)  # fractions of the decoder layers' parameters to remove
RANDOM_SEEDS = tuple(range(10))
SPEED = dict(tokens=(16, 256), warmup=5, rounds=8, reps=5, threads=1)  # 40 timed calls per variant
QUICK = dict(calib=dict(CALIB, n_batches=2, batch_size=2, seq_len=64), eval_tokens=2048, seeds=(0, 1),
             speed=dict(tokens=(16,), warmup=1, rounds=2, reps=2, threads=1))
DEFAULT_OUT = ROOT / "data" / "results" / "structured_beyond.json"


# ----------------------------------------------------------------------------------
# counting


def decoder_params(model) -> int:
    """Parameters of the decoder layers (attention, MLP, their norms)."""
    return sum(p.numel() for p in model.model.layers.parameters())


def forward_flops(model, tokens: int) -> int:
    """2 x multiply-adds of one ``tokens``-long sequence: every decoder linear and lm_head,
    plus the attention scores and weighted values (the full T x T square)."""
    linear = sum(m.weight.numel() for layer in model.model.layers for m in layer.modules()
                 if isinstance(m, torch.nn.Linear))
    attention = sum(4 * tokens * tokens * attention_shape(layer.self_attn)[0] * layer.self_attn.head_dim
                    for layer in model.model.layers)
    return 2 * tokens * (linear + model.lm_head.weight.numel()) + attention


# ----------------------------------------------------------------------------------
# plans at a budget


def channel_plan(scores: torch.Tensor, per_layer: int) -> dict[int, list[int]]:
    """The ``per_layer`` lowest-scoring channels of every layer."""
    return {i: sorted(torch.sort(row, stable=True).indices[:per_layer].tolist()) for i, row in enumerate(scores)}


def head_plans(model, scores: torch.Tensor) -> list[tuple[str, dict[int, list[int]], int]]:
    """Every uniform GQA-legal plan: ``r`` lowest-scoring heads from every KV group, or the
    ``g`` lowest-scoring whole groups (by summed score) -> ``[(name, heads, params removed)]``."""
    h, k, d = attention_shape(model.model.layers[0].self_attn)
    group, hidden = h // k, model.config.hidden_size
    per_head, per_kv = 2 * hidden * d, 2 * hidden * d  # q rows + o columns; k rows + v rows
    n_layers = len(model.model.layers)
    plans = []
    for r in range(1, group):
        heads = {i: sorted(g * group + j for g in range(k)
                           for j in torch.sort(scores[i, g * group:(g + 1) * group], stable=True).indices[:r].tolist())
                 for i in range(n_layers)}
        plans.append((f"{r} of {group} heads per KV group", heads, n_layers * k * r * per_head))
    for n_groups in range(1, k):
        heads = {}
        for i in range(n_layers):
            sums = scores[i, :h].view(k, group).sum(dim=1)
            gone = torch.sort(sums, stable=True).indices[:n_groups].tolist()
            heads[i] = sorted(g * group + j for g in gone for j in range(group))
        plans.append((f"{n_groups} of {k} KV groups", heads, n_layers * n_groups * (group * per_head + per_kv)))
    return plans


# ----------------------------------------------------------------------------------
# measurement


def _ppl(model, eval_tokens: int) -> float:
    return course_lib.perplexity(model, max_tokens=eval_tokens)


def _pruned(model, fn, *args):
    twin = copy.deepcopy(model)
    fn(twin, *args)
    return twin


def measure_depth(model, calib, eval_tokens, budgets, seeds, n_decoder: int, log) -> dict:
    n_layers = len(model.model.layers)
    bi = block_influence(model, calib)
    ablation = layer_importance(model, calib, method="ablation")
    ks = sorted({max(1, round(b * n_layers)) for b in budgets})
    subset_ppl = {}
    for k in ks:
        for subset in itertools.combinations(range(n_layers), k):
            subset_ppl[subset] = _ppl(_pruned(model, remove_layers, list(subset)), eval_tokens)
        log(f"depth: all {k}-layer subsets measured")
    single = [subset_ppl.get((i,)) or _ppl(_pruned(model, remove_layers, [i]), eval_tokens) for i in range(n_layers)]
    rows = []
    for budget in budgets:
        k = max(1, round(budget * n_layers))
        pick = {"block_influence": layers_to_remove(bi, k), "calibration_ablation": layers_to_remove(ablation, k),
                "oracle_greedy": layers_to_remove(torch.tensor(single), k)}
        best = min(subset_ppl[s] for s in subset_ppl if len(s) == k)
        pick["oracle_best"] = list(min((s for s in subset_ppl if len(s) == k), key=lambda s: subset_ppl[s]))
        random_layers = [sorted(torch.randperm(n_layers, generator=torch.Generator().manual_seed(s))[:k].tolist())
                         for s in seeds]
        random_ppl = [subset_ppl[tuple(r)] for r in random_layers]
        all_k = sorted(subset_ppl[s] for s in subset_ppl if len(s) == k)
        removed_params = k * (n_decoder // n_layers)
        row = {"budget": budget, "layers_removed": k, "params_removed": removed_params,
               "param_fraction": removed_params / n_decoder,
               **{name: {"layers": layers, "ppl": subset_ppl[tuple(layers)],
                         "rank_among_subsets": all_k.index(subset_ppl[tuple(layers)]) + 1}
                  for name, layers in pick.items()},
               "random": {"seeds": list(seeds), "layers": random_layers, "ppl": random_ppl,
                          "mean": sum(random_ppl) / len(random_ppl), "min": min(random_ppl), "max": max(random_ppl)},
               "all_subsets": {"n": len(all_k), "mean": sum(all_k) / len(all_k), "min": best, "max": all_k[-1]}}
        rows.append(row)
    return {"block_influence": bi.tolist(), "calibration_ablation_loss": ablation.tolist(),
            "single_layer_removed_ppl": single,
            "subsets": [{"layers": list(s), "ppl": p} for s, p in subset_ppl.items()], "budgets": rows}


def measure_channels(model, calib, eval_tokens, budgets, n_decoder: int, log) -> dict:
    n_layers, hidden = len(model.model.layers), model.config.hidden_size
    scores = {"activation": channel_importance(model, calib, method="activation"),
              "fluctuation": channel_fluctuation(model, calib)}
    means = channel_means(model, calib)
    rows = []
    for budget in budgets:
        per_layer = round(budget * n_decoder / (n_layers * 3 * hidden))  # a channel = 3 * hidden weights
        removed_params = per_layer * n_layers * 3 * hidden
        row = {"budget": budget, "channels_removed_per_layer": per_layer,
               "intermediate_size_after": model.config.intermediate_size - per_layer,
               "params_removed": removed_params, "param_fraction": removed_params / n_decoder, "ppl": {}}
        for score_name, score in scores.items():
            plan = channel_plan(score, per_layer)
            row["ppl"][score_name] = _ppl(_pruned(model, remove_ffn_channels, plan), eval_tokens)
            row["ppl"][score_name + "+compensation"] = _ppl(
                _pruned(model, remove_ffn_channels_compensated, plan, means), eval_tokens)
        log(f"channels {budget:.3f}: {row['ppl']}")
        rows.append(row)
    # where compensation helps: half of one layer's channels (lowest activation), with and without it
    half = model.config.intermediate_size // 2
    single = []
    for i in range(n_layers):
        plan = {i: channel_plan(scores["activation"], half)[i]}
        twin = copy.deepcopy(model)
        bias = remove_ffn_channels_compensated(twin, plan, means)[i]
        single.append({"layer": i, "channels_removed": half, "bias_norm": bias.norm().item(),
                       "ppl": _ppl(_pruned(model, remove_ffn_channels, plan), eval_tokens),
                       "ppl_compensated": _ppl(twin, eval_tokens)})
    log("channels, one layer at a time: " + ", ".join(f"{r['ppl']:.3f}/{r['ppl_compensated']:.3f}" for r in single))
    return {"budgets": rows, "single_layer_half": single,
            "compensation_extra_params": "Llama: config.mlp_bias=True adds gate/up/down biases (zero on gate/up) "
                                         "to every layer: 2 * I' + hidden per layer"}


def measure_heads(model, calib, eval_tokens, budgets, n_decoder: int, log) -> dict:
    scores = head_importance(model, calib, method="gradient")
    plans = head_plans(model, scores)
    attention = sum(p.numel() for layer in model.model.layers for p in layer.self_attn.parameters())
    most = max(p[2] for p in plans)
    rows = []
    for budget in budgets:
        target = budget * n_decoder
        if most < 0.75 * target:
            rows.append({"budget": budget, "reachable": False,
                         "max_params_removed_uniform": most, "max_param_fraction": most / n_decoder})
            continue
        name, heads, removed = min(plans, key=lambda p: abs(p[2] - target))
        ppl = _ppl(_pruned(model, remove_heads, heads), eval_tokens)
        rows.append({"budget": budget, "reachable": True, "plan": name, "heads": {str(i): v for i, v in heads.items()},
                     "params_removed": removed, "param_fraction": removed / n_decoder, "ppl": ppl})
        log(f"heads {budget:.3f}: {name} ppl {ppl:.4f}")
    return {"score": "gradient (Michel et al. 2019)", "attention_param_fraction": attention / n_decoder,
            "budgets": rows}


def speed_variants(model, result, calib) -> dict:
    """The pruned models to time: depth by BI, compensated activation channels, heads."""
    out = {"dense": model}
    for row in result["depth"]["budgets"]:
        out[f"depth-{row['layers_removed']}-layers"] = _pruned(model, remove_layers, row["block_influence"]["layers"])
    means = channel_means(model, calib)
    scores = channel_importance(model, calib, method="activation")
    for row in result["channels"]["budgets"]:
        out[f"ffn-{row['channels_removed_per_layer']}-per-layer"] = _pruned(
            model, remove_ffn_channels_compensated, channel_plan(scores, row["channels_removed_per_layer"]), means)
    for row in result["heads"]["budgets"]:
        if row["reachable"]:
            heads = {int(i): v for i, v in row["heads"].items()}
            out[f"heads-{row['plan'].replace(' ', '-')}"] = _pruned(model, remove_heads, heads)
    return out


def measure_speed(variants: dict, settings: dict, n_decoder: int, log) -> list[dict]:
    """Forward time of every variant. The variants are timed in turn, ``rounds`` times
    ``reps`` calls each (round-robin), so that load from other work drifting over the run
    affects them alike; each row summarises all ``rounds * reps`` calls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    rows = []
    try:
        for tokens in settings["tokens"]:
            ids = torch.randint(0, 1024, (1, tokens), generator=torch.Generator().manual_seed(tokens))
            forwards = {}
            for name, m in variants.items():
                m.eval()

                def forward(m=m):
                    with torch.inference_mode():
                        return m(input_ids=ids, use_cache=False).logits

                forwards[name] = forward
                benchmark(forward, warmup=settings["warmup"], reps=1, device="cpu", flush_l2=False)
            samples = {name: [] for name in variants}
            for _ in range(settings["rounds"]):
                for name, forward in forwards.items():
                    t = benchmark(forward, warmup=0, reps=settings["reps"], device="cpu", flush_l2=True)
                    samples[name] += list(t.samples_ms)
            dense_ms = percentile(samples["dense"], 50)
            dense_flops = forward_flops(variants["dense"], tokens)
            for name, m in variants.items():
                median = percentile(samples[name], 50)
                flops = forward_flops(m, tokens)
                rows.append({"variant": name, "tokens": tokens, "median_ms": median,
                             "q25_ms": percentile(samples[name], 25), "q75_ms": percentile(samples[name], 75),
                             "n": len(samples[name]), "speedup": dense_ms / median,
                             "flops": flops, "flop_ratio": flops / dense_flops, "flop_speedup": dense_flops / flops,
                             "decoder_param_ratio": decoder_params(m) / n_decoder})
                log(f"speed {name:34s} T={tokens:<4d} {median:8.2f} ms  x{dense_ms / median:.2f} "
                    f"(FLOPs predict x{dense_flops / flops:.2f})")
    finally:
        torch.set_num_threads(threads)
    return rows


def measure(model, calib_cfg=CALIB, eval_tokens=EVAL_TOKENS, budgets=BUDGETS, seeds=RANDOM_SEEDS,
            speed=SPEED, log=print) -> dict:
    """Everything in the module doc -> a JSON-ready dict. ``model`` is left unchanged."""
    started = time.time()
    calib = batches(**calib_cfg)
    n_decoder = decoder_params(model)
    result = {"dense_ppl": _ppl(model, eval_tokens), "decoder_params": n_decoder}
    result["depth"] = measure_depth(model, calib, eval_tokens, budgets, seeds, n_decoder, log)
    result["channels"] = measure_channels(model, calib, eval_tokens, budgets, n_decoder, log)
    result["heads"] = measure_heads(model, calib, eval_tokens, budgets, n_decoder, log)
    result["quality_seconds"] = time.time() - started
    env = environment("cpu")
    busy_warning(env)
    result["speed_environment"] = env
    result["speed"] = measure_speed(speed_variants(model, result, calib), speed, n_decoder, log)
    env["loadavg_1m_end"] = environment("cpu").get("loadavg_1m")
    result["summary"] = summary(result)
    return result


def summary(result: dict) -> list[dict]:
    """One row per budget: the perplexity of each family's best non-oracle choice."""
    rows = []
    for d, c, h in zip(result["depth"]["budgets"], result["channels"]["budgets"], result["heads"]["budgets"]):
        rows.append({"budget": d["budget"], "dense": result["dense_ppl"],
                     "depth_block_influence": d["block_influence"]["ppl"], "depth_random_mean": d["random"]["mean"],
                     "depth_oracle_best": d["oracle_best"]["ppl"],
                     "ffn_activation": c["ppl"]["activation"],
                     "ffn_activation_compensated": c["ppl"]["activation+compensation"],
                     "ffn_fluctuation_compensated": c["ppl"]["fluctuation+compensation"],
                     "heads_gradient": h.get("ppl")})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny calibration and eval sets")
    p.add_argument("--out", default=None, help=f"output JSON (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                               "--quick writes only with --out)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible and civil on a shared 2-core machine
    started = time.time()
    model, _ = course_lib.load_course_model()
    settings = (dict(calib_cfg=QUICK["calib"], eval_tokens=QUICK["eval_tokens"], seeds=QUICK["seeds"],
                     speed=QUICK["speed"]) if args.quick else {})
    result = {"script": "scripts/structured_beyond.py", "mode": "quick" if args.quick else "full",
              "settings": {"calib": settings.get("calib_cfg", CALIB),
                           "eval_tokens": settings.get("eval_tokens", EVAL_TOKENS),
                           "budgets": list(BUDGETS), "random_seeds": list(settings.get("seeds", RANDOM_SEEDS)),
                           "speed": settings.get("speed", SPEED), "torch_threads": 1},
              **measure(model, **settings), "wall_seconds": None}
    result["wall_seconds"] = time.time() - started
    print("\nbudget  dense   depth-BI  depth-random-mean  depth-oracle  ffn  ffn+comp  ffn-fluct+comp  heads")
    for r in result["summary"]:
        heads = f"{r['heads_gradient']:.4f}" if r["heads_gradient"] is not None else "  n/a"
        print(f"{r['budget']:.3f}  {r['dense']:.4f}  {r['depth_block_influence']:.4f}  {r['depth_random_mean']:.4f}  "
              f"{r['depth_oracle_best']:.4f}  {r['ffn_activation']:.4f}  {r['ffn_activation_compensated']:.4f}  "
              f"{r['ffn_fluctuation_compensated']:.4f}  {heads}")
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
