"""``BalancedTrainer``: transformers' Trainer with modality parameter groups, a recipe-defined step, a per-step
JSONL log, and recipe state in every checkpoint. Everything else (DDP via ``accelerate launch``, mixed precision,
checkpointing, resuming, LR schedules) is the Trainer's own. FSDP and DeepSpeed, also the Trainer's, run only the
recipes whose ``launchers`` name them; the others are refused before training (docs/scaling.md).

Interruptions (docs/interruptions.md): while it trains, ``checkpoints/in_progress.json`` records the run's
settings. SIGTERM (what a cluster scheduler sends before it kills) finishes the current step, writes a checkpoint
whatever the save strategy, and stops with ``Interrupted``; a second SIGTERM ends the process at once. The same
command run again finds the marker and resumes from the newest complete checkpoint (``interrupted_checkpoint``),
so a run stopped in any way (SIGTERM, ``kill -9``, a crash) continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from mbias.errors import ConfigError, Interrupted
from mbias.finetune.step import StepContext
from mbias.models.routing import activate_routes, is_routed

logger = logging.getLogger(__name__)

RECIPE_STATE = "recipe_state.pt"
IN_PROGRESS = "in_progress.json"
# the settings a resumed run must share with the run it continues (the step count may grow; output paths differ)
RESUME_SETTINGS = ("recipe", "recipe_config", "tune", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                   "lora_routing", "modality_groups", "max_train_samples", "columns", "learning_rate",
                   "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "lr_scheduler_type",
                   "optim", "seed")


class BalancedTrainer(Trainer):
    def __init__(self, *args, recipe, modality_of: dict[str, str], log_path: Path, scorer, eval_examples=None,
                 resume_checkpoint: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled and not getattr(self.accelerator, "is_fsdp2", False):
            raise ConfigError("mbias fine-tunes under FSDP2 (per-parameter sharding), which every recipe is tested "
                              "under; set fsdp_version: 2 in the accelerate config (docs/scaling.md has one ready)")
        recipe.check_launcher(self.launcher)
        check_accumulation(recipe, self.launcher, self.args.gradient_accumulation_steps,
                           self.accelerator.gradient_state)
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
        recipe.setup(TrainerContext(self))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """The Trainer's ``train``, marked in progress until it ends, and stopped cleanly by SIGTERM (module
        docstring). Raises ``Interrupted`` when a signal stopped it before its last step."""
        marker = Path(self.args.output_dir) / IN_PROGRESS
        if self.is_world_process_zero():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"model": str(self.mbias_scorer.model_id), "max_steps": self.args.max_steps,
                                          "settings": resume_settings(self.args)}, default=str))
        stop = _StopOnSignal(self)
        self.add_callback(stop)
        try:
            with stop.handling():
                output = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.remove_callback(stop)
        if stop.stopped and self.state.global_step < self.state.max_steps:
            raise Interrupted(f"fine-tuning stopped by {stop.stopped} at step {self.state.global_step} of "
                              f"{self.state.max_steps}; checkpoint written to {self.args.output_dir}/checkpoint-"
                              f"{self.state.global_step}; run the same command again to resume from it")
        if self.is_world_process_zero():
            marker.unlink(missing_ok=True)
        return output

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
        param_groups = modality_param_groups(opt_model, self.modality_of, self.get_decay_parameter_names(opt_model),
                                             self.args.weight_decay)
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(param_groups, **kwargs)
        return self.optimizer

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


def check_accumulation(recipe, launcher: str, steps: int, gradient_state) -> None:
    """ConfigError when FSDP2 would hide the micro-batch gradients ``recipe``'s step reads: under accumulation,
    accelerate's FSDP2 reduces gradients into the shards only at the last micro-batch (unless ``sync_each_batch``)."""
    if (launcher == "fsdp" and steps > 1 and recipe.reads_gradients
            and not gradient_state.plugin_kwargs.get("sync_each_batch", False)):
        raise ConfigError(f"recipe {recipe.name!r} reads each micro-batch's gradient, which FSDP reduces only at "
                          "the last micro-batch of an accumulation: add 'accelerator_config: "
                          "{gradient_accumulation_kwargs: {sync_each_batch: true}}' to the fine-tune config, or "
                          "use gradient_accumulation_steps 1")


