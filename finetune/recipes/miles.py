"""miles: Modality-Informed Learning ratE Scheduler (MILES; Guerra-Manzanares & Shamout, IJCNN 2025).

Every ``every_steps`` optimizer steps (and before the first), on held-out data: accuracy with the full input,
with the image masked (text only) and with the question masked (image only); conditional utilisation rates
u_img = (M_full - M_image_masked) / M_full and u_txt = (M_full - M_question_masked) / M_full,
delta = |u_img - u_txt|.
If delta <= tau, or both rates are negative, every parameter group runs at the scheduled learning rate;
otherwise the dominant side's groups (larger positive u) run at mu times it. Implemented as a TrainerCallback
that rescales the LR scheduler's base rates of the modality parameter groups; almost free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from mbias.errors import ConfigError
from mbias.finetune.data import BatchSpec, EncodedDataset, RecipeCollator
from mbias.finetune.recipes.base import RECIPES, Recipe
from mbias.finetune.signals import variant_values
from mbias.variants import FULL, IMAGE_MASKED, QUESTION_MASKED


@dataclass
class MILESConfig:
    tau: float = field(default=0.2, metadata={"help": "utilisation gap below which learning rates are left alone"})
    mu: float = field(default=0.5, metadata={"help": "learning-rate factor of the dominant side"})
    every_steps: int = field(default=50, metadata={"help": "optimizer steps between measurements (the paper "
                                                           "measures once per epoch)"})

    def __post_init__(self):
        if not 0 < self.mu <= 1:
            raise ConfigError(f"mu must be in (0, 1]; got {self.mu}")
        if self.tau < 0 or self.every_steps < 1:
            raise ConfigError("tau must be >= 0 and every_steps >= 1")


def utilisation(m_full: float, m_image_masked: float, m_question_masked: float) -> tuple[float, float]:
    """(u_img, u_txt): how much accuracy each modality's removal costs, relative to the full accuracy."""
    if m_full <= 0:
        return 0.0, 0.0
    return (m_full - m_image_masked) / m_full, (m_full - m_question_masked) / m_full


def lr_factors(u_img: float, u_txt: float, tau: float, mu: float) -> dict[str, float]:
    """Learning-rate factor per modality group."""
    if abs(u_img - u_txt) <= tau or (u_img < 0 and u_txt < 0):
        return {"vision": 1.0, "language": 1.0}
    dominant = "vision" if u_img > u_txt else "language"
    return {"vision": 1.0, "language": 1.0, dominant: mu}


@RECIPES.register("miles")
class MILESRecipe(Recipe):
    config_class = MILESConfig
    batch = BatchSpec(choices=True)
    description = "Learning rate of the dominant modality's parameters scaled by mu when utilisation rates diverge."

    def __init__(self, config=None):
        super().__init__(config)
        self.factors = {"vision": 1.0, "language": 1.0}
        self.last = {}
        self._base_lrs = None

    def callbacks(self):
        return [_MILESCallback(self)]

    def setup(self, ctx):
        super().setup(ctx)
        if not ctx.eval_examples:
            raise ConfigError("miles needs held-out data to read utilisation rates from; pass --eval-data")

    def training_step(self, model, inputs):
        loss, signals = super().training_step(model, inputs)
        return loss, {**signals, **self.last}

    @torch.no_grad()
    def measure(self) -> dict:
        ctx = self.ctx
        model = ctx.model
        was_training = model.training
        model.eval()
        data = EncodedDataset(ctx.scorer, ctx.eval_examples)
        variants = (FULL, IMAGE_MASKED, QUESTION_MASKED)
        collate = RecipeCollator(ctx.scorer, BatchSpec(variants=frozenset(variants[1:]), choices=True))
        totals = torch.zeros(len(variants), device=ctx.device)
        # each process measures every num_processes-th batch of 64 and the counts are summed; every process runs
        # as many forward passes (a sharded model gathers its weights in each, with all processes), the surplus
        # ones counting nothing
        starts = list(range(0, len(data), 64))
        rounds = -(-len(starts) // ctx.num_processes)
        for r in range(rounds):
            k = r * ctx.num_processes + ctx.process_index
            start = starts[min(k, len(starts) - 1)]
            batch = ctx.to_device(collate([data[i] for i in range(start, min(len(data), start + 64))]))
            vals = variant_values(model, batch, "accuracy", variants)
            if k < len(starts):
                totals += torch.stack([vals[v].sum() for v in variants]).to(totals.device)
        model.train(was_training)
        m = dict(zip(variants, (self.over_processes(totals, "sum") / len(data)).tolist(), strict=True))
        u_img, u_txt = utilisation(m[FULL], m[IMAGE_MASKED], m[QUESTION_MASKED])
        self.factors = lr_factors(u_img, u_txt, self.config.tau, self.config.mu)
        self.apply()
        self.last = {"miles/acc_full": m[FULL], "miles/acc_image_masked": m[IMAGE_MASKED],
                     "miles/acc_question_masked": m[QUESTION_MASKED], "miles/u_image": u_img, "miles/u_text": u_txt,
                     "miles/factor_vision": self.factors["vision"], "miles/factor_language": self.factors["language"]}
        return self.last

    def apply(self) -> None:
        """Scale the scheduler's base rates of each modality's groups (the schedule itself keeps its shape)."""
        if self._base_lrs is None:
            self._base_lrs = list(self.ctx.lr_scheduler.base_lrs)
        self.ctx.scale_base_lrs(self.factors, self._base_lrs)

    def state_dict(self):
        return {"factors": self.factors, "last": self.last, "base_lrs": self._base_lrs}

    def load_state_dict(self, state):
        self.factors, self.last, self._base_lrs = state["factors"], state["last"], state["base_lrs"]


class _MILESCallback(TrainerCallback):
    def __init__(self, recipe: MILESRecipe):
        self.recipe = recipe

    def on_train_begin(self, args, state, control, **kwargs):
        if self.recipe._base_lrs is not None:  # resumed: re-apply the factors in force at the checkpoint
            self.recipe.apply()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.recipe.config.every_steps == 0:
            self.recipe.measure()
