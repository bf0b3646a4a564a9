"""``mbias finetune``: flags and an optional YAML file -> FinetuneConfig -> run_finetune.

The YAML file holds the same names as the flags (transformers' TrainingArguments names and mbias's), and may also
name the ``model:`` and ``data:``, so one file reproduces a run: ``mbias finetune --config FILE --out DIR``.
"""

from __future__ import annotations

import dataclasses
import os

from mbias.config import build_config, load_yaml
from mbias.errors import ConfigError
from mbias.finetune.config import FinetuneConfig, check_renamed_keys


def finetune_config_from_args(args) -> tuple[FinetuneConfig, str, str]:
    """(config, model reference, data reference) from the flags and the --config file; flags win."""
    values = load_yaml(args.config) if args.config else {}
    check_renamed_keys(values, args.config)
    model = args.model or values.pop("model", None)
    data = args.data or values.pop("data", None)
    values.pop("model", None)
    values.pop("data", None)
    for name, value in (("--model", model), ("--data", data)):
        if not value:
            raise ConfigError(f"mbias finetune needs {name} (or {name[2:]}: in the --config file)")
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    cli = {k: v for k, v in vars(args).items() if k in fields}
    if args.no_progress:
        cli["disable_tqdm"] = True
    return build_config(FinetuneConfig, values, cli, where=args.config or "flags"), model, data


def run_finetune_command(args) -> int:
    from mbias.finetune.run import run_finetune
    from mbias.models.config import LoadOptions

    config, model, data = finetune_config_from_args(args)
    load = LoadOptions.from_args(args)
    out = run_finetune(model, data, args.out, config=config, load=load, on_error=args.on_error,
                       progress=not args.no_progress, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # another process under accelerate launch: the first one reports
        return 0
    if config.tune == "full":
        print(f"wrote a {config.recipe} fine-tuned model to {out}; audit it with: mbias audit --model {out} "
              "--data DATA --out DIR")
    else:
        kind = "routed LoRA adapter" if config.lora_routing else "LoRA adapter"
        print(f"wrote a {config.recipe} {kind} to {out}; audit it with: mbias audit --model {model} "
              f"--adapter {out} --data DATA --out DIR")
    return 0
