"""Probes: one measurement of language-vs-vision reliance per module, registered by name.

The list of what exists is the imports below. ``DEFAULT_PROBES`` is what ``mbias audit`` runs when no
``--probes`` are given.
"""

from mbias.probes import (  # noqa: F401 (registration)
    ablation,
    attention,
    conflict,
    degradation,
    mm_shap,
    modality_shapley,
    pdm,
)
from mbias.probes.base import PROBES, Outcome, Probe, SampleContext, sample_seed

DEFAULT_PROBES = ["modality_shapley", "conflict", "mm_shap", "ablation", "attention", "degradation", "pdm"]

__all__ = ["DEFAULT_PROBES", "PROBES", "Outcome", "Probe", "SampleContext", "sample_seed"]
