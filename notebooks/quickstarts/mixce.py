"""MixCE vs continued SFT on a sparse random bigram: the quickstart's cells."""

from __future__ import annotations

from nbformat import NotebookNode

from .cells import Quickstart, bigram_truth_cells, card_cells, code, cpu_args_cell, md, setup_cell, sft_control_cell

STEPS = 150  # MixCE and its control each; with the 200-step base, about 25 s of CPU for the notebook


def cells() -> list[NotebookNode]:
    return [
        md(
            """
            # MixCE quickstart

            Maximum likelihood (SFT) is mode-covering: it spreads probability onto text the data never contains.
            MixCE ([Zhang et al., ACL 2023](https://arxiv.org/abs/2305.16958)) mixes the forward cross-entropy
            (weight `eta`) with a mode-seeking reverse cross-entropy; per token the loss is
            `-(eta + (1 - eta) * sg(q_t)) * log q_t`. `MixCETrainer` is a drop-in for TRL's `SFTTrainer`.

            This notebook runs offline on a CPU in about a minute, on a task whose true distribution is known, so we
            can measure exactly how much probability a model puts where the data has none.
            """
        ),
        setup_cell(
            """
            from trl import SFTConfig, SFTTrainer

            from trl_likelihood.lab import BigramTask, bigram_metrics, tiny_causal_lm
            """
        ),
        md(
            """
            ## Data

            `BigramTask` is a sparse random bigram language: each symbol's successor comes from a fixed table in
            which half the entries are zero, so half the next tokens are impossible. `task.dataset()` is an ordinary
            `datasets.Dataset` in TRL's language-modelling format (one `text` column): any `SFTTrainer` data works.
            """
        ),
        code(
            """
            task = BigramTask(seed=0)  # 23 symbols and EOS; sequences of at most 31 symbols
            dataset = task.dataset(2000, seed=100)
            tokenizer = task.tokenizer()  # one symbol, one token
            print(dataset)
            dataset[0]
            """
        ),
        md(
            """
            ## A base model

            MixCE is a fine-tuning objective, so first a base model: a tiny Qwen2 built from a config and trained
            by plain SFT. Its hidden size (16) is below the vocabulary size (26), so it cannot represent the table
            exactly, the regime in which MixCE helps. With your own data, this is the pretrained model.
            """
        ),
        cpu_args_cell(STEPS, "task.max_len + 1"),
        code(
            """
            args = SFTConfig("base", max_steps=200, **cpu)
            base = SFTTrainer(tiny_causal_lm(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)
            base.train()
            base.save_model()
            """
        ),
        md(
            """
            ## The one-line swap

            Continue from the base with MixCE. Only the import, the class names and `eta` change: the data, the
            tokenizer and every training argument are SFT's. `eta=1.0` trains exactly like SFT; `eta=0.1` weights
            the reverse term strongly, so that its effect shows after a few steps.
            """
        ),
        code(
            """
            from trl_likelihood import MixCEConfig, MixCETrainer  # was: from trl import SFTConfig, SFTTrainer

            mixce = MixCETrainer(  # was: SFTTrainer(
                "base",
                args=MixCEConfig("mixce", eta=0.1, max_steps=steps, **cpu),  # was: SFTConfig(... the same, no eta)
                train_dataset=dataset,
                processing_class=tokenizer,
            )
            mixce.train();
            """
        ),
        md("The control is what you would have done otherwise: more SFT from the same base, same steps, same data."),
        sft_control_cell("base"),
        md(
            """
            ## Logged metrics

            Besides SFT's metrics, MixCE logs `mixce/forward_nll`, the plain NLL per token: it is comparable across
            values of `eta`, where `loss` (the MixCE objective) is not.
            """
        ),
        code('logged(mixce)[["loss", "mixce/forward_nll", "entropy", "mean_token_accuracy"]].tail(3)'),
        md(
            """
            ## Against the truth

            With the true distribution known, `bigram_metrics` computes exactly the mass on impossible next tokens,
            the share of the model's samples with an impossible transition, the held-out NLL per token and the
            Jensen-Shannon divergence to the true next-token distribution. Lower is better in every column.
            """
        ),
        *bigram_truth_cells(
            {"base": "base", "MLE (control)": "mle", "MixCE eta=0.1": "mixce"},
            bars=("zero_mass", "invalid_rate"),
            left_panel="""
            left.plot(logged(mle)["loss"], label="MLE (control)")
            left.plot(logged(mixce)["mixce/forward_nll"], label="MixCE eta=0.1")
            left.set(xlabel="step", ylabel="NLL per token", title="Training NLL")
            left.legend()
            """,
        ),
        md(
            """
            MixCE sharpens the model: less mass on impossible tokens and fewer invalid samples than the control, paid
            for with a higher NLL (and here, at a small `eta`, a higher JS). The README's table shows the trade-off
            over `eta` and three seeds.
            """
        ),
        *card_cells("mixce", "mixce"),
    ]


QUICKSTART = Quickstart("mixce_quickstart", cells, "mixce/README.md", "mixce", ("MLE (control)", "MixCE eta=0.1"))
