"""Measure the course model and write its model card and facts.

    python scripts/measure_course_model.py

Writes ``data/results/course_model.json`` (every number below) and
``data/course-model/README.md`` (the model card). ``tests/test_course_model.py``
recomputes the facts on the committed weights and checks them against this JSON.

The pedagogical signal the course needs (each measured on the eval split):
* dense perplexity <= 0.3 x the perplexity of a unigram model fitted on the train split;
* 50 % per-layer magnitude pruning of every decoder linear raises perplexity by
  at least 10 % and at most 4x;
* 2:4 magnitude pruning hurts more than 50 % unstructured;
* ablating the most important attention head raises perplexity >= 5x as much as
  ablating the least important one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import course_lib  # noqa: E402
from course_lib.corpus import N_CHARACTERS, N_TOWNS, SPLIT_SIZES, lexicon  # noqa: E402
from course_lib.data import split_tokens  # noqa: E402
from course_lib.evaluation import unigram_perplexity  # noqa: E402
from course_lib.model import count_parameters  # noqa: E402


def signal(model, heads: list[tuple[int, int]] | None = None) -> dict:
    """The pruning facts, measured on a fresh copy of the weights each time.

    ``heads``: the (layer, head) pairs to ablate; default all of them. The entries not ablated
    are NaN in ``head_ablation_delta_ppl``, and the argmax/argmin are taken over those measured.
    """
    from course_lib.pruning.heads import head_mask
    from course_lib.pruning.magnitude import magnitude_prune
    from course_lib.pruning.nm import nm_prune

    state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = course_lib.perplexity(model)
    magnitude_prune(model, 0.5, scope="layer")
    mag50 = course_lib.perplexity(model)
    model.load_state_dict(state)
    nm_prune(model, 2, 4)
    nm24 = course_lib.perplexity(model)
    model.load_state_dict(state)

    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    if heads is None:
        heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    delta = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    for layer, head in heads:
        with head_mask(model, {layer: [head]}):
            delta[layer, head] = course_lib.perplexity(model) - dense
    measured = delta.nan_to_num(float("-inf"))
    top = divmod(int(measured.argmax()), n_heads)
    low = divmod(int(delta.nan_to_num(float("inf")).argmin()), n_heads)
    return {
        "eval_ppl": dense,
        "magnitude_50_ppl": mag50,
        "magnitude_50_ratio": mag50 / dense,
        "nm_2_4_ppl": nm24,
        "nm_2_4_ratio": nm24 / dense,
        "head_ablation_delta_ppl": delta.tolist(),
        "most_important_head": {"layer": top[0], "head": top[1], "delta_ppl": delta[top].item()},
        "least_important_head": {"layer": low[0], "head": low[1], "delta_ppl": delta[low].item()},
        "head_ablation_ratio": delta[top].item() / max(delta[low].item(), 1e-12),
    }


@torch.no_grad()
def generations(model, tokenizer) -> list[str]:
    from course_lib.corpus import CHARACTERS

    star = CHARACTERS[0]  # the most frequent character: its facts are well learned
    prompts = ["Once upon a time,", "Zairk: Hello,", "Raithfynd had three pears.",
               f"Q: What does {star.name} like to eat? A:", f"{star.name}:"]
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
        gen = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, 1:], skip_special_tokens=True))
    return out


def measure(model, tokenizer) -> dict:
    train = split_tokens("train")
    evals = split_tokens("eval")
    uni = unigram_perplexity(train, evals, len(tokenizer))
    course_lib.perplexity(model)  # warm-up
    t0 = time.perf_counter()
    eval_ppl = course_lib.perplexity(model)
    eval_s = time.perf_counter() - t0
    facts = signal(model)
    facts.update(
        unigram_ppl=uni, unigram_ratio=eval_ppl / uni, validation_ppl=course_lib.perplexity(model, "validation"),
        eval_seconds=eval_s, eval_tokens=len(evals), train_tokens=len(train), parameters=count_parameters(model),
        samples=generations(model, tokenizer), machine=platform.processor() or platform.machine(),
        torch=torch.__version__, threads=torch.get_num_threads(), loadavg_1m=os.getloadavg()[0],
    )
    return facts


CARD = """# The course model

