"""A captum ``InterpretableInput`` holding question tokens and image patch groups together, and captum estimators.

captum 0.9 has ``TextTokenInput`` and ``ImageMaskInput`` but no joint input, and ``LLMAttribution`` scores one
coalition per forward pass. ``ImageTextInput`` gives captum's perturbation methods the joint player set; its
``value`` scores a whole batch of coalitions through the model scorer, so captum's ``perturbations_per_eval``
turns into real batching.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import InterpretableInput

from mbias.shapley import ShapleyResult


class ImageTextInput(InterpretableInput):
    """Features 0..Q-1 are the question tokens, Q..Q+G-1 the image patch groups of ``grid``."""

    def __init__(self, scorer, prepared, grid: int | None = None, value: str = "logprob"):
        super().__init__()
        self.scorer, self.prepared, self.value_kind = scorer, prepared, value
        self.groups = scorer.patch_groups(prepared, grid)
        self.n_text = prepared.n_question
        self.n_image = self.groups.n
        self.n_itp_features = self.n_text + self.n_image
        g = self.groups.grid
        self.values = list(prepared.question_tokens) + [f"image[{c // g},{c % g}]" for c in self.groups.cells]

    def to_tensor(self) -> torch.Tensor:
        return torch.ones(1, self.n_itp_features)

    def to_model_input(self, perturbed_tensor: torch.Tensor | None = None):
        """(prompt ids [K, P], image feature rows [K, N, D]) of the coalitions in ``perturbed_tensor`` [K, n]."""
        masks = self.to_tensor() if perturbed_tensor is None else perturbed_tensor
        masks = masks.reshape(-1, self.n_itp_features) > 0.5
        return self.scorer.variant_inputs(self.prepared, masks[:, self.n_text:], masks[:, :self.n_text],
                                           grid=self.groups.grid)

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        """[K] values of coalitions ``masks`` [K, n] (bool or 0/1): log p(answer) (``logprob``), p(answer)
        (``prob``), or log p(answer) renormalised over the example's choices (``choice``)."""
        ids, feats = self.to_model_input(masks.float())
        if self.value_kind == "choice":
            scores = self.scorer.score_inputs(self.prepared, ids, feats, answers=self.prepared.choice_ids)
            gold = self.prepared.example.choices.index(self.prepared.example.answer)
            return scores[:, gold] - torch.logsumexp(scores, dim=1)
        logp = self.scorer.score_inputs(self.prepared, ids, feats)
        return logp.exp() if self.value_kind == "prob" else logp

    def format_attr(self, itp_attr: torch.Tensor) -> torch.Tensor:
        return itp_attr


def captum_shapley(inp: ImageTextInput, method: str, *, n_samples: int, batch_size: int,
                   seed: int) -> ShapleyResult:
    """Shapley values from captum's ``ShapleyValueSampling`` / ``KernelShap`` / ``ShapleyValues`` on ``inp``.

    ``n_evaluations`` counts every coalition captum asks for (it does not deduplicate).
    """
    from captum.attr import KernelShap, ShapleyValues, ShapleyValueSampling

    n = inp.n_itp_features
    seen = {"rows": 0}

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen["rows"] += x.shape[0]
        return inp.value(x)

    torch.manual_seed(seed)  # captum draws its permutations / coalitions from torch's global RNG
    full, empty = torch.ones(1, n), torch.zeros(1, n)
    if method == "sampling":
        attr = ShapleyValueSampling(forward).attribute(full, baselines=empty, n_samples=n_samples,
                                                       perturbations_per_eval=batch_size)
    elif method == "kernel":
        attr = KernelShap(forward).attribute(full, baselines=empty, n_samples=n_samples,
                                             perturbations_per_eval=batch_size)
    elif method == "exact":
        attr = ShapleyValues(forward).attribute(full, baselines=empty, perturbations_per_eval=batch_size)
    else:
        raise ValueError(f"unknown captum method {method!r}")
    ends = inp.value(torch.stack([full[0], empty[0]]).bool())
    return ShapleyResult(np.asarray(attr.detach().reshape(-1).cpu(), dtype=np.float64), float(ends[0]),
                         float(ends[1]), seen["rows"], f"captum_{method}")
