"""What a balancing recipe is: a config, what its step reads from a batch, a training step, optional callbacks and
state to checkpoint.

The loop (``finetune.trainer.BalancedTrainer``, or a custom one) owns the model, optimizer, schedule and logging; a
recipe only decides how one step turns a batch into gradients, through the narrow interface of
``finetune.step.StepContext`` (``self.ctx``) and nothing of ``transformers.Trainer``. What the step reads besides
the full input is declared (``batch_spec``: ablated variants, the baseline picture, the label space) and the
collator builds exactly that. The default step is plain SFT on the answer tokens.

Under DDP (``accelerate launch``) each process steps on its share of the batch and DDP averages the gradients. A
recipe whose step depends on a batch statistic (a score ratio, a head's accuracy) or trains something outside the
wrapped model (a gate, classifier heads) reduces those over processes with ``over_processes``, so every process
takes the same decision and the run follows the single-process run with the whole batch. Under FSDP2 the same
holds, and the parameters are shards (``StepContext.sharded``). ``launchers`` says which multi-process launchers a
recipe's step is exact under; the trainer refuses the others before training.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mbias.errors import ConfigError
from mbias.finetune.data import BatchSpec, answer_forward
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
    batch: ClassVar[BatchSpec] = BatchSpec()  # what the step reads besides the full input (or ``batch_spec()``)
    uses_frozen_base: ClassVar[bool] = False  # compares with the model before fine-tuning (PEFT adapters disabled)
    # the gradient clipping norm the method was published with: used when the user sets none (announced at start)
    max_grad_norm: ClassVar[float | None] = None
    description: ClassVar[str] = ""
    # Multi-process launchers the step is exact under (of "ddp", "fsdp", "deepspeed"; one process always works), and
    # why the others are refused. FSDP means FSDP2 (per-parameter sharding): tests/test_fsdp.py shows each recipe's
    # step on fully_shard-ed parameters equal to one process's; DeepSpeed's engine owns backward and the step.
    launchers: ClassVar[tuple[str, ...]] = ("ddp", "fsdp")
    refused_because: ClassVar[str] = ("DeepSpeed's engine runs backward, clipping and the optimizer step itself, and "
                                      "no test has shown a recipe's step exact inside it")

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()
        self.ctx = None

    def setup(self, ctx) -> None:
        """Called with the run's ``StepContext`` before training: create heads, seed generators."""
        self.ctx = ctx

    def bind_data(self, examples) -> None:
        """Called with the training examples before any batch is built (e.g. to count a prior table, or to
        choose an answer space from whether the data have choices)."""

    @property
    def reads_gradients(self) -> bool:
        """Whether the step reads or edits ``p.grad`` between backward and the optimizer step (gradient-mode
        modulation, gradient noise, SAM's perturbation): under FSDP2 with accumulation that needs every micro-batch
        reduced (``finetune.trainer.check_accumulation``)."""
        cfg = self.config
        return isinstance(cfg, ModulationConfig) and (cfg.mode == "gradient" or getattr(cfg, "noise", "none") != "none")

    def batch_spec(self) -> BatchSpec:
        """What this recipe's step reads besides the full input, given its settings (after ``bind_data``)."""
        return self.batch

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
        batch, or a gradient of something the data-parallel wrapper does not hold."""
        return self.ctx.reduce(tensor, reduction)

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
        expert: nothing computed inside reaches the trained parameters.

        PEFT switches the adapters' ``requires_grad`` off and on again on the parameters registered at that moment;
        under FSDP2 those are the gathered copies (the root unit stays gathered after a forward), not the shards
        the optimizer steps, so the shards' flags are put back here."""
        peft_model = self.ctx.unwrap(model)
        was_training = peft_model.training
        trained = [p for g in self.ctx.optimizer.param_groups for p in g["params"]] if self.ctx.sharded else []
        peft_model.eval()
        try:
            with torch.no_grad(), peft_model.disable_adapter():
                yield peft_model
        finally:
            peft_model.train(was_training)
            for p in trained:
                p.requires_grad_(True)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self.ctx.backward(loss, **kwargs)

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
        gradient's std. On sharded parameters (FSDP2) hooks never see the gradients, and the same is done after
        backward (``_modulate_after_backward``).
        """
        factors = {m: scale.get(m, 1.0) if mode == "gradient" else 1.0 for m in ("vision", "language")}
        if (mode == "gradient" or noise) and self.ctx.sharded:
            self._modulate_after_backward(loss, factors, noise or {}, generator)
        elif mode == "gradient" or noise:
            hooks = []
            for m in ("vision", "language"):
                for p in self.ctx.params_of(m):
                    # drawn before backward, in parameter order: the same numbers on every process and every run
                    z = torch.randn(p.shape, generator=generator) if noise and noise.get(m) else None
                    hooks.append(p.register_hook(functools.partial(_modulate, factor=factors[m], z=z)))
            try:
                self.backward(loss)
            finally:
                for h in hooks:
                    h.remove()
        else:
            self.backward(loss)
        if mode == "update":
            for m, factor in scale.items():
                self.ctx.scale_step_lr(m, factor)

    def _modulate_after_backward(self, loss, factors: dict[str, float], noise: dict[str, bool], generator) -> None:
        """``modulated_backward`` on sharded parameters: FSDP2 computes gradients on gathered copies and writes
        each shard's reduced gradient into ``p.grad`` directly, so a hook on ``p`` never sees them; this
        micro-batch's gradient is ``p.grad`` after minus before, and it is scaled (and noised) there. The
        gradient is already the average over processes, so the noise's std is the whole batch's (under DDP,
        each process's own)."""
        params = {m: self.ctx.params_of(m) for m in ("vision", "language")}
        draws = {m: [torch.randn(p.shape, generator=generator) if noise.get(m) else None for p in ps]
                 for m, ps in params.items()}  # drawn before backward, in parameter order, as the hooks do
        before = {id(p): p.grad.detach().clone() if p.grad is not None else None
                  for ps in params.values() for p in ps}
        self.backward(loss)
        with torch.no_grad():
            for m, ps in params.items():
                for p, z in zip(ps, draws[m], strict=True):
                    if p.grad is None:
                        continue
                    prev = before[id(p)]
                    new = p.grad if prev is None else p.grad - prev
                    if z is not None:
                        z = _local_like(z, new)
                    new = _modulate(new, factors[m], z)
                    p.grad = new if prev is None else prev + new

    def state_dict(self) -> dict:
        """Recipe state saved with each checkpoint (so resuming continues the same trajectory)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _local_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (a whole tensor, the same on every process) laid out as ``like``: its shard where ``like`` is a
    DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def _modulate(grad: torch.Tensor, factor: float, z: torch.Tensor | None) -> torch.Tensor:
    out = grad * factor
    if z is not None:
        std = grad.float().std() if grad.numel() > 1 else grad.float().abs()
        out = out + z.to(grad.device, grad.dtype) * std.to(grad.dtype)
    return out


RECIPES: Registry[Recipe] = Registry("recipe", Recipe)
