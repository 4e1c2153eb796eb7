"""SequenceMatchTrainer: <bkspc> set-up, BC phase then the SequenceMatch mixture, rollouts, LoRA, resume and errors."""

from __future__ import annotations

import math
import os

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

from tests import helpers
from tests.conftest import cpu_args
from trl_likelihood.backspace import BACKSPACE, add_backspace_token
from trl_likelihood.losses import action_nll
from trl_likelihood.states import state_logits, states_batch
from trl_likelihood.trainers import SequenceMatchConfig, SequenceMatchTrainer
from trl_likelihood.trainers.sequencematch import BUFFER_STATE

LORA = {**helpers.LORA, "lora_dropout": 0.0}
SM_METRICS = ("sequencematch/bc_loss", "sequencematch/sm_loss", "sequencematch/chi2", "sequencematch/expert_reward")
_TRAIN_KEYS = ("max_steps", "learning_rate", "per_device_train_batch_size", "seed", "max_length", "save_strategy")


def _args(tmp_path, name: str, **kw) -> SequenceMatchConfig:
    train = {k: kw.pop(k) for k in list(kw) if k in _TRAIN_KEYS}
    kw.setdefault("noise_prob", 0.3)
    kw.setdefault("rollouts_per_refresh", 4)
    kw.setdefault("replay_refresh_steps", 2)
    kw.setdefault("rollout_max_new_tokens", 8)
    return SequenceMatchConfig(f"{tmp_path}/{name}", **kw, **cpu_args(**train))


def test_full_finetune_bc_phase_then_sequencematch(tiny_model_dir, prompt_completion_dataset, tmp_path):
    trainer = SequenceMatchTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "full", max_steps=4, bc_steps=2, learning_rate=1e-3),
        train_dataset=prompt_completion_dataset,
    )
    tok = trainer.processing_class
    assert tok.convert_tokens_to_ids(BACKSPACE) == trainer.bkspc_id == len(tok) - 1
    assert trainer.model.get_input_embeddings().weight.shape[0] >= len(tok)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    steps = helpers.logged_steps(trainer)
    assert len(steps) == 4
    for h in steps[:2]:  # BC phase: the loss is the NLL of the augmented data, no SM term, no rollouts
        assert h["loss"] == pytest.approx(h["sequencematch/bc_loss"], rel=1e-4)
        assert "sequencematch/sm_loss" not in h
    for h in steps[2:]:
        assert all(math.isfinite(h[k]) for k in SM_METRICS + ("loss", "grad_norm")), h
        assert "sequencematch/rollout_reward" in h
    assert "sequencematch/rollout_backspace_rate" in steps[2]  # the buffer was filled when SM started
    assert 1 <= len(trainer.buffer) <= trainer.args.replay_buffer_size
    params = dict(trainer.model.named_parameters())
    assert any(not torch.equal(params[n], p) for n, p in before.items())
    assert all(bool(p.detach().isfinite().all()) for p in params.values())


