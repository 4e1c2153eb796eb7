"""The composition every trl-likelihood trainer mixes in before its TRL parent, and the model card it writes.

``MethodTrainer`` brings, in this order: the method's card in every folder it saves a model to (``CardMixin``), the
public copy of what is saved for the Hub (``PublicSaves``), complete checkpoints with the method's settings
(``CompleteCheckpoints``), the one metrics mechanism (``MethodMetrics``), and the stops before harm
(``NonEmptyPreparedData``, ``FiniteLossGuard``).
"""

from __future__ import annotations

import os
from typing import Any

from ..cards import CardInfo, render_card
from .checkpoints import CompleteCheckpoints
from .guards import FiniteLossGuard, NonEmptyPreparedData
from .logged_metrics import MethodMetrics
from .publishing import PublicSaves


class CardMixin:
    """The method's model card. Subclasses set ``_card_template`` and return their ``card_hyperparameters``.

    TRL writes its generic card only on checkpoints and pushes, and PEFT's own card carries the base model's local
    path; here every folder ``_save`` writes (``save_model()``, checkpoints, pushes) gets the method's card.
    """

    _card_template: str = ""
    _card_pipeline_tag: str | None = "text-generation"

    def card_hyperparameters(self) -> dict[str, Any]:
        """The method's own settings, shown first in the card's hyperparameter table."""
        return {}

    def card_extra(self, info: CardInfo) -> dict[str, Any]:
        """Method-specific facts for the template (``info.extra``), e.g. which reference a PRM must be used with."""
        return {}

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, output_dir: str | None = None, **kwargs
    ) -> None:
        """Write ``README.md`` into ``output_dir`` (default ``args.output_dir``) from the method's template."""
        if not self.is_world_process_zero():
            return
        info = CardInfo.from_trainer(self, model_name=model_name, dataset_name=dataset_name, tags=kwargs.get("tags"))
        info.hyperparameters = {**self.card_hyperparameters(), **info.hyperparameters}
        info.extra = self.card_extra(info)
        info.pipeline_tag = self._card_pipeline_tag
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        render_card(self._card_template, info).save(os.path.join(output_dir, "README.md"))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self.create_model_card(output_dir=output_dir or self.args.output_dir)


class MethodTrainer(CardMixin, PublicSaves, CompleteCheckpoints, MethodMetrics, NonEmptyPreparedData, FiniteLossGuard):
    """Everything a trainer here adds to its TRL parent; mix in before it."""
