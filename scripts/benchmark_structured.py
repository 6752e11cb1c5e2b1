"""Structured pruning makes a model smaller *and* faster: measured speedup beside the FLOP ratio.

One Llama-7B-width decoder block (hidden 4096, 32 attention heads of 128, MLP 11008;
attention + MLP with their RMSNorms and residuals, transformers' ``LlamaDecoderLayer``
with SDPA attention) is timed at several token counts in three versions:

* ``dense``      -- 32 heads, MLP width 11008;
* ``heads-25%``  -- 25% of the heads removed: 24 heads of 128 (q/k/v_proj ``[3072, 4096]``,
                    o_proj ``[4096, 3072]``);
* ``ffn-50%``    -- 50% of the MLP channels removed: width 5504.

The pruned blocks are ordinary smaller dense blocks -- exactly the shapes a physical
removal gives (Michel et al. 2019 for heads, arXiv:1905.10650; Ma et al. 2023,
LLM-Pruner, arXiv:2305.11627, for both). Their weights are sliced from the dense block
(the first 24 heads / 5504 channels), and the script checks that each pruned block
computes what the dense block computes with the removed heads' ``o_proj`` columns (or
the removed channels' ``down_proj`` columns) zeroed.

FLOPs are counted analytically: ``2*T*(weights of all linears)`` for the projections plus
``4*T*T*H*D`` for the attention scores and the weighted sum of values (the full square,
as a non-causal-skipping kernel computes it); norms, RoPE, softmax and SiLU are left out.
``flop_speedup`` = dense FLOPs / pruned FLOPs is the speedup one would expect if time were
proportional to FLOPs; ``speedup`` is what was measured. Token counts are one sequence of
``T`` tokens without a KV cache (``T = 1`` has the matmul shapes of a decoding step).

CLI: ``python scripts/benchmark_structured.py`` writes ``data/benchmarks/structured-<device>.json``;
``--quick`` is a small smoke run (hidden 512, 4 heads) that writes only with ``--out``.
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

LLAMA7B = dict(hidden=4096, heads=32, head_dim=128, intermediate=11008)
QUICK = dict(hidden=512, heads=4, head_dim=128, intermediate=1376)
SETTINGS = {
    "gpu": dict(tokens=[1, 16, 128, 512, 2048, 8192], warmup=5, reps=25),
    "cpu": dict(tokens=[1, 16, 128, 512], warmup=1, reps=5),
    "quick": dict(tokens=[1, 16], warmup=0, reps=2),
}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # max|err| / max|ref|


def variants(dims: dict) -> dict:
    """``{name: (attention heads kept, MLP width kept)}``."""
    return {"dense": (dims["heads"], dims["intermediate"]),
            "heads-25%": (dims["heads"] - dims["heads"] // 4, dims["intermediate"]),
            "ffn-50%": (dims["heads"], dims["intermediate"] // 2)}


def block_config(hidden: int, heads: int, head_dim: int, intermediate: int):
    """A LlamaConfig for one block with ``heads`` heads of ``head_dim`` (``head_dim`` set
    explicitly, since ``hidden / heads`` no longer equals it once heads are removed).

    transformers 5 validates ``hidden % num_attention_heads == 0`` when the config is
    built, so it is built with ``hidden // head_dim`` heads and then given ``heads`` --
    the same update ``course_lib.pruning.heads`` applies after removing heads."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                      num_attention_heads=hidden // head_dim, num_key_value_heads=hidden // head_dim,
                      head_dim=head_dim, max_position_embeddings=max(16384, hidden))
    cfg.num_attention_heads = heads
    cfg.num_key_value_heads = heads
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


def random_state(hidden: int, heads: int, head_dim: int, intermediate: int, seed: int = 0) -> dict:
    """Random weights of a dense block: linears ~ N(0, 0.02^2), norm weights 1."""
    g = torch.Generator().manual_seed(seed)
    a = heads * head_dim
    shapes = {"self_attn.q_proj.weight": (a, hidden), "self_attn.k_proj.weight": (a, hidden),
              "self_attn.v_proj.weight": (a, hidden), "self_attn.o_proj.weight": (hidden, a),
              "mlp.gate_proj.weight": (intermediate, hidden), "mlp.up_proj.weight": (intermediate, hidden),
              "mlp.down_proj.weight": (hidden, intermediate)}
    state = {k: torch.randn(*s, generator=g) * 0.02 for k, s in shapes.items()}
    state["input_layernorm.weight"] = torch.ones(hidden)
    state["post_attention_layernorm.weight"] = torch.ones(hidden)
    return state


def sliced_state(dense: dict, head_dim: int, heads: int, intermediate: int) -> dict:
    """The dense block's weights with only the first ``heads`` heads and the first
    ``intermediate`` MLP channels kept (a physical removal of the others)."""
    a = heads * head_dim
    out = dict(dense)
    for k in ("q_proj", "k_proj", "v_proj"):
        out[f"self_attn.{k}.weight"] = dense[f"self_attn.{k}.weight"][:a].clone()  # [H*D, hidden]
    out["self_attn.o_proj.weight"] = dense["self_attn.o_proj.weight"][:, :a].clone()  # [hidden, H*D]
    for k in ("gate_proj", "up_proj"):
        out[f"mlp.{k}.weight"] = dense[f"mlp.{k}.weight"][:intermediate].clone()  # [I, hidden]
    out["mlp.down_proj.weight"] = dense["mlp.down_proj.weight"][:, :intermediate].clone()  # [hidden, I]
    return out


