"""Small, deliberately capacity-limited causal LMs for the lab tasks, built from a config (no download).

MixCE helps only a model that cannot represent P exactly (ALGORITHMS.md 2(g): a full-capacity model shows no benefit,
because MixCE's population optimum is a sharpened P). The default here has a hidden size below the vocabulary size,
so its next-token logits are rank-limited and it cannot put exactly zero mass on the impossible half of a row.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .bigram import BigramTask


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int | None = None,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A fresh Qwen2 decoder sized for a lab task, with the tokenizer's special ids written into its config.

    Args:
        tokenizer: the task tokenizer (``task.tokenizer()``); fixes the vocabulary and the pad/bos/eos ids.
        hidden_size: width; keep it below ``len(tokenizer)`` for a capacity-limited model.
        num_layers: decoder layers.
        num_heads: attention heads (``hidden_size`` must divide by it); one key-value head per query head.
        max_positions: longest sequence, ``<bos>`` included; defaults to ``tokenizer.model_max_length``, which a lab
            task's tokenizer sets to ``max_len + 1``.
        seed: initialisation seed, so that arms built from the same seed start from the same weights.
    """
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions or tokenizer.model_max_length,
        tie_word_embeddings=True,  # as the harness TinyGPT (ALGORITHMS.md 1); halves the parameter count
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's global RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model


class BigramOracle(torch.nn.Module):
    """The task's exact P behind a causal-LM interface: the reference point of the metrics (JS 0, no invalid sample).

    ``forward`` returns ``logits = log P(. | prefix)`` in the Hugging Face output shape. A bigram with a forced EOS
    needs only the last token and its position, so the key-value cache is ignored and ``position_ids`` (or, without
    them, positions from 0) give the position. Rows with no next token (after ``<eos>`` or ``<pad>``) are uniform, so
    that sampling past the end stays defined.
    """

    def __init__(self, task: BigramTask) -> None:
        super().__init__()
        self.task = task

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: object | None = None,
        use_cache: bool | None = None,
    ) -> CausalLMOutputWithPast:
        offset = 0 if position_ids is None else int(position_ids.reshape(-1)[0])
        probs = self.task.next_token_probs(input_ids.cpu(), offset=offset)
        logits = torch.where(probs.sum(-1, keepdim=True) > 0, probs.log(), 0.0).float().to(input_ids.device)
        return CausalLMOutputWithPast(logits=logits)
