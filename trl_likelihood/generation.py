"""Sampling used during training: batched completions of prompts with the KV cache, seeded per step and rank.

DDO scores reference samples ("fakes") against real data (ALGORITHMS.md 5(b)); the fakes must be samples of exactly
the distribution that is then scored, so this module runs its own short decoding loop rather than ``generate``:

- Prompts are left-padded and positions are counted from each row's first real token, so a padded row samples from
  the same distribution as the row alone (tested), and matches the right-padded batch it is scored in.
- Plain ancestral sampling by default (temperature 1, no top-k, no top-p), the distribution DDO's theory needs; the
  truncations are there for users who want them, documented as a departure [code: VAR sampling with cfg 1, no tricks].
- Randomness comes from a ``torch.Generator`` seeded by ``sampling_seed(seed, step, rank, micro)``, never from the
  global RNG: the same (seed, global step, rank, micro-batch) always draws the same samples, on every process and
  after a resume, and sampling does not shift the dropout or data-order randomness of training.
- The model runs in eval mode while it samples (no dropout; gradient checkpointing would otherwise turn the cache off).

SequenceMatch's sampler ``sample_with_backspace`` (ALGORITHMS.md 3(a), 3(b)) shares all of this and adds the
``<bkspc>`` action, which deletes the last completion token; its docstring says how the cache is rolled back.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from . import engines
from .backspace import Trajectory
from .modeling import core_model, eval_mode, right_padded


@dataclass
class Samples:
    """Prompts and their sampled completions, left-padded to one length.

    Attributes:
        input_ids: ``(B, P + N)`` prompt tokens (left-padded to ``P``) then the sampled tokens; ``pad_token_id`` before
            the prompt and after the completion's EOS.
        attention_mask: ``(B, P + N)``, 1 on prompt and completion tokens (EOS included), 0 on padding.
        completion_mask: ``(B, P + N)`` bool, true on sampled tokens up to and including the first EOS.
        prompt_length: ``P``, the padded prompt length; completions start at this column.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int

    def rows(self) -> list[tuple[list[int], list[int]]]:
        """Per row, ``(prompt tokens, completion tokens)`` without padding (EOS kept when it was sampled)."""
        out = []
        for ids, att, comp in zip(
            self.input_ids.tolist(), self.attention_mask.tolist(), self.completion_mask.tolist()
        ):
            prompt = [t for t, a in zip(ids[: self.prompt_length], att[: self.prompt_length]) if a]
            out.append((prompt, [t for t, c in zip(ids, comp) if c]))
        return out


def sampling_seed(seed: int, step: int, rank: int = 0, micro: int = 0) -> int:
    """A 63-bit seed from (base seed, global step, process rank, micro-batch): stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """``(B, V)`` fp32 logits divided by the temperature, with tokens outside top-k / the top-p nucleus at -inf."""
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p (first always)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _left_pad(prompts: Sequence[Sequence[int]] | torch.Tensor, pad_token_id: int, device: torch.device):
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.size(1) == 0:
            raise ValueError(f"`prompts` must be (B, P) with P >= 1, got shape {tuple(prompts.shape)}.")
        ids = prompts.to(device)
        return ids, torch.ones_like(ids)
    rows = [list(p) for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError(
            "`prompts` must be a non-empty list of non-empty token lists (start with BOS to sample freely)."
        )
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _cache_argument(model: torch.nn.Module) -> str:
    """The KV-cache keyword of the core model's ``forward``: ``cache`` in transformers 5.2x, else the old one."""
    core = core_model(model)
    return "cache" if "cache" in inspect.signature(type(core).forward).parameters else "past_key_values"


def _new_cache(model: torch.nn.Module) -> dict[str, DynamicCache]:
    """An empty KV cache as the keyword argument the model's ``forward`` takes; it is filled in place, step by step."""
    core = core_model(model)
    return {_cache_argument(model): DynamicCache(config=core.config)}


def _last_logits(
    model: torch.nn.Module,
    step_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: dict[str, DynamicCache],
) -> torch.Tensor:
    """One cached decoding step: fp32 next-token logits ``(B, V)`` at the last fed position (the cache grows)."""
    out = model(
        input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **cache
    )
    return out.logits[:, -1].float()


def _stop(finished: torch.Tensor, out_of_budget: bool) -> torch.Tensor:
    """Every row is finished once ``max_new_tokens`` are sampled (later steps only keep other processes company)."""
    return torch.ones_like(finished) if out_of_budget else finished


def _all_done(finished: torch.Tensor, sync_ranks: bool) -> bool:
    """Stop decoding: this process's rows are all finished and, with ``sync_ranks``, every other process's too."""
    done = bool(finished.all())
    return engines.all_ranks(done, finished.device) if sync_ranks else done


