"""P1, the modality-ablated passes every balancing recipe builds on, and modality Shapley on a batch.

Four variants of each example: full (image and question), image only (question masked by the text baseline),
text only (image replaced by the whole-image baseline), none. From their values the per-sample two-player Shapley
values follow exactly (``mbias.probes.modality_shapley.two_player_shapley``).
"""

from __future__ import annotations

import torch
from mbias.finetune.data import answer_forward, choice_logits

VARIANTS = ("full", "image_only", "text_only", "none")


@torch.no_grad()
def variant_values(model, inputs: dict, value: str, variants=VARIANTS) -> dict[str, torch.Tensor]:
    """Per-sample values [B] of each variant: ``logprob`` (answer log-prob) or ``accuracy`` (1 if the gold
    choice wins among the choices' first tokens; needs a label space)."""
    out = {}
    for v in variants:
        sums, _, first = answer_forward(model, inputs, v)
        if value == "accuracy":
            z = choice_logits(first, inputs)
            out[v] = (z.argmax(-1) == inputs["mb_gold"]).float()
        else:
            out[v] = sums.float()
    return out


def batch_shapley(vals: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (phi_image, phi_text) [B] from the four variants' values."""
    phi_img = 0.5 * ((vals["full"] - vals["text_only"]) + (vals["image_only"] - vals["none"]))
    phi_txt = 0.5 * ((vals["full"] - vals["image_only"]) + (vals["text_only"] - vals["none"]))
    return phi_img, phi_txt


def modality_weights(phi_img: torch.Tensor, phi_txt: torch.Tensor) -> torch.Tensor:
    """[B, 2] weights (image, text) summing to 1: each modality's positive contribution over the total;
    equal weights where neither contributes positively."""
    pos = torch.stack([phi_img.clamp(min=0), phi_txt.clamp(min=0)], dim=-1)
    total = pos.sum(-1, keepdim=True)
    return torch.where(total > 0, pos / total.clamp(min=1e-12), torch.full_like(pos, 0.5))
