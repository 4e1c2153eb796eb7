"""Addition with a ``<bkspc>`` action: the lab task of SequenceMatch's efficacy study (ALGORITHMS.md 3(g)).

    prompt = "a+b="        completion = the digits of a + b, least significant first        e.g. "47+85=" -> "231"

The claim measured here is recovery: forced to start from a wrong answer prefix, a model trained with noise
augmentation and ``<bkspc>`` (BC, SequenceMatch) deletes the mistake and answers correctly; a model trained by MLE on
clean data cannot (ALGORITHMS.md 3(e), 3(g)).

Choices made here:
- Operands have exactly ``digits`` digits (no leading zero), so every prompt has the same length; the answer has
  ``digits`` or ``digits + 1`` digits. Train and test problems are distinct pairs ``(a, b)`` drawn without replacement.
- Least significant digit first, so each answer digit depends only on two operand digits and a carry [3(g)].
- One symbol is one token: ``<pad> <bos> <eos> <bkspc> 0-9 + =`` (16 ids for any ``digits``). The ``<bkspc>`` id is
  in the vocabulary from the start, so the MLE, BC and SequenceMatch arms share one model shape;
  ``add_backspace_token`` finds it there and adds nothing.
- Noise for augmentation is "ground-truth"-style: a wrong *digit* (``noise_ids``), the mistakes the task can make,
  rather than any token [3(a): the paper's ground-truth noise helped most; what it samples is unverified].
- Recovery is tested on four corruptions of the answer start, forced as deletable completion prefixes: ``first``
  (one wrong first digit: inside the augmentation distribution, where BC is already at the ceiling), ``later`` (right
  first digit, wrong second: also a state that per-position augmentation produces), and two outside it: ``two`` (two
  wrong digits) and ``buried`` (a wrong first digit followed by the right second digit, so the mistake is not the
  last token) [3(g) calibration note: test outside the augmentation distribution too].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen2Config
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..backspace import BACKSPACE
from ..generation import sample_with_backspace, sampling_seed
from ..modeling import eval_mode
from .modarith import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID

BKSPC_ID = 3
PLUS, EQUALS = "+", "="
CORRUPTIONS = ("first", "later", "two", "buried")


@dataclass
class Problems:
    """Addition problems ``a + b``: ``a`` and ``b`` are ``(n,)`` int64 arrays."""

    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: slice) -> Problems:
        return Problems(self.a[index], self.b[index])


class AdditionTask:
    """Seeded train and test problems of ``digits``-digit addition, their tokens and their TRL datasets.

    Args:
        digits: operand length (2 calibrates in minutes on CPU, 3 is ALGORITHMS.md 3(g)'s task).
        n_train, n_test: distinct problems in each split (5,000 and 1,000 in 3(g)); together at most the number of
            pairs of ``digits``-digit numbers.
        seed: draws the problems.

    Attributes:
        train, test: the two splits as [`Problems`].
        symbols: the vocabulary in id order; ``token_id`` maps a symbol to its id.
    """

    def __init__(self, digits: int = 2, n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> None:
        if digits < 1 or n_train < 0 or n_test < 0:
            raise ValueError(f"Need digits >= 1 and n_train, n_test >= 0; got {digits}, {n_train}, {n_test}.")
        low, span = (10 ** (digits - 1) if digits > 1 else 0), 10**digits - (10 ** (digits - 1) if digits > 1 else 0)
        if n_train + n_test > span * span:
            raise ValueError(f"Only {span * span} distinct {digits}-digit problems; asked for {n_train + n_test}.")
        self.digits, self.n_train, self.n_test, self.seed = digits, n_train, n_test, seed
        pairs = np.random.default_rng(seed).choice(span * span, n_train + n_test, replace=False)
        a, b = low + pairs // span, low + pairs % span
        self.train, self.test = Problems(a[:n_train], b[:n_train]), Problems(a[n_train:], b[n_train:])
        self.symbols = [PAD, BOS, EOS, BACKSPACE] + [str(d) for d in range(10)] + [PLUS, EQUALS]
        self.token_id = {s: i for i, s in enumerate(self.symbols)}

    @property
    def corruptions(self) -> tuple[str, ...]:
        """The corruption kinds this task supports: all of ``CORRUPTIONS`` once every answer has two digits."""
        return CORRUPTIONS if self.digits >= 2 else CORRUPTIONS[:1]

    def config(self) -> dict:
        """The constructor arguments: what a cached checkpoint must match."""
        return {"digits": self.digits, "n_train": self.n_train, "n_test": self.n_test, "seed": self.seed}

    @property
    def seq_len(self) -> int:
        """Longest ``<bos>`` + prompt + answer + ``<eos>``, in tokens (11 for 2 digits, 14 for 3)."""
        return 1 + (2 * self.digits + 2) + (self.digits + 1) + 1

    @property
    def bkspc_id(self) -> int:
        return BKSPC_ID

    def noise_ids(self) -> list[int]:
        """The digit ids: "ground-truth"-style noise for augmentation (a wrong digit, never ``+ = <eos>``)."""
        return [self.token_id[str(d)] for d in range(10)]

    # ----- text and tokens -----

    def prompt_texts(self, problems: Problems) -> list[str]:
        return [f"{a}{PLUS}{b}{EQUALS}" for a, b in zip(problems.a.tolist(), problems.b.tolist())]

    def answer_texts(self, problems: Problems) -> list[str]:
        """The sums, least significant digit first."""
        return [str(s)[::-1] for s in (problems.a + problems.b).tolist()]

    def encode(self, text: str) -> list[int]:
        """Ids of a string of task symbols (one character each; no ``<bos>``); what the tokenizer gives, faster."""
        return [self.token_id[ch] for ch in text]

    def prompt_ids(self, problems: Problems) -> list[list[int]]:
        """``<bos>`` + prompt per problem: the prompts that sampling starts from."""
        return [[BOS_ID, *self.encode(t)] for t in self.prompt_texts(problems)]

    def answer_ids(self, problems: Problems) -> list[list[int]]:
        """The answer digits' ids per problem, without ``<eos>``."""
        return [self.encode(t) for t in self.answer_texts(problems)]

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """One id per symbol (WordLevel), ``<bos>`` prepended, decoding without spaces; ``<bkspc>`` is special."""
        backend = Tokenizer(models.WordLevel(self.token_id, unk_token=None))  # an unknown symbol is an error
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[a-z]+>|."), behavior="isolated")
        backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, BOS_ID)])
        backend.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=BOS,
            eos_token=EOS,
            pad_token=PAD,
            extra_special_tokens=[BACKSPACE],
            model_max_length=self.seq_len,
        )

    # ----- TRL datasets -----

    def dataset(self, split: str = "train") -> Dataset:
        """TRL prompt-completion data; ``SFTTrainer`` tokenizes it to ``<bos>`` + prompt + answer + ``<eos>``."""
        if split not in ("train", "test"):
            raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
        problems = self.train if split == "train" else self.test
        return Dataset.from_dict({"prompt": self.prompt_texts(problems), "completion": self.answer_texts(problems)})

    def corrupted_prefixes(self, problems: Problems, kind: str, rng: np.random.Generator) -> list[list[int]]:
        """Per problem, a wrong answer start of the given ``kind`` (see the module docstring); wrong digits uniform."""
        if kind not in CORRUPTIONS:
            raise ValueError(f"`kind` must be one of {CORRUPTIONS}, got {kind!r}.")
        if kind not in self.corruptions:
            raise ValueError(f"Corruption {kind!r} needs two answer digits; {self.digits}-digit sums may have one.")
        digit0 = self.token_id["0"]
        wrong_at = {"first": (0,), "later": (1,), "two": (0, 1), "buried": (0,)}[kind]
        keep = 1 if kind == "first" else 2
        prefixes = []
        for answer in self.answer_ids(problems):
            digits = [t - digit0 for t in answer[:keep]]
            for i in wrong_at:
                digits[i] = (digits[i] + int(rng.integers(1, 10))) % 10  # uniform over the 9 wrong digits
            prefixes.append([digit0 + d for d in digits])
        return prefixes


