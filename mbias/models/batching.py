"""Training batches: encoded examples -> padded model inputs with labels on the answer tokens only.

Used by the zoo trainer and the fine-tuning recipes. ``mask_question`` replaces the question tokens by the text
baseline id and ``image="blank"`` swaps in the whole-image baseline's pixels, which gives the image-only and
text-only passes the balancing recipes need (same sequence length, so one batch layout serves all three).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mbias.models.types import Encoded

IGNORE_INDEX = -100


@dataclass
class Batch:
    model_inputs: dict[str, torch.Tensor]  # what ``model(**model_inputs)`` takes, labels included
    answer_mask: torch.Tensor  # [B, L] True at answer token positions (where labels are set)
    question_mask: torch.Tensor  # [B, L] True at the user's question tokens

    def to(self, device) -> Batch:
        move = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.model_inputs.items()}
        return Batch(move, self.answer_mask.to(device), self.question_mask.to(device))


def _cat_pixels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-example vision inputs along dim 0, zero-padding a ragged dim 1 (tile counts)."""
    if tensors[0].dim() >= 3 and len({t.shape[1:] for t in tensors}) > 1:
        n = max(t.shape[1] for t in tensors)
        tensors = [F.pad(t, [0, 0] * (t.dim() - 2) + [0, n - t.shape[1]]) for t in tensors]
    return torch.cat(tensors, dim=0)


def collate(adapter, encoded: list[Encoded], *, mask_question: bool = False, image: str = "full",
            answers: list[torch.Tensor] | None = None) -> Batch:
    """Right-padded batch of prompt + answer; ``image`` is ``full`` or a whole-image baseline kind."""
    tok = adapter.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    answers = answers or [e.answer_ids for e in encoded]
    lengths = [e.prompt_ids.numel() + a.numel() for e, a in zip(encoded, answers, strict=True)]
    B, L = len(encoded), max(lengths)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    answer_mask = torch.zeros((B, L), dtype=torch.bool)
    question_mask = torch.zeros((B, L), dtype=torch.bool)
    extras = {k: torch.zeros((B, L), dtype=v.dtype) for k, v in encoded[0].token_inputs.items()}
    baseline_id = adapter.text_baseline_id() if mask_question else None
    for b, (e, a) in enumerate(zip(encoded, answers, strict=True)):
        P, A = e.prompt_ids.numel(), a.numel()
        input_ids[b, :P] = e.prompt_ids
        input_ids[b, P:P + A] = a
        labels[b, P:P + A] = a
        attention[b, :P + A] = 1
        answer_mask[b, P:P + A] = True
        question_mask[b, e.question_positions] = True
        if mask_question:
            input_ids[b, e.question_positions] = baseline_id
        for k, v in e.token_inputs.items():
            extras[k][b, :P] = v
            extras[k][b, P:P + A] = adapter._answer_fill(k)
    inputs = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, **extras}
    if encoded[0].has_image:
        pixels = [e.pixel_inputs if image == "full" else adapter.baseline_pixels(e, image) for e in encoded]
        for key in pixels[0]:
            inputs[key] = _cat_pixels([p[key] for p in pixels])
    return Batch(inputs, answer_mask, question_mask)


def answer_logprobs(model, batch: Batch, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(answer tokens) per example [B] (differentiable) and answer token counts [B].

    Logits are computed only where an answer token is predicted (``logits_to_keep`` as a boolean mask), which
    skips the lm_head over the prompt: most of the sequence, and most of the head's cost on a large vocabulary.
    """
    inputs = {k: v for k, v in batch.model_inputs.items() if k != "labels"}
    predicts = torch.zeros_like(batch.answer_mask)
    predicts[:, :-1] = batch.answer_mask[:, 1:]
    logits = model(**inputs, **forward_kwargs, use_cache=False, logits_to_keep=predicts).logits  # [T, V]
    targets = inputs["input_ids"][batch.answer_mask]  # row-major, the same order as the kept logits
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = batch.answer_mask.nonzero()[:, 0]
    B = batch.answer_mask.shape[0]
    sums = torch.zeros(B, dtype=token_lp.dtype, device=token_lp.device).index_add(0, rows, token_lp)
    return sums, batch.answer_mask.sum(-1)


def answer_loss(model, batch: Batch, **forward_kwargs) -> torch.Tensor:
    """Mean negative log-likelihood per answer token (what HF's loss with ``labels`` gives, computed cheaper)."""
    sums, counts = answer_logprobs(model, batch, **forward_kwargs)
    return -sums.sum() / counts.sum().clamp(min=1)
