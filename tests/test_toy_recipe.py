"""A recipe is one file: a toy recipe registered here is chosen by ``mbias finetune --recipe``, reads its own
settings from ``--recipe-config``, trains, logs its signals to training_log.jsonl and is recorded in recipe.json,
without any other file knowing its name (as tests/test_toy_probe.py does for a probe)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest

from mbias.cli import main
from mbias.config import check_number
from mbias.finetune.recipes import RECIPES, Recipe

DATA = "synth:shapes-p90/train"


@pytest.fixture()
def toy_recipe():
    @dataclass
    class ToyRecipeConfig:
        weight: float = field(default=1.0, metadata={"help": "factor on the answer loss"})

        def __post_init__(self):
            check_number(self, "weight", gt=0)

    @RECIPES.register("toy_recipe")
    class ToyRecipe(Recipe):  # the whole recipe: its settings, its step, its signals and its state
        config_class = ToyRecipeConfig
        description = "The answer loss times a weight (a test of the recipe registry)."

        def __init__(self, config=None):
            super().__init__(config)
            self.steps = 0

        def training_step(self, model, inputs):
            loss = self.config.weight * self.sft_loss(model, inputs)
            self.backward(loss)
            self.steps += 1
            return loss.detach(), {"toy/weight": self.config.weight, "toy/steps": self.steps}

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    yield ToyRecipe
    RECIPES._items.pop("toy_recipe")


def _finetune(model: str, out, *extra: str) -> int:
    return main(["finetune", "--model", model, "--data", DATA, "--out", str(out), "--recipe", "toy_recipe",
                 "--max-steps", "2", "--per-device-train-batch-size", "4", "--max-train-samples", "8",
                 "--eval-samples", "4", "--learning-rate", "1e-2", "--logging-steps", "1", "--report-to", "none",
                 "--no-progress", *extra])


def test_a_toy_recipe_trains_through_the_command_line(toy_recipe, tiny_model_dir, tmp_path):
    out = tmp_path / "ft"
    assert _finetune(tiny_model_dir("llava"), out, "--recipe-config", "weight: 0.5") == 0
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and all(math.isfinite(e["loss"]) for e in log)
    assert [e["toy/steps"] for e in log] == [1, 2] and {e["toy/weight"] for e in log} == {0.5}
    record = json.loads((out / "recipe.json").read_text())
    assert record["recipe"] == "toy_recipe" and record["recipe_config"] == {"weight": 0.5} and record["steps"] == 2
    assert (out / "adapter_model.safetensors").exists()  # --tune lora (the default): a PEFT adapter


def test_a_toy_recipes_settings_are_checked_before_any_work(toy_recipe, tiny_model_dir, tmp_path, capsys):
    assert _finetune(tiny_model_dir("llava"), tmp_path / "a", "--recipe-config", "wieght: 0.5") == 2
    assert "unknown ToyRecipeConfig field 'wieght'; did you mean 'weight'?" in capsys.readouterr().err
    assert _finetune(tiny_model_dir("llava"), tmp_path / "b", "--recipe-config", "weight: -1") == 2
    assert "ToyRecipeConfig.weight must be a number > 0; got -1" in capsys.readouterr().err
    assert not (tmp_path / "b" / "training_log.jsonl").exists()
