"""Training batches: encoded examples -> padded model inputs with labels on the answer tokens only.

Used by the zoo trainer and the fine-tuning recipes. ``question_masked`` replaces the question tokens by the text
baseline id and ``image="blank"`` swaps in the whole-image baseline's pixels, which gives the ``QUESTION_MASKED``
and ``IMAGE_MASKED`` variants (``mbias.variants``) the balancing recipes need (same sequence length, so one batch
layout serves all three).
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


def right_pad(prompts: list[torch.Tensor], answers: list[torch.Tensor], pad_id: int,
              token_inputs: list[dict[str, torch.Tensor]], answer_fill) -> dict[str, torch.Tensor]:
    """Rows of prompt + answer, right-padded: ``input_ids``, ``attention_mask``, ``answer_mask`` [B, L] and each
    per-token extra (over the prompt; ``answer_fill(key)`` over the answer). The one layout every scoring and
    training batch uses."""
    B, L = len(prompts), max(p.numel() + a.numel() for p, a in zip(prompts, answers, strict=True))
    out = {"input_ids": torch.full((B, L), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((B, L), dtype=torch.long),
           "answer_mask": torch.zeros((B, L), dtype=torch.bool)}
    # extras hold the answer's value from the prompt's end on (padding included, where attention is off anyway)
    out.update({k: torch.full((B, L), answer_fill(k), dtype=v.dtype) for k, v in token_inputs[0].items()})
    for b, (prompt, answer, extras) in enumerate(zip(prompts, answers, token_inputs, strict=True)):
        P, A = prompt.numel(), answer.numel()
        out["input_ids"][b, :P] = prompt
        out["input_ids"][b, P:P + A] = answer
        out["attention_mask"][b, :P + A] = 1
        out["answer_mask"][b, P:P + A] = True
        for k, v in extras.items():
            out[k][b, :P] = v
    return out


def collate(scorer, encoded: list[Encoded], *, question_masked: bool = False, image: str = "full",
            answers: list[torch.Tensor] | None = None) -> Batch:
    """Right-padded batch of prompt + answer; ``image`` is ``full`` or a whole-image baseline kind."""
    tok = scorer.tokenizer
    answers = answers or [e.answer_ids for e in encoded]
    inputs = right_pad([e.prompt_ids for e in encoded], answers, tok.pad_token_id if tok.pad_token_id is not None
                       else 0, [e.token_inputs for e in encoded], scorer._answer_fill)
    answer_mask = inputs.pop("answer_mask")
    inputs["labels"] = inputs["input_ids"].masked_fill(~answer_mask, IGNORE_INDEX)
    question_mask = torch.zeros_like(answer_mask)
    for b, e in enumerate(encoded):
        question_mask[b, e.question_positions] = True
        if question_masked:
            inputs["input_ids"][b, e.question_positions] = scorer.text_baseline_id()
    if encoded[0].has_image:
        pixels = [e.pixel_inputs if image == "full" else scorer.baseline_pixels(e, image) for e in encoded]
        for key in pixels[0]:
            inputs[key] = _cat_pixels([p[key] for p in pixels])
    return Batch(inputs, answer_mask, question_mask)


def answer_logits(model, model_inputs: dict, answer_mask: torch.Tensor, **forward_kwargs):
    """Logits at every position that predicts an answer token [T, vocab] (row-major over the batch), the answer
    tokens they predict [T], each one's batch row [T], and the model output.

    Logits are computed only where an answer token is predicted (``logits_to_keep`` as a boolean mask), which
    skips the lm_head over the prompt: most of the sequence, and most of the head's cost on a large vocabulary.
    """
    predicts = torch.zeros_like(answer_mask)
    predicts[:, :-1] = answer_mask[:, 1:]
    out = model(**model_inputs, use_cache=False, logits_to_keep=predicts, **forward_kwargs)
    return out.logits, model_inputs["input_ids"][answer_mask], answer_mask.nonzero()[:, 0], out


def summed_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Summed log p(target) per batch row [n_rows] from per-token logits [T, vocab] (differentiable)."""
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(n_rows, dtype=token_lp.dtype, device=token_lp.device).index_add(0, rows, token_lp)


def answer_logprobs(model, batch: Batch, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(answer tokens) per example [B] (differentiable) and answer token counts [B]."""
    inputs = {k: v for k, v in batch.model_inputs.items() if k != "labels"}
    logits, targets, rows, _ = answer_logits(model, inputs, batch.answer_mask, **forward_kwargs)
    return summed_logprobs(logits, targets, rows, batch.answer_mask.shape[0]), batch.answer_mask.sum(-1)


def answer_loss(model, batch: Batch, **forward_kwargs) -> torch.Tensor:
    """Mean negative log-likelihood per answer token (what HF's loss with ``labels`` gives, computed cheaper)."""
    sums, counts = answer_logprobs(model, batch, **forward_kwargs)
    return -sums.sum() / counts.sum().clamp(min=1)