def test_lora_trains_the_backspace_rows_and_keeps_the_base_frozen(tiny_model_dir, prompt_completion_dataset, tmp_path):
    trainer = SequenceMatchTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "lora", max_steps=3, learning_rate=5e-2),
        train_dataset=prompt_completion_dataset,
        peft_config=LoraConfig(**LORA),
    )
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    bk = trainer.bkspc_id
    head = trainer.model.get_output_embeddings()
    eye = torch.eye(trainer.model.config.hidden_size)
    row_before = head(eye)[:, bk].detach().clone()  # the <bkspc> output row, delta applied
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    assert [n for n, p in params.items() if p.requires_grad and "trainable_tokens" in n]
    assert not torch.allclose(row_before, head(eye)[:, bk].detach())  # <bkspc> learned
    for h in helpers.logged_steps(trainer):
        assert all(math.isfinite(h[k]) for k in SM_METRICS + ("loss",)), h

    out = str(tmp_path / "saved")
    trainer.save_model(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(BACKSPACE) == bk and tok.encode(BACKSPACE, add_special_tokens=False) == [bk]
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))
    vocab_rows = [k for k, v in saved.items() if v.ndim == 2 and v.shape[0] >= len(tok)]
    assert [k for k in saved if "trainable_tokens" in k] and not vocab_rows  # the <bkspc> rows, no full matrices
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert add_backspace_token(base, tok) == bk  # the card's reload: the new rows' start, then the adapter's rows
    reloaded = PeftModel.from_pretrained(base, out)
    ids = torch.tensor([[3, 5, bk, 7]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trainer.model.eval()(ids).logits, atol=1e-5, rtol=1e-5)
    card = open(os.path.join(out, "README.md")).read()
    assert "sequencematch" in card and BACKSPACE in card and "sample_with_backspace" in card


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_mid_run_restores_the_replay_buffer(tiny_model_dir, prompt_completion_dataset, tmp_path, lora):
    """Stopped at step 3 (after a refresh at step 2) and resumed: the same weights and losses as one run. Under LoRA
    the checkpoint holds the adapter and the <bkspc> rows only, no embedding matrices: the resumed run rebuilds the
    rest from the base model exactly."""

    def run(name: str, **kw) -> SequenceMatchTrainer:
        trainer = SequenceMatchTrainer(
            model=tiny_model_dir,
            args=_args(
                tmp_path, name, max_steps=6, learning_rate=1e-2 if lora else 1e-3, replay_refresh_steps=2, **kw
            ),
            train_dataset=prompt_completion_dataset,
            peft_config=LoraConfig(**LORA) if lora else None,
        )
        return trainer

    full = run("full")
    full.train()
    part = run("part", save_strategy="steps", save_steps=3)
    part.args.save_steps = 3
    part.train()
    checkpoint = os.path.join(part.args.output_dir, "checkpoint-3")
    assert os.path.isfile(os.path.join(checkpoint, BUFFER_STATE.format(rank=0)))
    if lora:
        saved = load_file(os.path.join(checkpoint, "adapter_model.safetensors"))
        vocab = len(part.processing_class)
        assert not [k for k, v in saved.items() if v.ndim == 2 and v.shape[0] >= vocab]
    resumed = run("part", save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=checkpoint)
    losses = [h["loss"] for h in helpers.logged_steps(full)]
    assert [h["loss"] for h in helpers.logged_steps(resumed)] == pytest.approx(
        losses, rel=1e-5
    )  # history kept, then resumed
    assert len(set(losses)) == len(losses)
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_rollouts_continue_the_rows_prompts_and_noise_comes_from_completions(
    tiny_model_dir, prompt_completion_dataset, tmp_path
):
    """Rollout prompts and noise tokens come from what SFT prepared (``labels``; TRL 1.16 folds ``completion_mask``
    into them): a rollout continues its row's prompt, not the row's first token alone."""
    trainer = SequenceMatchTrainer(
        model=tiny_model_dir, args=_args(tmp_path, "prompts"), train_dataset=prompt_completion_dataset
    )
    tok = trainer.processing_class
    prompts, _ = trainer._rollout_prompts(6, torch.Generator().manual_seed(0))
    texts = set(prompt_completion_dataset["prompt"])
    assert all(tok.decode(p) in texts for p in prompts), [tok.decode(p) for p in prompts]
    scored = {t for row in trainer.train_dataset["labels"] for t in row[1:] if t != -100}
    assert set(trainer._noise_ids) == scored - set(tok.all_special_ids)


@pytest.mark.parametrize(
    "field, value",
    [("gamma", 0.0), ("gamma", 1.5), ("chi2_coef", -0.1), ("noise_prob", 1.0), ("noise_prob", -0.1),
     ("sm_weight", 1.5), ("divergence", "js"), ("terminal", "none"), ("bc_steps", -1), ("backspace_token", "")],
)  # fmt: skip
def test_bad_config_is_refused_before_training(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        SequenceMatchConfig(str(tmp_path), **{field: value}, **cpu_args())


def test_peft_model_passed_in_is_refused(tiny_model_dir, prompt_completion_dataset, tmp_path):
    from peft import get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(**LORA))
    with pytest.raises(ValueError, match="peft_config"):
        SequenceMatchTrainer(model=model, args=_args(tmp_path, "x"), train_dataset=prompt_completion_dataset)


class _HostReads:
    """Counts the tensor methods that read a value back to the host (a device sync on an accelerator)."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_the_loss_path_reads_nothing_back_and_log_reads_once(
    tiny_model_dir, prompt_completion_dataset, tmp_path, monkeypatch
):
    """Issue 16: states, loss and metrics stay on the device; ``log`` gathers them all and reads them back once."""
    trainer = SequenceMatchTrainer(
        model=tiny_model_dir, args=_args(tmp_path, "syncs"), train_dataset=prompt_completion_dataset
    )
    trainer.model.train()
    trainer.refresh_buffer(trainer.model)
    inputs = next(iter(trainer.get_train_dataloader()))
    data, rollouts = trainer._data_trajectories(inputs), trainer._rollouts(0)
    assert data and rollouts
    reads = _HostReads(monkeypatch)
    for _ in range(2):  # two micro-batches
        loss = trainer.trajectory_loss(trainer.model, data, rollouts, inputs["input_ids"].device, with_sm=True)
        loss.backward()
    assert reads.calls == []
    logged = {}
    monkeypatch.setattr(Trainer, "log", lambda self, logs, start_time=None: logged.update(logs))  # under TRL's
    trainer.log({})
    assert reads.calls == ["tolist"]
    assert {f"sequencematch/{k}" for k in ("bc_loss", "sm_loss", "chi2", "rollout_reward")} <= set(logged)
    mixed = 0.5 * logged["sequencematch/bc_loss"] + 0.5 * logged["sequencematch/sm_loss"]  # sm_weight 0.5
    assert mixed == pytest.approx(loss.detach().item(), rel=1e-6)  # two equal micro-batches: the mean is the value


def test_backspace_is_blocked_at_empty_completions_in_the_loss(tiny_model_dir, prompt_completion_dataset, tmp_path):
    """The BC loss equals ``action_nll`` on logits whose ``<bkspc>`` is -inf where the completion is empty (the
    prompt's end, as the sampler forbids it), built the old way from the per-trajectory prompt lengths."""
    trainer = SequenceMatchTrainer(
        model=tiny_model_dir, args=_args(tmp_path, "blocked", sm_weight=0.0), train_dataset=prompt_completion_dataset
    )
    trainer.model.train()
    data = trainer._data_trajectories(next(iter(trainer.get_train_dataloader())))
    loss = trainer.trajectory_loss(trainer.model, data, [], torch.device("cpu"), with_sm=False)
    batch = states_batch(data, trainer.bkspc_id, trainer._pad, eos_token_id=trainer._eos[0])
    logits = state_logits(trainer.model, batch).float()
    prompt_end = torch.tensor([len(t.prompt) - 1 for t in data])
    blocked = torch.zeros_like(logits, dtype=torch.bool)
    blocked[..., trainer.bkspc_id] = batch["state_index"] == prompt_end[:, None]
    assert blocked.any()
    expected = action_nll(
        logits.masked_fill(blocked, float("-inf")), batch["actions"], batch["action_mask"], None, "sequence"
    )
    assert torch.equal(loss, expected)
    unblocked = action_nll(logits, batch["actions"], batch["action_mask"], None, "sequence")
    assert not torch.allclose(loss, unblocked)
