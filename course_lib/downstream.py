"""A downstream task for the course model: a *new* world of facts to learn.

Movement pruning (Sanh et al. 2020) is meant for fine-tuning a pretrained model on a new
task, where the weights must move. The course model has memorised the facts of its world
(``course_lib.corpus.CHARACTERS``); this module builds a second, small world with the same
grammar but new names and new facts, generated from a seed of its own, so that the pretrained
model cannot know them. Everything is a pure function of its arguments (SplitMix64, as the
corpus), the same on every machine; ``course_lib.corpus`` is not changed.

* :data:`NEW_CHARACTERS`: ``N_NEW`` characters whose names never occur in the course world,
  each with a job, a home town (one of ``N_NEW_TOWNS`` new towns), a pet, a favourite food
  and a colour.
* :func:`new_world_documents`: quiz documents about them in the course's quiz format
  (``Q: What does X do? A: X is a baker.``), split ``"train"`` or ``"eval"`` (different
  documents, the same facts: the task is to learn the facts).
* :func:`fact_prompts` / :func:`fact_accuracy`: one prompt per fact
  (``Q: What does X do? A: X is a``) and the fraction of facts whose answer tokens the model
  predicts exactly (greedy, teacher-forced), with the mean answer-token NLL.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from .corpus import (_ANIMALS, _COLOURS, _FOODS, _ROLES, _TOWN_SUFFIXES, CHARACTERS, TOWNS, Rng, _a, _syllable,
                     _unique_names)

N_NEW = 40
N_NEW_TOWNS = 10
KINDS = ("job", "town", "pet", "food", "colour")
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class NewCharacter:
    name: str
    job: str
    town: str
    pet: str
    food: str
    colour: str


def _build_new_world() -> list[NewCharacter]:
    rng = Rng(0x5EED_2020)
    taken = {c.name.lower() for c in CHARACTERS} | {t.name.lower() for t in TOWNS}
    taken |= {"four", "five", "nine", "then", "than", "that", "this"}
    towns = _unique_names(rng, N_NEW_TOWNS, lambda r: _syllable(r) + r.choice(_TOWN_SUFFIXES), taken, (4, 9))
    names = _unique_names(rng, N_NEW, lambda r: _syllable(r) + _syllable(r), taken, (4, 9))
    return [NewCharacter(n, rng.choice(_ROLES), rng.choice(towns), rng.choice(_ANIMALS)[0], rng.choice(_FOODS),
                         rng.choice(_COLOURS)) for n in names]


NEW_CHARACTERS = _build_new_world()


def _qa(c: NewCharacter, kind: str) -> tuple[str, str]:
    """(question + answer prefix, answer) of one fact."""
    if kind == "job":
        art, rest = _a(c.job).split(" ", 1)
        return f"Q: What does {c.name} do? A: {c.name} is {art}", f" {rest}."
    if kind == "town":
        return f"Q: Where does {c.name} live? A: {c.name} lives in", f" {c.town}."
    if kind == "pet":
        art, rest = _a(c.pet).split(" ", 1)
        return f"Q: What pet does {c.name} have? A: {c.name} has {art}", f" {rest}."
    if kind == "food":
        return f"Q: What does {c.name} like to eat? A: {c.name} likes", f" {c.food}."
    if kind == "colour":
        return f"Q: What colour does {c.name} wear? A: {c.name} wears", f" {c.colour}."
    raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")


def new_world_document(split: str, index: int) -> str:
    """Quiz document ``index`` of ``split`` about the new world (8 to 12 questions)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    digest = hashlib.sha256(f"new-world/{split}/{index}".encode()).digest()
    rng = Rng(int.from_bytes(digest[:8], "little"))
    lines = [rng.weighted([("Questions and answers:", 3), ("Quiz:", 2), ("Do you know?", 1)])]
    for _ in range(8 + rng.below(5)):
        q, a = _qa(rng.choice(NEW_CHARACTERS), rng.choice(KINDS))
        lines.append(q + a)
    return "\n".join(lines)


def new_world_documents(split: str, n: int, start: int = 0) -> list[str]:
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return [new_world_document(split, i) for i in range(start, start + n)]


def fact_prompts() -> list[tuple[str, str]]:
    """Every fact of the new world once: ``[(prompt, answer)]``, ``N_NEW * len(KINDS)`` of them."""
    return [_qa(c, kind) for c in NEW_CHARACTERS for kind in KINDS]


@torch.no_grad()
def fact_accuracy(model, tokenizer, prompts=None) -> dict[str, float]:
    """``{"accuracy", "answer_nll", "answer_ppl"}`` of ``model`` on the facts.

    Each prompt is ``bos + prompt + answer``; a fact counts as known when every answer token
    (the answer's words and the final period) is the model's argmax given the tokens before it.
    ``answer_nll`` is the mean NLL per answer token (nats), ``answer_ppl`` its exp.
    """
    prompts = fact_prompts() if prompts is None else prompts
    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device
    seqs, starts = [], []
    for prompt, answer in prompts:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        seqs.append([tokenizer.bos_token_id] + p + a)
        starts.append(1 + len(p))
    width = max(map(len, seqs))
    pad = tokenizer.eos_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)  # right padding: causal
    logits = model(input_ids=ids, use_cache=False).logits.float()  # [N, width, vocab]
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    correct, nll, n_tok = 0, 0.0, 0
    for i, (s, start) in enumerate(zip(seqs, starts)):
        target = torch.tensor(s[start:], device=device)
        pos = torch.arange(start - 1, len(s) - 1, device=device)
        lp = logp[i, pos]  # [answer_len, vocab]
        correct += int(torch.equal(lp.argmax(-1), target))
        nll += -lp.gather(1, target[:, None]).double().sum().item()
        n_tok += len(target)
    model.train(was_training)
    return {"accuracy": correct / len(prompts), "answer_nll": nll / n_tok, "answer_ppl": math.exp(nll / n_tok)}
