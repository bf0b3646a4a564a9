"""Balancing recipes, one module each, registered by name. The list of what exists is the imports below."""

from mbias.finetune.recipes import (  # noqa: F401 (registration)
    cggm,
    lmh,
    mdpo,
    miles,
    mnl,
    msam,
    ogm_ge,
    plain,
    poe,
)
from mbias.finetune.recipes.base import RECIPES, Recipe

__all__ = ["RECIPES", "Recipe"]
