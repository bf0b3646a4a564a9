"""What a balancing recipe is: a config, a training step, optional callbacks and state to checkpoint.

The trainer (``finetune.trainer.BalancedTrainer``) owns the model, optimizer, schedule and logging; a recipe only
decides how one step turns a batch into gradients. The default step is plain SFT on the answer tokens.

Under DDP (``accelerate launch``) each process steps on its share of the batch and DDP averages the gradients. A
recipe whose step depends on a batch statistic (a score ratio, a head's accuracy) or trains something outside the
wrapped model (a gate, classifier heads) reduces those over processes with ``over_processes``, so every process
takes the same decision and the run follows the single-process run with the whole batch. ``launchers`` says which
multi-process launchers a recipe's step is correct under; the trainer refuses the others before training.
"""

from __future__ import annotations

import contextlib
import functools
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


LAUNCHER_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "deepspeed": "DeepSpeed"}


class Recipe:
    name: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)
    needs_unimodal: ClassVar[bool] = False  # batches carry question-masked ids and blank-image pixels
    needs_label_space: ClassVar[bool] = False  # batches carry choice tokens; multiple-choice data only
    needs_no_image: ClassVar[bool] = False  # batches carry the prompts without image tokens (mb_noimage__*)
    image_baseline: ClassVar[str] = "blank"  # the image of the text-only variant (mb_blank__*)
    uses_frozen_base: ClassVar[bool] = False  # compares with the model before fine-tuning (PEFT adapters disabled)
    description: ClassVar[str] = ""
    # Multi-process launchers the step is correct under (of "ddp", "fsdp", "deepspeed"; one process always works),
    # and why the others are refused. accelerate shards a model (FSDP, DeepSpeed) only on GPUs, so a recipe claims
    # them only once a GPU run has tested it (docs/scaling.md).
    launchers: ClassVar[tuple[str, ...]] = ("ddp",)
    refused_because: ClassVar[str] = ("accelerate shards models only on GPUs and no GPU run has tested this recipe "
                                      "sharded yet")

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

    def check_launcher(self, launcher: str) -> None:
        """ConfigError unless the step is correct under ``launcher`` (single, ddp, fsdp or deepspeed)."""
        if launcher == "single" or launcher in self.launchers:
            return
        supported = " or ".join(LAUNCHER_NAMES[x] for x in self.launchers)
        raise ConfigError(f"recipe {self.name!r} runs in one process or under {supported} (accelerate launch "
                          f"--multi_gpu), not under {LAUNCHER_NAMES[launcher]}: {self.refused_because}; see "
                          "docs/scaling.md")

    def over_processes(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """``tensor`` reduced over the data-parallel processes (itself on one): a batch statistic of the whole
        batch, or a gradient of something DDP does not wrap."""
        acc = self.trainer.accelerator
        return acc.reduce(tensor, reduction) if acc.num_processes > 1 else tensor

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
        down), and it survives adaptive optimizers.

        Factor and noise act through a hook on each parameter, on this micro-batch's gradient as autograd hands it
        over: before it is added to ``.grad`` (earlier micro-batches stay untouched, nothing is copied) and before
        DDP averages it over processes. ``scale`` must therefore be the same on every process (reduce the signals
        it comes from with ``over_processes``); the noise is the same draw everywhere, scaled by each process's own
        gradient's std.
        """
        hooks = []
        if mode == "gradient" or noise:
            for m in ("vision", "language"):
                factor = scale.get(m, 1.0) if mode == "gradient" else 1.0
                for p in self.trainer.params_of(m):
                    # drawn before backward, in parameter order: the same numbers on every process and every run
                    z = torch.randn(p.shape, generator=generator) if noise and noise.get(m) else None
                    hooks.append(p.register_hook(functools.partial(_modulate, factor=factor, z=z)))
        try:
            self.backward(loss)
        finally:
            for h in hooks:
                h.remove()
        if mode == "update":
            for m, factor in scale.items():
                self.trainer.scale_step_lr(m, factor)

    def state_dict(self) -> dict:
        """Recipe state saved with each checkpoint (so resuming continues the same trajectory)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _modulate(grad: torch.Tensor, factor: float, z: torch.Tensor | None) -> torch.Tensor:
    out = grad * factor
    if z is not None:
        std = grad.float().std() if grad.numel() > 1 else grad.float().abs()
        out = out + z.to(grad.device, grad.dtype) * std.to(grad.dtype)
    return out


RECIPES: Registry[Recipe] = Registry("recipe", Recipe)
