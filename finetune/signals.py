"""P1, the modality-ablated passes every balancing recipe builds on, and modality Shapley on a batch.

The four coalitions of the two-player game (``mbias.variants.SHAPLEY_VARIANTS``): full, question masked (the
image alone), image masked by the whole-image baseline (the question alone), both masked. From their values the
per-sample Shapley values follow exactly, with the same formula the audit uses
(``mbias.shapley.two_player_shapley``).
"""

from __future__ import annotations

import torch

from mbias.finetune.data import MB, answer_forward, choice_logits, model_inputs
from mbias.shapley import two_player_shapley
from mbias.variants import BOTH_MASKED, FULL, IMAGE_MASKED, QUESTION_MASKED, SHAPLEY_VARIANTS


def stacked_inputs(inputs: dict, variants) -> dict:
    """One batch holding every requested variant of every example, variant-major ([len(variants) * B, ...])."""
    parts = [model_inputs(inputs, v) for v in variants]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    n = len(variants)
    for key in ("answer_mask", "question_mask", "choice_tokens", "choice_valid", "gold"):
        if MB + key in inputs:
            out[MB + key] = inputs[MB + key].repeat(n, *([1] * (inputs[MB + key].dim() - 1)))
    return out


@torch.no_grad()
def variant_values(model, inputs: dict, value: str, variants=SHAPLEY_VARIANTS) -> dict[tuple, torch.Tensor]:
    """Per-sample values [B] of each variant: ``logprob`` (answer log-prob) or ``accuracy`` (1 if the gold
    choice wins among the choices' first tokens; needs a label space). All variants go through one forward pass."""
    variants = tuple(variants)
    stacked = stacked_inputs(inputs, variants)
    sums, _, first = answer_forward(model, stacked, FULL)
    if value == "accuracy":
        vals = (choice_logits(first, stacked).argmax(-1) == stacked[MB + "gold"]).float()
    else:
        vals = sums.float()
    return dict(zip(variants, vals.chunk(len(variants)), strict=True))


def batch_shapley(vals: dict[tuple, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (phi_image, phi_text) [B] from the four coalitions' values."""
    return two_player_shapley(vals[FULL], vals[QUESTION_MASKED], vals[IMAGE_MASKED], vals[BOTH_MASKED])


def modality_weights(phi_img: torch.Tensor, phi_txt: torch.Tensor) -> torch.Tensor:
    """[B, 2] weights (image, text) summing to 1: each modality's positive contribution over the total;
    equal weights where neither contributes positively."""
    pos = torch.stack([phi_img.clamp(min=0), phi_txt.clamp(min=0)], dim=-1)
    total = pos.sum(-1, keepdim=True)
    return torch.where(total > 0, pos / total.clamp(min=1e-12), torch.full_like(pos, 0.5))
