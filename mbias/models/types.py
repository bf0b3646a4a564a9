"""What the adapter hands to probes and trainers: encoded and prepared examples, predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mbias.example import Example


@dataclass
class Encoded:
    """One example tokenized for this model: prompt, answer(s), where the image and question tokens are."""

    example: Example
    image: Any  # PIL image (RGB), or None for a text-only prompt
    prompt_ids: torch.Tensor  # [P]
    answer_ids: torch.Tensor  # [A] gold answer tokens, scored after the prompt
    token_inputs: dict[str, torch.Tensor]  # per-token extras over the prompt ([P] each)
    meta_inputs: dict[str, torch.Tensor]  # per-image extras the language-model forward needs too
    pixel_inputs: dict[str, torch.Tensor]  # what the vision tower takes (batch of one image)
    image_positions: torch.Tensor  # [N] sequence positions of image placeholder tokens
    question_positions: torch.Tensor  # [Q] positions of the user's question tokens (template text excluded)
    choice_ids: list[torch.Tensor] | None
    question_tokens: list[str]
    baseline_images: dict[str, Any] = field(default_factory=dict)  # kind -> PIL image, filled on first use
    baseline_pixel_inputs: dict[str, dict] = field(default_factory=dict)  # kind -> vision inputs

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def n_question(self) -> int:
        return int(self.question_positions.numel())

    @property
    def n_image_tokens(self) -> int:
        return int(self.image_positions.numel())


@dataclass
class Prepared(Encoded):
    """An encoded example plus its image features, computed once; probes score many masked variants of it."""

    features: torch.Tensor | None = None  # [N, D] projected image features
    pooler_layout: tuple | None = None  # how to hand feature rows back to this family's forward
    token_coords: torch.Tensor | None = None  # [N, 2] (y, x) centre of each image token in the view box
    view_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    baseline_features: dict[str, torch.Tensor] = field(default_factory=dict)
    group_cache: dict[tuple, Any] = field(default_factory=dict)  # (grid, pixel masking) -> geometry.PatchGroups

    @property
    def has_image(self) -> bool:
        return self.features is not None


@dataclass
class Prediction:
    text: str
    correct: bool
    choice_scores: list[float] | None = None  # log p(choice) per choice, when the example has choices