def modality_param_groups(model, modality_of: dict[str, str], decay_names, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups: one per (modality, weight decay) of the trainable parameters, each with
    its ``modality`` (what ``StepContext.params_of`` and the recipes' learning-rate factors read)."""
    decay = set(decay_names)
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((modality_of.get(_strip(name), "language"), name in decay), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0, "modality": m}
            for (m, d), ps in sorted(groups.items())]


class TrainerContext(StepContext):
    """The ``StepContext`` of a ``BalancedTrainer`` run: the Trainer's public attributes, read when a step asks
    (the Trainer wraps the model and makes the optimizer and schedule only once training starts)."""

    def __init__(self, trainer: BalancedTrainer):
        self.trainer = trainer
        self.accelerator, self.scorer = trainer.accelerator, trainer.mbias_scorer
        self.seed, self.eval_examples = trainer.args.seed, trainer.mbias_eval_examples

    @property
    def model(self):
        return self.trainer.model_wrapped if self.trainer.model_wrapped is not None else self.trainer.model

    @property
    def optimizer(self):
        return self.trainer.optimizer

    @property
    def lr_scheduler(self):
        return self.trainer.lr_scheduler

    @property
    def global_step(self) -> int:
        return self.trainer.state.global_step

    @property
    def accumulation_steps(self) -> int:
        t = self.trainer  # the last accumulation of an epoch may be shorter (the Trainer sets this per cycle)
        return getattr(t, "current_gradient_accumulation_steps", t.args.gradient_accumulation_steps)

    @property
    def sharded(self) -> bool:
        return self.trainer.is_fsdp_enabled


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


class _StopOnSignal(TrainerCallback):
    """SIGTERM -> finish this optimizer step, save a checkpoint, stop. Every process of a DDP run stops at the same
    step: the flag is summed over processes at each step end, so one process seeing the signal stops them all."""

    def __init__(self, trainer: BalancedTrainer):
        self.trainer = trainer
        self.seen: str | None = None  # the signal's name, once it arrives
        self.stopped: str | None = None

    @contextlib.contextmanager
    def handling(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            self.seen = signal.Signals(signum).name
            # a second SIGTERM (the scheduler's grace period is over, or a user insists) ends the process at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            logger.warning("%s: saving a checkpoint after this step, then stopping (send it again to stop at once)",
                           self.seen)

        signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    def on_step_end(self, args, state, control, **kwargs):
        seen = self.seen is not None
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(seen)], device=accelerator.device)
            seen = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        if seen:
            self.stopped = self.seen or "SIGTERM"
            control.should_save = True
            control.should_training_stop = True
        return control


def resume_settings(config) -> dict:
    """The settings of ``config`` that a resumed run must share with the run it continues, as plain data."""
    return json.loads(json.dumps({k: getattr(config, k, None) for k in RESUME_SETTINGS}, default=str))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder``: a process stopped while writing one leaves it without its
    ``trainer_state.json`` (written last but for the recipe state), and resuming from it would fail."""
    ckpts = sorted((p for p in Path(folder).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in ckpts:
        if (ckpt / "trainer_state.json").exists():
            return ckpt
        logger.warning("%s is incomplete (its run stopped while writing it); skipping it", ckpt)
    return None


def interrupted_checkpoint(folder: Path, config, model: str) -> Path | None:
    """The checkpoint to resume from when ``folder`` (an output's ``checkpoints/``) holds a run that did not end:
    None when there is none, or when it stopped before its first checkpoint (it starts over). A run with other
    settings is refused, since resuming would mix two runs."""
    marker = Path(folder) / IN_PROGRESS
    try:
        info = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        info = {}
    ckpt = latest_checkpoint(folder)
    if ckpt is None:
        logger.warning("%s: the last run stopped before its first checkpoint; starting over", folder.parent)
        return None
    now, then = resume_settings(config), dict(info.get("settings", {}))
    if isinstance(model, str):  # a reference (a model object passed from Python has no name to compare)
        now["model"], then["model"] = model, info.get("model")
    changed = [k for k in now if k in then and then[k] != now[k]]
    if changed:
        k = changed[0]
        raise ConfigError(f"{folder.parent} holds a fine-tune that stopped at {ckpt.name} with {k} {then[k]!r}, "
                          f"not {now[k]!r}: rerun it with the same settings to resume, delete {folder} to start "
                          "over, or pass another --out")
    logger.warning("resuming the interrupted run in %s from %s", folder.parent, ckpt.name)
    return ckpt
