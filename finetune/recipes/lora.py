"""lora: plain LoRA SFT on the answer tokens, the baseline every balancing recipe is compared to."""

from __future__ import annotations

from dataclasses import dataclass

from mbias.finetune.recipes.base import RECIPES, Recipe


@dataclass
class LoraRecipeConfig:
    pass


@RECIPES.register("lora")
class LoraRecipe(Recipe):
    config_class = LoraRecipeConfig
    description = "Plain LoRA fine-tuning on the answer tokens (no balancing)."
