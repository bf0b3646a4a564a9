"""cggm: Classifier-Guided Gradient Modulation (Guo et al., NeurIPS 2024), on a decoder MLLM.

Two small classifier heads read *detached* hidden states of one LLM layer, mean-pooled over the image tokens and
over the question tokens, and are trained alongside with their own optimizer. A head's class logits are its
output vector dotted with the (frozen) output embeddings of the example's choices, so heads work with any label
space. Per step: Delta_m = batch accuracy of head m now minus at the previous step; S = sum Delta;
B_m = (S - Delta_m) / S; the gradients of modality group m (vision = vision-side LoRA, language = LLM LoRA) are
scaled by rho * B_m; a direction term L_gm = (sum |B_m| - sum B_m cos(u_m, u_fused)) / M with weight lambda pulls
the fused representation (the final hidden state that predicts the answer) towards each head's output u_m.

Guards (the released code has none): B_m is clamped to [0, b_max] and left at 1 while |S| < s_min, so the sign
never flips and nothing explodes when accuracies stall. Batch-to-batch accuracy differences are mostly sampling
noise once a head learns slowly, and the clamped ratio then slows the noisier (weaker) side on average, the
opposite of the intent (the late-fusion control, docs/recipes.md); ``window`` compares means over windows of
steps instead. Released code vs paper: the code's "gradient" cosine is
between output-layer weights; here it is between representations, the nearest analogue in an LLM whose output
layer is frozen. Released defaults: rho 1.3, lambda 0.05-0.2, gradient clip 0.8. Heads are not saved with the
adapter (they are not part of the model). Under DDP the heads' gradients and accuracies are averaged over the
processes, so every process holds the same heads and the same B_m.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mbias.errors import ConfigError
from mbias.finetune.data import MB, BatchSpec, answer_forward, first_answer_state
from mbias.finetune.recipes.base import RECIPES, ModulationConfig, Recipe


@dataclass
class CGGMConfig(ModulationConfig):
    rho: float = field(default=1.3, metadata={"help": "gradient scale multiplier"})
    lam: float = field(default=0.1, metadata={"help": "weight of the direction term"})
    layer: int = field(default=-1, metadata={"help": "hidden-state index the heads read (-1: last layer)"})
    head_lr: float = field(default=5e-4, metadata={"help": "learning rate of the classifier heads"})
    b_max: float = field(default=3.0, metadata={"help": "B_m is clamped to [0, b_max]"})
    s_min: float = field(default=1e-3, metadata={"help": "no modulation while |S| is below this"})
    window: int = field(default=1, metadata={
        "help": "Delta_m = a head's mean batch accuracy over the last `window` steps minus over the `window` "
                "before; 1 = batch to batch, as the released code (noise when a head learns slowly)"})

    def __post_init__(self):
        super().__post_init__()
        if self.rho <= 0 or self.b_max <= 0:
            raise ConfigError("rho and b_max must be positive")
        if self.window < 1:
            raise ConfigError(f"window must be >= 1; got {self.window}")


def improvement(history: list[float], window: int) -> float:
    """Delta: the mean of the last ``window`` accuracies minus the mean of the ``window`` before (0 before any)."""
    now, before = history[-window:], history[:-window][-window:]
    return sum(now) / len(now) - (sum(before) / len(before) if before else 0.0)


def modulation_coefficients(delta: dict[str, float], s_min: float, b_max: float) -> dict[str, float]:
    """B_m = (S - Delta_m) / S, guarded: all 1 when |S| < s_min, else clamped to [0, b_max]."""
    s = sum(delta.values())
    if abs(s) < s_min:
        return dict.fromkeys(delta, 1.0)
    return {m: min(max((s - d) / s, 0.0), b_max) for m, d in delta.items()}


class _Head(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim))

    def forward(self, x):
        return self.net(x)


def _whole(weight: torch.Tensor) -> torch.Tensor:
    """A weight as a plain tensor: the whole of it, gathered from the processes' shards under FSDP2."""
    return weight.full_tensor() if hasattr(weight, "full_tensor") else weight


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


