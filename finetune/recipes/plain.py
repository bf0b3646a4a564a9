"""plain: fine-tuning on the answer tokens with no balancing, the baseline every balancing recipe is compared to
(LoRA by default; every parameter with ``tune: full``)."""

from __future__ import annotations

from dataclasses import dataclass

from mbias.finetune.recipes.base import RECIPES, Recipe


@dataclass
class PlainRecipeConfig:
    pass


@RECIPES.register("plain")
class PlainRecipe(Recipe):
    config_class = PlainRecipeConfig
    description = "Plain fine-tuning on the answer tokens (no balancing): LoRA, or every parameter with tune: full."
