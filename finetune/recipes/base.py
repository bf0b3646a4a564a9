"""What a balancing recipe is: a config, a training step, optional callbacks and state to checkpoint.

The trainer (``finetune.trainer.BalancedTrainer``) owns the model, optimizer, schedule and logging; a recipe only
decides how one step turns a batch into gradients. The default step is plain SFT on the answer tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mbias.errors import ConfigError
from mbias.finetune.data import answer_forward
from mbias.registry import Registry
from mbias.variants import FULL


@dataclass
class ModulationConfig:
    """The setting every gradient-modulation recipe shares: how ``Recipe.modulated_backward`` applies a factor."""

    mode: str = field(default="update", metadata={"help": "update: scale the group's learning rate for the step "
                                                          "(survives Adam); gradient: scale the gradient (as the "
                                                          "paper, with SGD)"})

    def __post_init__(self):
        if self.mode not in ("update", "gradient"):
            raise ConfigError(f"mode must be update or gradient, not {self.mode!r}")


class Recipe:
    name: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)
    needs_unimodal: ClassVar[bool] = False  # batches carry question-masked ids and blank-image pixels
    needs_label_space: ClassVar[bool] = False  # batches carry choice tokens; multiple-choice data only
    needs_no_image: ClassVar[bool] = False  # batches carry the prompts without image tokens (mb_noimage__*)
    image_baseline: ClassVar[str] = "blank"  # the image of the text-only variant (mb_blank__*)
    description: ClassVar[str] = ""

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()
        self.trainer = None

    def setup(self, trainer) -> None:
        """Called once the trainer exists (before training): create heads, read parameter groups."""
        self.trainer = trainer

    def bind_data(self, examples) -> None:
        """Called with the training examples before any batch is built (e.g. to count a prior table, or to
        choose an answer space from whether the data have choices)."""

    def collate_extra(self, encoded: list) -> dict:
        """Extra ``mb_`` tensors for a batch of encoded examples (see ``finetune.data.RecipeCollator``)."""
        return {}

    def callbacks(self) -> list:
        return []

    def training_step(self, model, inputs: dict) -> tuple[torch.Tensor, dict]:
        """Forward and backward for one (micro-)batch; returns the loss (detached) and per-step signals."""
        loss = self.sft_loss(model, inputs)
        self.backward(loss)
        loss = loss.detach()
        return loss, {"loss/sft": loss.item()}

    # helpers for subclasses
    def sft_loss(self, model, inputs: dict, variant: tuple[str, str] = FULL) -> torch.Tensor:
        sums, counts, _ = answer_forward(model, inputs, variant)
        return -sums.sum() / counts.sum().clamp(min=1)

    @contextlib.contextmanager
    def frozen_base(self, model):
        """The model as it was before fine-tuning: PEFT adapters disabled, eval mode, no gradient. A detached
        expert: nothing computed inside reaches the trained parameters."""
        peft_model = self.trainer.accelerator.unwrap_model(model)
        was_training = peft_model.training
        peft_model.eval()
        try:
            with torch.no_grad(), peft_model.disable_adapter():
                yield peft_model
        finally:
            peft_model.train(was_training)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        t = self.trainer
        steps = getattr(t, "current_gradient_accumulation_steps", t.args.gradient_accumulation_steps)
        t.accelerator.backward(loss / steps, **kwargs)

    def modulated_backward(self, loss: torch.Tensor, scale: dict[str, float], noise: dict[str, bool] | None = None,
                           generator: torch.Generator | None = None, mode: str = "update") -> None:
        """Backward with modality group ``m``'s step scaled by ``scale[m]`` and, where ``noise[m]``, Gaussian noise
        N(0, std(g)^2) added to this micro-batch's gradient (std of each gradient tensor).

        ``mode="gradient"`` multiplies the gradient itself, as the papers do with SGD. Under Adam a constant factor
        on a parameter's gradient is (almost) cancelled by the second-moment normalisation, so the default
        ``mode="update"`` scales the group's learning rate for this step instead: the same intent (slow one side
        down), and it survives adaptive optimizers. Earlier micro-batches' gradients are left untouched.
        """
        groups = {m: self.trainer.params_of(m) for m in ("vision", "language")}
        touched = mode == "gradient" or bool(noise)
        before = {id(p): (p.grad.detach().clone() if p.grad is not None else None)
                  for ps in groups.values() for p in ps} if touched else {}
        self.backward(loss)
        if mode == "update":
            for m, factor in scale.items():
                self.trainer.scale_step_lr(m, factor)
        if not touched:
            return
        with torch.no_grad():
            for m, ps in groups.items():
                for p in ps:
                    if p.grad is None:
                        continue
                    prev = before[id(p)]
                    delta = p.grad - prev if prev is not None else p.grad.clone()
                    new = delta * scale.get(m, 1.0) if mode == "gradient" else delta
                    if noise and noise.get(m):
                        std = delta.float().std() if delta.numel() > 1 else delta.float().abs()
                        new = new + torch.randn(delta.shape, generator=generator).to(delta.device, delta.dtype) * std
                    p.grad = new if prev is None else prev + new

    def state_dict(self) -> dict:
        """Recipe state saved with each checkpoint (so resuming continues the same trajectory)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


RECIPES: Registry[Recipe] = Registry("recipe", Recipe)
