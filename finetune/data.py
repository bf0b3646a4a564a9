"""Training data for the recipes: lazily encoded examples and a collator that builds what a recipe asks for.

Besides the model inputs (labels on the answer tokens only) a batch may carry, under ``mb_`` keys that the model
never sees:
- the ablated variants of ``mbias.variants`` (P1 in docs/recipes.md) the recipe's ``BatchSpec`` names: question
  tokens replaced by the text baseline (``QUESTION_MASKED``: ``mb_question_masked_ids``) and the whole-image
  baseline's vision inputs (``IMAGE_MASKED``: ``mb_image_masked__<key>``), same sequence length, so one layout
  serves the full pass and both ablations;
- a label space for recipes that need class distributions: the first token of each choice
  (``mb_choice_tokens``, padded, ``mb_choice_valid``) and the gold choice (``mb_gold``);
- the same examples prompted without any image (``IMAGE_REMOVED``: ``mb_noimage__<key>``, no image tokens, so
  another sequence length), for recipes whose bias expert is the model reading the question alone;
- whatever the recipe adds per batch (``Recipe.collate_extra``), e.g. a prior table's answer distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mbias.errors import DataError
from mbias.example import normalize_answer
from mbias.models import batching
from mbias.models.batching import collate
from mbias.variants import BASELINE, FULL, IMAGE_REMOVED, MASK

MB = "mb_"
QUESTION_MASKED_IDS = MB + "question_masked_ids"
IMAGE_MASKED = MB + "image_masked__"  # + a vision input's key
NOIMAGE = MB + "noimage__"


@dataclass(frozen=True)
class BatchSpec:
    """What a recipe's step reads from a batch besides the full input: the variants of ``mbias.variants`` it
    runs (any of ``QUESTION_MASKED``, ``IMAGE_MASKED``, ``BOTH_MASKED``, ``IMAGE_REMOVED``), the picture that
    replaces the image where it is masked, and whether it needs the label space (each choice's first token and
    the gold choice; multiple-choice data only). A recipe declares it (``Recipe.batch_spec``); the collator builds
    exactly that."""

    variants: frozenset = frozenset()
    image_baseline: str = "blank"
    choices: bool = False

    @property
    def question_masked(self) -> bool:
        return any(v[1] == MASK for v in self.variants)

    @property
    def image_masked(self) -> bool:
        return any(v[0] == BASELINE for v in self.variants)

    @property
    def image_removed(self) -> bool:
        return IMAGE_REMOVED in self.variants


class EncodedDataset(torch.utils.data.Dataset):
    """Examples encoded for one scorer on first access (and cached: epochs after the first are free)."""

    def __init__(self, scorer, examples):
        self.scorer, self.examples = scorer, examples
        self._cache: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        if i not in self._cache:
            self._cache[i] = self.scorer.encode(self.examples[i])
        return self._cache[i]


def check_label_space(examples, recipe_name: str, limit: int = 200) -> None:
    """Recipes over class distributions need choices whose first tokens differ; refuse anything else."""
    for i in range(min(limit, len(examples))):
        ex = examples[i]
        if not ex.choices:
            raise DataError(f"recipe {recipe_name!r} needs multiple-choice data (a 'choices' list per record); "
                            f"example {ex.id!r} is open-ended. Use lora, msam or miles for open-ended answers")
        if normalize_answer(ex.answer) not in {normalize_answer(c) for c in ex.choices}:
            raise DataError(f"example {ex.id!r}: the answer is not among its choices")


class RecipeCollator:
    """Encoded examples -> a recipe batch: the model inputs and what ``spec`` asks for, under ``mb_`` keys."""

    def __init__(self, scorer, spec: BatchSpec = BatchSpec(), extra=None):
        self.scorer, self.spec, self.extra = scorer, spec, extra

    def __call__(self, encoded: list) -> dict:
        spec = self.spec
        batch = collate(self.scorer, encoded)
        out = dict(batch.model_inputs)
        out[MB + "answer_mask"] = batch.answer_mask
        out[MB + "question_mask"] = batch.question_mask
        if spec.question_masked:
            out[QUESTION_MASKED_IDS] = collate(self.scorer, encoded, question_masked=True).model_inputs["input_ids"]
        if spec.image_masked and encoded[0].has_image:
            baseline = collate(self.scorer, encoded, image=spec.image_baseline)
            out.update({IMAGE_MASKED + key: baseline.model_inputs[key] for key in batch.model_inputs
                        if key in self.scorer.vision_keys})
        if spec.image_removed and encoded[0].has_image:
            bare = collate(self.scorer, [self.scorer.encode(e.example, with_image=False) for e in encoded])
            out.update({NOIMAGE + k: v for k, v in bare.model_inputs.items() if k != "labels"})
            out[NOIMAGE + "answer_mask"] = bare.answer_mask
        if spec.choices:
            out.update(self._label_space(encoded))
        if self.extra is not None:
            out.update(self.extra(encoded))
        return out

    def _label_space(self, encoded: list) -> dict:
        firsts, golds = [], []
        for e in encoded:
            ids = [int(c[0]) for c in e.choice_ids]
            if len(set(ids)) != len(ids):
                raise DataError(f"example {e.example.id!r}: two choices start with the same token, so the first "
                                "answer token cannot tell them apart; this recipe needs distinct first tokens")
            firsts.append(ids)
            gold = normalize_answer(e.example.answer)
            golds.append([normalize_answer(c) for c in e.example.choices].index(gold))
        width = max(len(f) for f in firsts)
        tokens = torch.zeros(len(encoded), width, dtype=torch.long)
        valid = torch.zeros(len(encoded), width, dtype=torch.bool)
        for b, f in enumerate(firsts):
            tokens[b, :len(f)] = torch.tensor(f)
            valid[b, :len(f)] = True
        return {MB + "choice_tokens": tokens, MB + "choice_valid": valid, MB + "gold": torch.tensor(golds)}


def model_inputs(inputs: dict, variant: tuple[str, str] = FULL) -> dict:
    """The model's keyword arguments for a variant (``mbias.variants``): the image kept, replaced by the baseline
    or removed; the question kept or masked."""
    if variant == IMAGE_REMOVED:
        if NOIMAGE + "input_ids" not in inputs:  # a text-only dataset: the full prompt has no image either
            return model_inputs(inputs, FULL)
        return {k[len(NOIMAGE):]: v for k, v in inputs.items()
                if k.startswith(NOIMAGE) and k != NOIMAGE + "answer_mask"}
    out = {k: v for k, v in inputs.items() if not k.startswith(MB) and k != "labels"}
    image, question = variant
    if question == MASK:
        out["input_ids"] = inputs[QUESTION_MASKED_IDS]
    if image == BASELINE:
        for key in list(out):
            if IMAGE_MASKED + key in inputs:
                out[key] = inputs[IMAGE_MASKED + key]
    return out


def answer_mask(inputs: dict, variant: tuple[str, str] = FULL) -> torch.Tensor:
    """[B, L] True at the answer tokens of the variant's sequence."""
    if variant == IMAGE_REMOVED and NOIMAGE + "answer_mask" in inputs:
        return inputs[NOIMAGE + "answer_mask"]
    return inputs[MB + "answer_mask"]