# ----- metrics -----


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def answer_nll(model: torch.nn.Module, task: AdditionTask, problems: Problems, batch_size: int = 500) -> float:
    """Held-out NLL of the clean answers: nats per answer token, ``<eos>`` included, given ``<bos>`` + prompt."""
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            prompts = task.prompt_ids(chunk)
            rows = [p + a + [EOS_ID] for p, a in zip(prompts, task.answer_ids(chunk))]
            prompt_len = len(prompts[0])  # operands have exactly `digits` digits: every prompt has this length
            ids = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
            mask = ids != PAD_ID
            logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.long().to(_device(model))).logits
            logps = torch.log_softmax(logits[:, prompt_len - 1 : -1].float().cpu(), dim=-1)
            targets, keep = ids[:, prompt_len:], mask[:, prompt_len:]
            nll = -logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total += float(torch.where(keep, nll, 0.0).sum())
            count += int(keep.sum())
    return total / max(count, 1)


def _rollouts(
    model: torch.nn.Module,
    task: AdditionTask,
    problems: Problems,
    prefixes: list[list[int]] | None,
    *,
    seed: int,
    batch_size: int,
    max_new_tokens: int,
    temperature: float,
) -> tuple[float, float]:
    """Sample from ``<bos>`` + prompt (+ forced prefix); return (exact-match accuracy, share of rows using <bkspc>)."""
    prompts, answers = task.prompt_ids(problems), task.answer_ids(problems)
    correct = used_bkspc = 0
    for chunk, start in enumerate(range(0, len(problems), batch_size)):
        stop = start + batch_size
        samples = sample_with_backspace(
            model,
            prompts[start:stop],
            max_new_tokens,
            bkspc_token_id=BKSPC_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            prefixes=None if prefixes is None else prefixes[start:stop],
            temperature=temperature,
            seed=sampling_seed(seed, chunk),
        )
        correct += sum(c == a + [EOS_ID] for c, a in zip(samples.completions, answers[start:stop]))
        used_bkspc += sum(BKSPC_ID in actions for actions in samples.actions)
    return correct / max(len(problems), 1), used_bkspc / max(len(problems), 1)