@RECIPES.register("cggm")
class CGGMRecipe(Recipe):
    config_class = CGGMConfig
    batch = BatchSpec(choices=True)
    max_grad_norm = 0.8  # the released code's clip
    description = "Gradient magnitudes steered by how fast per-modality classifier heads improve, plus a " \
                  "direction term."

    def __init__(self, config=None):
        super().__init__(config)
        self.heads = None
        self.head_opt = None
        self.history = {"vision": [], "language": []}  # each head's last 2 * window batch accuracies

    def setup(self, ctx):
        super().setup(ctx)
        dim = ctx.unwrap().get_output_embeddings().weight.shape[1]
        torch.manual_seed(ctx.seed)
        self.heads = torch.nn.ModuleDict({"vision": _Head(dim), "language": _Head(dim)}).to(ctx.device)
        self.head_opt = torch.optim.AdamW(self.heads.parameters(), lr=self.config.head_lr, weight_decay=3e-3)

    def training_step(self, model, inputs):
        cfg = self.config
        sums, counts, first, out = answer_forward(model, inputs, output_hidden_states=True)
        sft = -sums.sum() / counts.sum().clamp(min=1)
        hidden = out.hidden_states[cfg.layer].detach().float()
        image_mask = inputs["input_ids"] == self.ctx.scorer.image_token_id
        pooled = {"vision": _pool(hidden, image_mask), "language": _pool(hidden, inputs[MB + "question_mask"])}
        out_emb = self.ctx.unwrap(model).get_output_embeddings()  # DDP hides the method
        emb = _whole(out_emb.weight).detach().float()[inputs[MB + "choice_tokens"]]  # [B, C, D]
        gold, valid = inputs[MB + "gold"], inputs[MB + "choice_valid"]
        head_loss, hits, u = 0.0, [], {}
        for m, head in self.heads.items():
            u[m] = head(pooled[m])
            z = torch.einsum("bd,bcd->bc", u[m], emb).masked_fill(~valid, float("-inf"))
            head_loss = head_loss + F.cross_entropy(z, gold)
            hits.append((z.argmax(-1) == gold).float().mean())
        self.head_opt.zero_grad(set_to_none=True)
        head_loss.backward()
        for p in self.heads.parameters():  # the heads are outside the DDP-wrapped model: average them here
            p.grad = self.over_processes(p.grad)
        self.head_opt.step()
        # the whole batch's accuracies, so that every process scales its gradients by the same B_m
        acc = dict(zip(self.heads, self.over_processes(torch.stack(hits)).tolist(), strict=True))

        w = cfg.window
        for m, a in acc.items():
            self.history[m] = [*self.history[m], a][-2 * w:]
        delta = {m: improvement(self.history[m], w) for m in acc}
        coef = modulation_coefficients(delta, cfg.s_min, cfg.b_max)
        # direction term: the fused representation that predicts the answer, against each head's output
        fused = first_answer_state(out, inputs).float()
        cos = {m: F.cosine_similarity(fused, u[m].detach().to(fused.dtype), dim=-1).mean() for m in u}
        l_gm = (sum(abs(b) for b in coef.values()) - sum(coef[m] * cos[m] for m in cos)) / len(cos)
        loss = sft + cfg.lam * l_gm
        self.modulated_backward(loss, {m: cfg.rho * coef[m] for m in coef}, mode=cfg.mode)
        loss = loss.detach()
        return loss, {"loss/sft": sft.item(), "loss/direction": float(l_gm.detach()), "cggm/acc_image_head": acc["vision"],
                      "cggm/acc_text_head": acc["language"], "cggm/B_image": coef["vision"],
                      "cggm/B_text": coef["language"]}

    def state_dict(self):
        return {"heads": self.heads.state_dict(), "head_opt": self.head_opt.state_dict(), "history": self.history}

    def load_state_dict(self, state):
        self.heads.load_state_dict(state["heads"])
        self.head_opt.load_state_dict(state["head_opt"])
        self.history = state["history"]

