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


def test_course_model_eval_perplexity_does_not_depend_on_batch_size():
    # (its speed is a benchmark figure -- the model card's wall time -- not a timed assertion)
    import course_lib

    model, _ = course_lib.load_course_model()
    a = course_lib.perplexity(model)
    b = course_lib.perplexity(model, batch_size=5)
    assert a == pytest.approx(b, rel=1e-5)


def test_unigram_perplexity_of_uniform_stream():
    stream = torch.arange(10).repeat(100)
    assert unigram_perplexity(stream, stream, 10) == pytest.approx(10.0, rel=1e-6)


class _CharTokenizer:
    """A tiny stand-in for a HF tokenizer: one id per character, special tokens 0..2."""

    bos_token_id, eos_token_id = 1, 2
    _vocab = {"<|endoftext|>": 0, "<s>": 1, "</s>": 2}

    def __len__(self):
        return 97

    def get_vocab(self):
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token):
        return self._vocab[token]

    def __call__(self, docs, add_special_tokens=False):
        return {"input_ids": [[3 + (ord(c) % 94) for c in d] for d in docs]}


@torch.no_grad()
def test_perplexity_of_documents_with_a_separator_and_seq_len():
    from course_lib.data import encode_documents

    model = tiny_model("gqa", max_position_embeddings=128)
    docs, tok = ["the cat sat", "on the mat", "and slept"], _CharTokenizer()
    stream = encode_documents(docs, tok, separator="<|endoftext|>")
    assert stream[0] == 0 and stream[-1] == 0 and (stream == 0).sum() == len(docs) + 1
    assert encode_documents(docs, tok, separator=0).tolist() == stream.tolist()
    # the course layout is unchanged without a separator
    assert encode_documents(docs, tok)[:2].tolist() == [1, 3 + ord("t") % 94]
    for seq_len in (8, 16):
        manual_nll, n = 0.0, 0
        for i in range(0, len(stream), seq_len):
            block = stream[i:i + seq_len]
            if len(block) >= 2:
                manual_nll += model(input_ids=block[None], labels=block[None]).loss.item() * (len(block) - 1)
                n += len(block) - 1
        got = perplexity(model, documents=docs, tokenizer=tok, separator="<|endoftext|>", seq_len=seq_len)
        assert got == pytest.approx(math.exp(manual_nll / n), rel=1e-5)
    with pytest.raises(ValueError, match="single token"):
        encode_documents(docs, tok, separator="<eot>")
    with pytest.raises(ValueError, match="tokenizer="):
        perplexity(model, documents=docs)
    with pytest.raises(ValueError, match="seq_len"):
        perplexity(model, tokens=stream, seq_len=1)
    with pytest.raises(TypeError, match="list of strings"):
        encode_documents("one string", tok)


def test_perplexity_refuses_a_model_of_another_vocabulary():
    model = tiny_model("gqa")  # vocabulary 97, the course tokenizer has 1024
    with pytest.raises(ValueError, match="vocabulary of 97 tokens"):
        perplexity(model)
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        perplexity(model, tokens=torch.tensor([0, 5, 500]))


@torch.no_grad()
def test_chunked_loss_equals_full_logits():
    model = tiny_model("qwen2")
    ids = torch.randint(0, 97, (3, 40))
    full = token_losses(model, ids)
    for max_logits in (97, 1000, 3 * 39 * 97 - 1):
        assert torch.allclose(token_losses(model, ids, max_logits=max_logits), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_logits"):
        token_losses(model, ids, max_logits=0)


def test_batches_from_a_given_stream_or_documents():
    from course_lib.data import batches

    stream = torch.arange(1000)
    a = batches(tokens=stream, n_batches=2, batch_size=3, seq_len=16, seed=1)
    assert a[0]["input_ids"].shape == (3, 16)
    first = a[0]["input_ids"][0]
    assert torch.equal(first, torch.arange(int(first[0]), int(first[0]) + 16))  # a contiguous window
    assert all(torch.equal(x["input_ids"], y["input_ids"])
               for x, y in zip(a, batches(tokens=stream, n_batches=2, batch_size=3, seq_len=16, seed=1)))
    docs = ["x" * 50] * 3
    b = batches(documents=docs, tokenizer=_CharTokenizer(), separator="<|endoftext|>", n_batches=1, batch_size=2,
                seq_len=8)
    assert b[0]["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError, match="not both"):
        batches(tokens=stream, documents=docs)
    with pytest.raises(ValueError, match="only 10 tokens"):
        batches(tokens=torch.arange(10), seq_len=16)
