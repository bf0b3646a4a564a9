"""``mbias finetune``: flags and an optional YAML file -> FinetuneConfig -> run_finetune."""

from __future__ import annotations

import os

from mbias.config import build_config, load_yaml
from mbias.finetune.config import FinetuneConfig


def finetune_config_from_args(args) -> FinetuneConfig:
    values = load_yaml(args.config) if args.config else {}
    flags = {"recipe": args.recipe, "epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr,
             "lora_r": args.lora_r, "batch_size": args.batch_size, "eval_data": args.eval_data, "seed": args.seed,
             "columns": args.columns}
    cli = {k: v for k, v in flags.items() if v is not None}
    return build_config(FinetuneConfig, values, cli, where=args.config or "flags")


def run_finetune_command(args) -> int:
    from mbias.finetune.run import run_finetune
    from mbias.models.config import LoadOptions

    config = finetune_config_from_args(args)
    load = LoadOptions.from_args(args)
    out = run_finetune(args.model, args.data, args.out, config=config, load=load, on_error=args.on_error,
                       progress=not args.no_progress, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # another process under accelerate launch: the first one reports
        return 0
    print(f"wrote a {config.recipe} LoRA adapter to {out}; audit it with: mbias audit --model {args.model} "
          f"--adapter {out} --data DATA --out DIR")
    return 0
