"""mnl: Multimodal Negative Learning (Gong et al., NeurIPS 2025), on a decoder MLLM.

Class distributions over the example's choices (first answer token of each choice) come from three passes with
gradient: full (P), text only (image masked, P_txt), image only (question masked, P_img). Unimodal confidence
margins xi_m = z_m[y] - z_m[j], with j the full prediction's strongest non-target choice. Per sample, the robust
dominant modality (RDM) is text if xi_txt > xi_img and P_txt[y] > P_img[y], image if both are <=, and none
otherwise (no guidance). The dominant distribution, detached, guides the weak one on the non-target classes:

    L_neg = -log q_y - lambda * sum_{c != y} sg(p_dom)_c log q_c          (q = P_weak, for guided samples)

    loss = SFT(full answer tokens) + CE(P_txt) + CE(P_img) + L_neg(text -> image) + L_neg(image -> text)

As in the released code: lambda (their ``weight1``) = 0.7, no warm-up, and L_neg is averaged over batch x classes
(``reduction="batch_classes"``; ``"batch"`` averages over samples only). The paper describes a CE-only warm-up
first (``warmup_steps``). The full pass keeps the ordinary answer-token loss so the model stays generative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mbias.errors import ConfigError
from mbias.finetune.data import MB, BatchSpec, answer_forward, choice_logits
from mbias.finetune.recipes.base import RECIPES, Recipe
from mbias.variants import IMAGE_MASKED, QUESTION_MASKED


@dataclass
class MNLConfig:
    weight: float = field(default=0.7, metadata={"help": "lambda of the negative-learning term (weight1)"})
    warmup_steps: int = field(default=0, metadata={"help": "CE-only steps before negative learning (paper) "
                                                           "- 0 as in the released code"})
    reduction: str = field(default="batch_classes", metadata={"help": "batch_classes (released code) or batch"})
    unimodal_ce: list[str] = field(default_factory=lambda: ["text", "image"], metadata={
        "help": "which unimodal CE terms to add (both in the method; in a decoder MLLM the text-only pass is the "
                "whole model reading the question alone, so its CE term trains the language prior itself)"})

    def __post_init__(self):
        if self.reduction not in ("batch_classes", "batch"):
            raise ConfigError(f"reduction must be batch_classes or batch, not {self.reduction!r}")
        if set(self.unimodal_ce) - {"text", "image"}:
            raise ConfigError(f"unimodal_ce takes text and/or image; got {self.unimodal_ce}")


def masked_ce(z: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy over choice logits with -inf padding."""
    return -torch.log_softmax(z, dim=-1).gather(1, gold[:, None]).squeeze(1)


def robust_dominant(z_full, z_txt, z_img, gold) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Masks (text guides image, image guides text) [B] and the margins, from choice logits [B, C]."""
    p_full = torch.softmax(z_full, -1)
    others = p_full.masked_fill(F.one_hot(gold, z_full.shape[1]).bool(), float("-inf"))
    j = others.argmax(-1)

    def margin(z):
        return z.gather(1, gold[:, None]).squeeze(1) - z.gather(1, j[:, None]).squeeze(1)

    xi_txt, xi_img = margin(z_txt), margin(z_img)
    py_txt = torch.softmax(z_txt, -1).gather(1, gold[:, None]).squeeze(1)
    py_img = torch.softmax(z_img, -1).gather(1, gold[:, None]).squeeze(1)
    text_dom = (xi_txt > xi_img) & (py_txt > py_img)
    image_dom = (xi_txt <= xi_img) & (py_txt <= py_img)
    return text_dom, image_dom, {"xi_text": xi_txt, "xi_image": xi_img}


def negative_learning(z_dom, z_weak, gold, mask, weight: float, reduction: str) -> torch.Tensor:
    """-log q_y - weight * sum_{c != y} sg(p_dom)_c log q_c over masked samples (see the module docstring)."""
    p = torch.softmax(z_dom.detach(), -1)
    logq = torch.log_softmax(z_weak, -1)
    valid = torch.isfinite(z_weak)
    onehot = F.one_hot(gold, z_weak.shape[1]).bool()
    logq = logq.masked_fill(~valid, 0.0)
    p = p.masked_fill(~valid, 0.0)
    per_class = -(onehot.float() * logq) - weight * (~onehot).float() * p * logq  # [B, C]
    per_class = per_class * mask[:, None].float()
    if reduction == "batch_classes":
        return per_class.sum() / valid.sum().clamp(min=1)
    return per_class.sum() / mask.shape[0]


@RECIPES.register("mnl")
class MNLRecipe(Recipe):
    config_class = MNLConfig
    batch = BatchSpec(variants=frozenset({QUESTION_MASKED, IMAGE_MASKED}), choices=True)
    description = "Unimodal CE terms plus negative learning: the robust dominant modality teaches the weak one " \
                  "which classes are not the answer."

    def training_step(self, model, inputs):
        gold = inputs[MB + "gold"]
        sums, counts, first = answer_forward(model, inputs)
        sft = -sums.sum() / counts.sum().clamp(min=1)
        z_full = choice_logits(first, inputs)
        z_txt = choice_logits(answer_forward(model, inputs, IMAGE_MASKED)[2], inputs)  # the question alone
        z_img = choice_logits(answer_forward(model, inputs, QUESTION_MASKED)[2], inputs)  # the image alone
        ce_txt, ce_img = masked_ce(z_txt, gold).mean(), masked_ce(z_img, gold).mean()
        loss = sft + ("text" in self.config.unimodal_ce) * ce_txt + ("image" in self.config.unimodal_ce) * ce_img
        text_dom, image_dom, margins = robust_dominant(z_full.detach(), z_txt.detach(), z_img.detach(), gold)
        neg = torch.zeros((), device=loss.device)
        if self.ctx.global_step >= self.config.warmup_steps:
            cfg = self.config
            if text_dom.any():
                neg = neg + negative_learning(z_txt, z_img, gold, text_dom, cfg.weight, cfg.reduction)
            if image_dom.any():
                neg = neg + negative_learning(z_img, z_txt, gold, image_dom, cfg.weight, cfg.reduction)
        loss = loss + neg
        self.backward(loss)
        loss = loss.detach()
        return loss, {"loss/sft": sft.item(), "loss/ce_text": ce_txt.item(), "loss/ce_image": ce_img.item(),
                      "loss/negative": float(neg.detach()), "mnl/text_guides": float(text_dom.float().mean()),
                      "mnl/image_guides": float(image_dom.float().mean()),
                      "mnl/xi_text": float(margins["xi_text"].mean()), "mnl/xi_image": float(margins["xi_image"].mean())}
