"""mbias: measure and reduce language-vs-vision modality bias in HuggingFace multimodal LLMs.

Importing ``mbias`` is cheap (no torch); heavy modules load on first use. From Python (``docs/python.md``):

- ``mbias.audit(model, processor, data)`` -> ``AuditResult`` (``.summary``, ``.verdict``, ``.records``,
  ``.save(dir)``, ``.compare(other)``), for a model you hold or a reference;
- ``BalancedTrainer``, ``FinetuneConfig`` and the recipe registry ``RECIPES``, the pieces of fine-tuning.
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
    "FinetuneConfig": "mbias.finetune.config",
    "BalancedTrainer": "mbias.finetune.trainer",
    "RECIPES": "mbias.finetune.recipes",
}

__all__ = [
    "RECIPES", "AuditConfig", "AuditResult", "BalancedTrainer", "Comparison", "FinetuneConfig", "LoadOptions", "ScoringConfig",
    "__version__", "audit",
]

if TYPE_CHECKING:
    from mbias.api import AuditResult, Comparison, audit
    from mbias.diagnose.config import AuditConfig
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.recipes import RECIPES
    from mbias.finetune.trainer import BalancedTrainer
    from mbias.models.config import LoadOptions, ScoringConfig


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mbias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
