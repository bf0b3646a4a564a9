"""The narrow interface between a recipe and the loop that trains with it: ``StepContext``.

A recipe's step sees the model it runs (as the loop wrapped it: DDP, or sharded in place by FSDP2's
``fully_shard``) and this context, and nothing of ``transformers.Trainer``: the run's accelerator (backward,
reductions over processes), the optimizer's modality groups and their learning rates, the scorer, the seed, the
step count and the held-out data. ``BalancedTrainer`` gives its recipe a ``TrainerContext``
(``finetune/trainer.py``); a custom loop builds a ``StepContext`` itself, as ``tests/test_fsdp.py`` does around a
model it sharded with ``fully_shard``.

Sharded runs (``sharded``: parameters and gradients are DTensor shards, FSDP2): every backward reduces the
gradients over the processes into each one's shard, and element-wise work on ``p.grad`` or ``p`` (scaling,
clipping, norms, perturbations) is exact on shards with the same code. What differs from DDP is said where it
matters: ``modulate_after_backward`` (gradient hooks do not see sharded parameters) and ``grads_reduced`` (a
gradient is already the average over processes after every backward, not only the first after a forward).
"""

from __future__ import annotations

import torch


class StepContext:
    """What a recipe may read or change outside its own state (module docstring).

    ``model``: the module the steps run, as wrapped; ``optimizer``'s param groups carry a ``modality`` key
    (``vision``, ``language``, ``shared``; ``finetune.trainer.modality_param_groups`` builds them) and
    ``lr_scheduler`` sets their rates each step (``get_last_lr``; the Trainer's schedules are ``LambdaLR``)."""

    def __init__(self, *, model, accelerator, scorer=None, optimizer=None, lr_scheduler=None, seed: int = 0,
                 accumulation_steps: int = 1, eval_examples=None, sharded: bool = False):
        self._model, self._optimizer, self._lr_scheduler = model, optimizer, lr_scheduler
        self.accelerator, self.scorer, self.seed = accelerator, scorer, seed
        self.eval_examples, self._sharded = eval_examples, sharded
        self._accumulation_steps = accumulation_steps
        self._global_step = 0

    # ---- what the loop owns (a subclass reads them from its loop)
    @property
    def model(self):
        return self._model

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def lr_scheduler(self):
        return self._lr_scheduler

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (the step a micro-batch contributes to is ``global_step + 1``)."""
        return self._global_step

    @global_step.setter
    def global_step(self, value: int) -> None:
        self._global_step = value

    @property
    def accumulation_steps(self) -> int:
        return self._accumulation_steps

    @property
    def sharded(self) -> bool:
        """Parameters and gradients are DTensor shards (FSDP2)."""
        return self._sharded

    # ---- derived
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def sync_gradients(self) -> bool:
        """This micro-batch's backward ends the accumulation (DDP reduces the gradients over processes then)."""
        return self.accelerator.sync_gradients

    @property
    def grads_reduced(self) -> bool:
        """Whether the gradient of a backward other than the first after a forward is already reduced over the
        processes when it lands in ``p.grad``: DDP reduces only the first, FSDP2 every one (one process: nothing
        to reduce)."""
        return self.sharded or self.num_processes == 1

    def unwrap(self, model=None):
        """The model without its data-parallel wrapper (FSDP2 shards in place: the model itself)."""
        return self.accelerator.unwrap_model(self.model if model is None else model)

    def to_device(self, batch):
        from accelerate.utils import send_to_device

        return send_to_device(batch, self.device)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """Backward of one micro-batch's loss, divided by the accumulation steps (so gradients sum to the mean)."""
        self.accelerator.backward(loss / self.accumulation_steps, **kwargs)

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """``tensor`` reduced over the data-parallel processes (itself on one). Not for a sharded parameter's
        gradient: FSDP2 has reduced it already, and each process holds another shard."""
        return self.accelerator.reduce(tensor, reduction) if self.num_processes > 1 else tensor

    # ---- the optimizer's modality groups
    def group_indices(self, modality: str) -> list[int]:
        return [i for i, g in enumerate(self.optimizer.param_groups) if g.get("modality") == modality]

    def params_of(self, modality: str) -> list[torch.nn.Parameter]:
        return [p for i in self.group_indices(modality) for p in self.optimizer.param_groups[i]["params"]]

    def scale_step_lr(self, modality: str, factor: float) -> None:
        """Scale the learning rate of ``modality``'s groups for the coming optimizer step only (the scheduler
        sets every group's rate afresh at its next step)."""
        last = self.lr_scheduler.get_last_lr()
        for i in self.group_indices(modality):
            self.optimizer.param_groups[i]["lr"] = last[i] * factor

    def scale_base_lrs(self, factors: dict[str, float], base_lrs: list[float]) -> None:
        """From this step on, each group runs at ``base_lrs[i]`` times its modality's factor, along the same
        schedule (the scheduler's base rates are rescaled, so the schedule keeps its shape)."""
        sched = self.lr_scheduler
        for i, group in enumerate(self.optimizer.param_groups):
            sched.base_lrs[i] = base_lrs[i] * factors.get(group.get("modality", "language"), 1.0)
            if hasattr(sched, "lr_lambdas"):  # LambdaLR (the Trainer's schedules): in force from this step
                group["lr"] = sched.base_lrs[i] * sched.lr_lambdas[i](sched.last_epoch)
