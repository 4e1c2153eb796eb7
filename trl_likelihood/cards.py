"""Model cards for what a trl-likelihood trainer saved, rendered from the Jinja templates in ``hub_cards/``.

The metadata must be right for the artifact (``library_name: peft`` and ``base_model`` for an adapter) and must never
leak a local path or a token: ``base_model`` is a Hub id or absent; a model loaded from a local folder is named (by the
folder's last component) only in the text, which says why the metadata has no ``base_model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .data import hub_dataset_id
from .paths import is_local_path

TRL_CITATION = """\
@software{vonwerra2020trl,
    title   = {{TRL: Transformers Reinforcement Learning}},
    author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and
               Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
    license = {Apache-2.0},
    url     = {https://github.com/huggingface/trl},
    year    = {2020}
}"""

# Training arguments worth showing in every card, after the method's own hyperparameters.
_SHOWN_ARGS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "seed",
)


def template_path(name: str) -> Path:
    """Locate a card template: inside the installed package first, then the source tree's ``hub_cards/``."""
    try:
        packaged = resources.files("trl_likelihood") / "hub_cards" / name
        if packaged.is_file():
            return Path(str(packaged))
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    source_tree = Path(__file__).resolve().parent.parent / "hub_cards" / name
    if source_tree.is_file():
        return source_tree
    raise FileNotFoundError(f"Model-card template {name!r} is neither in the package nor in hub_cards/.")


def hub_model_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` if it is a Hub model id, ``None`` for a local folder: only a Hub id may be a card's
    ``base_model`` (the Hub links it and lists the card under that model's fine-tunes)."""
    return name_or_path if name_or_path and not is_local_path(name_or_path) else None


def public_model_name(name_or_path: str | None) -> str | None:
    """A Hub id stays as is; a local folder becomes its last component, so no local path reaches a card."""
    if not name_or_path:
        return None
    if is_local_path(name_or_path):
        return Path(name_or_path.rstrip("/\\")).name or None
    return name_or_path


def framework_versions(is_adapter: bool) -> dict[str, str]:
    """The versions TRL's cards list (TRL, Transformers, PyTorch, Datasets, Tokenizers), plus trl-likelihood's and,
    for an adapter, PEFT's: what a reader needs to reproduce the run or load the files."""
    from . import __version__

    packages = {"TRL": "trl", "Transformers": "transformers", "PyTorch": "torch", "Datasets": "datasets"}
    packages |= {"Tokenizers": "tokenizers", **({"PEFT": "peft"} if is_adapter else {})}
    versions = {"trl-likelihood": __version__}
    for label, package in packages.items():
        try:
            versions[label] = version(package)
        except PackageNotFoundError:  # PEFT is optional for a full fine-tune only, but never fail a save over a card
            continue
    return versions


@dataclass
class CardInfo:
    """Everything a template needs, gathered from a trainer (or filled by hand for tests)."""

    model_name: str
    method: str
    base_model: str | None = None  # a Hub id, never a local folder (see ``hub_model_id``)
    base_model_local: str | None = None  # the local folder's name when the base came from one: for the text only
    is_adapter: bool = False
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    hub_model_id: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    paper_id: str | None = None
    citation: str | None = None
    pipeline_tag: str | None = "text-generation"
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts for its template

    @property
    def base_model_name(self) -> str | None:
        """How the text names the base: its Hub id, else its local folder's name."""
        return self.base_model or self.base_model_local

    @classmethod
    def from_trainer(
        cls, trainer: Any, model_name: str | None = None, dataset_name: str | list[str] | None = None, tags=None
    ) -> CardInfo:
        model = trainer.model
        peft_config = getattr(model, "peft_config", None)
        is_adapter = bool(peft_config)
        if is_adapter:
            adapter = next(iter(peft_config.values()))
            base = adapter.base_model_name_or_path
            lora = {k: getattr(adapter, k) for k in ("r", "lora_alpha", "lora_dropout") if hasattr(adapter, k)}
            lora["target_modules"] = sorted(adapter.target_modules) if adapter.target_modules else None
        else:
            base, lora = model.config._name_or_path, {}
        args = trainer.args
        repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
        name = model_name or (repo_id.split("/")[-1] if repo_id else Path(args.output_dir).name)
        datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        return cls(
            model_name=name,
            method=trainer._name,
            base_model=hub_model_id(base),
            base_model_local=None if hub_model_id(base) else public_model_name(base),
            is_adapter=is_adapter,
            datasets=[d for d in datasets if hub_dataset_id(d)],  # a local file is no Hub dataset
            tags=list(dict.fromkeys([*trainer._tag_names, *extra_tags])),
            hub_model_id=repo_id,
            hyperparameters={k: getattr(args, k) for k in _SHOWN_ARGS if hasattr(args, k)},
            eval_metrics=last_eval_metrics(trainer.state.log_history),
            lora=lora,
            paper_id=trainer._paper.get("id"),
            citation=trainer._paper.get("citation"),
        )


def last_eval_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of the last evaluation in ``trainer.state.log_history`` (``eval_`` prefix dropped)."""
    for entry in reversed(log_history):
        if any(k.startswith("eval_") for k in entry):
            return {
                k.removeprefix("eval_"): v
                for k, v in entry.items()
                if k.startswith("eval_") and isinstance(v, int | float) and not k.endswith(("_runtime", "_per_second"))
            }
    return {}


def render_card(template_name: str, info: CardInfo) -> ModelCard:
    """Render ``hub_cards/<template_name>`` with ``info`` into a ``huggingface_hub.ModelCard``."""
    card_data = ModelCardData(
        base_model=info.base_model,
        datasets=info.datasets or None,
        library_name="peft" if info.is_adapter else "transformers",
        model_name=info.model_name,
        tags=info.tags,
        pipeline_tag=info.pipeline_tag,
    )
    repo_id = info.hub_model_id or info.model_name
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(template_name)),
        info=info,
        repo_id=repo_id,
        trl_citation=TRL_CITATION,
        framework_versions=framework_versions(info.is_adapter),
    )
