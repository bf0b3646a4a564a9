"""Model adapters: one interface over HF image-text models (see ``base.Scorer``).

Names are imported lazily so that ``mbias.models.config`` (used to build CLI flags) does not pull in torch.
"""

import importlib

_EXPORTS = {
    "Scorer": "mbias.models.base",
    "Encoded": "mbias.models.types",
    "Prediction": "mbias.models.types",
    "Prepared": "mbias.models.types",
    "normalize_answer": "mbias.example",
    "ScoringConfig": "mbias.models.config",
    "FAMILIES": "mbias.models.families",
    "scorer_class_for": "mbias.models.families",
    "supported_families": "mbias.models.families",
    "LoadOptions": "mbias.models.config",
    "load_model": "mbias.models.loading",
    "wrap_model": "mbias.models.loading",
    "resolve_model_ref": "mbias.models.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mbias.models' has no attribute {name!r}")
