"""``BiasMonitorCallback``: audit the model being trained every N steps and log its reliance through the Trainer.

Every ``every`` optimizer steps (and once before the first) the callback audits a held-out slice with **the model
being trained**: the same object, no second copy (its adapters as they are), in eval mode under ``no_grad``,
with every module's train/eval mode and the Python, NumPy and torch (CPU and CUDA) random states restored
afterwards, so training goes on exactly as it would have without the callback. The probes are the cheap ones by
default, ``conflict`` (which side wins when the question alone and the image point to different answers) and
``modality_shapley`` (the exact two-player Shapley share): five scored variants a sample between them (the full
input, the question masked, the image removed, the blank image, both masked), which ``BatchedAudit`` scores in
padded batches across samples rather than one sample at a time as an audit does (the same records up to float
rounding, several times faster on the demo's model: benchmarks/results/monitor/overhead.md).

The numbers go through the Trainer's own logging (``transformers.Trainer.log``), so they reach every
``report_to`` integration (wandb, tensorboard, mlflow, trackio, ...) and ``trainer.state.log_history``:
``mbias/accuracy``, ``mbias/follows_text`` (the share of wording conflicts on which the model gives the wording's
wrong answer), ``mbias/follows_image``, ``mbias/language_share``, ``mbias/n_text_conflicts`` and
``mbias/n_samples``, and for each rate its sampling error, ``..._ci95`` (the half-width of the audit's 95%
bootstrap interval, clustered by image); a rate with no sample to count (no conflicts) is left out rather than
logged as 0. Each is the audit's own number on those samples (``mbias.audit`` on the same model and data gives
the same means).

Under DDP (``accelerate launch``/``torchrun``) each process audits its shard of the slice (sample ``i`` on process
``i mod world size``) and the per-sample records are gathered, so every process logs the merged numbers (the
integrations write only from the main process). FSDP and DeepSpeed shard the weights, so the unwrapped model
cannot run on one process: refused.

The callback reads the trainer it watches (as TRL's ``LogCompletionsCallback`` does), so it is made after it::

    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate)
    trainer.add_callback(BiasMonitorCallback(trainer, held_out, processor, every=50))
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from mbias.diagnose.batched import BatchedAudit
from mbias.diagnose.config import AuditConfig, build_probes
from mbias.diagnose.runner import eval_mode
from mbias.errors import ConfigError
from mbias.stats import bootstrap_mean

logger = logging.getLogger(__name__)

CHEAP_PROBES = ("conflict", "modality_shapley")
PREFIX = "mbias/"


class BiasMonitorCallback(TrainerCallback):
    """Audit ``trainer``'s model on ``data`` every ``every`` steps; log ``mbias/*`` through ``trainer.log``.

    - ``data``: a reference (``synth:NAME/SPLIT``, a .jsonl file, ...), a ``datasets.Dataset`` or a list of dicts,
      as ``mbias.audit`` takes; the first ``max_samples`` examples are audited each time (the same ones, so the
      curve moves only with the model);
    - ``processor``: the model's processor (default: the trainer's ``processing_class``);
    - ``probes``: default ``conflict`` and ``modality_shapley``; ``config``: further ``AuditConfig`` fields
      (``probe_config``, ``scoring``, ``columns``, ``seed``, ...).
    """

    def __init__(self, trainer, data: Any, processor: Any = None, *, every: int = 50, max_samples: int = 64,
                 probes: tuple[str, ...] | list[str] = CHEAP_PROBES, config: dict | None = None):
        from mbias.config import build_config

        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a whole number of steps >= 1; got {every!r}")
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            raise ConfigError("BiasMonitorCallback audits the unwrapped model on each process; FSDP and DeepSpeed "
                              "shard its weights, so it runs under DDP or a single process only")
        self.trainer, self.every = trainer, every
        self.processor = processor if processor is not None else trainer.processing_class
        if self.processor is None:
            raise ConfigError("BiasMonitorCallback needs the model's processor: pass it, or give the Trainer "
                              "processing_class=processor")
        self.config = build_config(AuditConfig, {"probes": list(probes), "max_samples": max_samples, **(config or {})},
                                   where="BiasMonitorCallback config")
        self.probes = build_probes(self.config)
        self.examples = _load(data, self.config)
        # per measurement, on every process: {"step", "mbias/...": value, "audited_here": this process's share of
        # the samples, "processes", "seconds"}
        self.history: list[dict] = []
        self._scorer = None
        self._batched: BatchedAudit | None = None

    # ---- Trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # the starting point of the curve (a resumed run has it already)
            self._log(control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self._log(control)

    def _log(self, control) -> None:
        from transformers import Trainer

        # Trainer.log clears control.should_log (it assumes it was called for the loss log): a loss log due at this
        # step would be dropped and the next one averaged over two windows, so the flag is put back. The base
        # Trainer.log (log_history, then every report_to integration through on_log), not a subclass's override:
        # TRL's SFTTrainer.log folds the training metrics it accumulates (entropy, mean_token_accuracy, ...) into
        # whatever is logged next and clears them, which would move them off the loss log onto this one
        due = control.should_log
        Trainer.log(self.trainer, self.measure())
        control.should_log = due

    # ---- the measurement
    def measure(self) -> dict[str, float]:
        """Audit the held-out slice with the model as it is now; returns the ``mbias/*`` numbers (and records them
        in ``history``). Leaves the model's modes and every random state as it found them."""
        from mbias.models.loading import wrap_model

        t0 = time.perf_counter()
        model = self.trainer.model
        if self._scorer is None or self._scorer.model is not _unwrapped(model):
            self._scorer = wrap_model(model, self.processor, config=self.config.scoring)
            self._batched = None  # encodings are the processor's and the scorer's: made again with the scorer
        accelerator = self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        todo = [i for i in range(len(self.examples)) if i % world == rank]
        with _same_random_state(), eval_mode(model), torch.no_grad():
            if self._batched is None:
                self._batched = BatchedAudit(self._scorer, self.examples, self.probes, self.config)
            records = self._batched.records(todo)
        here = len(records)
        if world > 1:
            from accelerate.utils import gather_object

            records = sorted(gather_object(records), key=lambda r: r["index"])
        metrics = self.metrics(records)
        self.history.append({"step": self.trainer.state.global_step, **metrics, "audited_here": here,
                             "processes": world, "seconds": round(time.perf_counter() - t0, 3)})
        return metrics

    def metrics(self, records: list[dict]) -> dict[str, float]:
        """The logged numbers from per-sample audit records: each probe's own aggregation (the audit's means), the
        sample count, and for each rate the half-width of its 95% bootstrap interval (``..._ci95``, clustered by
        image as the audit's), so a move of the curve can be read against its sampling error."""
        groups = [r["image_key"] for r in records]
        accuracy = bootstrap_mean([r["correct"] for r in records], groups)
        out = {f"{PREFIX}accuracy": float(accuracy["mean"]), f"{PREFIX}accuracy_ci95": _half_width(accuracy),
               f"{PREFIX}n_samples": float(len(records))}
        for name, probe in self.probes.items():
            summary = probe.summarize([r["probes"][name] for r in records], groups)
            for key in ("follows_text", "follows_image", "language_share"):
                if key in summary and summary[key]["mean"] is not None:
                    out[PREFIX + key] = float(summary[key]["mean"])
                    out[f"{PREFIX}{key}_ci95"] = _half_width(summary[key])
            if "n_text_conflicts" in summary:
                out[f"{PREFIX}n_text_conflicts"] = float(summary["n_text_conflicts"])
        return out


CURVES = (("follows_text", "follows the wording (wording conflicts)", "#c8553d"),
          ("language_share", "language share (modality Shapley)", "#2f6690"),
          ("accuracy", "accuracy", "#6a994e"))


def plot_reliance(history: list[dict], path) -> Path | None:
    """The reliance curve: ``mbias/follows_text``, ``mbias/language_share`` and ``mbias/accuracy`` against the
    training step, each with its 95% interval as a band, written as a PNG to ``path`` (``callback.history`` or
    ``monitor.jsonl``'s lines). Returns the path, or None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for key, label, color in CURVES:
        points = [(h["step"], h[PREFIX + key], h.get(f"{PREFIX}{key}_ci95")) for h in history if PREFIX + key in h]
        if points:
            series.append((label, color, points))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    ax.spines[["top", "right"]].set_visible(False)
    for label, color, points in series:
        steps, values, ci = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", ms=3, color=color, label=label)
        if all(c is not None for c in ci):
            ax.fill_between(steps, [v - c for v, c in zip(values, ci, strict=True)],
                            [v + c for v, c in zip(values, ci, strict=True)], color=color, alpha=0.15, lw=0)
    n = sorted({int(h[f"{PREFIX}n_samples"]) for h in history if f"{PREFIX}n_samples" in h})
    ax.set_xlabel("training step")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("reliance during training" + (f" ({', '.join(map(str, n))} held-out samples, 95% bands)"
                                               if n else ""), fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _half_width(stat: dict) -> float:
    lo, hi = stat["ci95"]
    return float((hi - lo) / 2)


def _unwrapped(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _load(data, config: AuditConfig):
    from mbias.data import load_data, load_rows

    if isinstance(data, str):
        return load_data(data, max_samples=config.max_samples, columns=config.columns).examples
    return load_rows(data, max_samples=config.max_samples, columns=config.columns).examples


@contextmanager
def _same_random_state():
    """Python, NumPy and torch (CPU and every CUDA device) random states as they were on entry, on exit."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
