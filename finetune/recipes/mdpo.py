"""mdpo: conditional preference optimisation (mDPO; Wang et al., EMNLP 2024), from ordinary VQA data.

DPO on a multimodal model can learn its preferences from the text alone ("unconditional preference"). mDPO adds a
preference *over images*: the same gold answer is preferred with the real image m over a corrupted one m', and an
anchor keeps the chosen answer's reward positive. With the reward r(y | m) = beta * (log pi(y | m, q) -
log pi_ref(y | m, q)) and the reference pi_ref = the model before fine-tuning (PEFT adapters disabled):

    L_cond   = -log sigmoid(r(y_w | m) - r(y_w | m'))          always
    L_anchor = -log sigmoid(r(y_w | m) - delta)                 anchor_weight (default 1, delta 0)
    L_dpo    = -log sigmoid(r(y_w | m) - r(y_l | m))            with rejected_answer: no_image
    L_sft    = answer-token NLL of y_w                          sft_weight (default 0)

Here the data are SFT data (one gold answer y_w per question), so mDPO's standard DPO term needs a rejected
answer: ``rejected_answer: no_image`` takes the answer the reference model gives to the question *without the
image* (among the choices; rows where it is the gold answer get no DPO term), the answer a language prior would
produce, as MBPO builds its hard negatives. ``none`` (default) trains the conditional and anchor terms alone.

The corruption m' (``corruption``): ``blank`` (the whole-image baseline, the image's mean colour; the default),
``noise``, or ``crop`` (a random crop of 0-20% of the image area, resized back; the paper's main runs). Cost per
step: one forward/backward over the real and corrupted images together and one no-grad reference forward over
both (plus one without the image for ``rejected_answer: no_image``).

Departures: mDPO's rejected image is re-drawn every epoch; here each example's crop is drawn once (seeded by its
id). Log-probabilities of the rejected *answer* are read from the first answer token over the choices' first
tokens, which equals the answer's log-probability for single-token answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mbias.errors import ConfigError
from mbias.finetune.data import MB, BatchSpec, answer_forward, choice_logits
from mbias.finetune.recipes.base import RECIPES, Recipe
from mbias.finetune.signals import stacked_inputs
from mbias.variants import FULL, IMAGE_MASKED, IMAGE_REMOVED

CORRUPTIONS = ("blank", "noise", "crop")


@dataclass
class MDPOConfig:
    beta: float = field(default=0.1, metadata={"help": "DPO temperature: reward = beta * log(pi / pi_ref)"})
    corruption: str = field(default="blank", metadata={"help": "the rejected image: blank, noise or crop "
                                                               "(0-20% of the area)"})
    anchor_weight: float = field(default=1.0, metadata={"help": "weight of the anchor term (0: off)"})
    anchor_delta: float = field(default=0.0, metadata={"help": "the anchor's reward threshold delta"})
    rejected_answer: str = field(default="none", metadata={
        "help": "none, or no_image: add the standard DPO term with the answer the reference model gives "
                "without the image as the rejected answer (multiple-choice data)"})
    sft_weight: float = field(default=0.0, metadata={"help": "weight of the plain answer-token loss (0: off)"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive; got {self.beta}")
        if self.corruption not in CORRUPTIONS:
            raise ConfigError(f"corruption must be one of {', '.join(CORRUPTIONS)}, not {self.corruption!r}")
        if self.rejected_answer not in ("none", "no_image"):
            raise ConfigError(f"rejected_answer must be none or no_image, not {self.rejected_answer!r}")
        if self.anchor_weight < 0 or self.sft_weight < 0:
            raise ConfigError("anchor_weight and sft_weight must be >= 0")


def mdpo_losses(policy_real, policy_corrupt, ref_real, ref_corrupt, beta: float, delta: float):
    """Per-sample (L_cond, L_anchor) from summed answer log-probs [B] of the policy and the reference."""
    r_real = beta * (policy_real - ref_real)
    r_corrupt = beta * (policy_corrupt - ref_corrupt)
    return -F.logsigmoid(r_real - r_corrupt), -F.logsigmoid(r_real - delta)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-sample standard DPO loss from log-probs [B] of the chosen and rejected answers."""
    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))


@RECIPES.register("mdpo")
class MDPORecipe(Recipe):
    config_class = MDPOConfig
    uses_frozen_base = True  # the reference
    description = "Conditional preference (mDPO): the gold answer is preferred with the real image over a " \
                  "corrupted one, against the model before fine-tuning, with an anchor."

    def batch_spec(self) -> BatchSpec:
        # the corrupted image is the image-masked variant's picture
        no_image = self.config.rejected_answer == "no_image"
        return BatchSpec(variants=frozenset({IMAGE_MASKED} | ({IMAGE_REMOVED} if no_image else set())),
                         image_baseline=self.config.corruption, choices=no_image)

    def training_step(self, model, inputs):
        cfg = self.config
        both = stacked_inputs(inputs, (FULL, IMAGE_MASKED))  # the image masked = the corrupted image here
        sums, counts, first = answer_forward(model, both)
        with self.frozen_base(model) as base:
            ref_sums, _, ref_first = answer_forward(base, both)
        policy_real, policy_corrupt = sums.chunk(2)
        ref_real, ref_corrupt = ref_sums.chunk(2)
        cond, anchor = mdpo_losses(policy_real, policy_corrupt, ref_real, ref_corrupt, cfg.beta, cfg.anchor_delta)
        loss = cond.mean() + cfg.anchor_weight * anchor.mean()
        signals = {"loss/conditional": float(cond.detach().mean()), "loss/anchor": float(anchor.detach().mean()),
                   "mdpo/reward_real": float(cfg.beta * (policy_real - ref_real).detach().mean()),
                   "mdpo/reward_corrupt": float(cfg.beta * (policy_corrupt - ref_corrupt).detach().mean())}
        if cfg.rejected_answer == "no_image":
            dpo, share = self._answer_preference(model, inputs, first.chunk(2)[0], ref_first.chunk(2)[0])
            loss = loss + dpo
            signals.update({"loss/dpo": float(dpo.detach()), "mdpo/rejected_share": share})
        if cfg.sft_weight:
            sft = -policy_real.sum() / counts.chunk(2)[0].sum().clamp(min=1)
            loss = loss + cfg.sft_weight * sft
            signals["loss/sft"] = float(sft.detach())
        self.backward(loss)
        return loss.detach(), signals

    def _answer_preference(self, model, inputs, first_policy, first_ref):
        """Mean DPO loss against the reference's no-image answer, over the rows where it differs from the gold."""
        gold = inputs[MB + "gold"]
        with self.frozen_base(model) as base:
            rejected = choice_logits(answer_forward(base, inputs, IMAGE_REMOVED)[2], inputs).argmax(-1)
        keep = rejected != gold
        if not keep.any():
            return first_policy.sum() * 0.0, 0.0
        lp = torch.log_softmax(choice_logits(first_policy, inputs), dim=-1)
        lr = torch.log_softmax(choice_logits(first_ref, inputs), dim=-1)

        def at(logp, idx):
            return logp.gather(1, idx[:, None]).squeeze(1)

        per = dpo_loss(at(lp, gold), at(lp, rejected), at(lr, gold), at(lr, rejected), self.config.beta)
        return per[keep].sum() / len(gold), float(keep.float().mean())
