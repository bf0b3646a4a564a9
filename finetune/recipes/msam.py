"""msam: Modality-Aware Sharpness-Aware Minimization (M-SAM; Nowdeh et al., NeurIPS 2025), and sam, its control.

Per step: (1) modality Shapley over {image, text} on the batch (no grad; accuracy-valued as in the paper, or the
answer log-prob) gives weights w_img + w_txt = 1 and the dominant modality d; (2) the loss splits into
L_d = sum_i w_d^(i) l_i and L_s = sum_i (1 - w_d^(i)) l_i; (3) SAM on the dominant part: with
eps = rho * grad L_d / ||grad L_d|| (or rho * sign(grad L_d)), the update uses grad L_d(theta + eps) + grad L_s(theta).
Only trainable (LoRA) parameters are perturbed, and the perturbation is undone before the optimizer step.

``granularity="sample"`` weights each sample by its own Shapley values (what makes it modality-aware);
``"batch"`` uses one weight per batch, which reduces to a fixed mix of SAM and plain gradients.
Cost per step: the three ablated variants in one stacked no-grad forward pass, one forward pass with two backward
passes (L_s and L_d at theta), and a forward/backward pass at theta + eps; ``direction="previous"`` takes eps from
the previous step's perturbed gradient and saves one backward pass.

``sam`` is vanilla SAM (Foret et al., ICLR 2021), the same step with the whole loss in the sharp part (no Shapley
passes, no plain part): it separates what M-SAM's modality weighting does from what sharpness-aware minimisation
does by itself.

Under DDP the perturbation follows the gradient averaged over processes (DDP averages only the first backward
after a forward, so the second is averaged here), and every process perturbs its replica the same way: the step
equals the single-process step on the whole batch. Under FSDP2 every backward is already reduced into each
process's shard, and the norm, the perturbation and its undoing run on DTensor shards with the same code (the norm
of a sharded gradient is reduced over the shards): exact too (tests/test_fsdp.py). With gradient accumulation
under FSDP2 it needs ``sync_each_batch`` (``finetune.trainer.check_accumulation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mbias.errors import ConfigError
from mbias.finetune.data import MB, BatchSpec, answer_forward, choice_logits
from mbias.finetune.recipes.base import RECIPES, Recipe
from mbias.finetune.signals import batch_shapley, modality_weights, variant_values
from mbias.variants import BOTH_MASKED, FULL, IMAGE_MASKED, QUESTION_MASKED


@dataclass
class SAMConfig:
    rho: float = field(default=0.05, metadata={"help": "SAM radius"})
    perturbation: str = field(default="l2", metadata={"help": "l2 (rho * g / ||g||) or sign (rho * sign(g))"})
    direction: str = field(default="fresh", metadata={
        "help": "fresh: eps from grad L_d at this step (the algorithm; a third backward pass); previous: eps from "
                "the previous step's perturbed gradient of L_d (one backward fewer, as lookahead SAM variants do)"})

    def __post_init__(self):
        if self.perturbation not in ("l2", "sign"):
            raise ConfigError(f"perturbation must be l2 or sign, not {self.perturbation!r}")
        if self.rho <= 0:
            raise ConfigError(f"rho must be positive; got {self.rho}")
        if self.direction not in ("fresh", "previous"):
            raise ConfigError(f"direction must be fresh or previous, not {self.direction!r}")


@dataclass
class MSAMConfig(SAMConfig):
    granularity: str = field(default="sample", metadata={"help": "sample or batch weights"})
    value: str = field(default="accuracy", metadata={"help": "Shapley value: accuracy (needs choices) or logprob"})

    def __post_init__(self):
        super().__post_init__()
        if self.granularity not in ("sample", "batch"):
            raise ConfigError(f"granularity must be sample or batch, not {self.granularity!r}")
        if self.value not in ("accuracy", "logprob"):
            raise ConfigError(f"value must be accuracy or logprob, not {self.value!r}")


@RECIPES.register("sam")
class SAMRecipe(Recipe):
    """Vanilla SAM (Foret et al., ICLR 2021): the whole loss is the sharp part. M-SAM's control: what its modality
    weighting adds to sharpness-aware minimisation itself."""

    config_class = SAMConfig
    splits_loss: ClassVar[bool] = False  # a plain part of the loss besides the sharp one (M-SAM)
    description = "Sharpness-aware minimisation of the whole loss (M-SAM without the modality weighting)."

    reads_gradients = True  # the perturbation follows the gradient

    def __init__(self, config=None):
        super().__init__(config)
        self.last_direction = None  # grad L_d at the last perturbed point (direction="previous")

    def _grads(self, params) -> list[torch.Tensor]:
        out = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        return out

    def loss_split(self, model, inputs: dict, sums: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Each sample's weight [B] in the sharp part of the loss (the rest of its loss is plain), and signals."""
        return torch.ones_like(sums, dtype=torch.float32), {}

    def training_step(self, model, inputs):
        cfg = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        previous = self._grads(params)  # gradients accumulated by earlier micro-batches, put back at the end

        sums, counts, first = answer_forward(model, inputs)
        per_sample = -sums / counts.clamp(min=1)
        w_dom, split_signals = self.loss_split(model, inputs, sums, first)
        n = per_sample.shape[0]
        loss_dom = (w_dom * per_sample).sum() / n
        loss_sub = ((1 - w_dom) * per_sample).sum() / n

        fresh = cfg.direction == "fresh" or self.last_direction is None
        sync = self.ctx.sync_gradients
        if sync and self.ctx.accumulation_steps > 1 and not self.ctx.grads_reduced:
            previous = [self.over_processes(g) for g in previous]  # earlier micro-batches ran without DDP's sync
        if self.splits_loss:  # decided per recipe, not per batch: under DDP every process runs the same backwards
            self.backward(loss_sub, retain_graph=fresh)
        g_sub = self._grads(params)  # zeros without a plain part
        if fresh:
            self.backward(loss_dom)
            # DDP averages the first backward after a forward only: the perturbation needs the whole batch's
            g_dom = self._grads(params)
            if not self.ctx.grads_reduced:
                g_dom = [self.over_processes(g) for g in g_dom]
        else:
            g_dom = self.last_direction
        with torch.no_grad():
            originals = [p.detach().clone() for p in params]  # restored exactly (p + e - e can round)
            if cfg.perturbation == "l2":
                norm = torch.sqrt(sum((g.float() ** 2).sum() for g in g_dom)).clamp(min=1e-12)
                eps = [cfg.rho * g / norm for g in g_dom]
            else:
                eps = [cfg.rho * torch.sign(g) for g in g_dom]
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        try:
            sums2, counts2, _ = answer_forward(model, inputs)
            loss_dom_perturbed = (w_dom * (-sums2 / counts2.clamp(min=1))).sum() / n
            self.backward(loss_dom_perturbed)
        finally:
            with torch.no_grad():
                for p, o in zip(params, originals, strict=True):
                    p.copy_(o)
        g_sharp = self._grads(params)
        if cfg.direction == "previous":  # every process must perturb along the same direction next step
            self.last_direction = g_sharp if sync or self.ctx.grads_reduced else [self.over_processes(g) for g in g_sharp]
        for p, prev, gs, gd in zip(params, previous, g_sub, g_sharp, strict=True):
            p.grad = prev + gs + gd
        loss = (loss_dom + loss_sub).detach()
        return loss, {"loss/dominant": loss_dom.item(), "loss/rest": loss_sub.item(),
                      "loss/dominant_perturbed": loss_dom_perturbed.item(), **split_signals}

    def state_dict(self):
        return {"last_direction": self.last_direction}

    def load_state_dict(self, state):
        self.last_direction = state["last_direction"]


