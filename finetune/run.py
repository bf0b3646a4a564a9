"""``run_finetune``: data + model + recipe -> LoRA (PEFT) adapter or full model, training_log.jsonl, recipe.json.

With ``tune: lora`` (default) the output folder is a standard PEFT adapter (``PeftModel.from_pretrained(base,
DIR)`` loads it), audited with ``mbias audit --model M --adapter DIR``; with ``tune: full`` every parameter trains
and the folder is a model (``from_pretrained`` loads it), audited with ``mbias audit --model DIR``. Intermediate
checkpoints go to ``DIR/checkpoints``; ``resume=True`` continues from the newest one (recipe state included),
along the same trajectory. The settings are transformers' ``TrainingArguments`` (``FinetuneConfig`` extends them)
and reach the Trainer as they are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

from mbias.config import build_config
from mbias.errors import ConfigError
from mbias.finetune.config import FinetuneConfig
from mbias.models.routing import add_routes, is_routed, mark_routed, route_groups
from mbias.outdir import check_out_dir, exclusive_out_dir
from mbias.provenance import provenance

logger = logging.getLogger(__name__)


def _lora_model(scorer, config: FinetuneConfig, quantized: bool):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from mbias.models.loading import peft_wrapping

    names = {side: [n for n in scorer.module_names(side) if not n.endswith("lm_head")] for side in config.lora_targets}
    targets = [n for side in config.lora_targets for n in names[side]]
    if not targets:
        raise ConfigError(f"no linear layers found for lora_targets={config.lora_targets} in {scorer.model_id}")
    model = scorer.model
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(config.seed)
    # exact module names: a bare suffix such as "q_proj" would also catch the vision tower's attention
    kwargs = dict(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none")
    with peft_wrapping():
        peft_model = get_peft_model(model, LoraConfig(target_modules=targets, **kwargs))
    if config.lora_routing:
        add_routes(peft_model, names["language"], kwargs, scorer.image_token_id)
    return peft_model


def encoder_groups(modality_of: dict[str, str], model) -> dict[str, str]:
    """``modality_groups: encoders``: the language group is the token embeddings alone; the rest of the LLM and
    its output head (the fusion module of a decoder MLLM) become ``shared`` (base rate, no recipe scaling)."""
    embeddings = model.get_input_embeddings().weight
    names = {n for n, p in model.named_parameters() if p is embeddings}
    return {n: "shared" if g == "language" and n not in names else g for n, g in modality_of.items()}


def _trim_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines of steps after the checkpoint: they will be logged again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def run_finetune(model, data, out: str | Path, *, config: FinetuneConfig | None = None, load=None,
                 on_error: str = "stop", progress: bool = True, resume: bool = False, processor=None) -> Path:
    """Fine-tune ``model`` on ``data`` with ``config.recipe``; returns the output folder (a PEFT adapter, or the whole model with ``tune: full``).

    ``model`` is a reference, or a model object with its ``processor`` (trained in place: LoRA goes into its
    modules); ``data`` a reference, a ``datasets.Dataset`` or a list of dicts. ``mbias.finetune`` is the same from
    Python."""
    return train(model, data, out, config=config, load=load, on_error=on_error, progress=progress, resume=resume,
                 processor=processor)[1]


@exclusive_out_dir("fine-tune")  # one fine-tune at a time per output folder, as for audits (mbias/outdir.py)
def train(model, data, out: str | Path, *, config: FinetuneConfig | None = None, load=None, on_error: str = "stop",
          progress: bool = True, resume: bool = False, processor=None, save: bool = True):
    """``run_finetune``'s work; returns (the trainer, the output folder). ``save``: write the adapter (or model),
    recipe.json and, with a monitor, monitor.jsonl and the reliance curve in README.md."""
    config = config or FinetuneConfig()
    trainer, resume_from = build_trainer(model, data, out, config=config, load=load, on_error=on_error,
                                         progress=progress, resume=resume, processor=processor)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0
    out = Path(out)
    if save and trainer.is_fsdp_enabled:  # every process takes part in gathering the shards
        trainer.save_model(str(out))
    if save and trainer.is_world_process_zero():
        if not trainer.is_fsdp_enabled:
            trainer.model.save_pretrained(out)
        if is_routed(trainer.model):
            mark_routed(out)
        if config.tune == "full":  # a model folder loads with its processor
            trainer.mbias_scorer.processor.save_pretrained(out)
        steps = trainer.args.max_steps
        record = {"recipe": config.recipe, "recipe_config": vars(trainer.recipe.config),
                  "finetune": config.mbias_dict(),
                  "model": model if isinstance(model, str) else trainer.mbias_scorer.model_id,
                  "data": data if isinstance(data, str) else f"(in memory: {len(trainer.train_dataset)} records)",
                  "eval_data": trainer.mbias_eval_ref, "steps": steps,
                  "train_seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(1, steps), 4),
                  "provenance": provenance(device=str(trainer.mbias_scorer.device))}
        (out / "recipe.json").write_text(json.dumps(record, indent=2, default=str))
        if trainer.mbias_monitor is not None:
            write_monitor(trainer.mbias_monitor.history, out, config)
    return trainer, out


def write_monitor(history: list[dict], out: Path, config: FinetuneConfig) -> None:
    """monitor.jsonl (one line per measurement), the reliance curve drawn (reliance.png) and, in the folder's
    README.md, the curve and its numbers as a table."""
    from mbias.finetune.monitor import plot_reliance

    (out / "monitor.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    picture = plot_reliance(history, out / "reliance.png")
    columns = [("follows_text", "follows the wording"), ("language_share", "language share"),
               ("accuracy", "accuracy")]
    n = history[0].get("mbias/n_samples", config.monitor_samples) if history else config.monitor_samples
    lines = ["", "## Reliance during training (mbias)", "",
             f"Audited every {config.monitor_every} steps on {n:.0f} examples of `{config.monitor_data}` (the first "
             f"{config.monitor_samples} asked for) with the model being trained (`mbias.BiasMonitorCallback`: "
             "conflict rates and the modality Shapley share; `monitor.jsonl` has every number). Each cell is the "
             "mean ± the half-width of its 95% bootstrap interval (clustered by image): the sampling error of that "
             "many examples. The examples are the same at every step, so two steps share much of it.", ""]
    if picture is not None:
        lines += [f"![reliance during training]({picture.name})", ""]
    lines += ["| step | " + " | ".join(label for _, label in columns) + " |", "|---:|" + "---:|" * len(columns)]
    for h in history:
        cells = [(f"{h['mbias/' + key]:.3f}" + (f" ± {h['mbias/' + key + '_ci95']:.3f}"
                                                 if f"mbias/{key}_ci95" in h else ""))
                 if f"mbias/{key}" in h else "n/a" for key, _ in columns]
        lines.append(f"| {h['step']} | " + " | ".join(cells) + " |")
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else ""
    text = text.split("\n" + lines[1] + "\n")[0]  # a section from an earlier run into this folder goes
    readme.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def build_trainer(model, data, out: str | Path, *, config: FinetuneConfig, load=None,
                  on_error: str = "stop", progress: bool = True, resume: bool = False, processor=None):
    """Everything up to ``trainer.train()``: returns (trainer, the checkpoint to resume from or None). ``model``: a
    reference, or a model object with its ``processor`` (a ``PeftModel`` trains its adapters as they are)."""
    from peft import PeftModel

    from mbias.data import load_data, load_rows
    from mbias.finetune.data import EncodedDataset, RecipeCollator, check_label_space
    from mbias.finetune.recipes import RECIPES
    from mbias.finetune.trainer import BalancedTrainer, interrupted_checkpoint, latest_checkpoint
    from mbias.models import LoadOptions, ScoringConfig, load_model
    from mbias.models.loading import attach_peft, wrap_model

    load = load or LoadOptions()
    out = check_out_dir(out)
    if (load.load_in_4bit or load.load_in_8bit) and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ConfigError("a 4/8-bit base under FSDP is not supported: sharding bitsandbytes' packed weights has "
                          "never run in mbias's tests; use QLoRA with DDP (accelerate launch --multi_gpu), or FSDP "
                          "in bf16 without --load-in-4bit (docs/scaling.md)")
    if load.device_map is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--device-map splits one model over GPUs in one process; accelerate cannot also run it "
                          "data-parallel: launch one process, or drop --device-map and let each process hold a copy")
    recipe_cls = RECIPES.get(config.recipe)
    recipe = recipe_cls(build_config(recipe_cls.config_class, config.recipe_config, where="recipe_config"))
    read = load_data if isinstance(data, str) else load_rows
    examples = read(data, on_error=on_error, max_samples=config.max_train_samples, columns=config.columns).examples
    recipe.bind_data(examples)
    spec = recipe.batch_spec()
    if spec.choices:
        check_label_space(examples, config.recipe)
    eval_examples = None
    eval_ref = config.eval_data or (data.rsplit("/", 1)[0] + "/val"
                                    if isinstance(data, str) and data.startswith("synth:") else None)
    if eval_ref:
        eval_examples = load_data(eval_ref, on_error=on_error, max_samples=config.eval_samples,
                                  columns=config.columns).examples
    if isinstance(model, str):
        scorer = load_model(model, load, config=ScoringConfig(batch_size=64), adapter=None)
    else:
        scorer = wrap_model(model, processor, config=ScoringConfig(batch_size=64))
    placed = set(getattr(scorer.model, "hf_device_map", {}).values())
    if "disk" in placed or ("cpu" in placed and len(placed) > 1):
        raise ConfigError("fine-tuning cannot train layers offloaded to CPU or disk (the device map put some "
                          "there); give --max-memory room for the whole model on the GPUs, or add --load-in-4bit")
    if config.tune == "full":
        if load.adapter or load.load_in_4bit or load.load_in_8bit:
            raise ConfigError("tune: full trains every parameter of a full-precision model; drop --adapter and "
                              "4/8-bit loading, or use tune: lora")
        if recipe.uses_frozen_base:
            raise ConfigError(f"recipe {config.recipe!r} compares with the model before fine-tuning (adapters "
                              "disabled), which needs tune: lora")
        peft_model = scorer.model
        peft_model.requires_grad_(True)
    elif isinstance(model, PeftModel):  # an adapter attached in memory trains as it is
        peft_model = model
    elif load.adapter:  # continue training a saved adapter
        peft_model = attach_peft(scorer.model, load.adapter, is_trainable=True)
    else:
        peft_model = _lora_model(scorer, config, quantized=load.load_in_4bit or load.load_in_8bit)
    modality_of = {n: g for g, names in scorer.parameter_groups(peft_model).items() for n in names}
    if is_routed(peft_model):
        modality_of = route_groups(modality_of)
    if config.modality_groups == "encoders":
        modality_of = encoder_groups(modality_of, peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    logger.info("training %d tensors (%s)", len(trainable), ", ".join(
        f"{m}: {sum(1 for n in trainable if modality_of.get(n) == m)}" for m in ("vision", "language", "shared")))

    dataset = EncodedDataset(scorer, examples)
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    steps = config.max_steps if config.max_steps > 0 else math.ceil(len(dataset) / per_step * config.num_train_epochs)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    # Issue 31: a run that did not end resumes when the same command runs again (finetune/trainer.py)
    resume_from = latest_checkpoint(ckpt_dir) if resume else interrupted_checkpoint(ckpt_dir, config, model)
    if resume and resume_from is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}; train with save_strategy: steps (and save_steps) "
                          "to make some")
    log_path = out / "training_log.jsonl"
    if resume_from:
        _trim_log(log_path, int(resume_from.name.split("-")[-1]))
    elif log_path.exists():
        log_path.unlink()
    # the user's TrainingArguments, with what mbias decides: where checkpoints go, the step count, the device
    # (a fresh instance: TrainingArguments sets up devices and processes from use_cpu when it is made)
    max_grad_norm = config.max_grad_norm
    if max_grad_norm is None:  # the user chose none: the recipe's published clip, said aloud, or transformers' 1.0
        max_grad_norm = recipe.max_grad_norm if recipe.max_grad_norm is not None else 1.0
        if recipe.max_grad_norm is not None:
            logger.warning("recipe %s clips gradients at norm %s (its published setting); --max-grad-norm sets "
                           "another", config.recipe, max_grad_norm)
    gradient_checkpointing = config.gradient_checkpointing
    if gradient_checkpointing and is_routed(peft_model):
        # the routed layers' recomputation needs the masks of its own pass (a context_fn, which TrainingArguments
        # cannot carry: it is pickled with every checkpoint), so mbias enables checkpointing itself
        from mbias.models.routing import checkpoint_context

        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
            "use_reentrant": False, "context_fn": checkpoint_context(peft_model)})
        gradient_checkpointing = False
    args = dataclasses.replace(
        config, output_dir=str(ckpt_dir), max_steps=steps, max_grad_norm=max_grad_norm,
        gradient_checkpointing=gradient_checkpointing,
        data_seed=config.seed if config.data_seed is None else config.data_seed,
        use_cpu=config.use_cpu or scorer.device.type == "cpu",
        disable_tqdm=config.disable_tqdm or not progress)  # TrainingArguments has already made None a bool
    trainer = BalancedTrainer(
        model=peft_model, args=args, train_dataset=dataset,
        data_collator=RecipeCollator(scorer, spec, extra=recipe.collate_extra),
        recipe=recipe, modality_of=modality_of, log_path=log_path, scorer=scorer, eval_examples=eval_examples,
        resume_checkpoint=str(resume_from) if resume_from else None,
    )
    trainer.mbias_eval_ref = eval_ref
    trainer.mbias_monitor = None
    if config.monitor_data:
        from mbias.finetune.monitor import BiasMonitorCallback

        trainer.mbias_monitor = BiasMonitorCallback(trainer, config.monitor_data, scorer.processor,
                                                    every=config.monitor_every, max_samples=config.monitor_samples,
                                                    config={"columns": config.columns})
        trainer.add_callback(trainer.mbias_monitor)
    if not progress:  # without a progress bar the Trainer prints every log dict; training_log.jsonl has them
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer, resume_from
