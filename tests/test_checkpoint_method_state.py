"""A checkpoint holds its method state (DDO's round, reference and pool; SequenceMatch's replay buffer) before it
looks complete, a reused output folder never hands one run's state to another, and a checkpoint without its state
says what starts over.

Before: the state was written in ``on_save``, after ``trainer_state.json``, the ``last-checkpoint`` push and the
rotation; a kill in that window left a checkpoint that looked complete without it (SequenceMatch then resumed with an
empty buffer, silently), a pushed checkpoint never held it, and DDO wrote no round file in round 1, so a second run
into the same folder resumed with the first run's round and reference.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers.trainer_callback import TrainerState

from tests.reliability import CASES
from tests.test_push import CHECKPOINT_PUSH, fake_hub  # noqa: F401  (the fixture)

STATEFUL = ("ddo", "sequencematch")


@pytest.mark.parametrize("name", STATEFUL)
def test_method_state_is_in_the_checkpoint_before_it_looks_complete_and_is_pushed(
    name,
    tiny_model_dir,
    tmp_path,
    monkeypatch,
    fake_hub,  # noqa: F811
):
    case = CASES[name]
    seen = []
    original = TrainerState.save_to_json

    def spy(self, json_path):
        folder = os.path.dirname(json_path)
        if os.path.basename(folder).startswith("checkpoint-"):
            seen.append({f: os.path.isfile(os.path.join(folder, f)) for f in case.state_files})
        return original(self, json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", spy)
    args = case.args(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=1, **CHECKPOINT_PUSH)
    case.trainer(tiny_model_dir, args).train()
    assert seen == [dict.fromkeys(case.state_files, True)] * 2  # both checkpoints, state first
    pushed = [u["files"] for u in fake_hub.uploads if u.get("path_in_repo") == "last-checkpoint"]
    assert len(pushed) == 2 and all(set(case.state_files) <= files.keys() for files in pushed)


def test_ddo_second_run_in_a_reused_folder_never_loads_the_first_runs_round(tiny_model_dir, tmp_path, caplog):
    case, out = CASES["ddo"], tmp_path / "run"
    checkpoint = out / "checkpoint-2"
    first = case.args(out, max_steps=2, save_strategy="steps", save_steps=2, num_rounds=2, round_steps=1)
    case.trainer(tiny_model_dir, first).train()
    assert torch.load(checkpoint / "ddo_round.pt", weights_only=True)["round"] == 1  # round 2 of the first run

    second = case.args(out, max_steps=2, save_strategy="steps", save_steps=2)  # one round
    case.trainer(tiny_model_dir, second).train()
    assert torch.load(checkpoint / "ddo_round.pt", weights_only=True) == {"round": 0, "reference": None}

    resumed = case.trainer(tiny_model_dir, case.args(out, max_steps=3, save_strategy="no"))
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed._round == 0 and resumed._ref_snapshot is None
    assert not [r for r in caplog.records if "No saved state" in r.getMessage()]


@pytest.mark.parametrize("name", STATEFUL)
def test_resume_from_a_checkpoint_without_its_method_state_names_what_starts_over(
    name, tiny_model_dir, tmp_path, caplog
):
    case, out = CASES[name], tmp_path / "run"
    extra = {"num_rounds": 2, "round_steps": 1} if name == "ddo" else {}
    case.trainer(tiny_model_dir, case.args(out, max_steps=2, save_strategy="steps", save_steps=2, **extra)).train()
    for file in case.state_files:
        os.remove(out / "checkpoint-2" / file)
    resumed = case.trainer(tiny_model_dir, case.args(out, max_steps=3, save_strategy="no", **extra))
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    messages = " ".join(r.getMessage() for r in caplog.records)
    expected = (
        "ddo_round.pt: the round and its reference start over"
        if name == "ddo"
        else ("sequencematch_buffer_rank0.pt: the replay buffer starts empty")
    )
    assert expected in messages


@pytest.mark.parametrize("damage", ["no_state", "truncated_state", "no_weights"])
@pytest.mark.parametrize("name", list(CASES))
def test_resume_true_skips_a_partial_newest_checkpoint(name, damage, tiny_model_dir, tmp_path, caplog):
    """A save killed (or out of disk) part-way leaves the newest checkpoint partial: ``resume_from_checkpoint=True``
    falls back to the newest complete one and names the folder it skipped (before: a crash)."""
    case, out = CASES[name], tmp_path / "run"
    case.trainer(tiny_model_dir, case.args(out, max_steps=3, save_strategy="steps", save_steps=1)).train()
    newest = out / "checkpoint-3"
    if damage == "no_state":
        os.remove(newest / "trainer_state.json")
    elif damage == "truncated_state":
        text = (newest / "trainer_state.json").read_text()
        (newest / "trainer_state.json").write_text(text[: len(text) // 2])
    else:
        for weights in newest.glob("*.safetensors"):
            os.remove(weights)
    resumed = case.trainer(tiny_model_dir, case.args(out, max_steps=4, save_strategy="no"))
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=True)
    skipped = [r.getMessage() for r in caplog.records if "Skipping the incomplete checkpoint" in r.getMessage()]
    assert len(skipped) == 1 and str(newest) in skipped[0]
    steps = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from checkpoint-2's history, then 3 and 4 trained again


def test_a_checkpoint_save_out_of_disk_says_the_disk_is_full(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import transformers.trainer

    case = CASES["mixce"]
    trainer = case.trainer(
        tiny_model_dir, case.args(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=2)
    )
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise RuntimeError("basic_ios::clear: iostream error")  # what torch says when the disk fills
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(transformers.trainer.torch, "save", failing_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=0))
    with pytest.raises(OSError, match="The disk is full: writing the checkpoint .*checkpoint-2 failed") as error:
        trainer.train()
    assert "basic_ios::clear" in str(error.value) and isinstance(error.value.__cause__, RuntimeError)

    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10**12))  # the same error, disk free:
    other = case.trainer(
        tiny_model_dir, case.args(tmp_path / "run2", max_steps=2, save_strategy="steps", save_steps=2)
    )
    with pytest.raises(RuntimeError, match="^basic_ios::clear: iostream error$"):  # not called a full disk
        other.train()


METRIC = {"mixce": "mixce/forward_nll", "implicit_prm": "prm/reward_correct", "ddo": "ddo/real_length"}


@pytest.mark.parametrize("name", [*METRIC, "sequencematch"])
def test_predict_then_evaluate_reports_only_the_evaluated_data(name, tiny_model_dir, tmp_path):
    """``predict()`` never logs, so its metrics stayed in the accumulators and were averaged into the next
    ``evaluate()`` on other data (DDO's real length 25.75 became 44.375). Each evaluation starts empty now."""
    case = CASES[name]
    data = case.dataset()
    halves = {"first": data.select(range(0, len(data) // 2)), "second": data.select(range(len(data) // 2, len(data)))}
    args = case.args(tmp_path / "run", max_steps=1, per_device_eval_batch_size=4)
    trainer = case.trainer(tiny_model_dir, args, eval_dataset=halves)  # prepared by the trainer, as a user's would be
    eval_logs = lambda: [h for h in trainer.state.log_history if "eval_loss" in h]  # noqa: E731

    def evaluated() -> dict:
        trainer.evaluate(trainer.eval_dataset["second"])
        return {k: v for k, v in eval_logs()[-1].items() if k.startswith("eval_") and "runtime" not in k
                and "per_second" not in k}  # fmt: skip

    trainer.train()  # one step away from the reference: the PRM's rewards are 0 for every row before it
    alone = evaluated()
    trainer.predict(trainer.eval_dataset["first"])
    after_predict = evaluated()
    assert after_predict == pytest.approx(alone, rel=1e-6, nan_ok=True)  # (no rollouts in evaluation: nan)
    key = "eval_" + METRIC.get(name, "sequencematch/bc_loss")
    assert key in alone


@pytest.mark.parametrize("name", list(CASES))
def test_resume_with_changed_method_settings_names_old_and_new(name, tiny_model_dir, tmp_path, caplog):
    case, out = CASES[name], tmp_path / "run"
    case.trainer(tiny_model_dir, case.args(out, max_steps=2, save_strategy="steps", save_steps=2)).train()
    field, old = next(iter(case.config.items()))  # e.g. eta for MixCE, beta for the PRM and DDO

    same = case.trainer(tiny_model_dir, case.args(out, max_steps=2, save_strategy="no"))
    with caplog.at_level("WARNING"):
        same.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not [r for r in caplog.records if "other settings" in r.getMessage()]

    changed = case.trainer(tiny_model_dir, case.args(out, {field: old / 2}, max_steps=3, save_strategy="no"))
    with caplog.at_level("WARNING"):
        changed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    [message] = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert f"{field}: {old!r} -> {old / 2!r}" in message and "max_steps: 2 -> 3" in message


def test_no_local_path_in_pushed_trainer_state_and_the_best_checkpoint_survives_a_resume(
    tiny_model_dir,
    tmp_path,
    fake_hub,  # noqa: F811
    caplog,
):
    """With ``metric_for_best_model`` transformers records ``best_model_checkpoint`` as a local absolute path (the
    user's name in it) in every ``trainer_state.json``, and the checkpoint push and ``push_to_hub`` publish it. It is
    left out of the files (``best_global_step`` stays) and derived again on a resume."""
    case, out = CASES["mixce"], tmp_path / "run"
    best = dict(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, load_best_model_at_end=True)
    data = case.dataset()
    trainer = case.trainer(tiny_model_dir, case.args(out, max_steps=2, **best, **CHECKPOINT_PUSH), eval_dataset=data)
    trainer.train()
    trainer.save_state()
    trainer.push_to_hub()
    assert trainer.state.best_model_checkpoint and os.path.isabs(trainer.state.best_model_checkpoint)  # in memory
    states = [u["files"]["trainer_state.json"] for u in fake_hub.uploads if "trainer_state.json" in u["files"]]
    states += [p.read_bytes() for p in out.rglob("trainer_state.json")]
    assert len(states) >= 4
    for data_bytes in states:
        assert str(tmp_path).encode() not in data_bytes and b'"best_global_step"' in data_bytes

    resumed = case.trainer(tiny_model_dir, case.args(out, max_steps=3, **best), eval_dataset=data)
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not [r for r in caplog.records if "does not exist anymore" in r.getMessage()]
    saved_best = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["best_global_step"]
    assert saved_best in (1, 2)
    # derived from best_global_step at the resume (or recomputed at the step-3 save): a folder that exists
    assert resumed.state.best_model_checkpoint == str(out / f"checkpoint-{resumed.state.best_global_step}")
    assert os.path.isdir(resumed.state.best_model_checkpoint)


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from transformers.trainer_callback import TrainerState
from tests.reliability import CASES

original = TrainerState.save_to_json

def killed_in_the_save_window(self, json_path):
    if os.path.basename(os.path.dirname(json_path)) == "checkpoint-2":
        os.kill(os.getpid(), signal.SIGKILL)  # the model and the method state are written, trainer_state.json not
    return original(self, json_path)

TrainerState.save_to_json = killed_in_the_save_window
case = CASES[{name!r}]
case.trainer({model!r}, case.args({out!r}, max_steps=3, save_strategy="steps", save_steps=1)).train()
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", STATEFUL)
def test_a_run_killed_inside_the_save_window_resumes_exactly(name, tiny_model_dir, tmp_path, caplog):
    """A child process is killed (SIGKILL, its own PID) while checkpoint-2 is being written. Resuming with
    ``resume_from_checkpoint=True`` skips that folder, naming it, and continues from checkpoint-1 with its method
    state: steps 2 and 3 log the uninterrupted run's losses."""
    import subprocess
    import sys

    from tests.reliability import REPO, losses

    case = CASES[name]
    straight = case.trainer(tiny_model_dir, case.args(tmp_path / "straight", max_steps=3, save_strategy="no"))
    straight.train()
    out = tmp_path / "killed"
    script = KILLED_RUN.format(repo=REPO, name=name, model=tiny_model_dir, out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed, not finished
    assert not (out / "checkpoint-2" / "trainer_state.json").exists()
    assert all((out / "checkpoint-2" / f).exists() for f in case.state_files)  # the state came first

    resumed = case.trainer(tiny_model_dir, case.args(out, max_steps=3, save_strategy="no"))
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=True)
    assert any(f"{out / 'checkpoint-2'}: no trainer_state.json" in r.getMessage() for r in caplog.records)
    keys = case.loss_metrics
    got, want = losses(resumed, keys)[1:], losses(straight, keys)[1:]
    assert [h["step"] for h in got] == [h["step"] for h in want] == [2, 3]
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
