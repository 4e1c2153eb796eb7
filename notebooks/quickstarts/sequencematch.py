"""SequenceMatch vs SFT on 2-digit addition: can the model delete a wrong digit it is forced to start from?"""

from __future__ import annotations

from nbformat import NotebookNode

from .cells import Quickstart, card_cells, code, cpu_args_cell, md, setup_cell

STEPS = 600  # each arm; SFT needs ~400 to leave its plateau. About 50 s of CPU for the notebook, SequenceMatch 25
BC_STEPS = 450  # SequenceMatch's behaviour-cloning warm start, then 150 steps of L_SM; earlier, L_SM holds the plateau


def cells() -> list[NotebookNode]:
    return [
        md(
            """
            # SequenceMatch quickstart

            A model trained by maximum likelihood (SFT) only ever sees correct prefixes, so once it has written a wrong
            token it can only carry on from it. SequenceMatch ([Cundy & Ermon, ICLR 2024](https://arxiv.org/abs/2306.05426))
            adds a `<bkspc>` action that deletes the last token, trains on data with mistakes that the expert deletes
            (noise augmentation), and treats the logits as soft Q-values in an imitation-learning loss (IQ-Learn's
            chi^2 form) on the data and on the model's own rollouts. `SequenceMatchTrainer` is a drop-in for TRL's
            `SFTTrainer`: the same data; the backspace token, the noise and the rollouts are handled for you.

            This notebook runs offline on a CPU in about a minute, on a task where every answer is known, so we can
            force a wrong start and check whether the model recovers.
            """
        ),
        setup_cell(
            """
            import numpy as np
            from trl import SFTConfig, SFTTrainer

            from trl_likelihood import sample_with_backspace
            from trl_likelihood.lab import tiny_causal_lm
            from trl_likelihood.lab.addition import AdditionTask, addition_metrics
            """
        ),
        md(
            """
            ## Data

            Two-digit addition, the answer written least significant digit first (`47+85=` -> `231`), so each digit
            depends only on two operand digits and a carry. `task.dataset()` is TRL's prompt-completion format: any
            `SFTTrainer` data works. The tokenizer has one token per symbol, `<bkspc>` included, so both arms share
            one model shape (`SequenceMatchTrainer` adds the token when a tokenizer lacks it).
            """
        ),
        code(
            """
            task = AdditionTask(digits=2, n_train=5000, n_test=1000, seed=0)
            dataset = task.dataset("train")
            tokenizer = task.tokenizer()
            print(dataset)
            dataset[0]
            """
        ),
        md(
            """
            ## The control: SFT

            A tiny Qwen2 (2 layers, hidden size 64) built from a config, trained by plain SFT on the clean answers.
            `seed=0` fixes the initial weights, so the SequenceMatch arm below starts from the same ones.
            """
        ),
        cpu_args_cell(STEPS, "task.seq_len"),
        code(
            """
            def fresh_model():
                return tiny_causal_lm(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)


            args = SFTConfig("mle", max_steps=steps, **cpu)
            mle = SFTTrainer(fresh_model(), args=args, train_dataset=dataset, processing_class=tokenizer)
            mle.train();
            """
        ),
        md(
            """
            ## The one-line swap

            The same model from the same weights, the same data and training arguments. `noise_prob=0.1`: before
            each answer token, with probability 0.1, a wrong digit is inserted and the expert's next action is
            `<bkspc>`. The first `bc_steps` are behaviour cloning (SFT on those noisy trajectories, the paper's
            warm start); then the loss is `(1 - sm_weight) * BC + sm_weight * SequenceMatch`, whose rollouts come
            from a small replay buffer refreshed from the current model every `replay_refresh_steps`.
            """
        ),
        code(
            f"""
            # was: from trl import SFTConfig, SFTTrainer
            from trl_likelihood import SequenceMatchConfig, SequenceMatchTrainer

            sm = SequenceMatchTrainer(  # was: SFTTrainer(
                fresh_model(),
                args=SequenceMatchConfig(  # was: SFTConfig("mle", max_steps=steps, **cpu)
                    "sequencematch",
                    noise_prob=0.1,
                    bc_steps={BC_STEPS},
                    sm_weight=0.5,
                    replay_buffer_size=128,
                    replay_refresh_steps=50,
                    rollouts_per_refresh=64,
                    rollouts_per_step=16,
                    max_steps=steps,
                    **cpu,
                ),
                train_dataset=dataset,
                processing_class=tokenizer,
            )
            sm.train();
            """
        ),
        md(
            """
            ## Logged metrics

            `sequencematch/bc_loss` is the NLL of the noisy expert trajectories (`<bkspc>` targets included). After
            the warm start, `sm_loss` is the SequenceMatch term, `expert_reward` and `rollout_reward` the mean
            implicit reward `r = Q(s, a) - gamma V(s')` of the data's actions and of the model's rollouts (the loss
            pushes them apart), and `chi2` the chi^2 regulariser. At each buffer refresh,
            `rollout_backspace_rate` is the share of rollout actions that are `<bkspc>`.
            """
        ),
        code(
            """
            log = logged(sm)
            columns = ["sequencematch/bc_loss", "sequencematch/sm_loss", "sequencematch/expert_reward"]
            columns += ["sequencematch/rollout_reward", "sequencematch/chi2"]
            print("<bkspc> share of rollout actions, at each buffer refresh:")
            print(log["sequencematch/rollout_backspace_rate"].dropna().round(3).to_string())
            log[columns].tail(3)
            """
        ),
        md(
            """
            ## Generation with backspace

            `sample_with_backspace` samples one action at a time; a `<bkspc>` deletes the last completion token
            (never the prompt). `prefixes=` forces a start: here the right first digit followed by a wrong second
            digit. The actions are shown raw, and the final answer is what is left after the backspaces.
            """
        ),
        code(
            """
            problems = task.test[:8]
            prefixes = task.corrupted_prefixes(problems, "later", np.random.default_rng(0))
            bkspc = tokenizer.convert_tokens_to_ids("<bkspc>")


            def backspace_rollouts(trainer):
                samples = sample_with_backspace(
                    trainer.model,
                    task.prompt_ids(problems),
                    max_new_tokens=10,
                    bkspc_token_id=bkspc,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                    prefixes=prefixes,
                    seed=0,
                )
                return pd.DataFrame(
                    {
                        "prompt": task.prompt_texts(problems),
                        "forced start": [tokenizer.decode(p) for p in samples.prefixes],
                        "actions": [" ".join(tokenizer.convert_ids_to_tokens(a)) for a in samples.actions],
                        "final answer": [tokenizer.decode(c, skip_special_tokens=True) for c in samples.completions],
                        "correct": task.answer_texts(problems),
                    }
                )


            for name, trainer in {"MLE (control)": mle, "SequenceMatch": sm}.items():
                print(name)
                print(backspace_rollouts(trainer).to_string(index=False), end="\\n\\n")
            """
        ),
        md(
            """
            ## Clean accuracy and recovery

            `addition_metrics` samples at temperature 1 on held-out problems and applies the backspaces: `accuracy`
            from clean prompts; `recovery_<kind>` with a wrong start forced (`first`: a wrong first digit, `later`: a
            wrong second digit, `two`: both wrong, `buried`: a wrong first digit followed by a right second one); and
            `bkspc_rate_<kind>`, the share of rollouts that use `<bkspc>` at all.
            """
        ),
        code(
            """
            arms = {"MLE (control)": mle, "SequenceMatch": sm}
            results = {name: addition_metrics(t.model, task, n=300, seed=1000) for name, t in arms.items()}
            results = pd.DataFrame(results).T
            results.round(3)
            """
        ),
        code(
            """
            names = {
                "accuracy": "clean accuracy",
                "recovery_first": "recovery: wrong 1st digit",
                "recovery_later": "recovery: wrong 2nd digit",
                "recovery_two": "recovery: two wrong digits",
            }
            ax = results[list(names)].rename(columns=names).T.plot.bar(rot=15, figsize=(9, 3.5))
            ax.set(ylabel="share of 300 test problems", ylim=(0, 1), title=f"{steps} steps from the same weights")
            ax.figure.tight_layout()
            """
        ),
        md(
            """
            The control never writes `<bkspc>` (it never saw one), so a forced mistake stays in its answer: its
            recovery is 0 by construction, whatever its clean accuracy. SequenceMatch, at about the same clean
            accuracy (and a somewhat higher held-out NLL), deletes forced digits: after a wrong second digit it
            backspaces in most rollouts and recovers the right answer about half the time. At this budget it has
            not learnt the rest: after a wrong first digit it seldom backspaces, after two wrong digits it rarely
            deletes both, and a mistake buried under a right digit it leaves alone, so recovery there stays near 0.

            This is a tiny model, a few hundred CPU steps and one seed, and it has no arm trained by behaviour
            cloning alone on the noisy data (`sm_weight=0`), so it does not show what the SequenceMatch term adds
            over the noise augmentation. `python benchmarks/efficacy_sequencematch.py` runs that comparison
            (MLE, BC and SequenceMatch, longer, over three seeds).
            """
        ),
        *card_cells("sm", "sequencematch"),
    ]


QUICKSTART = Quickstart(
    "sequencematch_quickstart",
    cells,
    "sequencematch/README.md",
    "sequencematch",
    ("MLE (control)", "SequenceMatch", "<bkspc>", "recovery_later"),
)
