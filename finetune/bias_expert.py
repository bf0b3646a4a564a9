"""The bias expert: what the question alone predicts, for the recipes that train *around* it (``poe``, ``lmh``).

A language prior is an answer the model can give without looking. The debiasing recipes of the VQA-CP literature
(RUBi, learned-mixin, LPF, GGE) pair the model with a *bias-only* predictor and train the model on what that
predictor cannot explain. The predictor must not learn from the model's gradient (a text-only branch that shares
weights and trains, as MNL's, teaches the model the prior instead: -21 points on our benchmark), so every expert
here is fixed:

- ``no_image`` (default): the model as it was before fine-tuning (PEFT adapters disabled) reading the prompt
  with no image tokens at all. Needs no labels for the cue: it is the base model's own prior, which a
  counter-prior split punishes. One extra no-grad forward pass per step.
- ``masked_image``: the same, with the image replaced by the whole-image baseline (its mean colour). For models
  trained only with images the blank picture is itself evidence (on the zoo it answers "exists: no", "count:
  one"), so check how well it predicts the prior before trusting it.
- ``prior_table``: answer frequencies per question wording in the training data, as learned-mixin's fixed table
  (a question's key is its normalised text, or its first ``prior_words`` words, VQA's "question type").
  Needs multiple-choice data (the table is over each example's choices).

Answer spaces. With choices (``answer_space: choices``; ``auto`` picks it when every training example has
choices) the experts and the model are compared as distributions over the example's choices, read from the
logits of each choice's first token (so choices need distinct first tokens). Without choices (``tokens``),
over the vocabulary at every answer token, teacher-forced on the gold answer: a token-level product of experts.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from mbias.errors import ConfigError, DataError
from mbias.example import normalize_answer
from mbias.finetune.data import MB, answer_logits, choice_logits, first_of_row
from mbias.variants import FULL, IMAGE_MASKED, IMAGE_REMOVED

EXPERTS = ("no_image", "masked_image", "prior_table")
SPACES = ("auto", "choices", "tokens")


@dataclass
class BiasExpertConfig:
    """The settings of the bias expert, shared by every recipe that uses one."""

    bias_expert: str = field(default="no_image", metadata={
        "help": "what predicts the bias: no_image (the model before fine-tuning, prompt without the image), "
                "masked_image (the same with a blank image) or prior_table (answer counts per question wording "
                "in the training data)"})
    prior_words: int = field(default=0, metadata={
        "help": "prior_table: the key is the question's first N words (VQA's question type); 0 = the whole "
                "question"})
    answer_space: str = field(default="auto", metadata={
        "help": "choices (distributions over each example's choices), tokens (over the vocabulary at every "
                "answer token, for open-ended answers) or auto (choices when every example has them)"})

    def __post_init__(self):
        if self.bias_expert not in EXPERTS:
            raise ConfigError(f"bias_expert must be one of {', '.join(EXPERTS)}, not {self.bias_expert!r}")
        if self.answer_space not in SPACES:
            raise ConfigError(f"answer_space must be one of {', '.join(SPACES)}, not {self.answer_space!r}")
        if self.prior_words < 0:
            raise ConfigError(f"prior_words must be >= 0; got {self.prior_words}")


def question_key(question: str, words: int) -> str:
    tokens = normalize_answer(question).split()
    return " ".join(tokens[:words] if words else tokens)


class PriorTable:
    """Answer counts per question key in the training data; log-probabilities with add-one smoothing."""

    def __init__(self, examples, words: int):
        self.words = words
        self.counts: dict[str, Counter] = defaultdict(Counter)
        for ex in examples:
            self.counts[question_key(ex.question, words)][normalize_answer(ex.answer)] += 1

    def log_probs(self, question: str, choices: list[str]) -> list[float]:
        counts = self.counts.get(question_key(question, self.words), Counter())
        c = [counts[normalize_answer(x)] + 1.0 for x in choices]
        total = sum(c)
        return [math.log(v / total) for v in c]


def data_have_choices(examples) -> bool:
    return all(ex.choices and normalize_answer(ex.answer) in {normalize_answer(c) for c in ex.choices}
               for ex in examples)


class BiasExpert:
    """Holds the expert's settings and, for ``prior_table``, its counts. ``bind`` it to the training data first."""

    def __init__(self, config: BiasExpertConfig, recipe_name: str):
        self.config, self.recipe_name = config, recipe_name
        self.space = None if config.answer_space == "auto" else config.answer_space
        self.table: PriorTable | None = None

    @property
    def uses_choices(self) -> bool:
        return self.space == "choices"

    def bind(self, examples) -> None:
        has_choices = data_have_choices(examples)
        if self.space is None:
            self.space = "choices" if has_choices else "tokens"
        if self.space == "choices" and not has_choices:
            raise DataError(f"{self.recipe_name} with answer_space: choices needs a 'choices' list holding the "
                            "answer in every record; use answer_space: tokens for open-ended answers")
        if self.config.bias_expert == "prior_table":
            if self.space != "choices":
                raise ConfigError("bias_expert: prior_table needs multiple-choice data (answer_space: choices); "
                                  "for open-ended answers use bias_expert: no_image")
            self.table = PriorTable(examples, self.config.prior_words)

    def collate_extra(self, encoded: list) -> dict:
        if self.table is None:
            return {}
        width = max(len(e.example.choices) for e in encoded)
        out = torch.full((len(encoded), width), float("-inf"))
        for b, e in enumerate(encoded):
            out[b, :len(e.example.choices)] = torch.tensor(self.table.log_probs(e.example.question, e.example.choices))
        return {MB + "prior_logp": out}

    def log_probs(self, recipe, model, inputs: dict) -> torch.Tensor:
        """The expert's log-probabilities in the answer space: [B, C] over choices, or [T, V] at the answer
        tokens (aligned with ``main_logits``). Never carries gradient."""
        if self.table is not None:
            return inputs[MB + "prior_logp"].to(inputs["input_ids"].device)
        variant = IMAGE_REMOVED if self.config.bias_expert == "no_image" else IMAGE_MASKED
        with recipe.frozen_base(model) as base:
            logits, targets, rows, _ = answer_logits(base, inputs, variant)
        if self.space == "choices":
            return torch.log_softmax(choice_logits(logits[first_of_row(rows)], inputs), dim=-1)
        if targets.shape[0] != inputs[MB + "answer_mask"].sum():
            raise DataError("the answer tokenizes differently with and without the image prompt; use "
                            "bias_expert: masked_image for this model")
        return torch.log_softmax(logits.float(), dim=-1)


