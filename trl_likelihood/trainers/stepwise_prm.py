"""Explicit (stepwise) PRM: a token classifier trained on step labels, read at the last token of each step; the
supervised baseline of the implicit PRM, as TRL's former ``PRMTrainer`` (TRL <= 0.2x, ``trl/trainer/prm_trainer.py``).
Papers: Uesato et al., "Solving math word problems with process- and outcome-based feedback", 2022, arXiv:2211.14275;
Lightman et al., "Let's Verify Step by Step", 2023, arXiv:2305.20050. Data: TRL's stepwise supervision format.

    input_ids = prompt_ids + sum_t (tok(step_t) + tok(step_separator))
    labels    = l_t in {0, 1} at the last token of step t, -100 elsewhere
    loss      = sum over labelled positions of CE(softmax(logits), l_t) / number of labelled positions

Choices made here:
- Tokenisation and truncation are TRL ``PRMTrainer``'s [code]: BOS + prompt for text, each step tokenised on its own
  with the separator appended, prompt cut from the left (``max_prompt_length``), steps from the right
  (``max_completion_length``), then the whole (``max_length``). A chat prompt is rendered with the chat template
  [ours]; the steps stay text. ``stepwise_prm.tokenize_stepwise`` is shared with the scorer, so scoring reads the
  positions that were trained.
- A row whose every label is truncated away is dropped and counted (TRL kept it, with nothing to learn) [ours].
- The loss divides by the labelled positions of the whole accumulated batch, across processes (``num_items_in_batch``,
  as transformers does for token classifiers), so accumulation equals one big batch [ours, tested].
- The new head ``score`` is drawn from ``args.seed``, as TRL's ``RewardTrainer`` does, so runs start alike [code].
- PEFT: the adapter is a ``TOKEN_CLS`` one, whose classifier head ``score`` is trained in full (``modules_to_save``);
  QLoRA through ``model_init_kwargs``' ``quantization_config`` (``prepare_model_for_kbit_training``), with the head
  kept out of the 4-bit layers [PEFT; ours].
- A streamed dataset is checked row by row as it is read; a map-style one whole, before the model loads [ours].
- Logged: step accuracy (log-odds > 0 against the label) and step AUROC, over the labelled steps of each window.
- At inference ``StepwisePRM`` reads the log-odds at the same positions (``trl_likelihood.stepwise_prm``).
Tests check the identities: at init the trainer's step logits are a plain forward's at the hand-counted step ends;
accumulation, two processes and a resume give the weights of one uninterrupted big-batch run; under (Q)LoRA only the
adapter and the head move.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, Features, IterableDataset, Sequence, Value
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .. import _compat
from ..losses import stepwise_prm_loss
from ..methods import METHODS
from ..metrics import binary_auroc
from ..stepwise_data import STEPWISE_COLUMNS, check_stepwise_row, validate_stepwise_dataset
from ..stepwise_prm import stepwise_labels, tokenize_stepwise
from .base import MethodTrainer
from .config_checks import check_config_fields, resolve_args

STEPWISE_PRM_CITATION = """\
@article{uesato2022solving,
    title   = {{Solving Math Word Problems With Process- and Outcome-Based Feedback}},
    author  = {Jonathan Uesato and Nate Kushman and Ramana Kumar and Francis Song and Noah Siegel and Lisa Wang and
               Antonia Creswell and Geoffrey Irving and Irina Higgins},
    journal = {arXiv preprint arXiv:2211.14275},
    year    = 2022
}"""
LABELS = {0: "incorrect", 1: "correct"}


@dataclass
class StepwisePRMConfig(TrainingArguments):
    r"""[`~transformers.TrainingArguments`] plus the fields of TRL's former ``PRMConfig``.

    Defaults that differ from ``TrainingArguments``, as TRL's: ``learning_rate=1e-5``, ``logging_steps=10``, and
    ``bf16`` on unless ``fp16`` is set.

    Parameters:
        model_init_kwargs (`dict`, *optional*): keywords for ``AutoModelForTokenClassification.from_pretrained`` when
            the model is given by path (``dtype``, ``quantization_config`` for QLoRA, ...).
        trust_remote_code (`bool`, *optional*, defaults to `False`): passed to the model and tokenizer loaders.
        max_length (`int`, *optional*, defaults to `1024`): tokens kept of prompt + steps; steps cut off lose labels.
        max_prompt_length (`int`, *optional*, defaults to `512`): prompt tokens kept, from the end.
        max_completion_length (`int`, *optional*): step tokens kept (the steps with their separators), from the start.
        disable_dropout (`bool`, *optional*, defaults to `True`): switch dropout off in the model.
        step_separator (`str`, *optional*, defaults to `"\n"`): appended to each step; its last token carries the
            step's label. ``StepwisePRM`` reads it back from the saved ``method_settings.json``.
        train_on_last_step_only (`bool`, *optional*, defaults to `False`): label only the last step of each training
            row (an outcome label read at the end); evaluation rows keep every step's label.
        dataset_num_proc (`int`, *optional*): processes for tokenising the datasets.
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "model_init_kwargs"]

    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(
        default=10, metadata={"help": "Log every X update steps (an integer, or a ratio of total steps if < 1)."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "Use bf16 (mixed) precision; if not set, True unless `fp16` is set."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keywords for AutoModelForTokenClassification.from_pretrained when the model is a path."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    max_length: int | None = field(default=1024, metadata={"help": "Tokens kept of prompt + steps."})
    max_prompt_length: int | None = field(default=512, metadata={"help": "Prompt tokens kept, from the end."})
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Step tokens kept (steps and separators), from the start."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Switch dropout off in the model."})
    step_separator: str = field(
        default="\n", metadata={"help": "Appended to each step; its last token carries the step's label."}
    )
    train_on_last_step_only: bool = field(
        default=False, metadata={"help": "Label only the last step of each training row."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenising the datasets."})

    def __post_init__(self):
        self.bf16 = not self.fp16 if self.bf16 is None else self.bf16
        super().__post_init__()
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        check_config_fields(
            self,
            integers=(
                ("max_length", 1),
                ("max_prompt_length", 0),
                ("max_completion_length", 1),
                ("dataset_num_proc", 1),
            ),
        )
        if not isinstance(self.step_separator, str):
            raise ValueError(f"`step_separator` must be a string, got {self.step_separator!r}.")


def _tokenised(dataset: Dataset | None, tokenizer: Any, args: StepwisePRMConfig, where: str, is_eval: bool):
    """The dataset tokenised as ``tokenize_stepwise`` and stripped of the rows truncation left unlabelled. Rows
    already tokenised (``input_ids`` and ``labels``, as TRL's ``PRMTrainer`` accepted) are taken as they are. A
    streamed dataset is tokenised as it is read, and each row checked then (its error names the row)."""
    if dataset is None:
        return None
    streamed = isinstance(dataset, IterableDataset)

    def tokenize(row: dict[str, Any], index: int) -> dict[str, list[int]]:
        if streamed:  # a map-style dataset was checked whole, before the model was loaded
            check_stepwise_row(row, index, where)
        tokens = tokenize_stepwise(
            tokenizer,
            row["prompt"],
            row["completions"],
            args.step_separator,
            max_length=args.max_length,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
        )
        last_only = args.train_on_last_step_only and not is_eval
        return {"input_ids": tokens.input_ids, "labels": stepwise_labels(tokens, row["labels"], last_only)}

    map_kwargs = {} if streamed else {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing {where}"}
    filter_kwargs = {} if streamed else {"num_proc": args.dataset_num_proc}
    with PartialState().main_process_first():
        if not is_tokenised(dataset):
            dataset = dataset.map(
                tokenize,
                with_indices=True,
                remove_columns=dataset.column_names or list(STEPWISE_COLUMNS),
                features=Features({"input_ids": Sequence(Value("int64")), "labels": Sequence(Value("int64"))}),
                **map_kwargs,
            )
        return dataset.filter(lambda row: any(label != -100 for label in row["labels"]), **filter_kwargs)


def is_tokenised(dataset: Any) -> bool:
    """Token rows (``input_ids``, per-token ``labels``) rather than stepwise text."""
    columns = getattr(dataset, "column_names", None) or []
    return "input_ids" in columns and "labels" in columns and "completions" not in columns


def _eval_name(key: str | None) -> str:
    return "eval_dataset" if key is None else f"eval_dataset[{key!r}]"


class _TokenisedStepwiseData:
    """Tokenises the datasets right before ``Trainer`` stores them, after ``NonEmptyPreparedData`` saw the raw ones,
    so that it counts (and names) the rows truncation left without a label."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        tokenizer, config = kwargs["processing_class"], kwargs["args"]
        kwargs["train_dataset"] = _tokenised(kwargs.get("train_dataset"), tokenizer, config, "train_dataset", False)
        eval_dataset = kwargs.get("eval_dataset")
        if isinstance(eval_dataset, dict):
            kwargs["eval_dataset"] = {
                k: _tokenised(v, tokenizer, config, _eval_name(k), True) for k, v in eval_dataset.items()
            }
        else:
            kwargs["eval_dataset"] = _tokenised(eval_dataset, tokenizer, config, "eval_dataset", True)
        super().__init__(*args, **kwargs)


def _head_not_quantized(quantization_config: Any) -> Any:
    """A copy of a bitsandbytes config that keeps the classifier head (``score``, or ``classifier``) in full precision:
    it is trained in full (``modules_to_save``), and transformers 5 only spares the module of the model's last
    parameter, which misses a head whose last parameter is its bias (a 4-bit head then fails in PEFT's copy of it)."""
    heads = ["score", "classifier"]
    if isinstance(quantization_config, dict):
        skip = quantization_config.get("llm_int8_skip_modules") or []
        return {**quantization_config, "llm_int8_skip_modules": list(dict.fromkeys([*skip, *heads]))}
    if not hasattr(quantization_config, "llm_int8_skip_modules"):
        return quantization_config  # another quantizer: left as given
    quantization_config = copy.deepcopy(quantization_config)
    skip = quantization_config.llm_int8_skip_modules or []
    quantization_config.llm_int8_skip_modules = list(dict.fromkeys([*skip, *heads]))
    return quantization_config


def _classifier(model: Any, args: StepwisePRMConfig) -> torch.nn.Module:
    """A 2-label token classifier (``1 = correct``): loaded from a path with ``model_init_kwargs``, or checked."""
    if isinstance(model, str):
        set_seed(args.seed)  # the new head `score` is drawn from the run's seed, as TRL's RewardTrainer does
        init = {"trust_remote_code": args.trust_remote_code, **(args.model_init_kwargs or {})}
        init |= {"num_labels": 2, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
        if init.get("quantization_config") is not None:
            init["quantization_config"] = _head_not_quantized(init["quantization_config"])
        return _compat.create_model_from_path(model, AutoModelForTokenClassification, **init)
    if args.model_init_kwargs:
        raise ValueError("`model_init_kwargs` only apply to a model given by path; this one is already built.")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels != 2:
        raise ValueError(f"A stepwise PRM is a 2-label token classifier (1 = correct); num_labels={num_labels}.")
    return model


def _with_adapter(model: torch.nn.Module, peft_config: Any, args: StepwisePRMConfig) -> torch.nn.Module:
    """PEFT's ``TOKEN_CLS`` model (its head trained in full); k-bit weights are prepared for QLoRA first. An unset
    task type, or ``CAUSAL_LM`` (the default of TRL's ``ModelConfig``, so of ``--use_peft``), is read as
    ``TOKEN_CLS``: a causal-LM adapter on a token classifier would leave its head frozen and unsaved."""
    from peft import PeftConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if not isinstance(peft_config, PeftConfig):
        raise TypeError(
            f"`peft_config` must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}."
        )
    if peft_config.task_type in (None, TaskType.CAUSAL_LM):  # unset, or TRL ModelConfig's default (`--use_peft`)
        peft_config = copy.copy(peft_config)
        peft_config.task_type = TaskType.TOKEN_CLS
    elif peft_config.task_type != TaskType.TOKEN_CLS:
        raise ValueError(
            f"`peft_config.task_type` must be 'TOKEN_CLS', got {peft_config.task_type!r}: "
            "only a token-classification adapter trains and saves the classifier head."
        )
    peft_config = _head_not_adapted(model, peft_config)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(
            model, args.gradient_checkpointing, gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs
        )
    model = get_peft_model(model, peft_config)
    if not any(p.requires_grad for n, p in model.named_parameters() if "modules_to_save" in n):
        raise ValueError(
            "The classifier head is not trained by this adapter: add its module name (e.g. 'score') to "
            "`peft_config.modules_to_save`."
        )
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def _head_not_adapted(model: torch.nn.Module, peft_config: Any) -> Any:
    """The head is trained in full (``modules_to_save``), so no LoRA layer may wrap it: PEFT's ``"all-linear"``
    counts a classifier's head among its targets and then fails with "modules_to_save cannot be applied to modules
    of type Linear". The head is excluded from ``"all-linear"``; naming it as a target is refused."""
    head = next((n for n in ("score", "classifier") if isinstance(getattr(model, n, None), torch.nn.Module)), None)
    targets = peft_config.target_modules
    if head is None:
        return peft_config
    if targets == "all-linear":
        peft_config = copy.copy(peft_config)
        excluded = peft_config.exclude_modules
        if isinstance(excluded, str):
            peft_config.exclude_modules = f"(?:{excluded})|{head}"
        else:
            peft_config.exclude_modules = sorted({*(excluded or ()), head})
    elif not isinstance(targets, str) and head in (targets or ()):
        raise ValueError(
            f"`peft_config.target_modules` names the classifier head {head!r}, which a stepwise PRM adapter trains "
            f"in full (`modules_to_save`); leave {head!r} out of `target_modules`."
        )
    return peft_config


class StepwisePRMTrainer(MethodTrainer, _TokenisedStepwiseData, Trainer):
    """Trains a token-classification PRM on TRL's stepwise supervision (``prompt``, ``completions``, ``labels``)."""

    _name = "Stepwise PRM"
    _metric_prefix = "prm"
    _parent_logs_metrics_store = False  # a plain `Trainer`: `MethodMetrics.log` averages the store itself
    _tag_names = ["trl", "trl-likelihood", "stepwise-prm", "process-reward-model"]
    _paper = {
        "title": "Solving Math Word Problems With Process- and Outcome-Based Feedback",
        "id": "2211.14275",
        "citation": STEPWISE_PRM_CITATION,
    }
    _card_template = METHODS["stepwise-prm"].card_template
    _card_pipeline_tag = "token-classification"
    loss_is_scaled_for_ga = True  # stepwise_prm_loss divides by the labelled steps of the whole accumulated batch

    def __init__(
        self,
        model: Any,
        args: StepwisePRMConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ):
        args = resolve_args("StepwisePRMTrainer", model, args, StepwisePRMConfig, kwargs)
        evals = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
        splits = {"train_dataset": train_dataset, **{_eval_name(k): v for k, v in evals.items()}}
        for where, dataset in splits.items():  # bad rows are named before a model is loaded
            if dataset is not None and not is_tokenised(dataset) and not isinstance(dataset, IterableDataset):
                validate_stepwise_dataset(dataset, where)
        model = _classifier(model, args)
        if processing_class is None:
            source = model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        model.config.pad_token_id = processing_class.pad_token_id
        if peft_config is not None:
            model = _with_adapter(model, peft_config, args)
        if args.disable_dropout:
            _compat.disable_dropout_in_model(model)
        kwargs.setdefault("data_collator", DataCollatorForTokenClassification(processing_class))
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = True  # Trainer then counts the labelled steps of each accumulated batch
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}  # where TRL's trainers keep theirs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self.metric_mode
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        loss = stepwise_prm_loss(outputs.logits, labels, num_items_in_batch)
        # `num_items_in_batch` counts every rank's steps while DDP averages the gradients across ranks.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._record_steps(mode, outputs.logits.detach(), labels)
        return (loss, outputs) if return_outputs else loss

    def _record_steps(self, mode: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep ``(log-odds, label)`` of each labelled step as ``(B, S, 2)`` rows (label ``-1`` pads), gathered per
        example so ``gather_for_metrics`` drops the rows repeated to even out the last evaluation batch."""
        mask = labels != -100
        slot = mask.long().cumsum(1) - 1  # the step index of each labelled position in its row
        rows = torch.full((labels.shape[0], max(int(mask.sum(1).max()), 1), 2), -1.0, device=labels.device)
        logodds = logits[..., 1].float() - logits[..., 0].float()
        row_index = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
        rows[row_index[mask], slot[mask]] = torch.stack([logodds[mask], labels[mask].float()], -1)
        rows = self.accelerator.pad_across_processes(rows, dim=1, pad_index=-1)
        self.record_rows(mode, rows)

    def window_metrics(self, mode, rows, means, totals):
        """Step accuracy (the sign of the log-odds) and step AUROC over the window's labelled steps."""
        steps = rows[rows[:, 1] >= 0].float() if rows is not None else torch.empty(0, 2)
        if not len(steps):
            return means
        logodds, labels = steps[:, 0], steps[:, 1].bool()
        accuracy = ((logodds > 0) == labels).float().mean().item()
        return {**means, "step_accuracy": accuracy, "step_auroc": binary_auroc(logodds, labels)}

    def card_hyperparameters(self) -> dict[str, Any]:
        return {
            "step_separator": self.args.step_separator,
            "train_on_last_step_only": self.args.train_on_last_step_only,
            "max_prompt_length": self.args.max_prompt_length,
            "max_completion_length": self.args.max_completion_length,
        }
