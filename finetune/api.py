"""``mbias.finetune``: fine-tune a model you hold (or a reference) with a debiasing recipe, from Python.

The pieces under it are public too, for a user who wants to subclass or plug in their own collator:
``FinetuneConfig`` (transformers' ``TrainingArguments`` plus mbias's settings), ``BalancedTrainer`` (the Trainer
with modality parameter groups and a recipe-defined step), ``RECIPES`` (the recipe registry) and
``build_trainer`` (everything up to ``trainer.train()``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mbias.finetune.trainer import BalancedTrainer
    from mbias.models.config import LoadOptions


@dataclass
class FinetuneResult:
    """``model``: the trained model (a ``PeftModel`` around the object given, with ``tune: lora``); ``trainer``: the
    ``BalancedTrainer`` (its ``state.log_history`` has the losses and, with a monitor, the ``mbias/*`` numbers);
    ``out``: where the adapter was saved (None without ``out``); ``monitor``: the monitor's measurements."""

    model: Any
    trainer: BalancedTrainer = field(repr=False)
    out: Path | None
    monitor: list[dict] = field(default_factory=list)


def finetune(model: Any, processor: Any = None, data: Any = None, recipe: str = "poe", *,
             out: str | Path | None = None, load: LoadOptions | None = None, progress: bool = True,
             **training_args: Any) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` with ``recipe`` (``RECIPES.names()``; docs/recipes.md says which when).

    ``model``: a model object with its ``processor`` (LoRA goes into its modules in place, as ``peft.get_peft_model``
    does; a ``PeftModel`` trains the adapters it has) or a reference loaded with ``load``. ``data``: a reference, a
    ``datasets.Dataset`` or a list of dicts. ``training_args``: any ``FinetuneConfig`` field, i.e. every
    transformers ``TrainingArguments`` setting (``max_steps=200``, ``learning_rate=1e-3``, ``report_to="wandb"``)
    and mbias's (``recipe_config={...}``, ``lora_r``, ``monitor_data="synth:shapes-p90/val"``,
    ``monitor_every=50``, ...). With ``out`` the adapter, ``recipe.json`` and ``training_log.jsonl`` are written
    there, as ``mbias finetune --out`` does; without it nothing stays on disk.
    """
    from mbias.config import build_config
    from mbias.errors import ConfigError
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import train

    if data is None:
        raise ConfigError("mbias.finetune needs data: a reference, a datasets.Dataset or a list of dicts")
    training_args.setdefault("disable_tqdm", not progress)
    config = build_config(FinetuneConfig, {"recipe": recipe, **training_args}, where="mbias.finetune")
    if out is None:
        with tempfile.TemporaryDirectory(prefix="mbias-finetune-") as tmp:
            trainer, _ = train(model, data, tmp, config=config, load=load, progress=progress, processor=processor,
                               save=False)
    else:
        trainer, _ = train(model, data, out, config=config, load=load, progress=progress, processor=processor)
    history = trainer.mbias_monitor.history if trainer.mbias_monitor is not None else []
    return FinetuneResult(trainer.model, trainer, Path(out) if out is not None else None, history)
