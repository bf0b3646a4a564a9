"""P1, the modality-ablated passes every balancing recipe builds on, and modality Shapley on a batch.

Four variants of each example: full (image and question), image only (question masked by the text baseline),
text only (image replaced by the whole-image baseline), none. From their values the per-sample two-player Shapley
values follow exactly (``mbias.probes.modality_shapley.two_player_shapley``).
"""

from __future__ import annotations

import torch

from mbias.finetune.data import answer_forward, choice_logits

VARIANTS = ("full", "image_only", "text_only", "none")


def stacked_inputs(inputs: dict, variants) -> dict:
    """One batch holding every requested variant of every example, variant-major ([len(variants) * B, ...])."""
    from mbias.finetune.data import MB, model_inputs

    parts = [model_inputs(inputs, v) for v in variants]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    n = len(variants)
    for key in ("answer_mask", "question_mask", "choice_tokens", "choice_valid", "gold"):
        if MB + key in inputs:
            out[MB + key] = inputs[MB + key].repeat(n, *([1] * (inputs[MB + key].dim() - 1)))
    return out


@torch.no_grad()
def variant_values(model, inputs: dict, value: str, variants=VARIANTS) -> dict[str, torch.Tensor]:
    """Per-sample values [B] of each variant: ``logprob`` (answer log-prob) or ``accuracy`` (1 if the gold
    choice wins among the choices' first tokens; needs a label space). All variants go through one forward pass."""
    variants = tuple(variants)
    stacked = stacked_inputs(inputs, variants)
    sums, _, first = answer_forward(model, stacked, "full")
    if value == "accuracy":
        vals = (choice_logits(first, stacked).argmax(-1) == stacked["mb_gold"]).float()
    else:
        vals = sums.float()
    return dict(zip(variants, vals.chunk(len(variants)), strict=True))


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
