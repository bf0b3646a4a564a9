"""Balancing recipes, one module each, registered by name. The list of what exists is the imports below."""

from mbias.finetune.recipes import cggm, lora, miles, mnl, msam, ogm_ge  # noqa: F401 (registration)
from mbias.finetune.recipes.base import RECIPES, Recipe

__all__ = ["RECIPES", "Recipe"]