def gated_state(dense: dict, head_dim: int, heads: int, intermediate: int) -> dict:
    """The dense block with the removed heads / channels silenced by zeroing their
    ``o_proj`` / ``down_proj`` input columns: the function a removal must preserve."""
    out = dict(dense)
    o = dense["self_attn.o_proj.weight"].clone()
    o[:, heads * head_dim:] = 0
    down = dense["mlp.down_proj.weight"].clone()
    down[:, intermediate:] = 0
    out["self_attn.o_proj.weight"], out["mlp.down_proj.weight"] = o, down
    return out


def block_flops(tokens: int, hidden: int, heads: int, head_dim: int, intermediate: int) -> int:
    """Multiply-adds x 2 of one block on ``tokens`` tokens (see module doc)."""
    a = heads * head_dim
    linear = 2 * tokens * (4 * hidden * a + 3 * hidden * intermediate)
    attention = 2 * 2 * tokens * tokens * heads * head_dim
    return linear + attention


def rope(cfg, tokens: int, device, dtype):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(cfg).to(device)
    x = torch.zeros(1, tokens, cfg.hidden_size, device=device, dtype=dtype)
    return rot(x, torch.arange(tokens, device=device)[None])  # (cos, sin), each [1, T, head_dim]


def run(dims: dict, dtype, device, args) -> tuple[list[dict], list[dict]]:
    hidden, head_dim, full_heads, full_inter = dims["hidden"], dims["head_dim"], dims["heads"], dims["intermediate"]
    dense_state = random_state(hidden, full_heads, head_dim, full_inter)
    full_cfg = block_config(hidden, full_heads, head_dim, full_inter)
    blocks, gated = {}, {}
    for name, (heads, inter) in variants(dims).items():
        cfg = block_config(hidden, heads, head_dim, inter)
        blocks[name] = (cfg, build_block(cfg, sliced_state(dense_state, head_dim, heads, inter), device, dtype))
        if name != "dense":  # what the pruned block must compute: the dense block, gated, in float32
            gated[name] = build_block(full_cfg, gated_state(dense_state, head_dim, heads, inter), device,
                                      torch.float32)
    del dense_state
    rows, checks = [], []
    for tokens in args.tokens:
        x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(tokens)).to(device, dtype)
        dense_ms = dense_flops = dense_params = None
        for name, (heads, inter) in variants(dims).items():
            cfg, block = blocks[name]
            pe = rope(cfg, tokens, device, dtype)

            def forward(block=block, x=x, pe=pe):
                with torch.inference_mode():
                    return block(x, position_embeddings=pe)  # [1, T, hidden]

            if name in gated:
                with torch.inference_mode():
                    ref = gated[name](x.float(), position_embeddings=rope(full_cfg, tokens, device, torch.float32))
                    err = (forward().float() - ref).abs().max().item()
                rel = err / ref.abs().max().item()
                checks.append({"variant": name, "tokens": tokens, "max_abs_err": err, "max_rel_err": rel,
                               "ok": rel <= TOLERANCE[dtype]})
                del ref
            m = benchmark(forward, warmup=args.warmup, reps=args.reps, device=device, flush_l2=True,
                          cuda_graph=args.cuda_graph, label=f"{name} T={tokens}")
            flops = block_flops(tokens, hidden, heads, head_dim, inter)
            params = tensor_bytes(block)
            if name == "dense":
                dense_ms, dense_flops, dense_params = m.median_ms, flops, params
            row = {"variant": name, "tokens": tokens, "dtype": str(dtype).removeprefix("torch."),
                   "num_attention_heads": heads, "head_dim": head_dim, "intermediate_size": inter,
                   "param_bytes": params, "param_ratio": params / dense_params,
                   "flops": flops, "flop_ratio": flops / dense_flops, "flop_speedup": dense_flops / flops,
                   **{k: v for k, v in m.to_dict().items() if k.endswith("_ms") or k == "n"},
                   "speedup": dense_ms / m.median_ms,
                   "peak_memory_bytes": peak_memory(forward, device=device)}
            row["speedup_vs_flops"] = row["speedup"] / row["flop_speedup"]
            rows.append(row)
            print(f"  {name:10s} T={tokens:<5d} {m.median_ms:9.3f} ms  speedup {row['speedup']:.2f}x  "
                  f"(FLOPs predict {row['flop_speedup']:.2f}x)", flush=True)
    return rows, checks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 512, 4 heads, 2 token counts")
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
    dims = QUICK if args.quick else LLAMA7B
    started = time.time()
    env = environment(device)
    if device.type == "cpu" and busy_warning(env):
        print("WARNING:", env["warning"], flush=True)
    if env.get("cpu_affinity", env["torch_threads"]) < env["torch_threads"]:
        print(f"WARNING: {env['torch_threads']} torch threads on {env['cpu_affinity']} usable cores", flush=True)
    print(f"{dims} {dtype} on {env.get('gpu', env['cpu'])}, {env['torch_threads']} threads", flush=True)
    rows, checks = run(dims, dtype, device, args)
    env["loadavg_1m_end"] = environment(device).get("loadavg_1m")
    result = {"script": "scripts/benchmark_structured.py", "mode": mode, "environment": env,
              "settings": {"dims": dims, "variants": {k: {"num_attention_heads": h, "intermediate_size": i}
                                                      for k, (h, i) in variants(dims).items()},
                           "tokens": args.tokens, "warmup": args.warmup, "reps": args.reps,
                           "dtype": str(dtype).removeprefix("torch."), "flush_l2": True,
                           "cuda_graph": args.cuda_graph, "attention": "sdpa, one sequence, no KV cache"},
              "results": rows, "equivalence_checks": checks, "wall_seconds": time.time() - started}
    print("\nvariant     tokens   median ms   speedup   FLOP speedup   measured/FLOPs")
    for r in rows:
        print(f"{r['variant']:10s} {r['tokens']:7d} {r['median_ms']:11.3f} {r['speedup']:8.2f}x "
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