def main_logits(model, inputs: dict, space: str, **forward_kwargs):
    """The model's logits in the answer space and what they should predict: ([B, C], gold [B], rows = arange(B))
    over choices, or ([T, V], answer tokens [T], batch row of each [T]); and the model output."""
    logits, targets, rows, out = answer_logits(model, inputs, FULL, **forward_kwargs)
    if space == "choices":
        z = choice_logits(logits[first_of_row(rows)], inputs)
        gold = inputs[MB + "gold"]
        return z, gold, torch.arange(z.shape[0], device=z.device), out
    return logits.float(), targets, rows, out


def gold_logp(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target) per row of a log-distribution [N, K]."""
    return logp.gather(1, target[:, None]).squeeze(1)


def per_row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean of per-unit values (answer tokens) within each batch row [B]."""
    sums = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def expert_signals(bias_logp: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, n_rows: int,
                   main_z: torch.Tensor | None = None) -> dict:
    """How well the expert (and the model) predict the gold answer on this batch, for the training log: a bias
    expert worth its name is right about as often as the prior holds in the training data."""
    out = {"bias/accuracy": float((bias_logp.argmax(-1) == target).float().mean()),
           "bias/p_gold": float(per_row_mean(gold_logp(bias_logp, target).exp(), rows, n_rows).mean())}
    if main_z is not None:
        out["main/accuracy"] = float((main_z.argmax(-1) == target).float().mean())
    return out

