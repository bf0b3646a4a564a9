"""ogm_ge: On-the-fly Gradient Modulation with Generalization Enhancement (OGM-GE; Peng et al., CVPR 2022).

Per step, from the unimodal passes (P1): s_m = sum over the batch of p_m(gold answer), with m = image (question
masked) and text (image masked by the baseline). The dominant side (higher score) has ratio rho = s_dom / s_weak
and its gradients are scaled by k = 1 - tanh(alpha * relu(rho - offset)); Gaussian noise N(0, std(g)^2) with the
gradient tensor's own std is added ("generalisation enhancement").

Released code vs paper: the code uses offset 0 (k jumps to 1 - tanh(alpha) just above rho = 1; earlier versions of
the code used offset 1) and adds the noise to both modalities' gradients whenever modulation is on. Both are
options here (``offset``, ``noise``); the defaults follow the released code. In a decoder MLLM the "encoders" are
the modality parameter groups: vision = vision-side LoRA (projector, vision tower), language = the LLM's LoRA.
Under DDP the scores are summed over the processes (the whole batch's, as in one process); the noise is the same
draw on every process, scaled by each process's own gradient's std (one process: the whole batch's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mbias.errors import ConfigError
from mbias.finetune.data import BatchSpec, answer_forward
from mbias.finetune.recipes.base import RECIPES, ModulationConfig, Recipe
from mbias.variants import IMAGE_MASKED, QUESTION_MASKED


@dataclass
class OGMGEConfig(ModulationConfig):
    alpha: float = field(default=0.5, metadata={"help": "modulation strength (the paper uses 0.1-0.8)"})
    offset: float = field(default=0.0, metadata={"help": "k = 1 - tanh(alpha * relu(rho - offset)); 0 as in the "
                                                         "released code, 1 as in its first version"})
    noise: str = field(default="both", metadata={"help": "where Gaussian noise goes: both (released code), "
                                                         "dominant, or none (plain OGM)"})
    start_step: int = field(default=0, metadata={"help": "first step with modulation"})
    end_step: int | None = field(default=None, metadata={"help": "last step with modulation (None: to the end)"})

    def __post_init__(self):
        super().__post_init__()
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0; got {self.alpha}")
        if self.noise not in ("both", "dominant", "none"):
            raise ConfigError(f"noise must be both, dominant or none, not {self.noise!r}")


def ogm_coefficient(score_dom: float, score_weak: float, alpha: float, offset: float = 0.0) -> float:
    """k for the dominant side: 1 - tanh(alpha * relu(s_dom / s_weak - offset))."""
    ratio = score_dom / max(score_weak, 1e-12)
    return 1.0 - math.tanh(alpha * max(0.0, ratio - offset))


@RECIPES.register("ogm_ge")
class OGMGERecipe(Recipe):
    config_class = OGMGEConfig
    batch = BatchSpec(variants=frozenset({QUESTION_MASKED, IMAGE_MASKED}))
    description = "The dominant modality's gradients scaled down by its unimodal confidence ratio, plus noise."

    def __init__(self, config=None):
        super().__init__(config)
        self.generator = torch.Generator()

    def setup(self, ctx):
        super().setup(ctx)
        self.generator.manual_seed(ctx.seed)

    def training_step(self, model, inputs):
        cfg = self.config
        with torch.no_grad():
            scores = torch.stack([answer_forward(model, inputs, QUESTION_MASKED)[0].exp().sum(),
                                  answer_forward(model, inputs, IMAGE_MASKED)[0].exp().sum()])
        s_img, s_txt = self.over_processes(scores, "sum").tolist()  # over the whole batch, under DDP too
        step = self.ctx.global_step
        active = step >= cfg.start_step and (cfg.end_step is None or step <= cfg.end_step)
        dominant = "vision" if s_img > s_txt else "language"
        k = ogm_coefficient(max(s_img, s_txt), min(s_img, s_txt), cfg.alpha, cfg.offset) if active else 1.0
        loss = self.sft_loss(model, inputs)
        noise = {}
        if active and cfg.noise != "none":
            noise = {"vision": True, "language": True} if cfg.noise == "both" else {dominant: True}
        self.modulated_backward(loss, {dominant: k}, noise, self.generator, mode=cfg.mode)
        loss = loss.detach()
        return loss, {"loss/sft": loss.item(), "ogm/score_image": s_img, "ogm/score_text": s_txt,
                      "ogm/dominant_is_text": float(dominant == "language"), "ogm/k": k}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
