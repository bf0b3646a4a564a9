"""poe: product of experts with a detached bias expert (Clark, Yatskar & Zettlemoyer 2019, "BiasProduct"), or
LPF's reweighting (Liang et al. 2021) with ``mode: lpf``.

Product (default). With p_bias the bias expert's distribution over the answer space (``finetune.bias_expert``):

    log p_ens = log_softmax(log p_main + log p_bias),     loss = -log p_ens(gold)

The gradient on the main model's logits is p_ens - onehot(gold): where the question alone already explains the
answer (p_bias(gold) near 1, the 90% of a p90 training set that follows the wording) the ensemble is right
without the main model's help and the gradient vanishes; where it does not (the cue-contradicting examples) the
main model must supply the evidence, which can only come from the image. At inference the main model is used
alone (the saved adapter is an ordinary LoRA), so it keeps what it learned beyond the prior.

LPF (``mode: lpf``): the ordinary answer-token loss of each example, weighted by (1 - p_bias(gold))^gamma
(gamma 2 in the paper), so examples the question alone predicts count little.

Departures from the papers. The VQA methods score ~3,000 answers with sigmoids; here the answer space is the
example's choices (softmax over their first tokens) or, for open-ended answers, the vocabulary at every answer
token (a token-level product, teacher-forced on the gold answer). The bias expert is by default the model before
fine-tuning reading the question without the image, not a trained question-only branch: it needs no labels for
the cue and cannot drift (a self-referential expert would weaken as the model stops encoding the prior).
LPF's question branch is a trained head with its own loss; ours is fixed for the same reason. In choices space the
product trains only the first answer token's distribution over the choices; tokens space trains every answer
token over the whole vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mbias.errors import ConfigError
from mbias.finetune.bias_expert import (
    BiasExpertConfig,
    expert_signals,
    gold_logp,
    main_logits,
)
from mbias.finetune.data import MB, answer_forward
from mbias.finetune.recipes.base import RECIPES
from mbias.finetune.recipes.expert import BiasExpertRecipe


@dataclass
class PoEConfig(BiasExpertConfig):
    mode: str = field(default="product", metadata={
        "help": "product: train the product of the model and the bias expert (PoE); lpf: weight each example's "
                "loss by (1 - p_bias(gold))^gamma"})
    gamma: float = field(default=2.0, metadata={"help": "lpf: the focusing exponent"})

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("product", "lpf"):
            raise ConfigError(f"mode must be product or lpf, not {self.mode!r}")
        if self.gamma < 0:
            raise ConfigError(f"gamma must be >= 0; got {self.gamma}")


def poe_loss(main_z: torch.Tensor, bias_logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-unit -log softmax(log_softmax(main_z) + bias_logp)[target] for [N, K] logits (-inf = not an answer)."""
    ensemble = torch.log_softmax(torch.log_softmax(main_z, dim=-1) + bias_logp, dim=-1)
    return -gold_logp(ensemble, target)


def lpf_weights(bias_logp: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, n_rows: int,
                gamma: float) -> torch.Tensor:
    """[B] (1 - p_bias(gold answer))^gamma; over answer tokens, p_bias(answer) is the product of its tokens'."""
    lp = gold_logp(bias_logp, target)
    per_answer = torch.zeros(n_rows, dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    return (1 - per_answer.exp()).clamp(min=0) ** gamma


@RECIPES.register("poe")
class PoERecipe(BiasExpertRecipe):
    config_class = PoEConfig
    description = "Product of experts with a detached bias expert (the model without the image, or a prior " \
                  "table); the model alone answers at inference. mode: lpf reweights the loss instead."


    def training_step(self, model, inputs):
        bias_logp = self.expert.log_probs(self, model, inputs)
        if self.config.mode == "lpf":
            return self._lpf_step(model, inputs, bias_logp)
        z, target, rows, _ = main_logits(model, inputs, self.expert.space)
        per_unit = poe_loss(z, bias_logp, target)
        loss = per_unit.mean()
        self.backward(loss)
        with torch.no_grad():
            plain = -gold_logp(torch.log_softmax(z, dim=-1), target).mean()
        return loss.detach(), {"loss/product": loss.item(), "loss/main_alone": plain.item(),
                               **expert_signals(bias_logp, target, rows, len(inputs["input_ids"]), z.detach())}

    def _lpf_step(self, model, inputs, bias_logp):
        sums, counts, _ = answer_forward(model, inputs)
        n = sums.shape[0]
        if self.expert.space == "choices":
            target, rows = inputs[MB + "gold"], torch.arange(n, device=sums.device)
        else:
            mask = inputs[MB + "answer_mask"]
            target, rows = inputs["input_ids"][mask], mask.nonzero()[:, 0]
        weights = lpf_weights(bias_logp, target, rows, n, self.config.gamma)
        nll = -sums / counts.clamp(min=1)
        loss = (weights * nll).mean()
        self.backward(loss)
        signals = {"loss/lpf": loss.item(), "loss/main_alone": float(nll.detach().mean()),
                   "lpf/mean_weight": float(weights.mean()), **expert_signals(bias_logp, target, rows, n)}
        return loss.detach(), signals
