"""SequenceMatch's ``<bkspc>`` action: trajectories that contain backspaces, and the states they pass through.

Generation with ``<bkspc>`` is an MDP whose state is the prompt plus the completion *after* applying the backspaces
(ALGORITHMS.md 3(a)). A trajectory is stored as the physical token stream after the prompt: every emitted token,
including noise tokens (folded into the transition, variant A of 3(a): they are never actions) and ``<bkspc>``.

The decision states those trajectories pass through, and their logits from one forward pass, are in ``states``
(``replay_states``, ``states_batch``, ``state_logits``).

Under LoRA, ``with_trainable_token`` makes the ``<bkspc>`` output row trainable (PEFT's ``trainable_token_indices``)
and ``saving_token_rows_only`` keeps the saved adapter to that row instead of both resized embedding matrices.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .engines import full_shape, gathered
from .modeling import core_model

BACKSPACE = "<bkspc>"


def apply_backspaces(tokens: Sequence[int], bkspc_id: int) -> list[int]:
    """The completion that ``tokens`` (a completion's physical stream) leaves: each ``<bkspc>`` deletes the last
    surviving token; a ``<bkspc>`` at an empty completion deletes nothing (the prompt is never deleted)."""
    alive: list[int] = []
    for token in tokens:
        if token == bkspc_id:
            if alive:
                alive.pop()
        else:
            alive.append(token)
    return alive


@dataclass
class Trajectory:
    """One prompt and the physical stream emitted after it.

    Attributes:
        prompt: the prompt's tokens (at least one; BOS alone for unconditional text). Never deleted.
        stream: every token emitted after the prompt, in order: actions (``<bkspc>`` included) and noise tokens.
        is_action: per ``stream`` token, ``True`` for a decision (an expert or model action) and ``False`` for a noise
            token inserted by augmentation, which is part of the transition into the next state, not an action.
    """

    prompt: list[int]
    stream: list[int]
    is_action: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.is_action:
            self.is_action = [True] * len(self.stream)
        if len(self.is_action) != len(self.stream):
            raise ValueError(f"`is_action` has {len(self.is_action)} flags for {len(self.stream)} stream tokens.")
        if not self.prompt:
            raise ValueError("A trajectory needs a non-empty prompt (BOS alone for unconditional text).")

    @property
    def actions(self) -> list[int]:
        """The decisions, in order (noise tokens left out)."""
        return [t for t, a in zip(self.stream, self.is_action) if a]

    def completion(self, bkspc_id: int) -> list[int]:
        """The completion after applying the backspaces."""
        return apply_backspaces(self.stream, bkspc_id)


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary


def _embedding_rows_to_mean(weight: torch.Tensor, row: int, known: int) -> None:
    """Set ``weight[row]`` to the mean of the first ``known`` rows (the tokenizer's ids before the new token)."""
    with torch.no_grad():
        weight[row] = weight[:known].float().mean(0).to(weight.dtype)


def add_backspace_token(model: torch.nn.Module, tokenizer: Any, token: str = BACKSPACE) -> int:
    """Add ``token`` to ``tokenizer`` as a special token and give ``model`` an embedding row for it; return its id.

    The new input-embedding row (and the output row when the head is untied) starts at the mean of the rows of the
    tokens that were there before, a neutral start for a token no data has shown (ALGORITHMS.md 3(b) [suggested]).
    Idempotent: when the tokenizer already has the token and the model already has its row, nothing changes, so a
    trained ``<bkspc>`` row is never reset. A PEFT model is resized through its base model.

    Note for PEFT: the base embeddings are frozen, so with a LoRA on the attention only, the ``<bkspc>`` rows stay at
    their mean initialisation. Make them trainable (``trainable_token_indices`` or ``modules_to_save``) if the
    model has to learn when to backspace.

    Raises:
        ValueError: the tokenizer cannot hold ``token`` as one id (it was not added, or it encodes to several ids).
    """
    if not token:
        raise ValueError("`token` must be a non-empty string.")
    _refuse_a_token_with_another_use(tokenizer, token)
    added = token not in tokenizer.get_vocab()
    if added:
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    token_id = tokenizer.convert_tokens_to_ids(token)
    encoded = tokenizer.encode(token, add_special_tokens=False)
    if token not in tokenizer.get_vocab() or token_id is None or encoded != [token_id]:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) cannot hold {token!r} as a single token: it encodes to "
            f"{encoded} (id {token_id}). Use a tokenizer that supports added special tokens."
        )
    base = core_model(model)
    rows = full_shape(base.get_input_embeddings().weight)[0]  # a ZeRO-3 partition's own shape is (0,)
    grew = token_id >= rows
    if grew:
        base.resize_token_embeddings(max(len(tokenizer), token_id + 1), mean_resizing=False)
    if added or grew:
        known = max(1, min(rows, token_id))  # rows past the tokenizer (padded vocabularies) are not tokens
        input_weight = base.get_input_embeddings().weight
        output = base.get_output_embeddings()
        weights = [input_weight] + (
            [output.weight] if output is not None and output.weight is not input_weight else []
        )
        with gathered(weights, modify=True):  # ZeRO-3: full rows inside, every process writes the same mean
            for weight in weights:
                _embedding_rows_to_mean(weight, token_id, known)
    return token_id


