"""Fine-tuning settings: transformers' own ``TrainingArguments`` (trl's ``SFTConfig`` pattern), plus what mbias adds.

Every Trainer setting exists as it does in transformers (bf16, gradient checkpointing, ``report_to``, save and
eval strategies, the optimizer, schedules, ...), under its transformers name, as a ``mbias finetune`` flag and a
YAML key. mbias adds the recipe and its settings, what is trained (LoRA targets, or every parameter), and data
options; a few Trainer defaults differ (below). The recipe's own settings live in its config class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from mbias.config import check_number
from mbias.errors import ConfigError
from mbias.records import parse_columns

LORA_SIDES = ("language", "projector", "vision")
TUNES = ("lora", "full")
MODALITY_GROUPS = ("modules", "encoders")
# names mbias used before its settings became TrainingArguments: refused with the name to use
RENAMED = {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
           "grad_accum": "gradient_accumulation_steps", "lr": "learning_rate", "warmup_ratio": "warmup_steps"}


@dataclass
class FinetuneConfig(TrainingArguments):
    recipe: str = field(default="plain", metadata={
        "help": "plain | poe | lmh | mdpo | sam | msam | miles | mnl | cggm | ogm_ge (docs/recipes.md: which when)"})
    recipe_config: dict | str = field(default_factory=dict, metadata={
        "help": "the recipe's own settings (a YAML mapping; in a --config file, a mapping under recipe_config:)"})
    tune: str = field(default="lora", metadata={
        "help": "lora: train LoRA adapters on lora_targets (the output is a PEFT adapter); full: train every "
                "parameter (the output is a model folder; for a base that has not learned yet, e.g. zoo:scratch)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: list[str] = field(default_factory=lambda: ["language", "projector"], metadata={
        "help": "where LoRA goes: language (the LLM's linear layers), projector, vision (the vision tower; off "
                "by default). The projector is the vision side the balancing recipes can steer"})
    lora_routing: bool = field(default=False, metadata={
        "help": "modality-routed LoRA inside the LLM (MokA/IMoD-style): besides the shared LoRA, one applied only at "
                "image-token positions (the 'vision' group) and one only at text positions ('language'), so the "
                "balancing recipes steer the fusion model's own vision and language weights; the shared part "
                "trains at the base rate (docs/recipes.md)"})
    modality_groups: str = field(default="modules", metadata={
        "help": "what the balancing recipes steer as the language side: modules (the whole LLM, which in a decoder "
                "MLLM is also where image and question meet) or encoders (tune: full only: the token embeddings, "
                "the text's own encoder; the LLM's layers and output head form a shared fusion group at the base "
                "rate, as the seed papers modulate encoders and not the fusion head)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training examples"})
    columns: dict | str = field(default_factory=dict, metadata={
        "help": "dataset columns under other names, e.g. answer=multiple_choice_answer,question=text (applies "
                "to eval_data too; see docs/datasets.md)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out data (MILES reads utilisation rates on it); default: the val split of synth data"})
    eval_samples: int = field(default=200, metadata={"help": "held-out examples per utilisation measurement"})
    monitor_data: str | None = field(default=None, metadata={
        "help": "held-out data to audit the model being trained on every monitor_every steps (conflict rates and "
                "the modality Shapley share, logged as mbias/* through the Trainer; mbias.BiasMonitorCallback)"})
    monitor_every: int = field(default=50, metadata={"help": "steps between two monitor audits"})
    monitor_samples: int = field(default=64, metadata={"help": "examples of monitor_data per monitor audit"})

    # Trainer settings whose defaults differ from transformers' (a short LoRA run on a small dataset)
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the training data (unless "
                                                                   "max_steps > 0)"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "examples per device per step"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (linear warm-up, then the "
                                                                 "scheduler's decay)"})
    warmup_steps: float = field(default=0.05, metadata={"help": "warm-up steps, or a share of all steps if < 1"})
    logging_steps: float = field(default=10, metadata={"help": "console log interval (training_log.jsonl logs "
                                                               "every step)"})
    save_strategy: str = field(default="no", metadata={"help": "no (only the final adapter) | steps | epoch; "
                                                               "checkpoints go to OUT/checkpoints"})
    seed: int = field(default=0, metadata={"help": "seed for the LoRA init, data order and recipe randomness"})
    max_grad_norm: float | None = field(default=None, metadata={
        "help": "gradient clipping norm (0: none); unset: 1.0, or the recipe's published setting (cggm: 0.8), "
                "said at start"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept False: recipes read extra batch "
                                                                         "fields"})

    def __post_init__(self):
        if self.recipe == "lora":
            raise ConfigError("recipe 'lora' is now 'plain': fine-tuning without balancing, LoRA or not (--tune); "
                              "write recipe: plain")
        if self.tune not in TUNES:
            raise ConfigError(f"tune must be lora or full, not {self.tune!r}")
        if isinstance(self.lora_targets, str):  # YAML "lora_targets: language,projector"
            self.lora_targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not isinstance(self.lora_targets, (list, tuple)) or not all(isinstance(t, str) for t in self.lora_targets):
            raise ConfigError(f"lora_targets must be a list drawn from {', '.join(LORA_SIDES)}; got "
                              f"{self.lora_targets!r:.80}")
        bad = set(self.lora_targets) - set(LORA_SIDES)
        if bad or not self.lora_targets:
            raise ConfigError(f"lora_targets must be a non-empty subset of {', '.join(LORA_SIDES)}; got "
                              f"{self.lora_targets}")
        if self.modality_groups not in MODALITY_GROUPS:
            raise ConfigError(f"modality_groups must be modules or encoders, not {self.modality_groups!r}")
        if self.modality_groups == "encoders" and self.tune != "full":
            raise ConfigError("modality_groups: encoders makes the token embeddings the language group, and LoRA "
                              "trains no embeddings: use it with tune: full, or lora_routing for a language group "
                              "inside the LLM's LoRA")
        if self.lora_routing and self.tune != "lora":
            raise ConfigError("lora_routing adds routed LoRA weights, so it needs tune: lora; drop one of them")
        if self.lora_routing and "language" not in self.lora_targets:
            raise ConfigError("lora_routing routes the LLM's LoRA by token, so lora_targets must include language")
        if isinstance(self.recipe_config, str):
            import yaml

            try:
                self.recipe_config = yaml.safe_load(self.recipe_config) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"recipe_config {self.recipe_config!r:.80} is not valid YAML "
                                  f"({getattr(exc, 'problem', None) or type(exc).__name__}); write it as "
                                  "'{key: value, ...}'") from None
        if not isinstance(self.recipe_config, dict):
            raise ConfigError(f"recipe_config must be a mapping of the recipe's settings; got {self.recipe_config!r}")
        self.columns = parse_columns(self.columns)
        if str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "no":
            raise ConfigError(f"eval_strategy {self.eval_strategy!r}: mbias finetune passes the Trainer no "
                              "evaluation set (held-out data goes to eval_data, read by the recipes); drop "
                              "eval_strategy")
        check_number(self, "num_train_epochs", gt=0)
        check_number(self, "max_train_samples", integer=True, ge=1, optional=True)
        check_number(self, "max_steps", integer=True, ge=-1)
        if self.max_steps == 0:
            raise ConfigError("FinetuneConfig.max_steps must be >= 1, or -1 (the epochs decide); got 0")
        check_number(self, "save_steps", gt=0)
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha",
                     "eval_samples", "monitor_every", "monitor_samples"):
            check_number(self, name, integer=True, ge=1)
        check_number(self, "save_total_limit", integer=True, ge=1, optional=True)
        check_number(self, "dataloader_num_workers", integer=True, ge=0)
        check_number(self, "per_device_eval_batch_size", integer=True, ge=1)
        check_number(self, "learning_rate", gt=0)
        check_number(self, "warmup_steps", ge=0)
        check_number(self, "logging_steps", gt=0)
        check_number(self, "weight_decay", ge=0)
        check_number(self, "max_grad_norm", ge=0, optional=True)
        check_number(self, "lora_dropout", ge=0, lt=1)
        check_number(self, "seed", integer=True, ge=0)
        _check_sharding_has_gpus(self.use_cpu)
        super().__post_init__()  # sets up accelerate's processes: after every check

    def mbias_dict(self) -> dict:
        """The settings a user chose that shape the run (for recipe.json): mbias's own fields and every Trainer
        field that differs from transformers' default."""
        base = {f.name: f.default for f in dataclasses.fields(TrainingArguments)
                if f.default is not dataclasses.MISSING}
        out = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if f.name not in base or base[f.name] != value:
                out[f.name] = value if isinstance(value, (int, float, str, bool, list, dict, type(None))) else str(value)
        return out


def _check_sharding_has_gpus(use_cpu: bool) -> None:
    """``accelerate launch`` with an FSDP config on a machine without GPUs (or with ``use_cpu``): accelerate
    shards nothing there (with ``cpu: true`` its FSDP plugin is ignored; without, the processes never form a
    group), so say so before it starts."""
    import os

    import torch

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") and (use_cpu or not torch.cuda.is_available()):
        raise ConfigError("accelerate does not shard models on CPU (launched with an FSDP config, but no GPU is in "
                          "use): run it on GPUs, or launch without the FSDP config (--multi_gpu) for DDP, whose "
                          "processes each hold the whole model (docs/scaling.md)")


def check_renamed_keys(values: dict[str, Any], where: str) -> None:
    """ConfigError naming the new key when ``values`` holds a setting under its pre-TrainingArguments name."""
    for old, new in RENAMED.items():
        if old in values:
            raise ConfigError(f"{where}: {old!r} is now {new!r} (transformers' name); rename it")
