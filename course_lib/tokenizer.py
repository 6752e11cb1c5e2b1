"""Train the course tokenizer: a byte-level BPE with at most 1,024 tokens.

Byte-level means every string can be encoded (no unknown token); the BPE merges are
learned on the course's train split only, so frequent words become single tokens and
rare names split into pieces (copying them then takes several attention steps).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .corpus import generate_split

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(vocab_size: int = 1024, n_docs: int = 20_000) -> PreTrainedTokenizerFast:
    """BPE over ``n_docs`` train documents; returns a Hugging Face fast tokenizer."""
    if not 300 <= vocab_size <= 1024:
        raise ValueError(f"vocab_size must be in [300, 1024] for the course model, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generate_split("train", n_docs), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.model_max_length = 512  # = max_position_embeddings
    return fast
