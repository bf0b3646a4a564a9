"""``BiasMonitorCallback``: audit the model being trained every N steps and log its reliance through the Trainer.

Every ``every`` optimizer steps (and once before the first) the callback audits a held-out slice with **the model
being trained**: the same object, no second copy (its adapters as they are), in eval mode under ``no_grad``,
with every module's train/eval mode and the Python, NumPy and torch (CPU and CUDA) random states restored
afterwards, so training goes on exactly as it would have without the callback. The probes are the cheap ones by
default, ``conflict`` (which side wins when the question alone and the image point to different answers) and
``modality_shapley`` (the exact two-player Shapley share), about six forward passes a sample, batched.

The numbers go through ``trainer.log``, the Trainer's own logging, so they reach every ``report_to`` integration
(wandb, tensorboard, mlflow, trackio, ...) and ``trainer.state.log_history``:
``mbias/accuracy``, ``mbias/follows_text`` (the share of wording conflicts on which the model gives the wording's
wrong answer), ``mbias/follows_image``, ``mbias/language_share`` and ``mbias/n_text_conflicts``; a rate with no
sample to count (no conflicts) is left out rather than logged as 0. Each is the audit's own number on those
samples (``mbias.audit`` on the same model and data gives the same means).

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
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from mbias.diagnose.config import AuditConfig, build_probes
from mbias.errors import ConfigError

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
        self.history: list[dict] = []  # {"step", "mbias/...": value, "seconds"} per measurement, every process
        self._scorer = None

    # ---- Trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # the starting point of the curve (a resumed run has it already)
            self._log(control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self._log(control)

    def _log(self, control) -> None:
        # Trainer.log clears control.should_log (it assumes it was called for the loss log): a loss log due at this
        # step would be dropped and the next one averaged over two windows, so the flag is put back
        due = control.should_log
        self.trainer.log(self.measure())
        control.should_log = due

    # ---- the measurement
    def measure(self) -> dict[str, float]:
        """Audit the held-out slice with the model as it is now; returns the ``mbias/*`` numbers (and records them
        in ``history``). Leaves the model's modes and every random state as it found them."""
        from mbias.diagnose.runner import audit_records, eval_mode
        from mbias.models.loading import wrap_model

        t0 = time.perf_counter()
        model = self.trainer.model
        if self._scorer is None or self._scorer.model is not _unwrapped(model):
            self._scorer = wrap_model(model, self.processor, config=self.config.scoring)
        accelerator = self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        todo = [i for i in range(len(self.examples)) if i % world == rank]
        with _same_random_state(), eval_mode(model), torch.no_grad():
            records = list(audit_records(self._scorer, self.examples, todo, self.probes, self.config,
                                         on_error="skip"))
        if world > 1:
            from accelerate.utils import gather_object

            records = sorted(gather_object(records), key=lambda r: r["index"])
        metrics = self.metrics(records)
        self.history.append({"step": self.trainer.state.global_step, **metrics,
                             "seconds": round(time.perf_counter() - t0, 3)})
        return metrics

    def metrics(self, records: list[dict]) -> dict[str, float]:
        """The logged numbers from per-sample audit records: each probe's own aggregation (the audit's means)."""
        groups = [r["image_key"] for r in records]
        out = {f"{PREFIX}accuracy": float(np.mean([r["correct"] for r in records]))}
        for name, probe in self.probes.items():
            summary = probe.summarize([r["probes"][name] for r in records], groups)
            for key in ("follows_text", "follows_image", "language_share"):
                if key in summary and summary[key]["mean"] is not None:
                    out[PREFIX + key] = float(summary[key]["mean"])
            if "n_text_conflicts" in summary:
                out[f"{PREFIX}n_text_conflicts"] = float(summary["n_text_conflicts"])
        return out


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
