"""Two optimizer steps of each of several recipes through ``StepContext``, on one process with the whole batch or on each of two
processes (``torchrun``, gloo on CPU) with its half and the model sharded by torch's ``fully_shard`` (FSDP2).
accelerate does not shard on CPU (docs/scaling.md), so this script shards the model itself; everything else is
the recipe's own code, as ``BalancedTrainer`` runs it (``tests/test_fsdp.py`` compares the two).

    python tests/fsdp_step.py MODEL RUNS_JSON OUT.pt             # one process, 2 x --batch
    torchrun --nproc_per_node 2 tests/fsdp_step.py MODEL RUNS_JSON OUT.pt --shard

RUNS_JSON: a list of [label, recipe, settings]; OUT.pt holds, per label, the trained weights (whole tensors) and
the step losses.
"""

from __future__ import annotations

import argparse
import json

import torch


def shard(model, mesh) -> None:
    """FSDP2 as one would shard a transformer: each decoder/encoder layer its own unit, then the root."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__.endswith(("DecoderLayer", "EncoderLayer")):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("runs")
    ap.add_argument("out")
    ap.add_argument("--shard", action="store_true")
    ap.add_argument("--batch", type=int, default=4, help="examples per process when sharded (one process: 2x)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from accelerate import Accelerator

    from mbias.finetune.config import FinetuneConfig

    # TrainingArguments reset accelerate's state when made: first the LoRA settings, then the accelerator
    config = FinetuneConfig(output_dir="unused", report_to="none", use_cpu=True, lora_dropout=0.0)
    accelerator = Accelerator(cpu=True)  # under torchrun: the gloo process group the mesh is made on
    assert accelerator.num_processes == (2 if args.shard else 1), (accelerator.num_processes, args.shard)
    results = {label: run(args, config, accelerator, recipe, settings) for label, recipe, settings in json.loads(args.runs)}
    if accelerator.process_index == 0:
        torch.save(results, args.out)
    if accelerator.num_processes > 1:
        torch.distributed.barrier()


def run(args, config, accelerator, name: str, settings: dict) -> dict:
    from mbias.config import build_config
    from mbias.data import load_data
    from mbias.finetune.data import EncodedDataset, RecipeCollator
    from mbias.finetune.recipes import RECIPES
    from mbias.finetune.run import _lora_model
    from mbias.finetune.step import StepContext
    from mbias.finetune.trainer import modality_param_groups
    from mbias.models import ScoringConfig, load_model

    world, rank = accelerator.num_processes, accelerator.process_index
    recipe_cls = RECIPES.get(name)
    recipe = recipe_cls(build_config(recipe_cls.config_class, settings, where="recipe_config"))
    recipe.check_launcher("fsdp" if args.shard else "single")
    per_step = 2 * args.batch
    train = load_data("synth:shapes-p90/train", max_samples=per_step * args.steps).examples
    val = load_data("synth:shapes-p90/val", max_samples=8).examples
    recipe.bind_data(train)
    scorer = load_model(args.model, device="cpu", config=ScoringConfig(batch_size=64))
    model = _lora_model(scorer, config, quantized=False)
    modality_of = {n: g for g, names in scorer.parameter_groups(model).items() for n in names}
    if args.shard:
        from torch.distributed.device_mesh import init_device_mesh

        shard(model, init_device_mesh("cpu", (world,)))
    model.train()
    groups = modality_param_groups(model, modality_of, [], 0.0)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ctx = StepContext(model=model, accelerator=accelerator, scorer=scorer, optimizer=optimizer, lr_scheduler=scheduler,
                      seed=0, eval_examples=val, sharded=args.shard)
    recipe.setup(ctx)
    collate = RecipeCollator(scorer, recipe.batch_spec(), extra=recipe.collate_extra)
    data = EncodedDataset(scorer, train)
    clip = recipe.max_grad_norm if recipe.max_grad_norm is not None else 1.0
    losses = []
    for step in range(args.steps):
        ctx.global_step = step
        if hasattr(recipe, "measure") and step % recipe.config.every_steps == 0:  # miles's callback, at step begin
            recipe.measure()
        rows = range(step * per_step, (step + 1) * per_step)
        if args.shard:
            rows = rows[rank * args.batch:(rank + 1) * args.batch]
        loss, _ = recipe.training_step(model, ctx.to_device(collate([data[i] for i in rows])))
        losses.append(float(loss))
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], clip)  # what the Trainer does
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
               for n, p in model.named_parameters() if p.requires_grad}
    return {"weights": weights, "losses": losses,
            "dtensor": all(hasattr(p, "full_tensor") for g in groups for p in g["params"])}

if __name__ == "__main__":
    main()