def _check_sampling_arguments(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"Need 0 < top_p <= 1 and top_k >= 0, got top_p={top_p}, top_k={top_k}.")


def _generator(generator: torch.Generator | None, seed: int | None, device: torch.device) -> torch.Generator:
    """``generator`` itself, else a private one seeded with ``seed`` (``0`` if None): the global RNG is never used."""
    return torch.Generator(device).manual_seed(0 if seed is None else seed) if generator is None else generator


def _eos_ids(eos_token_id: int | Sequence[int] | None, device: torch.device) -> torch.Tensor:
    """The stop ids as a 1-D tensor (empty for ``None``: rows then run to ``max_new_tokens``)."""
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


@contextmanager
def _sampling_mode(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode while sampling (no dropout; the cache stays on under gradient checkpointing), then the mode back."""
    was_training = model.training
    with eval_mode(model):
        for module in model.modules():
            # bitsandbytes repacks 4-bit weights for CPU inference at their first eval-mode forward, and training
            # cannot use the packed layout afterwards. Those layers keep their mode: no dropout, only the packing.
            if type(module).__name__ == "Linear4bit" and device.type == "cpu":
                module.train(was_training)
        yield


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sync_ranks: bool = False,
) -> Samples:
    """Sample one completion per prompt from ``model`` (a causal LM, or a PEFT model, e.g. under ``adapter_disabled``).

    Args:
        model: called as ``model(input_ids, attention_mask, position_ids, cache, use_cache=True, logits_to_keep=1)``.
        prompts: token lists of any lengths (left-padded here), or a ``(B, P)`` tensor without padding. For
            unconditional sampling pass the start token (BOS) alone.
        max_new_tokens: most tokens sampled per row; a row stops at its first EOS (which is kept).
        eos_token_id: one id or several; ``None`` samples exactly ``max_new_tokens`` tokens per row.
        pad_token_id: written before prompts and after EOS.
        temperature, top_k, top_p: ``1.0``, ``0``, ``1.0`` sample the model's own distribution.
        generator: the source of randomness (on the model's device); else one seeded with ``seed`` (``0`` if None).
        sync_ranks: keep every process decoding until all are done (``engines.decodes_in_lockstep``): under FSDP
            each forward gathers weights with collectives (ZeRO-3 gathers them once per phase instead,
            ``engines.sampling_weights``). A process whose rows are done feeds padding; its samples are the same as
            without the flag.
    """
    _check_sampling_arguments(max_new_tokens, temperature, top_k, top_p)
    device = next(model.parameters()).device
    generator = _generator(generator, seed, device)
    eos = _eos_ids(eos_token_id, device)
    ids, mask = _left_pad(prompts, pad_token_id, device)
    prompt_length = ids.size(1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
    step_ids, new, keep = ids, [], []
    cache = _new_cache(model)
    with _sampling_mode(model, device):
        for step in itertools.count(1):
            logits = _last_logits(model, step_ids, mask, positions, cache)
            probs = _filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            token = token.masked_fill(finished, pad_token_id)
            keep.append(~finished)
            new.append(token)
            finished = finished | torch.isin(token, eos)
            mask = torch.cat([mask, keep[-1][:, None].to(mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
            step_ids = token[:, None]
            finished = _stop(finished, step >= max_new_tokens)
            if _all_done(finished, sync_ranks):
                break
    completion = torch.stack(keep, 1)
    input_ids = torch.cat([ids, torch.stack(new, 1)], 1)
    completion_mask = torch.cat([torch.zeros_like(ids, dtype=torch.bool), completion], 1)
    return Samples(input_ids, mask, completion_mask, prompt_length)


@dataclass
class BackspaceSamples:
    """Per row of ``sample_with_backspace``: the prompt, the forced prefix, the sampled actions and what they leave.

    Attributes:
        prompts: the prompt tokens, never deleted.
        prefixes: the forced completion tokens that sampling started from (``[]`` when none); ``<bkspc>`` deletes them.
        actions: the sampled actions in order, ``<bkspc>`` included, at most ``max_new_tokens``; EOS kept, last.
        completions: ``apply_backspaces(prefix + actions)``, the completion at the end (EOS kept when sampled).
        finished: ``True`` where the row stopped at EOS, ``False`` where it ran to ``max_new_tokens``.
    """

    prompts: list[list[int]]
    prefixes: list[list[int]]
    actions: list[list[int]]
    completions: list[list[int]]
    finished: list[bool]

    def trajectories(self) -> list[Trajectory]:
        """One ``Trajectory`` per row: ``stream = prefix + actions``. The prefix tokens are forced, part of the start
        state rather than decisions, so they are flagged ``is_action=False`` (like noise tokens)."""
        return [
            Trajectory(list(prompt), list(prefix) + list(actions), [False] * len(prefix) + [True] * len(actions))
            for prompt, prefix, actions in zip(self.prompts, self.prefixes, self.actions)
        ]


@dataclass
class _AliveStacks:
    """Per row, the alive tokens (prompt, then completion) as a stack, and the cache column that holds each one.

    Entry ``k`` of a row is its ``k``-th alive token, so ``k`` is also that token's position id. ``depth`` counts the
    alive tokens and ``floor`` the prompt's: ``<bkspc>`` is allowed only above the floor.
    """

    tokens: torch.Tensor  # (B, S) token ids; entries at and above depth are stale
    columns: torch.Tensor  # (B, S) cache column (physical position) holding each alive token
    depth: torch.Tensor  # (B,)
    floor: torch.Tensor  # (B,)

    @classmethod
    def start(cls, ids: torch.Tensor, mask: torch.Tensor, floor: torch.Tensor, capacity: int) -> _AliveStacks:
        """Stacks for left-padded ``ids`` (B, W): row ``b``'s real tokens sit in its last ``mask[b].sum()`` columns."""
        width = ids.size(1)
        depth = mask.sum(1)
        slots = torch.arange(capacity, device=ids.device)
        columns = ((width - depth)[:, None] + slots).clamp(max=width - 1)  # stale beyond depth, overwritten later
        return cls(ids.gather(1, columns), columns, depth, floor)

    def step(
        self, action: torch.Tensor, live: torch.Tensor, mask: torch.Tensor, bkspc_token_id: int, pad_token_id: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply each live row's action; return the token to feed next (B,), its position (B,) and the new mask.

        An append feeds the new token into a new column. A ``<bkspc>`` masks out the popped token's column and the new
        last alive token's column, and feeds that token again, at its own position, into the new column: the cache
        then holds exactly the alive tokens once each (keys and values do not depend on later tokens) and the new
        column's output is the logits of the state after the backspace."""
        rows = torch.arange(action.size(0), device=action.device)
        back = live & (action == bkspc_token_id)
        push = live & ~back
        new_column = mask.size(1)
        for dead in (self.depth - 1, self.depth - 2):  # back rows have depth >= 2: the prompt is never empty
            index = self.columns[rows, dead.clamp(min=0)][:, None]
            mask = mask.scatter(1, index, mask.gather(1, index).masked_fill(back[:, None], 0))
        self.depth = self.depth - back.long() + push.long()
        top = (self.depth - 1).clamp(min=0)
        self.tokens[rows, top] = torch.where(push, action, self.tokens[rows, top])
        self.columns[rows, top] = torch.where(live, new_column, self.columns[rows, top])
        feed = torch.where(live, self.tokens[rows, top], pad_token_id)
        return feed, top, torch.cat([mask, live[:, None].to(mask.dtype)], dim=1)

    def completions(self) -> list[list[int]]:
        """Per row, the alive tokens above the prompt."""
        return [row[lo:hi] for row, lo, hi in zip(self.tokens.tolist(), self.floor.tolist(), self.depth.tolist())]


def _forbid_backspace(logits: torch.Tensor, bkspc_token_id: int, empty: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` logits with ``<bkspc>`` at -inf on the rows whose completion is ``empty``: the prompt is kept."""
    if not 0 <= bkspc_token_id < logits.size(-1):
        raise ValueError(f"`bkspc_token_id` {bkspc_token_id} is outside the model's {logits.size(-1)} logits.")
    forbid = torch.zeros_like(logits, dtype=torch.bool)
    forbid[:, bkspc_token_id] = empty
    return logits.masked_fill(forbid, float("-inf"))


def _as_rows(tokens: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    return tokens.tolist() if isinstance(tokens, torch.Tensor) else [list(t) for t in tokens]


@torch.no_grad()
def sample_with_backspace(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    bkspc_token_id: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    prefixes: Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sync_ranks: bool = False,
) -> BackspaceSamples:
    """Sample completions in which ``<bkspc>`` is an action that deletes the last completion token (SequenceMatch).

    The state is the prompt plus the completion after its backspaces (ALGORITHMS.md 3(a)); every step samples one
    action per row from the model's logits at that state. Batched with the KV cache, which grows by one column per
    step for every row: an append feeds the new token; a ``<bkspc>`` masks the popped token's column out of the
    attention mask, masks out the column of the new last alive token too and feeds that token again at its own position
    id, so the new column's logits are exactly the state's and the rows of a batch stay in step (see
    ``_AliveStacks.step``). The cache holds ``prompt + prefix + max_new_tokens`` columns, as plain sampling would.
    Position ids are indices inside each row's alive sequence, so padding changes nothing.

    Args:
        model: a causal LM (or PEFT model) taking a 2-D attention mask with holes and explicit ``position_ids``.
        prompts: token lists of any lengths (left-padded here), or a ``(B, P)`` tensor; never deleted: ``<bkspc>``
            gets logit ``-inf`` wherever the completion is empty.
        max_new_tokens: most actions sampled per row (``<bkspc>`` counts; the prefix does not).
        bkspc_token_id: the ``<bkspc>`` id (``add_backspace_token``); must not be an EOS id.
        eos_token_id: one id or several; a row stops at its first EOS, which is kept. ``None``: no stop.
        pad_token_id: fed to rows that have stopped (masked out).
        prefixes: per row, forced completion tokens (e.g. a corrupted answer start) to start from. They are part of
            the completion, so ``<bkspc>`` can delete them.
        temperature, top_k, top_p: as ``sample_completions``; ``1.0``, ``0``, ``1.0`` sample the model itself.
        generator: the source of randomness (on the model's device); else one seeded with ``seed`` (``0`` if None).
            One ``torch.multinomial`` over the ``(B, V)`` probabilities per step, finished rows included.
        sync_ranks: as ``sample_completions``: every process decodes until all are done.
    """
    _check_sampling_arguments(max_new_tokens, temperature, top_k, top_p)
    prompt_rows = _as_rows(prompts)
    prefix_rows = [[] for _ in prompt_rows] if prefixes is None else _as_rows(prefixes)
    if len(prefix_rows) != len(prompt_rows):
        raise ValueError(f"`prefixes` has {len(prefix_rows)} rows for {len(prompt_rows)} prompts.")
    device = next(model.parameters()).device
    generator = _generator(generator, seed, device)
    eos = _eos_ids(eos_token_id, device)
    if bkspc_token_id in eos.tolist():
        raise ValueError(f"`bkspc_token_id` {bkspc_token_id} is also an `eos_token_id`.")
    if any(not p for p in prompt_rows):
        raise ValueError("Every prompt needs at least one token (BOS alone for unconditional text).")
    ids, mask = _left_pad([p + q for p, q in zip(prompt_rows, prefix_rows)], pad_token_id, device)
    floor = torch.tensor([len(p) for p in prompt_rows], device=device)
    alive = _AliveStacks.start(ids, mask, floor, ids.size(1) + max_new_tokens)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
    stopped = finished  # finished, or out of budget
    step_ids, actions, keep = ids, [], []
    cache = _new_cache(model)
    with _sampling_mode(model, device):
        for step in itertools.count(1):
            logits = _last_logits(model, step_ids, mask, positions, cache)
            logits = _forbid_backspace(logits, bkspc_token_id, alive.depth <= alive.floor)
            probs = _filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            action = torch.multinomial(probs, 1, generator=generator).squeeze(-1).masked_fill(stopped, pad_token_id)
            live = ~stopped
            actions.append(action)
            keep.append(live)
            feed, top, mask = alive.step(action, live, mask, bkspc_token_id, pad_token_id)
            finished = finished | (live & torch.isin(action, eos))  # stopped at EOS (not out of budget)
            stopped = _stop(finished, step >= max_new_tokens)
            if _all_done(stopped, sync_ranks):
                break
            step_ids, positions = feed[:, None], top[:, None]
    taken = [
        [a for a, k in zip(row, ks) if k]
        for row, ks in zip(torch.stack(actions, 1).tolist(), torch.stack(keep, 1).tolist())
    ]
    return BackspaceSamples(prompt_rows, prefix_rows, taken, alive.completions(), finished.tolist())


def append_completions(
    batch: dict[str, torch.Tensor], rows: Sequence[tuple[list[int], list[int]]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """``batch`` (right-padded ``input_ids``/``attention_mask``/``labels``) with one row per ``(prompt, completion)``
    appended, all right-padded to one length; the new rows' labels score the completion (and its EOS) only."""
    ids, mask = right_padded([prompt + completion for prompt, completion in rows], pad_token_id)
    labels = torch.full_like(ids, -100)
    for row, (prompt, completion) in enumerate(rows):
        labels[row, len(prompt) : len(prompt) + len(completion)] = torch.tensor(completion, dtype=torch.long)
    width = max(batch["input_ids"].size(1), ids.size(1))

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        x = x.to(batch["input_ids"].device)
        return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value)

    return {
        "input_ids": torch.cat([pad(batch["input_ids"], pad_token_id), pad(ids, pad_token_id)]),
        "attention_mask": torch.cat([pad(batch["attention_mask"], 0), pad(mask, 0)]),
        "labels": torch.cat([pad(batch["labels"], -100), pad(labels, -100)]),
    }
