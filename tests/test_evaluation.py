import math

import pytest
import torch

from course_lib.data import SEQ_LEN
from course_lib.evaluation import perplexity, token_losses, unigram_perplexity
from conftest import tiny_model


def _manual_ppl(model, stream):
    nll, n = 0.0, 0
    for i in range(0, len(stream), SEQ_LEN):
        block = stream[i:i + SEQ_LEN]
        if len(block) < 2:
            continue
        out = model(input_ids=block[None], labels=block[None])
        nll += out.loss.item() * (len(block) - 1)
        n += len(block) - 1
    return math.exp(nll / n)


@torch.no_grad()
def test_perplexity_is_exact_and_batch_size_independent():
    model = tiny_model("gqa", max_position_embeddings=SEQ_LEN)
    stream = torch.randint(0, 97, (3 * SEQ_LEN + 77,))
    ref = _manual_ppl(model, stream)
    for bs in (1, 2, 16):
        assert perplexity(model, tokens=stream, batch_size=bs) == pytest.approx(ref, rel=1e-5)
    # a random model is close to uniform over 97 tokens
    assert 50 < ref < 200
    # max_tokens keeps a prefix
    assert perplexity(model, tokens=stream, max_tokens=SEQ_LEN) == pytest.approx(
        _manual_ppl(model, stream[:SEQ_LEN]), rel=1e-5)


@torch.no_grad()
def test_token_losses_match_cross_entropy_and_restore_mode():
    model = tiny_model("mha")
    ids = torch.randint(0, 97, (2, 12))
    nll = token_losses(model, ids)
    assert nll.shape == (2, 11)
    assert nll.mean().item() == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-5)
    model.train()
    perplexity(model, tokens=ids[0])
    assert model.training


def test_perplexity_bad_input():
    model = tiny_model("mha")
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, tokens=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_tokens"):
        perplexity(model, tokens=torch.zeros(5, dtype=torch.long), max_tokens=1)
    with pytest.raises(ValueError, match="split"):
        perplexity(model, split="test")


def test_course_model_eval_perplexity_is_deterministic_and_fast():
    import time

    import course_lib

    model, _ = course_lib.load_course_model()
    course_lib.perplexity(model, max_tokens=512)  # warm caches (tokenisation)
    start = time.perf_counter()
    a = course_lib.perplexity(model)
    elapsed = time.perf_counter() - start
    b = course_lib.perplexity(model, batch_size=5)
    assert a == pytest.approx(b, rel=1e-5)
    print(f"eval perplexity {a:.4f} in {elapsed:.2f} s")
    assert elapsed < 30  # the 5 s goal is a benchmark figure (model card), not a timed assertion


def test_unigram_perplexity_of_uniform_stream():
    stream = torch.arange(10).repeat(100)
    assert unigram_perplexity(stream, stream, 10) == pytest.approx(10.0, rel=1e-6)
