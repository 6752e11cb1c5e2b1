import hashlib

import pytest

from course_lib import corpus
from course_lib.corpus import Rng, generate_story, split_text

# SHA-256 of split_text("eval"): the course's yardstick must be byte-identical everywhere.
EVAL_SHA256 = "7f52ad6ab920b4a7d5cce2fd60c98dd503ad26860d82035bbb167828b9c68a0c"


def test_eval_split_is_byte_identical():
    text = split_text("eval")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == EVAL_SHA256


def test_splitmix64_reference_values():
    # First outputs of SplitMix64 seeded with 0 (reference values of the published algorithm).
    rng = Rng(0)
    assert [rng.next64() for _ in range(3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_rng_below_is_in_range_and_uses_all_values():
    rng = Rng(1)
    seen = {rng.below(7) for _ in range(500)}
    assert seen == set(range(7))
    with pytest.raises(ValueError):
        rng.below(0)


def test_stories_are_pure_functions_of_split_and_index():
    assert generate_story("train", 5) == generate_story("train", 5)
    assert generate_story("train", 5) != generate_story("train", 6)
    assert generate_story("train", 5) != generate_story("eval", 5)


def test_splits_do_not_share_documents():
    train = set(corpus.generate_split("train", 3000))
    evals = corpus.generate_split("eval")
    assert sum(doc in train for doc in evals) == 0


def test_corpus_has_entities_to_copy_facts_and_counting():
    docs = corpus.generate_split("train", 800)
    text = "\n".join(docs)
    by_name = {c.name: c for c in corpus.CHARACTERS}
    # characters recur within a story (to be copied) and many of the world's characters appear
    story = next(d for d in docs if d.startswith(("Once", "One", "Last", "Long")))
    used = [n for n in by_name if f" {n} " in f" {story} " or story.startswith(n)]
    assert used and max(story.count(n) for n in used) >= 2
    assert sum(n in text for n in list(by_name)[:200]) > 150
    # memorised facts are consistent: every roster line agrees with the world
    checked = 0
    for doc in docs:
        for line in doc.splitlines():
            name, _, rest = line.partition(": ")
            if name in by_name and " from " in rest and rest.split(" from ")[0] in corpus._ROLES:
                c = by_name[name]
                assert rest.startswith(f"{c.job} from {c.town.name}"), line
                checked += 1
    assert checked > 100
    assert "Now " in text and " more." in text  # counting sentences
    assert " that " in text and any(s in text for s in ("because", "although", "until"))  # free grammar


def test_quiz_answers_and_roster_friends_agree_with_the_world():
    docs = corpus.generate_split("train", 800)
    by_name = {c.name: c for c in corpus.CHARACTERS}
    towns = {t.name: t for t in corpus.TOWNS}
    answers = 0
    for line in "\n".join(docs).splitlines():
        if line.startswith("Q: "):
            question, _, answer = line[3:].partition(" A: ")
            subject = answer.split(" ")[0].removesuffix("'s")
            if subject in by_name:
                c = by_name[subject]
                expected = {"What does": f"{c.name} is ", "Where does": f"{c.name} lives in {c.town.name}.",
                            "What pet": f"{c.name} has ", "What colour": f"{c.name} wears {c.colour}.",
                            "Who is": f"{c.name}'s best friend is {c.friend}."}
                if question.endswith("like to eat?"):
                    assert answer == f"{c.name} likes {c.food}.", line
                else:
                    prefix = next(v for k, v in expected.items() if question.startswith(k))
                    assert answer.startswith(prefix), line
                    if question.startswith("What does"):
                        assert answer.endswith(f" {c.job}."), line
                    if question.startswith("What pet"):
                        assert answer.endswith(f" {c.pet[0]}."), line
            else:
                t = towns[subject]
                assert answer in (f"{t.name} is famous for {t.product}.", f"{t.name} is {t.feature}."), line
            answers += 1
        name, _, rest = line.partition(": ")
        if name in by_name and rest.startswith("best friend of "):
            c = by_name[name]
            assert rest == f"best friend of {c.friend}, always in {c.colour}.", line
    assert answers > 200
    assert all(c.friend != c.name and c.friend in by_name for c in corpus.CHARACTERS)


def test_lexicon_is_a_few_hundred_words_and_documents_vary():
    assert 300 <= len(corpus.lexicon()) <= 1000
    docs = corpus.generate_split("validation", 200)
    lengths = [len(d.split()) for d in docs]
    assert min(lengths) >= 15 and max(lengths) <= 400
    assert len(set(docs)) == len(docs)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        corpus.generate_split("test")
