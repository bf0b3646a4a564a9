"""``BalancedTrainer``: transformers' Trainer with modality parameter groups, a recipe-defined step, a per-step
JSONL log, and recipe state in every checkpoint. Everything else (DDP via ``accelerate launch``, mixed precision,
checkpointing, resuming, LR schedules) is the Trainer's own. FSDP and DeepSpeed, also the Trainer's, run only the
recipes whose ``launchers`` name them; the others are refused before training (docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from mbias.models.routing import activate_routes, is_routed

logger = logging.getLogger(__name__)

RECIPE_STATE = "recipe_state.pt"


class BalancedTrainer(Trainer):
    def __init__(self, *args, recipe, modality_of: dict[str, str], log_path: Path, scorer, eval_examples=None,
                 resume_checkpoint: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        recipe.check_launcher(self.launcher)
        self.mbias_scorer = scorer  # scores the model being trained (LoRA is injected into its modules)
        self.mbias_eval_examples = eval_examples
        self._resume_checkpoint = resume_checkpoint
        self.recipe = recipe
        self.modality_of = modality_of  # trainable parameter name -> "vision" | "language"
        self.log_path = Path(log_path)
        self._last_log_step = -1
        self.add_callback(_RecipeStateCallback(self))
        for cb in recipe.callbacks():
            self.add_callback(cb)
        recipe.setup(self)

    @property
    def launcher(self) -> str:
        """How accelerate distributes this run: single, ddp, fsdp or deepspeed."""
        if self.is_deepspeed_enabled:
            return "deepspeed"
        if self.is_fsdp_enabled:
            return "fsdp"
        return "ddp" if self.accelerator.num_processes > 1 else "single"

    # ---- optimizer with one group per (modality, weight decay)
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list] = {}
        for name, p in opt_model.named_parameters():
            if not p.requires_grad:
                continue
            key = (self.modality_of.get(_strip(name), "language"), name in decay)
            groups.setdefault(key, []).append(p)
        param_groups = [{"params": ps, "weight_decay": self.args.weight_decay if d else 0.0, "modality": m}
                        for (m, d), ps in sorted(groups.items())]
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(param_groups, **kwargs)
        return self.optimizer

    def group_indices(self, modality: str) -> list[int]:
        return [i for i, g in enumerate(self.optimizer.param_groups) if g.get("modality") == modality]

    def scale_step_lr(self, modality: str, factor: float) -> None:
        """Scale the learning rate of ``modality``'s groups for the coming optimizer step only (the scheduler
        sets every group's rate afresh at its next step)."""
        last = self.lr_scheduler.get_last_lr()
        for i in self.group_indices(modality):
            self.optimizer.param_groups[i]["lr"] = last[i] * factor

    def params_of(self, modality: str) -> list[torch.nn.Parameter]:
        return [p for i in self.group_indices(modality) for p in self.optimizer.param_groups[i]["params"]]

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        # transformers reloads every saved adapter but keeps only the first one active and trainable; a routed
        # adapter (mbias.models.routing) trains all three parts
        peft_model = model if model is not None else self.model
        if is_routed(peft_model):
            activate_routes(peft_model, trainable=True)

    # ---- one step, decided by the recipe
    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss, signals = self.recipe.training_step(model, inputs)
        self._log_step(float(loss), signals)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.recipe.sft_loss(model, inputs)  # evaluation loss; training goes through training_step
        return (loss, None) if return_outputs else loss

    def _log_step(self, loss: float, signals: dict) -> None:
        if not self.is_world_process_zero():
            return
        step = self.state.global_step + 1  # the optimizer step this micro-batch contributes to
        entry = {"step": step, "epoch": self.state.epoch, "loss": loss, **signals,
                 "lr": {f"{g.get('modality')}/{i}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)},
                 "time": time.time()}
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")


def _strip(name: str) -> str:
    """Parameter name without DDP/compile wrappers' prefixes."""
    for prefix in ("module.", "_orig_mod."):
        name = name.removeprefix(prefix)
    return name


class _RecipeStateCallback(TrainerCallback):
    """Saves the recipe's state into each checkpoint folder; restores it when training resumes."""

    def __init__(self, trainer: BalancedTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.exists() and state.is_world_process_zero:
            torch.save(self.trainer.recipe.state_dict(), folder / RECIPE_STATE)

    def on_train_begin(self, args, state, control, **kwargs):
        resume = getattr(self.trainer, "_resume_checkpoint", None)
        if resume and (Path(resume) / RECIPE_STATE).exists():
            self.trainer.recipe.load_state_dict(torch.load(Path(resume) / RECIPE_STATE, weights_only=False))