def addition_metrics(
    model: torch.nn.Module,
    task: AdditionTask,
    *,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 500,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """The metrics of ALGORITHMS.md 3(g) on the first ``n`` test problems.

    Args:
        model: a causal LM over ``task.tokenizer()``'s ids that ``sample_with_backspace`` can drive.
        n: test problems used (at most ``task.n_test``). seed: draws the wrong digits and the samples.
        temperature: sampling temperature (1: the model itself). max_new_tokens: most actions per rollout; the
            default ``2 * (digits + 1) + 4`` leaves room to delete two digits and write the longest answer.

    Returns:
        ``accuracy``: clean prompts, final answer (backspaces applied, ``<eos>`` sampled) equals the sum.
        ``recovery_<kind>`` for each kind in ``task.corruptions``: the same with the wrong prefix forced.
        ``bkspc_rate_clean`` and ``bkspc_rate_<kind>``: share of rollouts that use ``<bkspc>`` at least once.
        ``nll``: held-out NLL of the clean answers, nats per token (``<eos>`` included).
    """
    problems = task.test[:n]
    max_new_tokens = max_new_tokens or 2 * (task.digits + 1) + 4
    rng = np.random.default_rng([seed, 1])
    kwargs = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature)
    metrics: dict[str, float] = {}
    metrics["accuracy"], metrics["bkspc_rate_clean"] = _rollouts(model, task, problems, None, seed=seed, **kwargs)
    for i, kind in enumerate(task.corruptions, start=1):
        prefixes = task.corrupted_prefixes(problems, kind, rng)
        rollout_seed = sampling_seed(seed, i)
        accuracy, rate = _rollouts(model, task, problems, prefixes, seed=rollout_seed, **kwargs)
        metrics[f"recovery_{kind}"], metrics[f"bkspc_rate_{kind}"] = accuracy, rate
    metrics["nll"] = answer_nll(model, task, problems, batch_size)
    return metrics


# ----- an oracle behind a causal-LM interface -----


class AdditionOracle(torch.nn.Module):
    """The ideal policy of the task, deterministic: the reference point of the metrics.

    It writes the right next answer digit, then ``<eos>``. After a wrong completion token it emits ``<bkspc>``
    (``backspace=True``: recovery 1) or, like an MLE model that never saw a mistake, carries on writing the digit due
    at the current position and then ``<eos>`` (``backspace=False``: recovery 0).

    ``forward`` returns log-probabilities (``0`` on the chosen token, ``-inf`` elsewhere; uniform where the next token
    is not an answer token) in the Hugging Face output shape. The state of a position is the tokens alive at it: the
    columns up to it that ``attention_mask`` keeps, as ``sample_with_backspace`` lays them out. The token ids of past
    columns are kept in the KV cache (as one-channel "keys"), so incremental decoding works as for a real model.
    """

    def __init__(self, task: AdditionTask, backspace: bool = True) -> None:
        super().__init__()
        self.task, self.backspace = task, backspace
        vocab = len(task.symbols)
        self.config = Qwen2Config(  # what a DynamicCache is built from; one layer holds the token ids
            vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1
        )
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # a device for the sampler

    def next_token(self, alive: list[int]) -> int | None:
        """The oracle's action at the state ``alive`` (``<bos>`` + prompt + completion); ``None`` outside answers."""
        equals, plus, digit0 = self.task.token_id[EQUALS], self.task.token_id[PLUS], self.task.token_id["0"]
        if equals not in alive or plus not in alive:
            return None
        cut, split = alive.index(equals), alive.index(plus)

        def number(ids: list[int]) -> int:
            return int("".join(str(t - digit0) for t in ids))

        target = self.task.encode(str(number(alive[1:split]) + number(alive[split + 1 : cut]))[::-1]) + [EOS_ID]
        completion = alive[cut + 1 :]
        if EOS_ID in completion:
            return None
        if completion == target[: len(completion)]:
            return target[len(completion)]
        return BKSPC_ID if self.backspace else target[min(len(completion), len(target) - 1)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: object | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        ids = input_ids.cpu()
        if cache is not None:
            layer = cache.layers[0]
            past = layer.keys[:, 0, :, 0].long().cpu() if getattr(layer, "is_initialized", False) else ids[:, :0]
            cache.update(input_ids[:, None, :, None].float(), input_ids[:, None, :, None].float(), 0)
            ids = torch.cat([past, ids], dim=1)
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu().bool()
        new = input_ids.shape[1] if not logits_to_keep else min(logits_to_keep, input_ids.shape[1])
        logits = torch.zeros(ids.shape[0], new, len(self.task.symbols))
        for b in range(ids.shape[0]):
            for j, column in enumerate(range(ids.shape[1] - new, ids.shape[1])):
                alive = ids[b, : column + 1][mask[b, : column + 1]].tolist() if mask[b, column] else []
                token = self.next_token(alive) if alive else None
                if token is not None:
                    logits[b, j] = float("-inf")
                    logits[b, j, token] = 0.0
        return CausalLMOutputWithPast(logits=logits.to(input_ids.device))
