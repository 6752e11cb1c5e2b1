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


def _spot_checked_heads(facts) -> list[tuple[int, int]]:
    """The card's most and least important heads, and one more head per layer (seeded).

    The committed 6x8 ablation matrix is checked at these 8 points, not all 48: each ablation is
    a full eval-split perplexity, and the suite runs this module twice (two kernel settings).
    """
    delta = torch.tensor(facts["head_ablation_delta_ppl"])
    gen = torch.Generator().manual_seed(0)
    picks = {(facts["most_important_head"]["layer"], facts["most_important_head"]["head"]),
             (facts["least_important_head"]["layer"], facts["least_important_head"]["head"])}
    for layer in range(delta.shape[0]):
        picks.add((layer, int(torch.randint(delta.shape[1], (1,), generator=gen))))
    return sorted(picks)


@pytest.fixture(scope="module")
def measured(facts):
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure", course_lib.data_dir().parent / "scripts" /
                                                  "measure_course_model.py")
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    model, _ = course_lib.load_course_model()
    return measure.signal(model, heads=_spot_checked_heads(facts))


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
    committed = torch.tensor(facts["head_ablation_delta_ppl"], dtype=torch.float64)
    config = course_lib.load_course_model()[0].config
    assert committed.shape == (config.num_hidden_layers, config.num_attention_heads)
    # the card's claim, on its matrix: one head matters, another barely does
    top, low = committed.max().item(), committed.min().item()
    assert top > 0 and top >= 5 * max(low, 0.0)
    assert facts["most_important_head"]["delta_ppl"] == top and facts["least_important_head"]["delta_ppl"] == low
    # the matrix itself, re-measured on the committed weights at the spot-checked heads
    delta = torch.tensor(measured["head_ablation_delta_ppl"], dtype=torch.float64)
    checked = ~delta.isnan()
    assert int(checked.sum()) == len(_spot_checked_heads(facts)) >= committed.shape[0] + 1
    assert torch.allclose(delta[checked], committed[checked], rtol=1e-3, atol=2e-5), (delta[checked],
                                                                                       committed[checked])
    for key in ("most_important_head", "least_important_head"):
        assert {k: measured[key][k] for k in ("layer", "head")} == {k: facts[key][k] for k in ("layer", "head")}


def test_card_states_the_measured_numbers(facts):
    card = (course_lib.data_dir() / "course-model" / "README.md").read_text()
    for key in ("eval_ppl", "magnitude_50_ppl", "nm_2_4_ppl", "validation_ppl"):
        assert f"{facts[key]:.3f}" in card, key
    assert f"{facts['parameters']:,}" in card
    assert "Wall time" in card
