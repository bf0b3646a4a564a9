"""The base of the recipes that train around a bias expert (``poe``, ``lmh``): the expert's needs wired into the
batches. Not a recipe itself (not registered)."""

from __future__ import annotations

from mbias.finetune.bias_expert import BiasExpert
from mbias.finetune.data import BatchSpec
from mbias.finetune.recipes.base import Recipe
from mbias.variants import IMAGE_MASKED, IMAGE_REMOVED


class BiasExpertRecipe(Recipe):
    """A recipe that trains around a bias expert (``poe``, ``lmh``): the expert's needs wired into the batches."""

    def __init__(self, config=None):
        super().__init__(config)
        self.expert = BiasExpert(self.config, self.name)
        self.uses_frozen_base = self.config.bias_expert != "prior_table"

    def bind_data(self, examples) -> None:
        self.expert.bind(examples)

    def batch_spec(self) -> BatchSpec:
        expert = {"no_image": {IMAGE_REMOVED}, "masked_image": {IMAGE_MASKED}}.get(self.config.bias_expert, set())
        return BatchSpec(variants=frozenset(expert), choices=self.expert.uses_choices)

    def collate_extra(self, encoded: list) -> dict:
        return self.expert.collate_extra(encoded)
