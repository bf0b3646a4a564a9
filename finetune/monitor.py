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

import dataclasses
import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from mbias.diagnose.config import AuditConfig, build_probes
from mbias.diagnose.runner import eval_mode
from mbias.errors import ConfigError
from mbias.stats import bootstrap_mean
from mbias.variants import KEEP, REMOVED

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


class BatchedAudit:
    """The audit's per-sample records (``diagnose.runner.audit_records``'s), with the forward passes batched
    across samples.

    The audit scores one sample at a time (a few variants per call); on a small model that is mostly per-call
    overhead, paid again at every measurement. Here the text encodings (model-independent) are made once, the image
    features of every sample and its baseline are computed in one batched pass per measurement, and every
    (sample, variant) the cheap probes ask for (``PREFETCH``) is scored in right-padded batches of
    ``scoring.batch_size`` rows, reading each row's scores where its own answer starts. The outcomes are put in
    each sample's ``SampleContext`` before the probes run, so the probes' own code makes the records; anything a
    probe asks for beyond them (another probe, an example without choices: generation) is computed as the audit
    computes it. Equal to the audit's records up to float rounding of a different batch shape (tested)."""

    def __init__(self, scorer, examples, probes, config: AuditConfig):
        self.scorer, self.examples, self.probes, self.config = scorer, examples, probes, config
        self.variants = _prefetch_variants(probes, scorer)
        self.encoded: dict[int, tuple] = {}  # index -> (Encoded, text-only Prepared or None), or None: unreadable

    def _encoding(self, i: int):
        """What does not change with the weights, made once per sample: the example (a synthetic split draws its
        image on every read), its encodings with and without the image, the swap baseline's partner image, and
        its normalised choices. None: the sample cannot be read (skipped with a warning, as the audit's
        ``on_error="skip"``)."""
        from mbias.diagnose.runner import _swap_partner
        from mbias.errors import DataError
        from mbias.example import normalize_answer

        if i not in self.encoded:
            ex = self.examples[i]
            try:
                enc = self.scorer.encode(ex)
                text_only = self.scorer.prepare(ex, with_image=False) if enc.has_image else None
            except DataError as exc:
                logger.warning("skipping %s: %s", ex.id, exc)
                self.encoded[i] = None
                return None
            partner = _swap_partner(self.examples, i)
            choices = [normalize_answer(c) for c in ex.choices] if ex.choices else None
            self.encoded[i] = (enc, text_only, partner.load_image() if partner is not None else None,
                               choices, normalize_answer(ex.answer))
        return self.encoded[i]

    def records(self, todo: list[int]) -> list[dict]:
        from mbias.probes.base import SampleContext

        todo = [i for i in todo if self._encoding(i) is not None]
        prepared = self._prepare([self.encoded[i][0] for i in todo])
        contexts = []
        for i, prep in zip(todo, prepared, strict=True):
            ctx = SampleContext(self.scorer, prep, run_seed=self.config.seed, swap_image=self.encoded[i][2])
            ctx._text_only = self.encoded[i][1]
            contexts.append(ctx)
        self._prefetch(contexts, [self.encoded[i][3:] for i in todo])
        out = []
        for i, ctx in zip(todo, contexts, strict=True):
            ex = ctx.example
            full = ctx.outcome(KEEP, KEEP)
            record = {"id": ex.id, "index": i, "image_key": ex.image_key, "category": ex.category,
                      "question": ex.question, "answer": ex.answer, "prediction": full.prediction,
                      "correct": float(full.correct)}
            if ex.meta.get("cue_answer") is not None:
                record["cue_answer"] = str(ex.meta["cue_answer"])
            record["probes"] = {name: probe.run(ctx) for name, probe in self.probes.items()}
            out.append(record)
        return out

    # ---- image features: one vision pass for every sample's image and every baseline the prefetch needs
    def _prepare(self, encoded: list) -> list:
        from mbias.models.types import Encoded, Prepared

        sc = self.scorer
        prepared = [Prepared(**{f.name: getattr(e, f.name) for f in dataclasses.fields(Encoded)}) for e in encoded]
        with_image = [p for p in prepared if p.image is not None]  # (Prepared.has_image reads the features)
        if not with_image:
            return prepared
        if not _same_shapes([p.pixel_inputs for p in with_image]):  # images of different sizes: one at a time
            return [sc.prepare(e) for e in encoded]
        kinds = sorted({img for img, _ in self.variants if img not in (KEEP, REMOVED)}
                       - {"swap"} if sc.config.masking == "feature" else set())
        batches = [(None, [p.pixel_inputs for p in with_image])]
        batches += [(kind, [sc.baseline_pixels(e, kind) for e in encoded if e.has_image]) for kind in kinds]
        layout = None
        for kind, pixels in batches:
            feats, layout = self._features(pixels) if kind is None else (self._features(pixels)[0], layout)
            for p, f in zip(with_image, feats, strict=True):
                if kind is None:
                    if f.shape[0] != p.n_image_tokens:  # the audit's own check and message
                        return [sc.prepare(e) for e in encoded]
                    p.features = f
                else:
                    p.baseline_features = {**p.baseline_features, kind: f}
        for p, e in zip(prepared, encoded, strict=True):
            if p.image is not None:
                p.pooler_layout = layout
                p.view_box = sc.view_box(e.image)
                p.token_coords = sc.token_coords(e.pixel_inputs, e.image, e.n_image_tokens)
        return prepared

    def _features(self, pixels: list[dict]) -> tuple[list, tuple]:
        """Projected image features [N, D] per image, ``scoring.batch_size`` images a pass, and their layout."""
        bs, out, layout = max(1, self.scorer.config.batch_size), [], None
        for start in range(0, len(pixels), bs):
            chunk = pixels[start:start + bs]
            feats, layout = self.scorer._encode_images({k: torch.cat([p[k] for p in chunk]) for k in chunk[0]})
            out.extend(feats)
        return out, layout

    # ---- scoring: every prefetched (sample, variant) in right-padded batches
    def _prefetch(self, contexts: list, answers: list[tuple]) -> None:
        from mbias.variants import MASK

        sc = self.scorer
        jobs = []  # (ctx, variant, prepared, ids [P], feats [N, D] or None, (normalised choices, gold))
        for ctx, normalised in zip(contexts, answers, strict=True):
            if not ctx.prepared.choice_ids:
                continue  # generation: the audit's own path, per sample
            for image, text in self.variants:
                prep = ctx.text_only if image == REMOVED else ctx.prepared
                if prep is None or (image not in (KEEP, REMOVED) and (
                        not prep.has_image or image not in prep.baseline_features)):
                    continue
                ids = prep.prompt_ids.clone()
                if text == MASK and prep.n_question:
                    ids[prep.question_positions] = sc.text_baseline_id()
                feats = None
                if prep.has_image:
                    feats = prep.features if image == KEEP else prep.baseline_features[image]
                jobs.append((ctx, (image, text), prep, ids, feats, normalised))
        for group in _groups(jobs):
            for job, scores in zip(group, self._scores(group), strict=True):
                ctx, variant = job[0], job[1]
                ctx._outcomes[variant] = _outcome(ctx.example, scores, *job[5])

    def _scores(self, jobs: list) -> list:
        """Log-probabilities [C] of each job's choices (summed over answer tokens), as ``score_inputs`` gives them."""
        rows = []  # (job index, answer ids, None: read every choice's first token | c: choice c's summed log-prob)
        for j, (_, _, prep, *_) in enumerate(jobs):
            if all(a.numel() == 1 for a in prep.choice_ids):
                rows.append((j, prep.choice_ids[0], None))
            else:
                rows.extend((j, a, c) for c, a in enumerate(prep.choice_ids))
        rows.sort(key=lambda r: jobs[r[0]][3].numel() + r[1].numel())  # similar lengths share a batch
        scores = [torch.empty(len(job[2].choice_ids)) for job in jobs]
        bs = max(1, self.scorer.config.batch_size)
        done = 0
        while done < len(rows):
            chunk = rows[done:done + bs]
            try:
                self._score_chunk(jobs, chunk, scores)
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                bs = max(1, bs // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            done += len(chunk)
        return scores

    def _score_chunk(self, jobs, chunk, scores) -> None:
        from mbias.models.batching import answer_logits, right_pad

        sc = self.scorer
        dev = sc.device
        pad_id = sc.tokenizer.pad_token_id if sc.tokenizer.pad_token_id is not None else 0
        inputs = right_pad([jobs[j][3] for j, _, _ in chunk], [a for _, a, _ in chunk], pad_id,
                           [jobs[j][2].token_inputs for j, _, _ in chunk], sc._answer_fill)
        answer_mask = inputs.pop("answer_mask")
        kwargs = {k: v.to(dev) for k, v in inputs.items()}
        if jobs[chunk[0][0]][4] is not None:
            feats = torch.stack([jobs[j][4] for j, _, _ in chunk]).to(dev, sc.model.dtype)
            kwargs["mm_encoder_outputs"] = sc._pack(feats, jobs[chunk[0][0]][2].pooler_layout)
            for key in jobs[chunk[0][0]][2].meta_inputs:
                kwargs[key] = torch.cat([jobs[j][2].meta_inputs[key] for j, _, _ in chunk]).to(dev)
        logits, targets, row_of, _ = answer_logits(sc.model, kwargs, answer_mask.to(dev))
        logp = torch.log_softmax(logits.float(), dim=-1)
        first = torch.ones(len(row_of), dtype=torch.bool)
        first[1:] = row_of[1:] != row_of[:-1]
        for b, (j, _, c) in enumerate(chunk):
            at = row_of == b
            if c is None:  # single-token choices: every choice's log-prob at the answer's first position
                tokens = torch.cat(jobs[j][2].choice_ids).to(logp.device)
                scores[j][:] = logp[(at & first.to(at.device)).nonzero()[0, 0], tokens].cpu()
            else:
                scores[j][c] = logp[at].gather(-1, targets[at].unsqueeze(-1)).sum().cpu()


def _prefetch_variants(probes: dict, scorer) -> list[tuple[str, str]]:
    """The (image, question) variants the cheap probes ask each sample for (their ``run``), under their configs;
    scored up front in batches. A probe not listed here gets its variants computed as in an audit."""
    from mbias.variants import MASK

    variants = [(KEEP, KEEP)]
    for name, probe in probes.items():
        absent = getattr(probe.config, "image_absent", None)
        absent = REMOVED if absent == "removed" else scorer.config.image_baseline
        if name == "conflict":
            variants += [(absent, KEEP), (KEEP, MASK)]
        elif name == "modality_shapley":
            variants += [(KEEP, MASK), (absent, KEEP), (absent, MASK)]
    return list(dict.fromkeys(variants))


def _groups(jobs: list) -> list[list]:
    """Jobs that can share a forward pass: with image features of one layout and shape, or without an image."""
    groups: dict = {}
    for job in jobs:
        prep, feats = job[2], job[4]
        key = None if feats is None else (repr(prep.pooler_layout), tuple(feats.shape),
                                          tuple((k, tuple(v.shape[1:])) for k, v in prep.meta_inputs.items()))
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def _outcome(example, scores: torch.Tensor, choices: list[str], gold: str):
    """``SampleContext.evaluate``'s outcome from one variant's choice scores [C] (``choices``: the example's
    choices normalised, ``gold`` its answer normalised)."""
    from mbias.probes.base import Outcome

    gold_idx = choices.index(gold)  # SampleContext's _gold_index: the first choice equal to the answer
    best = int(scores.argmax())
    norm = scores[gold_idx] - torch.logsumexp(scores, dim=0)
    return Outcome(float(scores[gold_idx]), example.choices[best], choices[best] == gold, float(norm))


def _same_shapes(pixels: list[dict]) -> bool:
    return len({tuple((k, tuple(v.shape)) for k, v in p.items()) for p in pixels}) == 1


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
