"""The model card's facts, asserted on the committed weights.

Recomputes the pedagogical signal with course_lib's pruners and checks it both against
the thresholds the course needs and against the numbers the card (via
data/results/course_model.json) states.
"""

import json

import pytest
import torch

import course_lib
from course_lib.data import split_tokens
from course_lib.evaluation import unigram_perplexity


@pytest.fixture(scope="module")
def facts():
    return json.loads((course_lib.data_dir() / "results" / "course_model.json").read_text())


@pytest.fixture(scope="module")
def measured():
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure", course_lib.data_dir().parent / "scripts" /
                                                  "measure_course_model.py")
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    model, _ = course_lib.load_course_model()
    return measure.signal(model)


def test_dense_model_beats_unigram_by_far(facts):
    model, tok = course_lib.load_course_model()
    dense = course_lib.perplexity(model)
    uni = unigram_perplexity(split_tokens("train"), split_tokens("eval"), len(tok))
    assert dense <= 0.3 * uni
    assert dense == pytest.approx(facts["eval_ppl"], rel=1e-4)
    assert uni == pytest.approx(facts["unigram_ppl"], rel=1e-6)


def test_magnitude_50_hurts_but_not_catastrophically(measured, facts):
    # Issue #2: +10 % at least (methods must separate), at most 4x (the model must not collapse).
    ratio = measured["magnitude_50_ratio"]
    assert 1.10 <= ratio <= 4.0
    assert ratio == pytest.approx(facts["magnitude_50_ratio"], rel=1e-4)


def test_2_4_hurts_more_than_50_percent_unstructured(measured, facts):
    assert measured["nm_2_4_ppl"] > measured["magnitude_50_ppl"]
    assert measured["nm_2_4_ppl"] == pytest.approx(facts["nm_2_4_ppl"], rel=1e-4)


def test_heads_specialise(measured, facts):
    top = measured["most_important_head"]["delta_ppl"]
    low = measured["least_important_head"]["delta_ppl"]
    assert top > 0 and top >= 5 * max(low, 0.0)
    assert top == pytest.approx(facts["most_important_head"]["delta_ppl"], rel=1e-3)
    delta = torch.tensor(measured["head_ablation_delta_ppl"])
    assert delta.shape == (course_lib.load_course_model()[0].config.num_hidden_layers, 8)


def test_card_states_the_measured_numbers(facts):
    card = (course_lib.data_dir() / "course-model" / "README.md").read_text()
    for key in ("eval_ppl", "magnitude_50_ppl", "nm_2_4_ppl", "validation_ppl"):
        assert f"{facts[key]:.3f}" in card, key
    assert f"{facts['parameters']:,}" in card
    assert "Wall time" in card
