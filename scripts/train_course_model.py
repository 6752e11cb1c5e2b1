"""Train the course model from scratch: tokenizer, then a small Llama, on the course corpus.

    python scripts/train_course_model.py            # writes data/course-model/
    python scripts/train_course_model.py --steps 20 --out /tmp/smoke   # quick smoke run

Deterministic for a given seed on a given machine (fixed seeds, fixed data order).
Prints the wall time; the model card (README.md) is written afterwards by
scripts/measure_course_model.py, which measures what the card states.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.corpus import SPLIT_SIZES, generate_split  # noqa: E402
from course_lib.data import SEQ_LEN, encode_documents  # noqa: E402
from course_lib.evaluation import perplexity  # noqa: E402
from course_lib.model import count_parameters, course_config  # noqa: E402
from course_lib.tokenizer import train_tokenizer  # noqa: E402
from course_lib.training import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "course-model"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=0, help="also save to OUT/step-N every N steps")
    args = ap.parse_args()

    t0 = time.time()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(vocab_size=1024)
    tokenizer.save_pretrained(str(out))
    print(f"tokenizer: {len(tokenizer)} tokens ({time.time() - t0:.1f} s)")

    stream = encode_documents(generate_split("train"), tokenizer)
    val = encode_documents(generate_split("validation"), tokenizer)
    print(f"train split: {SPLIT_SIZES['train']} documents, {len(stream):,} tokens ({time.time() - t0:.1f} s)")

    config = course_config(vocab_size=len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config)
    print(f"model: {count_parameters(model):,} parameters")

    gen = torch.Generator().manual_seed(args.seed + 1)

    def batch_iter():
        while True:
            starts = torch.randint(0, len(stream) - SEQ_LEN, (args.batch_size,), generator=gen)
            yield {"input_ids": torch.stack([stream[s : s + SEQ_LEN] for s in starts.tolist()])}

    log = {"loss": [], "val_ppl": {}}

    def on_step(step, loss):
        log["loss"].append(round(loss, 4))
        done = step + 1
        if args.checkpoint_every and done % args.checkpoint_every == 0 and done < args.steps:
            ppl = perplexity(model, tokens=val)
            log["val_ppl"][done] = round(ppl, 4)
            print(f"step {done}: val ppl {ppl:.3f} ({time.time() - t0:.0f} s)", flush=True)
            model.save_pretrained(str(out / f"step-{done}"))
            model.train()

    train(model, batch_iter(), args.steps, args.lr, warmup=args.warmup, min_lr_ratio=0.1,
          weight_decay=args.weight_decay, desc="pre-train", on_step=on_step)
    wall = time.time() - t0
    val_ppl = perplexity(model, tokens=val)
    model.save_pretrained(str(out))
    log.update(
        steps=args.steps, batch_size=args.batch_size, seq_len=SEQ_LEN, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, seed=args.seed, tokens_seen=args.steps * args.batch_size * SEQ_LEN,
        train_tokens=len(stream), parameters=count_parameters(model), wall_time_s=round(wall, 1),
        torch=torch.__version__, threads=torch.get_num_threads(), final_val_ppl=round(val_ppl, 4),
    )
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"validation perplexity {val_ppl:.3f}")
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min) on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
