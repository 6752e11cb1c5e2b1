"""The downstream task of notebook 03: a new world of facts the course model does not know."""

import pytest

from course_lib import downstream
from course_lib.corpus import CHARACTERS, TOWNS


def test_new_world_is_new_and_fixed():
    names = [c.name for c in downstream.NEW_CHARACTERS]
    assert len(names) == len(set(names)) == downstream.N_NEW
    old = {c.name for c in CHARACTERS} | {t.name for t in TOWNS}
    assert not old & set(names)
    assert not old & {c.town for c in downstream.NEW_CHARACTERS}
    assert len({c.town for c in downstream.NEW_CHARACTERS}) <= downstream.N_NEW_TOWNS
    # a pure function: the first character and the first document never change
    c = downstream.NEW_CHARACTERS[0]
    assert downstream._build_new_world()[0] == c
    assert downstream.new_world_document("train", 0) == downstream.new_world_document("train", 0)
    assert downstream.new_world_document("train", 0) != downstream.new_world_document("eval", 0)


def test_documents_state_the_facts():
    facts = {p + a for p, a in downstream.fact_prompts()}
    assert len(facts) == downstream.N_NEW * len(downstream.KINDS)
    for doc in downstream.new_world_documents("eval", 5):
        lines = doc.split("\n")[1:]
        assert 8 <= len(lines) <= 12
        assert all(line in facts for line in lines)
    with pytest.raises(ValueError):
        downstream.new_world_document("validation", 0)
    with pytest.raises(ValueError):
        downstream.new_world_documents("train", 0)


def test_pretrained_model_does_not_know_the_facts():
    import course_lib

    model, tok = course_lib.load_course_model()
    res = downstream.fact_accuracy(model, tok)
    assert 0 <= res["accuracy"] < 0.2 and res["answer_nll"] > 2.0
    # a model fed the answers in its prompts would: the accuracy counts whole answers
    one = downstream.fact_accuracy(model, tok, prompts=[("Q: What does Maria do? A: Maria is a", " baker.")])
    assert set(one) == {"accuracy", "answer_nll", "answer_ppl"}


def test_movement_downstream_script_runs_every_method_on_the_same_schedule(load_script):
    """scripts/movement_downstream.py on a tiny budget: every method ends at the asked sparsity with
    its own mask behaviour (random nested, magnitude never brings a weight back), and the result
    does not depend on which worker ran it (the same run twice gives the same numbers)."""
    script = load_script("movement_downstream")
    cfg = dict(script.CONFIG, steps=6, eval_every=3, n_train_docs=40, ppl_tokens=256)
    from course_lib import load_course_model
    from course_lib.model import prunable_linears
    from course_lib.pruning.common import n_to_remove

    expected = sum(n_to_remove(m.weight.numel(), 0.9) for m in prunable_linears(load_course_model()[0]).values())
    runs = {m: script.run_one(m, 0.9, cfg) for m in ("movement", "gradual magnitude", "random")}
    for method, r in runs.items():
        assert len(r["losses"]) == 6 and r["curve"][-1]["step"] == 6, method
        assert r["n_pruned"] == expected, method  # exactly round(0.9 * numel) of every linear
        assert 0.0 <= r["accuracy"] <= 1.0 and r["answer_nll"] > 0
    assert runs["gradual magnitude"]["kept_at_end_but_pruned_at_some_step"] == 0
    assert runs["random"]["flips_back_per_step_total"] == 0
    again = script.run_one("movement", 0.9, cfg)
    assert again["losses"] == runs["movement"]["losses"] and again["answer_nll"] == runs["movement"]["answer_nll"]
    other_seed = script.run_one("movement", 0.9, dict(cfg, seed=1, data_seed=1))
    assert other_seed["losses"] != runs["movement"]["losses"]
