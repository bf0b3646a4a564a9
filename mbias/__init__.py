"""mbias: measure and reduce language-vs-vision modality bias in HuggingFace multimodal LLMs.

Importing ``mbias`` is cheap (no torch); heavy modules load on first use. From Python (``docs/python.md``):

- ``mbias.audit(model, processor, data)`` -> ``AuditResult`` (``.summary``, ``.verdict``, ``.records``,
  ``.save(dir)``, ``.compare(other)``), for a model you hold or a reference;
- ``mbias.finetune(model, processor, data, recipe="poe", **training_args)``, built on ``BalancedTrainer``,
  ``FinetuneConfig`` and the recipe registry ``RECIPES``;
- ``mbias.BiasMonitorCallback``: audits the model being trained every N steps and logs ``mbias/*`` through any
  ``transformers.Trainer``;
- ``mbias.decoding_processors(model, processor, inputs, "contrastive:alpha=1")``: the logits processors that serve
  a model through a decode-time fix in your own ``model.generate`` (``mbias.decoding``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "audit": "mbias.api",
    "AuditResult": "mbias.api",
    "Comparison": "mbias.api",
    "AuditConfig": "mbias.diagnose.config",
    "LoadOptions": "mbias.models.config",
    "ScoringConfig": "mbias.models.config",
    "FinetuneResult": "mbias.finetune.api",
    "FinetuneConfig": "mbias.finetune.config",
    "BalancedTrainer": "mbias.finetune.trainer",
    "RECIPES": "mbias.finetune.recipes",
    "BiasMonitorCallback": "mbias.finetune.monitor",
    "decoding_processors": "mbias.decoding",
}

__all__ = [
    "RECIPES", "AuditConfig", "AuditResult", "BalancedTrainer", "BiasMonitorCallback", "Comparison", "FinetuneConfig",
    "FinetuneResult", "LoadOptions", "ScoringConfig", "__version__", "audit", "decoding_processors", "finetune",
]

if TYPE_CHECKING:
    from mbias.api import AuditResult, Comparison, audit
    from mbias.decoding import decoding_processors
    from mbias.diagnose.config import AuditConfig
    from mbias.finetune.api import FinetuneResult, finetune
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.monitor import BiasMonitorCallback
    from mbias.finetune.recipes import RECIPES
    from mbias.finetune.trainer import BalancedTrainer
    from mbias.models.config import LoadOptions, ScoringConfig


def __getattr__(name: str):
    if name == "finetune":  # the package, callable as mbias.finetune.api.finetune (see finetune/__init__.py)
        return importlib.import_module("mbias.finetune")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mbias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "finetune"})
