"""Implicit PRM on modular addition with bug cells: training, step scores, best-of-N; the quickstart's cells."""

from __future__ import annotations

from nbformat import NotebookNode

from .cells import Quickstart, card_cells, code, cpu_args_cell, md, setup_cell

STEPS = 60  # of the PRM; its 800-step reference dominates the notebook's 40 s of CPU


def cells() -> list[NotebookNode]:
    return [
        md(
            """
            # Implicit PRM quickstart

            A process reward model (PRM) scores every step of a solution, but step labels are expensive. An implicit
            PRM ([Yuan et al., 2024](https://arxiv.org/abs/2412.01981)) is trained on outcome labels only (was the
            final answer right?): its reward `r(y) = beta * log pi(y) / pi_ref(y)`, summed up to the end of a step,
            is that step's process reward. `ImplicitPRMTrainer` is a drop-in for TRL's `KTOTrainer` (unpaired
            labels, as here) or `DPOTrainer` (pairs).

            This notebook runs offline on a CPU in a minute or two (half of it training the reference), on a task
            where the truth of every step is known.
            """
        ),
        setup_cell(
            """
            import numpy as np

            from trl_likelihood.lab import ModArithTask, load_reference, step_metrics, train_reference
            from trl_likelihood.lab.prm_metrics import LogLikelihoodScorer, best_of_n_baselines, sample_candidates
            """
        ),
        md(
            """
            ## Data

            Chained modular addition: the prompt is `x0 o1 ... o6 ?`, a response writes each operand and the running
            sum mod 10, step by step (`o1 v1 ; o2 v2 ; ...`). The responses come from a noisy solver with "bug
            cells": fixed (value, operand) pairs where it writes a fixed wrong value 70 % of the time. The label
            says only whether the final value is right. `task.outcome_dataset()` is TRL's unpaired preference format
            (`prompt`, `completion`, `label`), as `KTOTrainer` takes it.
            """
        ),
        code(
            """
            task = ModArithTask(seed=0)
            dataset = task.outcome_dataset(3000, seed=5)
            print(dataset)
            dataset[0]
            """
        ),
        md(
            """
            ## The reference

            The PRM starts from, and is measured against, a reference `pi_ref`: here a tiny GPT-2 trained by SFT on
            solver samples (`train_reference` wraps `SFTTrainer`). It imitates the solver, bugs included: it
            *prefers* the bug values, so its own likelihood cannot flag them. Only the outcome labels can.
            """
        ),
        code(
            """
            ref_dir = train_reference(task, "reference")  # 800 steps
            reference, tokenizer = load_reference(ref_dir)
            """
        ),
        md(
            """
            ## The one-line swap

            Train the PRM from the reference on the outcome labels: the data and the arguments are what
            `KTOTrainer` takes. With no `ref_model` and no `peft_config`, the reference is a frozen copy of the
            initial model (with a `peft_config`, the base with the adapter disabled: no second copy in memory).
            `loss_type="ce"` is the paper's cross-entropy on the labels; `"dpo"` pairs correct with incorrect
            responses of a prompt.
            """
        ),
        cpu_args_cell(STEPS, "64", learning_rate="1e-3"),
        code(
            """
            # was: from trl import KTOConfig, KTOTrainer
            from trl_likelihood import ImplicitPRMConfig, ImplicitPRMTrainer

            prm_trainer = ImplicitPRMTrainer(  # was: KTOTrainer(
                ref_dir,
                args=ImplicitPRMConfig("prm", beta=0.5, loss_type="ce", max_steps=steps, **cpu),  # was: KTOConfig(...)
                train_dataset=dataset,
                processing_class=tokenizer,
            )
            prm_trainer.train();
            """
        ),
        md(
            """
            ## Logged metrics

            `prm/reward_correct` and `prm/reward_incorrect` are the mean outcome rewards of the two classes,
            `prm/accuracy` and `prm/auroc` how well the outcome reward separates them in each batch.
            """
        ),
        code(
            """
            columns = ["loss", "prm/accuracy", "prm/auroc", "prm/reward_correct", "prm/reward_incorrect"]
            logged(prm_trainer)[columns].tail(3)
            """
        ),
        md(
            """
            ## Score steps

            `ImplicitPRM` turns the trained model and its reference into a step scorer. Steps are joined with
            `step_separator`, as in the training data; the step boundaries come from the token offsets. A held-out
            response with one bug error: its step reward is lowest at the wrong step.
            """
        ),
        code(
            """
            from trl_likelihood import ImplicitPRM, StepScores

            prm = ImplicitPRM(prm_trainer.model, reference, tokenizer, beta=0.5, step_separator=task.step_separator)
            held_out = task.step_dataset(1000, seed=1000)  # solver responses with the truth of every step
            row = next(r for r in held_out if sum(r["bug_error"]) == 1 and sum(r["step_correct"]) == 5)
            result: StepScores = prm.score(row["prompt"], row["steps"])
            pd.DataFrame({"step": row["steps"], "correct": row["step_correct"], "bug": row["bug_error"],
                          "reward": result.step_rewards, "q": result.q_values})
            """
        ),
        md(
            """
            Over all held-out steps: AUROC of the step reward for right vs wrong steps (`step_auroc`), inside bug
            cells only (`bug_auroc`), and how often the lowest reward falls on the one wrong step
            (`localisation`). The control scores a step by the reference's own log-likelihood: it catches the
            random slips, but in a bug cell it prefers the bug value to the right one, where the PRM, taught by
            the outcome labels alone, puts it far below.
            """
        ),
        code(
            """
            control = LogLikelihoodScorer(reference, tokenizer, task.step_separator)
            scorers = {"implicit PRM": prm.score, "log pi_ref (control)": control}
            table = pd.DataFrame({name: step_metrics(scorer, held_out) for name, scorer in scorers.items()}).T
            table[["step_auroc", "bug_auroc", "localisation"]]
            """
        ),
        code(
            """
            truth = held_out[:]  # plain lists: `score` takes lists, not a dataset's lazy columns
            prompts, steps = truth["prompt"], truth["steps"]
            step_scores = {
                "implicit PRM": [r.step_rewards for r in prm.score(prompts, steps)],
                "log pi_ref (control)": control(prompts, steps),
            }
            right, bug_cell, bug_error = (np.array(truth[k]) for k in ("step_correct", "bug_cell", "bug_error"))
            kinds = {
                "right": right & ~bug_cell,
                "slip": ~right & ~bug_error,
                "right, bug cell": right & bug_cell,
                "bug error": bug_error,
            }
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
            for ax, (name, scores) in zip(axes, step_scores.items()):
                scores = np.array(scores)
                ax.boxplot([scores[mask] for mask in kinds.values()], showfliers=False)
                ax.set_xticks(range(1, len(kinds) + 1), list(kinds))
                ax.set(title=name, ylabel="step score (higher: judged right)")
            fig.tight_layout()
            """
        ),
        md(
            """
            ## Best of N

            Sample 8 answers per problem from the reference and keep the one whose weakest step scores highest
            (`best_of_n`, aggregate `"min"`), against picking at random, majority vote over final answers and the
            oracle (some candidate is right).
            """
        ),
        code(
            """
            N = 8
            candidates = sample_candidates(reference, task, num_prompts=100, n=N, seed=1001)
            prompts, responses = task.prompt_texts(candidates), task.step_texts(candidates)
            correct = candidates.label.reshape(-1, N)
            picked = [prm.best_of_n(prompts[i * N], responses[i * N : (i + 1) * N])[0] for i in range(len(correct))]
            accuracy = {f"best-of-{N} (implicit PRM)": correct[range(len(correct)), picked].mean()}
            accuracy |= {k.removeprefix(f"bon{N}_"): v for k, v in best_of_n_baselines(candidates, N, ns=(N,)).items()}
            pd.Series(accuracy, name="accuracy")
            """
        ),
        *card_cells("prm_trainer", "prm"),
        md("Later, or in another process, the saved PRM loads back by path (its tokenizer was saved with it):"),
        code(
            """
            prm = ImplicitPRM.from_pretrained("prm", reference=ref_dir, beta=0.5, step_separator=task.step_separator)
            prm.score(row["prompt"], row["steps"]).step_rewards
            """
        ),
    ]


QUICKSTART = Quickstart(
    "implicit_prm_quickstart",
    cells,
    "prm/README.md",
    "implicit-prm",
    ("log pi_ref (control)", "best-of-8 (implicit PRM)", "majority"),
)