@RECIPES.register("msam")
class MSAMRecipe(SAMRecipe):
    config_class = MSAMConfig
    splits_loss = True
    description = "SAM on the dominant modality's share of the loss, with per-sample modality Shapley weights."

    def batch_spec(self) -> BatchSpec:
        return BatchSpec(variants=frozenset({QUESTION_MASKED, IMAGE_MASKED, BOTH_MASKED}),
                         choices=self.config.value == "accuracy")

    def loss_split(self, model, inputs: dict, sums: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Each sample's weight [B] in the sharp part of the loss (the rest of its loss is plain), and signals."""
        cfg = self.config
        with torch.no_grad():
            if cfg.value == "accuracy":
                full = (choice_logits(first, inputs).argmax(-1) == inputs[MB + "gold"]).float()
            else:
                full = sums.detach().float()
        vals = {FULL: full, **variant_values(model, inputs, cfg.value, (QUESTION_MASKED, IMAGE_MASKED, BOTH_MASKED))}
        phi_img, phi_txt = batch_shapley(vals)
        w = modality_weights(phi_img, phi_txt)
        if cfg.granularity == "batch":
            w = w.mean(0, keepdim=True).expand_as(w)
        dominant = w.argmax(-1)  # 0 = image, 1 = text
        return w.gather(1, dominant[:, None]).squeeze(1), {
            "shapley/phi_image": float(phi_img.mean()), "shapley/phi_text": float(phi_txt.mean()),
            "weight/image": float(w[:, 0].mean()), "dominant/text_share": float((dominant == 1).float().mean())}