A small Llama (`LlamaForCausalLM`, transformers) trained from scratch on the course corpus by
`scripts/train_course_model.py`. Every number on this card is measured by
`scripts/measure_course_model.py` (JSON: `data/results/course_model.json`) and asserted on these
weights by `tests/test_course_model.py`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("data/course-model")
tokenizer = AutoTokenizer.from_pretrained("data/course-model")
# or: model, tokenizer = course_lib.load_course_model()
```

## Architecture

| | |
| --- | --- |
| parameters | {params:,} ({params_mb:.1f} MB in float32 safetensors) |
| layers | {layers} decoder layers, hidden size {hidden}, RMSNorm, RoPE |
| attention | grouped-query: {heads} query heads, {kv} key/value heads, head_dim {head_dim} |
| MLP | SwiGLU, intermediate size {inter} |
| vocabulary | {vocab} tokens: byte-level BPE trained on the train split |
| context | {seq} tokens in training and evaluation |

## Data

`course_lib.corpus`: stories, play-script dialogues, who-is-who rosters and question-and-answer
quizzes from a probabilistic grammar ({lexicon} content words), set in a fixed world of {n_chars}
characters and {n_towns} towns whose facts (job, home town, pet, favourite food, colour, best friend;
a town's landscape and product) must be memorised, with objects and strangers that must be copied
from earlier in the story and small sums to do.
Splits: train {n_train:,} documents ({train_tokens:,} tokens), validation {n_val}, eval {n_eval}
documents ({eval_tokens:,} tokens; byte-identical everywhere, checked by SHA-256).

## Training

AdamW (β = 0.9, 0.95, weight decay {wd}), peak learning rate {lr}, {warmup} warm-up steps then cosine
decay to 10 %, {steps} steps of {batch} × {seq} tokens ({seen:,} tokens, {epochs:.2f} epochs),
seed {seed}, float32, gradient clipping 1.0. Wall time **{wall_min:.1f} min** on this 2-core CPU
({threads} threads, torch {torch}).

## Measured

| | eval perplexity |
| --- | --- |
| unigram model fitted on train | {unigram:.2f} |
| course model, validation split | {val_ppl:.3f} |
| **course model, eval split** | **{eval_ppl:.3f}** ({ratio_uni:.3f} × unigram) |
| 50 % magnitude pruning, per layer, all decoder linears | {mag50:.3f} (× {mag50r:.3f}) |
| 2:4 magnitude pruning (2 largest of every 4 inputs) | {nm24:.3f} (× {nm24r:.3f}) |
| most important head ablated (layer {top_l}, head {top_h}) | + {top_d:.4f} |
| least important head ablated (layer {low_l}, head {low_h}) | + {low_d:.4f} |

One evaluation of the eval split took {eval_s:.1f} s when this card was measured (1-minute load
average {load:.1f} on the 2 cores). Head ablation gates one query head on the input
of `o_proj` (`course_lib.pruning.heads.head_mask`); the most important head costs
{head_ratio:.0f} × the perplexity of the least important one.

## Samples (greedy)

{samples}

## How the corpus got here

The course needs 50 % magnitude pruning to cost at least 10 % perplexity, so that pruning methods
separate as they do on real LLMs (Sun et al. 2023, Wanda, WikiText-2: LLaMA-7B goes from 5.68 to
17.29 at 50 % magnitude). This model loses {mag50_pct:.1f} %. Development runs of 500 steps measured
what moves this number: a template corpus lost ~0 %, the grammar with a 1,500-character world
~3-6 %; making memorised facts a large share of the tokens (rosters and quizzes), a larger world,
no weight decay and a lower learning rate (1e-3 instead of 3e-3: a less noisy, less flat solution)
each raised it. Facts are what a small model stores in superposition across many weights, and
what pruning destroys first.

## Limits

A teaching model: English-like but synthetic text, 256-token context, no instruction tuning.
Results on it show the *shape* of effects that real LLMs show (see the notebooks for the papers'
numbers beside ours), not their size.
"""


def main():
    torch.manual_seed(0)
    model, tokenizer = course_lib.load_course_model()
    root = course_lib.data_dir()
    log = json.loads((root / "course-model" / "training_log.json").read_text())
    out = root / "results" / "course_model.json"
    if "--card-only" in sys.argv:  # rewrite the card from the measured JSON
        facts = json.loads(out.read_text())
    else:
        facts = measure(model, tokenizer)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(facts, indent=1) + "\n")
    train_tokens, eval_tokens, uni, eval_s = (facts["train_tokens"], facts["eval_tokens"], facts["unigram_ppl"],
                                              facts["eval_seconds"])
    cfg = model.config
    card = CARD.format(
        params=facts["parameters"], params_mb=(root / "course-model" / "model.safetensors").stat().st_size / 1e6,
        layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=cfg.num_attention_heads,
        kv=cfg.num_key_value_heads, head_dim=cfg.hidden_size // cfg.num_attention_heads,
        inter=cfg.intermediate_size, vocab=len(tokenizer), seq=log["seq_len"], lexicon=len(lexicon()),
        n_chars=N_CHARACTERS, n_towns=N_TOWNS, n_train=SPLIT_SIZES["train"], train_tokens=train_tokens,
        n_val=SPLIT_SIZES["validation"], n_eval=SPLIT_SIZES["eval"], eval_tokens=eval_tokens,
        wd=log["weight_decay"], lr=log["lr"], warmup=log["warmup"], steps=log["steps"], batch=log["batch_size"],
        seen=log["tokens_seen"], epochs=log["tokens_seen"] / train_tokens, seed=log["seed"],
        wall_min=log["wall_time_s"] / 60, threads=log["threads"], torch=log["torch"],
        unigram=uni, val_ppl=facts["validation_ppl"], eval_ppl=facts["eval_ppl"], ratio_uni=facts["unigram_ratio"],
        mag50=facts["magnitude_50_ppl"], mag50r=facts["magnitude_50_ratio"], nm24=facts["nm_2_4_ppl"],
        nm24r=facts["nm_2_4_ratio"], top_l=facts["most_important_head"]["layer"],
        top_h=facts["most_important_head"]["head"], top_d=facts["most_important_head"]["delta_ppl"],
        low_l=facts["least_important_head"]["layer"], low_h=facts["least_important_head"]["head"],
        low_d=facts["least_important_head"]["delta_ppl"], eval_s=eval_s, head_ratio=facts["head_ablation_ratio"],
        samples="\n".join(f"* `{s!r}`" for s in facts["samples"]), load=facts.get("loadavg_1m", float("nan")),
        mag50_pct=100 * (facts["magnitude_50_ratio"] - 1),
    )
    (root / "course-model" / "README.md").write_text(card)
    print(json.dumps({k: v for k, v in facts.items() if k != "head_ablation_delta_ppl"}, indent=1))
    print(f"card written to {root / 'course-model' / 'README.md'}")


if __name__ == "__main__":
    main()