def answer_logits(model, inputs: dict, variant: tuple[str, str] = FULL, **forward_kwargs):
    """``mbias.models.batching.answer_logits`` for a variant of a recipe batch: logits [T, vocab] where answer
    tokens are predicted, those tokens [T], their batch rows [T], and the model output."""
    return batching.answer_logits(model, model_inputs(inputs, variant), answer_mask(inputs, variant),
                                  **forward_kwargs)


def first_of_row(rows: torch.Tensor) -> torch.Tensor:
    """[T] True at each batch row's first answer token."""
    first = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    first[1:] = rows[1:] != rows[:-1]
    return first


def answer_forward(model, inputs: dict, variant: tuple[str, str] = FULL, **forward_kwargs):
    """(summed answer log-prob [B], answer token counts [B], logits at the first answer position [B, vocab]);
    with ``output_hidden_states=True`` a fourth item, the model output."""
    logits, targets, rows, out = answer_logits(model, inputs, variant, **forward_kwargs)
    mask = answer_mask(inputs, variant)
    sums = batching.summed_logprobs(logits, targets, rows, mask.shape[0])
    counts = mask.sum(-1)
    first = logits[first_of_row(rows)]
    if forward_kwargs.get("output_hidden_states"):
        return sums, counts, first, out
    return sums, counts, first


def choice_logits(first_logits: torch.Tensor, inputs: dict) -> torch.Tensor:
    """[B, C] logits of each choice's first token (invalid padding slots at -inf)."""
    tokens, valid = inputs[MB + "choice_tokens"], inputs[MB + "choice_valid"]
    z = first_logits.float().gather(-1, tokens)
    return z.masked_fill(~valid, float("-inf"))


def first_answer_state(out, inputs: dict) -> torch.Tensor:
    """Final hidden state at the position predicting each example's first answer token [B, D] (needs a forward
    pass with ``output_hidden_states=True``)."""
    last = out.hidden_states[-1]
    first_answer = inputs[MB + "answer_mask"].float().argmax(1)
    return last[torch.arange(last.shape[0], device=last.device), first_answer - 1]
