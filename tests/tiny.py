"""Build a tiny Qwen2 causal LM and a byte-level BPE tokenizer trained on a small corpus (no download).

Used by the test fixtures and by subprocess tests (``python -m tests.tiny OUT_DIR``) that need a model on disk.
"""

from __future__ import annotations

import os
import random
import sys

WORDS = (
    "the a model learns text from data and writes new words when it samples tokens likelihood ratio reward "
    "policy reference step answer question cat dog runs fast slow over under red blue green small large"
).split()


def _corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(n)]


CORPUS = _corpus()

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 300, corpus: list[str] | None = None):
    """Byte-level BPE trained on ``corpus`` (default ``CORPUS``); a richer corpus is needed to reach a larger vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS if corpus is None else corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    out_dir: str,
    hidden_size: int = 32,
    seed: int = 0,
    *,
    num_layers: int = 2,
    vocab_size: int = 300,
    corpus: list[str] | None = None,
    max_position_embeddings: int = 256,
) -> str:
    """Save a tiny Qwen2 model and its tokenizer to ``out_dir`` and return it.

    The keyword-only options (layers, tokenizer vocab and corpus, context) build bigger models for the benchmarks;
    the defaults are the test model.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(vocab_size, corpus)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(build_tiny_model(sys.argv[1]))