def _refuse_a_token_with_another_use(tokenizer: Any, token: str) -> None:
    """A backspace token must mean only "delete": every occurrence of it in the data becomes a deletion. A token the
    vocabulary already has (".", EOS, padding, a chat-template marker) is refused; the one exception is a backspace
    added earlier (an added special token with no other role), which is reused."""
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        return
    roles = {name for name in ("eos_token", "pad_token", "bos_token", "unk_token", "mask_token", "sep_token",
                               "cls_token") if getattr(tokenizer, name, None) == token}  # fmt: skip
    added_special = token in tokenizer.get_added_vocab() and token in tokenizer.all_special_tokens
    in_template = token in str(getattr(tokenizer, "chat_template", None) or "")
    if added_special and not roles and not in_template:
        return
    use = (
        f"the tokenizer's {', '.join(sorted(roles))}"
        if roles
        else ("a marker of the chat template" if in_template else "an ordinary token of the vocabulary")
    )
    raise ValueError(
        f"`backspace_token` {token!r} is already {use} (id {vocab[token]}): every occurrence of it in the data would "
        "become a deletion. Use a new string, e.g. '<bkspc>'."
    )


# ----------------------------------------------------------------------------------------------------------------
# Noise augmentation


def augment_with_noise(
    prompt: Sequence[int],
    completion: Sequence[int],
    *,
    p: float,
    bkspc_id: int,
    noise_ids: Sequence[int],
    rng: random.Random,
) -> Trajectory:
    """An expert trajectory with random mistakes that are backspaced at once (ALGORITHMS.md 3(a), variant A).

    Before each completion token ``c_i`` (EOS included), with probability ``p``: a noise token ``n != c_i`` drawn
    uniformly from the distinct ``noise_ids`` (``is_action=False``: part of the transition, never a target), then
    ``<bkspc>`` (an action: the expert deletes the mistake), then ``c_i``. The completion after applying the
    backspaces is always ``completion``. ``p == 0`` returns the clean trajectory and draws nothing from ``rng``.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``, ``<bkspc>`` among ``noise_ids``, or no noise token differs from the
            completion token at a position where one must be drawn.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must be in [0, 1], got {p}.")
    choices = tuple(sorted(set(noise_ids)))  # sorted: the draws do not depend on the caller's ordering or duplicates
    if bkspc_id in choices:
        raise ValueError(f"`noise_ids` must not contain the backspace id {bkspc_id}.")
    stream: list[int] = []
    is_action: list[bool] = []
    for token in completion:
        if p > 0 and rng.random() < p:
            stream += [_draw_noise(choices, token, rng), bkspc_id]
            is_action += [False, True]
        stream.append(token)
        is_action.append(True)
    return Trajectory(list(prompt), stream, is_action)


def _draw_noise(choices: tuple[int, ...], token: int, rng: random.Random) -> int:
    """A uniform draw from ``choices`` without ``token`` (rejection: no copy of a vocabulary-sized list per draw)."""
    if not choices or (len(choices) == 1 and choices[0] == token):
        raise ValueError(f"`noise_ids` {list(choices)} has no token other than the completion token {token}.")
    while True:
        noise = rng.choice(choices)
        if noise != token:
            return noise


# ----- PEFT: train and save the new token's rows only


@contextlib.contextmanager
def saving_token_rows_only(model: Any) -> Iterator[None]:
    """While it is open, ``model.save_pretrained`` saves a LoRA adapter without the resized embedding matrices.

    PEFT's ``save_embedding_layers="auto"`` writes both full embedding matrices once the vocabulary has grown (here by
    ``<bkspc>``): vocab x hidden twice, larger than the adapter itself for a real vocabulary. The trained ``<bkspc>``
    rows are already in the adapter (``trainable_token_indices``); every other row is the base's, and
    ``add_backspace_token(base, tokenizer)`` rebuilds the new rows' untrained start exactly, so they need not be saved.
    """
    if not hasattr(model, "peft_config"):
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_embedding_layers=False)
    try:
        yield
    finally:
        del model.save_pretrained  # the class's method again


def with_trainable_token(peft_config: Any, model: Any, token_id: int) -> Any:
    """A copy of a LoRA config whose ``trainable_token_indices`` also trains ``token_id``'s output-embedding row.

    Only the output row matters: ``<bkspc>`` is never an input (no state attends to it, and the sampler re-feeds the
    last surviving token instead). With tied embeddings that row is the input row, which PEFT keeps tied.
    """
    if not hasattr(peft_config, "trainable_token_indices"):
        raise ValueError(
            f"{type(peft_config).__name__} cannot train new token rows; use a LoraConfig (PEFT's "
            "`trainable_token_indices`) so that <bkspc> is learned."
        )
    config = copy.deepcopy(peft_config)
    targets = config.trainable_token_indices
    targets = dict(targets) if isinstance(targets, dict) else {"embed_tokens": list(targets)} if targets else {}
    names = {module: name.split(".")[-1] for name, module in model.named_modules()}
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    layer = embedding if output is None or output.weight is embedding.weight else output
    targets[names[layer]] = sorted({*targets.get(names[layer], []), token_id})
    config.trainable_token_indices = targets
    return config
