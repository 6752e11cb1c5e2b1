"""Structured pruning makes a model smaller *and* faster: measured speedup beside the FLOP ratio.

Two Llama-7B-width decoder blocks (hidden 4096, query heads of 128, MLP 11008; attention +
MLP with their RMSNorms and residuals, transformers' ``LlamaDecoderLayer`` with SDPA
attention) are timed at several token counts, each as its own dense baseline and pruned:

* the **MHA** block of Llama-7B (32 query heads, 32 key/value heads):

  * ``dense``      -- 32 heads, MLP width 11008;
  * ``heads-25%``  -- 25% of the heads removed: 24 heads of 128 (q/k/v_proj ``[3072, 4096]``,
                      o_proj ``[4096, 3072]``);
  * ``ffn-50%``    -- 50% of the MLP channels removed: width 5504;

* a **GQA** block of the same width (32 query heads on 8 key/value heads, groups of 4 --
  the attention layout of Llama-3-8B and Mistral-7B; the MLP is kept at Llama-7B's 11008,
  not their 14336, so that its rows compare with the MHA rows):

  * ``gqa-dense``  -- 32 query heads, 8 KV heads (q_proj ``[4096, 4096]``, k/v_proj
                      ``[1024, 4096]``);
  * ``gqa-q-25%``  -- the last query head of every KV group removed: 24 query heads on the
                      same 8 KV heads (q_proj ``[3072, 4096]``, k/v_proj unchanged
                      ``[1024, 4096]``, o_proj ``[4096, 3072]``). This is what removing a
                      quarter of the query heads of a GQA model (e.g. the course model, 8 query
                      heads on 2 KV heads, in notebooks 04 and 07) does: KV heads stay, so only
                      q_proj rows and o_proj columns go.

Every row names its ``baseline`` -- the dense block of its own family (``dense`` or
``gqa-dense``) -- and ``speedup``, ``flop_speedup``, ``param_ratio`` are relative to it.

The pruned blocks are ordinary smaller dense blocks -- exactly the shapes a physical
removal gives (Michel et al. 2019 for heads, arXiv:1905.10650; Ma et al. 2023,
LLM-Pruner, arXiv:2305.11627, for both). Their weights are sliced from the dense block
(MHA: the first 24 heads / 5504 channels; GQA: query head ``h`` reads KV head
``h // (heads / kv_heads)``, so the kept query heads are the first three of each group of
four, which the pruned block's ``h // 3`` maps to the same KV heads), and the script checks
that each pruned block computes what its dense block computes with the removed heads'
``o_proj`` columns (or the removed channels' ``down_proj`` columns) zeroed.

FLOPs are counted analytically: ``2*T*(weights of all linears)`` for the projections (q and
o with the query heads, k and v with the KV heads) plus ``4*T*T*H*D`` for the attention
scores and the weighted sum of values over the ``H`` query heads (the full square, as a
non-causal-skipping kernel computes it); norms, RoPE, softmax and SiLU are left out.
``flop_speedup`` = baseline FLOPs / pruned FLOPs is the speedup one would expect if time
were proportional to FLOPs; ``speedup`` is what was measured. Token counts are one
sequence of ``T`` tokens without a KV cache (``T = 1`` has the matmul shapes of a decoding
step).

CLI: ``python scripts/benchmark_structured.py`` writes ``data/benchmarks/structured-<device>.json``;
``--quick`` is a small smoke run (hidden 512; MHA 4 heads of 128, GQA 8 query heads of 64 on
2 KV heads) that writes only with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.timing import benchmark, busy_warning, device_slug, environment, peak_memory, tensor_bytes  # noqa: E402

LLAMA7B = dict(hidden=4096, heads=32, head_dim=128, intermediate=11008)  # MHA: kv_heads == heads
LLAMA7B_GQA = dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=11008)
QUICK = dict(hidden=512, heads=4, head_dim=128, intermediate=1376)
QUICK_GQA = dict(hidden=512, heads=8, kv_heads=2, head_dim=64, intermediate=1376)
SETTINGS = {
    "gpu": dict(tokens=[1, 16, 128, 512, 2048, 8192], warmup=5, reps=25),
    "cpu": dict(tokens=[1, 16, 128, 512], warmup=1, reps=5),
    "quick": dict(tokens=[1, 16], warmup=0, reps=2),
}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # max|err| / max|ref|


def kept_query_heads(heads: int, kv_heads: int, per_group: int = 1) -> list[int]:
    """The query heads kept when the last ``per_group`` query heads of every KV group are
    removed. Query head ``h`` reads KV head ``h // (heads // kv_heads)``; listing the kept
    heads group by group keeps that mapping in the pruned block (``h' // (group - per_group)``)."""
    group = heads // kv_heads
    return [g * group + i for g in range(kv_heads) for i in range(group - per_group)]


def variants(dims: dict, gqa_dims: dict | None = None) -> dict:
    """``{name: spec}``; a spec holds the block family's ``dims``, the kept ``q_heads`` /
    ``kv_heads`` (lists of indices into the dense block's heads), the kept MLP width
    ``intermediate`` and the ``baseline`` variant its speedup is relative to."""
    h, i = dims["heads"], dims["intermediate"]
    mha_kept = list(range(h - h // 4))
    out = {"dense": dict(dims=dims, q_heads=list(range(h)), kv_heads=list(range(h)), intermediate=i),
           "heads-25%": dict(dims=dims, q_heads=mha_kept, kv_heads=mha_kept, intermediate=i),
           "ffn-50%": dict(dims=dims, q_heads=list(range(h)), kv_heads=list(range(h)), intermediate=i // 2)}
    for spec in out.values():
        spec["baseline"] = "dense"
    if gqa_dims is not None:
        gh, gkv, gi = gqa_dims["heads"], gqa_dims["kv_heads"], gqa_dims["intermediate"]
        assert gh % gkv == 0 and gh // gkv == 4, "gqa-q-25% removes one query head of each group of 4"
        out["gqa-dense"] = dict(dims=gqa_dims, q_heads=list(range(gh)), kv_heads=list(range(gkv)),
                                intermediate=gi, baseline="gqa-dense")
        out["gqa-q-25%"] = dict(dims=gqa_dims, q_heads=kept_query_heads(gh, gkv), kv_heads=list(range(gkv)),
                                intermediate=gi, baseline="gqa-dense")
    return out


def block_config(hidden: int, heads: int, head_dim: int, intermediate: int, kv_heads: int | None = None):
    """A LlamaConfig for one block with ``heads`` query heads of ``head_dim`` on ``kv_heads``
    key/value heads (default ``heads``: MHA). ``head_dim`` is set explicitly, since
    ``hidden / heads`` no longer equals it once heads are removed.

    transformers 5 validates ``hidden % num_attention_heads == 0`` when the config is
    built, so it is built with ``hidden // head_dim`` heads and then given ``heads`` --
    the same update ``course_lib.pruning.heads`` applies after removing heads."""
    from transformers import LlamaConfig

    kv_heads = heads if kv_heads is None else kv_heads
    assert heads % kv_heads == 0, (heads, kv_heads)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                      num_attention_heads=hidden // head_dim, num_key_value_heads=hidden // head_dim,
                      head_dim=head_dim, max_position_embeddings=max(16384, hidden))
    cfg.num_attention_heads = heads
    cfg.num_key_value_heads = kv_heads
    cfg.head_dim = head_dim
    cfg._attn_implementation = "sdpa"
    return cfg


def build_block(cfg, state: dict, device, dtype):
    """``LlamaDecoderLayer`` of ``cfg`` holding the tensors of ``state`` (no random init)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    with torch.device("meta"):
        layer = LlamaDecoderLayer(cfg, layer_idx=0)
    layer.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    return layer.eval().requires_grad_(False)


def random_state(hidden: int, heads: int, head_dim: int, intermediate: int, seed: int = 0,
                 kv_heads: int | None = None) -> dict:
    """Random weights of a dense block: linears ~ N(0, 0.02^2), norm weights 1."""
    g = torch.Generator().manual_seed(seed)
    a, kv = heads * head_dim, (heads if kv_heads is None else kv_heads) * head_dim
    shapes = {"self_attn.q_proj.weight": (a, hidden), "self_attn.k_proj.weight": (kv, hidden),
              "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, a),
              "mlp.gate_proj.weight": (intermediate, hidden), "mlp.up_proj.weight": (intermediate, hidden),
              "mlp.down_proj.weight": (hidden, intermediate)}
    state = {k: torch.randn(*s, generator=g) * 0.02 for k, s in shapes.items()}
    state["input_layernorm.weight"] = torch.ones(hidden)
    state["post_attention_layernorm.weight"] = torch.ones(hidden)
    return state


def _head_rows(head_ids, head_dim: int) -> torch.Tensor:
    """Row indices of ``head_ids`` in a ``[heads * head_dim, ...]`` projection."""
    return torch.tensor([h * head_dim + j for h in head_ids for j in range(head_dim)], dtype=torch.long)


def sliced_state(dense: dict, head_dim: int, heads, intermediate: int, kv_heads=None) -> dict:
    """The dense block's weights with only the query heads ``heads`` (an int: the first
    ``heads``; or a list of head indices), the KV heads ``kv_heads`` (default: the same as
    the query heads, MHA; an int: the first ``kv_heads``; a list) and the first
    ``intermediate`` MLP channels kept (a physical removal of the others)."""
    q = list(range(heads)) if isinstance(heads, int) else list(heads)
    kv = q if kv_heads is None else (list(range(kv_heads)) if isinstance(kv_heads, int) else list(kv_heads))
    q_rows, kv_rows = _head_rows(q, head_dim), _head_rows(kv, head_dim)
    out = dict(dense)
    out["self_attn.q_proj.weight"] = dense["self_attn.q_proj.weight"][q_rows].clone()  # [Hq*D, hidden]
    for k in ("k_proj", "v_proj"):
        out[f"self_attn.{k}.weight"] = dense[f"self_attn.{k}.weight"][kv_rows].clone()  # [Hkv*D, hidden]
    out["self_attn.o_proj.weight"] = dense["self_attn.o_proj.weight"][:, q_rows].clone()  # [hidden, Hq*D]
    for k in ("gate_proj", "up_proj"):
        out[f"mlp.{k}.weight"] = dense[f"mlp.{k}.weight"][:intermediate].clone()  # [I, hidden]
    out["mlp.down_proj.weight"] = dense["mlp.down_proj.weight"][:, :intermediate].clone()  # [hidden, I]
    return out


def gated_state(dense: dict, head_dim: int, heads, intermediate: int) -> dict:
    """The dense block with the removed query heads / channels silenced by zeroing their
    ``o_proj`` / ``down_proj`` input columns: the function a removal must preserve.
    ``heads``: the kept query heads (an int: the first ``heads``; or a list)."""
    kept = set(range(heads)) if isinstance(heads, int) else set(heads)
    out = dict(dense)
    o = dense["self_attn.o_proj.weight"].clone()
    removed = [h for h in range(o.shape[1] // head_dim) if h not in kept]
    if removed:
        o[:, _head_rows(removed, head_dim)] = 0
    down = dense["mlp.down_proj.weight"].clone()
    down[:, intermediate:] = 0
    out["self_attn.o_proj.weight"], out["mlp.down_proj.weight"] = o, down
    return out


def block_flops(tokens: int, hidden: int, heads: int, head_dim: int, intermediate: int,
                kv_heads: int | None = None) -> int:
    """Multiply-adds x 2 of one block on ``tokens`` tokens (see module doc); ``kv_heads``
    defaults to ``heads`` (MHA)."""
    a, kv = heads * head_dim, (heads if kv_heads is None else kv_heads) * head_dim
    linear = 2 * tokens * (hidden * (2 * a + 2 * kv) + 3 * hidden * intermediate)
    attention = 2 * 2 * tokens * tokens * heads * head_dim
    return linear + attention


def rope(cfg, tokens: int, device, dtype):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(cfg).to(device)
    x = torch.zeros(1, tokens, cfg.hidden_size, device=device, dtype=dtype)
    return rot(x, torch.arange(tokens, device=device)[None])  # (cos, sin), each [1, T, head_dim]


def _family_config(dims: dict):
    return block_config(dims["hidden"], dims["heads"], dims["head_dim"], dims["intermediate"],
                        dims.get("kv_heads"))


def run(specs: dict, dtype, device, args) -> tuple[list[dict], list[dict]]:
    families = {}  # baseline name -> (dims, dense state, dense config)
    for spec in specs.values():
        d = spec["dims"]
        if spec["baseline"] not in families:
            families[spec["baseline"]] = (d, random_state(d["hidden"], d["heads"], d["head_dim"], d["intermediate"],
                                                          kv_heads=d.get("kv_heads")), _family_config(d))
    blocks, gated = {}, {}
    for name, spec in specs.items():
        d, dense_state, full_cfg = families[spec["baseline"]]
        cfg = block_config(d["hidden"], len(spec["q_heads"]), d["head_dim"], spec["intermediate"],
                           len(spec["kv_heads"]))
        state = sliced_state(dense_state, d["head_dim"], spec["q_heads"], spec["intermediate"], spec["kv_heads"])
        blocks[name] = (cfg, build_block(cfg, state, device, dtype))
        if name != spec["baseline"]:  # what the pruned block must compute: its dense block, gated, in float32
            gated[name] = build_block(full_cfg, gated_state(dense_state, d["head_dim"], spec["q_heads"],
                                                            spec["intermediate"]), device, torch.float32)
    del families
    rows, checks = [], []
    for tokens in args.tokens:
        base = {}  # baseline name -> (ms, flops, param bytes) at these tokens
        for name, spec in specs.items():
            d, cfg, block = spec["dims"], *blocks[name]
            hidden, head_dim = d["hidden"], d["head_dim"]
            heads, kv_heads, inter = len(spec["q_heads"]), len(spec["kv_heads"]), spec["intermediate"]
            x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(tokens)).to(device, dtype)
            pe = rope(cfg, tokens, device, dtype)

            def forward(block=block, x=x, pe=pe):
                with torch.inference_mode():
                    return block(x, position_embeddings=pe)  # [1, T, hidden]

            if name in gated:
                with torch.inference_mode():
                    ref = gated[name](x.float(), position_embeddings=rope(cfg, tokens, device, torch.float32))
                    err = (forward().float() - ref).abs().max().item()
                rel = err / ref.abs().max().item()
                checks.append({"variant": name, "baseline": spec["baseline"], "tokens": tokens, "max_abs_err": err,
                               "max_rel_err": rel, "ok": rel <= TOLERANCE[dtype]})
                del ref
            m = benchmark(forward, warmup=args.warmup, reps=args.reps, device=device, flush_l2=True,
                          cuda_graph=args.cuda_graph, label=f"{name} T={tokens}")
            flops = block_flops(tokens, hidden, heads, head_dim, inter, kv_heads)
            params = tensor_bytes(block)
            if name == spec["baseline"]:
                base[name] = (m.median_ms, flops, params)
            base_ms, base_flops, base_params = base[spec["baseline"]]
            row = {"variant": name, "baseline": spec["baseline"], "tokens": tokens,
                   "dtype": str(dtype).removeprefix("torch."), "hidden_size": hidden,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
                   "intermediate_size": inter, "param_bytes": params, "param_ratio": params / base_params,
                   "flops": flops, "flop_ratio": flops / base_flops, "flop_speedup": base_flops / flops,
                   **{k: v for k, v in m.to_dict().items() if k.endswith("_ms") or k == "n"},
                   "speedup": base_ms / m.median_ms,
                   "peak_memory_bytes": peak_memory(forward, device=device)}
            row["speedup_vs_flops"] = row["speedup"] / row["flop_speedup"]
            rows.append(row)
            print(f"  {name:10s} T={tokens:<5d} {m.median_ms:9.3f} ms  speedup {row['speedup']:.2f}x vs "
                  f"{spec['baseline']:9s} (FLOPs predict {row['flop_speedup']:.2f}x)", flush=True)
    return rows, checks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 512, MHA 4 heads, GQA 8 on 2, 2 token counts")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="output JSON (default data/benchmarks/structured-<device>.json; "
                                               "--quick writes only when --out is given)")
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 / bfloat16 (GPU default float16)")
    p.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays (no launch overhead)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    for key, value in SETTINGS[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    dims, gqa_dims = (QUICK, QUICK_GQA) if args.quick else (LLAMA7B, LLAMA7B_GQA)
    specs = variants(dims, gqa_dims)
    started = time.time()
    env = environment(device)
    if device.type == "cpu" and busy_warning(env):
        print("WARNING:", env["warning"], flush=True)
    if env.get("cpu_affinity", env["torch_threads"]) < env["torch_threads"]:
        print(f"WARNING: {env['torch_threads']} torch threads on {env['cpu_affinity']} usable cores", flush=True)
    print(f"MHA {dims}, GQA {gqa_dims}, {dtype} on {env.get('gpu', env['cpu'])}, {env['torch_threads']} threads",
          flush=True)
    rows, checks = run(specs, dtype, device, args)
    env["loadavg_1m_end"] = environment(device).get("loadavg_1m")
    result = {"script": "scripts/benchmark_structured.py", "mode": mode, "environment": env,
              "settings": {"dims": dims, "gqa_dims": gqa_dims,
                           "gqa_note": "GQA block: Llama-3-8B / Mistral-7B attention (32 query heads on 8 KV "
                                       "heads) with Llama-7B's MLP width, so that its rows compare with the MHA rows",
                           "variants": {k: {"baseline": s["baseline"], "num_attention_heads": len(s["q_heads"]),
                                            "num_key_value_heads": len(s["kv_heads"]),
                                            "intermediate_size": s["intermediate"],
                                            "kept_query_heads": s["q_heads"]}
                                        for k, s in specs.items()},
                           "tokens": args.tokens, "warmup": args.warmup, "reps": args.reps,
                           "dtype": str(dtype).removeprefix("torch."), "flush_l2": True,
                           "cuda_graph": args.cuda_graph, "attention": "sdpa, one sequence, no KV cache"},
              "results": rows, "equivalence_checks": checks, "wall_seconds": time.time() - started}
    print("\nvariant     baseline   tokens   median ms   speedup   FLOP speedup   measured/FLOPs")
    for r in rows:
        print(f"{r['variant']:10s}  {r['baseline']:9s} {r['tokens']:7d} {r['median_ms']:11.3f} {r['speedup']:8.2f}x "
              f"{r['flop_speedup']:13.2f}x {r['speedup_vs_flops']:15.2f}")
    bad = [c for c in checks if not c["ok"]]
    worst = max((c["max_rel_err"] for c in checks), default=0.0)
    print(f"\npruned block == gated dense block: worst max|err|/max|ref| {worst:.2e}"
          + (f"; {len(bad)} ABOVE TOLERANCE" if bad else " (all within tolerance)"))
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "data" / "benchmarks" / f"structured-{device_slug(device)}.json"
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
