"""lmh: learned-mixin +H (Clark, Yatskar & Zettlemoyer, EMNLP 2019), with a detached bias expert.

A product of experts whose bias term is scaled per example by a learned gate:

    g(x) = softplus(w . h(x) + b) >= 0        (h: the model's final hidden state that predicts the answer, detached)
    log p_ens = log_softmax(log p_main + g(x) log p_bias),   loss = -log p_ens(gold) + w_H * H(softmax(g(x) log p_bias))

The gate learns where the bias expert is worth trusting; the entropy penalty (w_H = 0.36, the paper's VQA-CP
setting) keeps it from switching the expert off (g -> 0 makes the scaled bias uniform, which maximises H). At
inference the main model is used alone. The expert is ``finetune.bias_expert`` (default: the model before
fine-tuning without the image; ``bias_expert: prior_table`` is the paper's fixed table of answer frequencies per
question type).

Departures: the paper's gate reads the main model's hidden layer with gradient; here the hidden state is detached
(the gate cannot reshape the model's representation to switch the expert on or off) and the gate has its own AdamW
optimizer (``gate_lr``), stepped with every micro-batch (under DDP on the gradient averaged over processes, so
every process keeps the same gate). The gate is not saved with the adapter: it is not part of
the model. Answer spaces as in ``poe``; in ``tokens`` space one gate value per example scales every answer token's
bias distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mbias.errors import ConfigError
from mbias.finetune.bias_expert import (
    BiasExpertConfig,
    expert_signals,
    gold_logp,
    main_logits,
)
from mbias.finetune.data import first_answer_state
from mbias.finetune.recipes.base import RECIPES
from mbias.finetune.recipes.expert import BiasExpertRecipe


@dataclass
class LMHConfig(BiasExpertConfig):
    entropy_weight: float = field(default=0.36, metadata={"help": "w_H, the entropy penalty on the scaled bias "
                                                                  "distribution (+H); 0 = learned-mixin alone"})
    gate_lr: float = field(default=1e-3, metadata={"help": "learning rate of the gate (its own AdamW)"})

    def __post_init__(self):
        super().__post_init__()
        if self.entropy_weight < 0 or self.gate_lr <= 0:
            raise ConfigError("entropy_weight must be >= 0 and gate_lr > 0")


def mixin_loss(main_z: torch.Tensor, bias_logp: torch.Tensor, gate: torch.Tensor, target: torch.Tensor,
               entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-unit ensemble NLL, per-unit entropy of softmax(gate * log p_bias)) for [N, K] logits and gates [N].
    Entries at -inf (not an answer) stay out of both."""
    valid = torch.isfinite(bias_logp)
    # multiply finite values only: gate * -inf would send NaN into the gate's gradient through torch.where
    scaled = (gate[:, None] * bias_logp.masked_fill(~valid, 0.0)).masked_fill(~valid, float("-inf"))
    ensemble = torch.log_softmax(torch.log_softmax(main_z, dim=-1) + scaled, dim=-1)
    scaled_logp = torch.log_softmax(scaled, dim=-1)
    entropy = -(scaled_logp.exp() * scaled_logp.masked_fill(~valid, 0.0)).sum(-1)
    return -gold_logp(ensemble, target), entropy


@RECIPES.register("lmh")
class LMHRecipe(BiasExpertRecipe):
    config_class = LMHConfig
    description = "Learned-mixin +H: a product of experts whose detached bias expert is scaled by a learned " \
                  "gate, with an entropy penalty that keeps the gate on."

    def __init__(self, config=None):
        super().__init__(config)
        self.gate = None
        self.gate_opt = None

    def setup(self, ctx):
        super().setup(ctx)
        dim = ctx.unwrap().get_output_embeddings().weight.shape[1]
        torch.manual_seed(ctx.seed)
        self.gate = torch.nn.Linear(dim, 1).to(ctx.device)
        self.gate_opt = torch.optim.AdamW(self.gate.parameters(), lr=self.config.gate_lr, weight_decay=0.0)

    def training_step(self, model, inputs):
        bias_logp = self.expert.log_probs(self, model, inputs)
        z, target, rows, out = main_logits(model, inputs, self.expert.space, output_hidden_states=True)
        hidden = first_answer_state(out, inputs).detach().float()  # [B, D]
        gate = F.softplus(self.gate(hidden)).squeeze(-1)  # [B]
        nll, entropy = mixin_loss(z, bias_logp, gate[rows], target, self.config.entropy_weight)
        loss = nll.mean() + self.config.entropy_weight * entropy.mean()
        self.gate_opt.zero_grad(set_to_none=True)
        self.backward(loss)
        for p in self.gate.parameters():  # DDP averages the model's gradients, not the gate's
            p.grad = self.over_processes(p.grad)
        self.gate_opt.step()
        return loss.detach(), {"loss/mixin": float(nll.detach().mean()), "loss/entropy": float(entropy.detach().mean()),
                               "lmh/gate": float(gate.detach().mean()),
                               **expert_signals(bias_logp, target, rows, len(gate), z.detach())}

    def state_dict(self):
        return {"gate": self.gate.state_dict(), "gate_opt": self.gate_opt.state_dict()}

    def load_state_dict(self, state):
        self.gate.load_state_dict(state["gate"])
        self.gate_opt.load_state_dict(state["gate_opt"])

