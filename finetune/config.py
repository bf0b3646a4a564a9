"""Fine-tuning settings shared by every recipe (the recipe's own settings live in its config class)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mbias.config import check_number
from mbias.errors import ConfigError
from mbias.records import parse_columns

LORA_SIDES = ("language", "projector", "vision")


@dataclass
class FinetuneConfig:
    recipe: str = field(default="lora", metadata={"help": "lora | poe | lmh | mdpo | msam | miles | mnl | cggm | ogm_ge "
                                                           "(docs/recipes.md: which when)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training data (ignored with max_steps)"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides epochs"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training examples"})
    batch_size: int = field(default=32, metadata={"help": "examples per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (linear warm-up, then linear decay)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps spent warming up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping, 0: off (CGGM uses its own)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: list[str] = field(default_factory=lambda: ["language", "projector"], metadata={
        "help": "where LoRA goes: language (the LLM's linear layers), projector, vision (the vision tower; off "
                "by default). The projector is the vision side the balancing recipes can steer"})
    seed: int = field(default=0, metadata={"help": "seed for LoRA init, data order and recipe randomness"})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "dataset columns under other names, e.g. answer=multiple_choice_answer,question=text (applies "
                "to eval_data too; see docs/datasets.md)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out data (MILES reads utilisation rates on it); default: the val split of synth data"})
    eval_samples: int = field(default=200, metadata={"help": "held-out examples per utilisation measurement"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    logging_steps: int = field(default=10, metadata={"help": "console log interval (training_log.jsonl logs "
                                                               "every step)"})
    recipe_config: dict[str, Any] = field(default_factory=dict, metadata={"help": "the recipe's own settings"})

    def __post_init__(self):
        bad = set(self.lora_targets) - set(LORA_SIDES)
        if bad or not self.lora_targets:
            raise ConfigError(f"lora_targets must be a non-empty subset of {', '.join(LORA_SIDES)}; got "
                              f"{self.lora_targets}")
        self.columns = parse_columns(self.columns)
        check_number(self, "epochs", gt=0)
        for name in ("max_steps", "max_train_samples"):
            check_number(self, name, integer=True, ge=1, optional=True)
        for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "eval_samples", "logging_steps"):
            check_number(self, name, integer=True, ge=1)
        check_number(self, "lr", gt=0)
        check_number(self, "warmup_ratio", ge=0, le=1)
        check_number(self, "weight_decay", ge=0)
        check_number(self, "max_grad_norm", ge=0)
        check_number(self, "lora_dropout", ge=0, lt=1)
        check_number(self, "seed", integer=True, ge=0)
        check_number(self, "save_steps", integer=True, ge=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
