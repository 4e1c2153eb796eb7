"""What every trl-likelihood trainer adds on top of its TRL parent: a model card from ``hub_cards/`` on every save."""

from __future__ import annotations

import os
from typing import Any

from ..cards import CardInfo, render_card


class CardMixin:
    """Mix in before a TRL trainer. Subclasses set ``_card_template`` and return their ``card_hyperparameters``.

    TRL writes its generic card only on checkpoints and pushes; a user who calls ``save_model()`` gets ours too.
    """

    _card_template: str = ""

    def card_hyperparameters(self) -> dict[str, Any]:
        """The method's own settings, shown first in the card's hyperparameter table."""
        return {}

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, output_dir: str | None = None, **kwargs
    ) -> None:
        """Write ``README.md`` into ``output_dir`` (default ``args.output_dir``) from the method's template."""
        if not self.is_world_process_zero():
            return
        info = CardInfo.from_trainer(self, model_name=model_name, dataset_name=dataset_name, tags=kwargs.get("tags"))
        info.hyperparameters = {**self.card_hyperparameters(), **info.hyperparameters}
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        render_card(self._card_template, info).save(os.path.join(output_dir, "README.md"))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not _internal_call:  # push_to_hub and checkpoints write their own card
            self.create_model_card(output_dir=output_dir)
