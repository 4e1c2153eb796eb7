"""A sparse random bigram language with EOS: the known-P task on which MixCE's claim can be measured exactly.
Maths and protocol: ALGORITHMS.md 2(d) (official ``synthetic_data``) and 2(g) (our CPU experiment).

    P(x) = prod_t P[x_{t-1}, x_t],   x_0 = <bos>,   x_T = <eos>,   T <= max_len

Choices made here:
- Every row (the start row and one per normal token) is Dirichlet(alpha=0.5); each non-EOS entry is zeroed with
  probability ``sparsity`` (0.5), then the row is renormalised [code: synthetic.py]. Half the table is impossible, so
  mass a model puts there is measurable exactly.
- The start row is the ``<bos>`` row and has no EOS, so no sequence is empty; the official first token is uniform,
  ours is a sparse Dirichlet row like the others [ours].
- EOS is forced at position ``max_len``: a sequence holds at most ``max_len - 1`` normal tokens [code: forced at 500].
- ``eos=False`` gives fixed-length sequences instead: exactly ``max_len`` normal tokens, no EOS anywhere (EOS is an
  impossible token), as DDO's experiment needs (ALGORITHMS.md 5(g): a model cannot learn "short = fake"). The table
  is drawn from the same random stream with the EOS entry of every row zeroed. SFT appends an EOS string to text, so
  ``dataset`` then returns token ids (an ``input_ids`` column) instead of text [ours].
- The task lives in token-id space (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, symbols ``t0``.. from 3) so that the
  tokenizer, the model and the exact metrics all index the same table, with no mapping to get wrong [ours].
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class BigramTask:
    """A seeded sparse bigram distribution over ``vocab_size`` symbols (normal tokens plus EOS).

    Args:
        vocab_size: symbols a sequence can emit, EOS included (ALGORITHMS.md 2(g) uses 24 for TinyGPT, 63 for the
            low-rank bigram). The model vocabulary is ``vocab_size + 2`` (``<pad>`` and ``<bos>`` added).
        max_len: EOS is forced at this position, so sequences hold at most ``max_len - 1`` normal tokens.
        seed: draws the table (numpy ``default_rng``), so the same seed gives the same ``transition``.
        alpha: Dirichlet concentration of every row.
        sparsity: probability that a non-EOS entry is zeroed before renormalising.
        eos: ``False`` for fixed-length sequences of exactly ``max_len`` normal tokens with no EOS (see the module
            docstring); the default ``True`` is the variable-length language with EOS.

    Attributes:
        transition: ``(num_ids, num_ids)`` float64. Row ``c`` is ``P(next | previous id c)`` for ``c`` = ``<bos>``
            (the start row) or a normal token; the ``<pad>`` and ``<eos>`` rows are zero (never a context). Columns
            ``<pad>`` and ``<bos>`` are zero (never emitted).
    """

    def __init__(
        self,
        vocab_size: int = 24,
        max_len: int = 32,
        seed: int = 0,
        alpha: float = 0.5,
        sparsity: float = 0.5,
        eos: bool = True,
    ) -> None:
        if vocab_size < 3:
            raise ValueError(f"`vocab_size` must be >= 3 (EOS and at least two normal tokens), got {vocab_size}.")
        if max_len < 2:
            raise ValueError(f"`max_len` must be >= 2 (one normal token, then the forced EOS), got {max_len}.")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity}.")
        self.vocab_size, self.max_len, self.seed, self.eos = vocab_size, max_len, seed, eos
        self.num_ids = vocab_size + 2
        self.symbols = [PAD, BOS, EOS] + [f"t{i}" for i in range(vocab_size - 1)]
        self.transition = torch.from_numpy(self._draw_table(np.random.default_rng(seed), alpha, sparsity))

    def _draw_table(self, rng: np.random.Generator, alpha: float, sparsity: float) -> np.ndarray:
        n, first = self.num_ids, EOS_ID + 1
        table = np.zeros((n, n))
        for row in [BOS_ID, *range(first, n)]:
            probs = rng.dirichlet(np.full(self.vocab_size, alpha))  # over [EOS, t0, t1, ...]
            drop = rng.random(self.vocab_size - 1) < sparsity
            if row == BOS_ID or not self.eos:
                probs[0] = 0.0  # no empty sequence (and, with ``eos=False``, no EOS at all)
                if drop.all():  # keep one symbol so that the start row stays a distribution
                    drop[rng.integers(len(drop))] = False
            probs[1:][drop] = 0.0
            if probs.sum() == 0.0:  # a Dirichlet(0.5) draw can underflow; fall back to the kept entries, uniform
                probs[np.flatnonzero(np.r_[row != BOS_ID, ~drop])] = 1.0
            table[row, EOS_ID:] = probs / probs.sum()
        return table

    @property
    def context_ids(self) -> list[int]:
        """Ids whose row is a distribution: ``<bos>`` and the normal tokens."""
        return [BOS_ID, *range(EOS_ID + 1, self.num_ids)]

    def next_token_probs(self, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Gold ``P(. | prefix)`` after each position of ``input_ids`` ``(B, T)`` (``<bos>`` at position 0).

        ``offset`` is the position of ``input_ids[:, 0]`` in the sequence (for incremental decoding). Returns
        ``(B, T, num_ids)`` float64; the row after position ``max_len - 1`` is EOS, forced. After ``<eos>`` or
        ``<pad>`` the row is zero: there is no next token. With ``eos=False`` nothing is forced: the row after
        position ``max_len`` (past the last token) is zero.
        """
        probs = self.transition[input_ids.long()]
        if not self.eos:
            positions = torch.arange(input_ids.shape[1]) + offset
            return torch.where((positions < self.max_len).view(1, -1, 1), probs, 0.0)
        positions = torch.arange(input_ids.shape[1]) + offset
        forced = (positions == self.max_len - 1).view(1, -1) & (probs.sum(-1) > 0)
        eos_row = torch.zeros(self.num_ids, dtype=probs.dtype)
        eos_row[EOS_ID] = 1.0
        return torch.where(forced.unsqueeze(-1), eos_row, probs)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` sequences from P: ``(n, max_len + 1)`` long, ``<bos>`` first, ``<pad>`` after the ``<eos>``.

        With ``eos=False`` every row is ``<bos>`` and exactly ``max_len`` normal tokens.
        """
        generator = torch.Generator().manual_seed(seed)
        ids = torch.full((n, self.max_len + 1), PAD_ID, dtype=torch.long)
        ids[:, 0] = BOS_ID
        alive = torch.ones(n, dtype=torch.bool)
        for t in range(1, self.max_len + 1):
            probs = self.next_token_probs(ids[:, t - 1 : t], offset=t - 1)[:, 0]
            probs[~alive] = self.transition[BOS_ID]  # finished rows draw a dummy token, overwritten below
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            ids[:, t] = torch.where(alive, tokens, PAD_ID)
            alive &= tokens != EOS_ID
            if not alive.any() or (not self.eos and t == self.max_len):
                break
        return ids

    def log_prob(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``log P`` of each sequence and its token count, up to and including its first ``<eos>``.

        ``ids``: ``(n, L)`` with ``<bos>`` first, e.g. model samples (anything after the first ``<eos>`` is ignored).
        Returns ``(log_p, num_tokens)``, both ``(n,)``; ``log_p`` is ``-inf`` for a sequence with a zero-probability
        transition, one that emits ``<pad>``/``<bos>``, or one with no ``<eos>`` by ``max_len``. With ``eos=False`` the
        first ``max_len`` tokens after ``<bos>`` are scored and an ``<eos>`` is a zero-probability transition.
        """
        if not self.eos:
            ids = ids[:, : self.max_len + 1]
            probs = self.next_token_probs(ids[:, :-1]).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            log_p = probs.log().sum(1)
            if ids.shape[1] < self.max_len + 1:  # too short to be a sequence of the language
                log_p = torch.full_like(log_p, -torch.inf)
            return log_p, torch.full_like(ids[:, 0], ids.shape[1] - 1)
        probs = self.next_token_probs(ids[:, :-1])  # (n, L-1, num_ids)
        targets = ids[:, 1:]
        step_p = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        is_eos = targets == EOS_ID
        before_end = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # steps up to and including the first EOS
        log_p = torch.where(before_end, step_p.log(), 0.0).sum(1)
        log_p = torch.where(is_eos.any(1), log_p, -torch.inf)
        return log_p, before_end.sum(1)

    def texts(self, ids: torch.Tensor) -> list[str]:
        """Space-joined symbols between ``<bos>`` and ``<eos>``: TRL's SFTTrainer appends the EOS itself."""
        out = []
        for row in ids.tolist():
            words = []
            for i in row[1:]:
                if i == EOS_ID or i == PAD_ID:
                    break
                words.append(self.symbols[i])
            out.append(" ".join(words))
        return out

    def dataset(self, n: int, seed: int) -> Dataset:
        """``n`` sequences from P as a TRL language-modeling dataset (one ``text`` column, no EOS string).

        With ``eos=False`` the column is ``input_ids`` (``<bos>`` first, no EOS): SFT would append EOS to text.
        """
        if not self.eos:
            return Dataset.from_dict({"input_ids": self.sample(n, seed).tolist()})
        return Dataset.from_dict({"text": self.texts(self.sample(n, seed))})

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over exactly the task's symbols: one symbol is one id, ``<bos>`` is prepended.

        Its ``eos_token`` is the task's EOS and its ``pad_token`` is distinct from it, so the attention mask alone
        separates the final EOS (a target) from padding (ALGORITHMS.md 2(f), pitfall 7).
        """
        vocab = {s: i for i, s in enumerate(self.symbols)}
        backend = Tokenizer(models.WordLevel(vocab, unk_token=None))  # an unknown symbol is an error, not an id
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, BOS_ID)])
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=self.max_len + 1
        )
