"""Run an audit: probes x dataset for one model -> manifest.json, results.jsonl, summary.json (+ reports).

Resumable: re-running the same command on the same folder skips samples already in ``results.jsonl`` and, since
every sample's randomness derives from the run seed and its id, ends with the same numbers as an uninterrupted
run. Under ``accelerate launch`` each process audits a disjoint shard (sample index modulo world size) into its
own file; the main process merges them and writes the summary. The first process alone checks the images and
shows a progress bar. With a device map each process splits its model over its own slice of the node's GPUs
(``loading.for_process``): 8 GPUs as 2 processes x 4 GPUs, say (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from mbias import store
from mbias.diagnose.aggregate import summarize
from mbias.diagnose.config import AuditConfig, build_probes
from mbias.errors import ConfigError, DataError
from mbias.models.loading import LoadOptions, adapter_record, for_process, load_model, wrap_model
from mbias.outdir import check_out_dir, exclusive_out_dir
from mbias.probes.base import KEEP, SampleContext
from mbias.provenance import provenance

logger = logging.getLogger(__name__)

OUR_FILES = ("manifest.json", "results.jsonl", "summary.json", "report.html", "report.md", "model_card.md")


def _distributed():
    """(rank, world size, state): accelerate's PartialState only when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # on CPU-only machines accelerate needs cpu=True to start a gloo process group
        state = PartialState(cpu=not torch.cuda.is_available())
        return state.process_index, state.num_processes, state
    return 0, 1, None


def _prepare_folder(out: Path, fingerprint: str, overwrite: bool) -> None:
    manifest = out / store.MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") != fingerprint:
            if not overwrite:
                raise ConfigError(f"{out} holds an audit with a different model, data or config; use another "
                                  "--out, or pass --overwrite to replace it")
            for name in OUR_FILES:
                (out / name).unlink(missing_ok=True)
            for shard in out.glob("results.rank*-of-*.jsonl"):
                shard.unlink()
            shutil.rmtree(out / "plots", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _swap_partner(examples, i: int):
    """The next example (cyclically) whose image differs: a deterministic "another sample's image"."""
    n = len(examples)
    key = examples[i].image_key
    for step in range(1, n):
        other = examples[(i + step) % n]
        if other.image_key != key:
            return other
    return None


def run_audit(model: str, data: str, out: str | Path, *, config: AuditConfig | None = None,
              load: LoadOptions | None = None, overwrite: bool = False, on_error: str = "stop",
              progress: bool = True, report: bool = True) -> dict | None:
    """Audit ``model`` on ``data`` into ``out``; returns the summary (None on non-main processes).

    ``mbias.audit`` is the same pipeline for models and data already in memory too (and returns the records)."""
    done = audit_model(model, None, data, out, config=config, load=load, overwrite=overwrite, on_error=on_error,
                       progress=progress, report=report)
    return None if done is None else done[0]


@exclusive_out_dir("audit")  # Issue 31: one audit at a time per output folder (mbias/outdir.py)
def audit_model(model, processor, data, out: str | Path, *, config: AuditConfig | None = None,
                load: LoadOptions | None = None, overwrite: bool = False, on_error: str = "stop",
                progress: bool = True, report: bool = True) -> tuple[dict, list[dict], dict] | None:
    """The audit behind ``run_audit``, ``mbias.audit`` and the CLI: ``model`` a reference (loaded here with
    ``load``) or an in-memory HF model with its ``processor`` (wrapped, not copied; put in eval mode for the audit
    and every module's mode restored after); ``data`` a reference, a ``datasets.Dataset`` or a list of dicts.
    Returns (summary, records, manifest), or None on the non-main processes of a data-parallel run."""
    config = config or AuditConfig()
    load = load or LoadOptions()
    # everything a user can get wrong is checked before the first byte is written, the cheap checks first
    out = check_out_dir(out)
    probes = build_probes(config)
    rank, world, state = _distributed()
    loaded = _load_examples(data, config, on_error, state)
    examples = loaded.examples
    if isinstance(model, str):
        fingerprint = config.fingerprint(model, load.adapter, data_identity(data, examples))
        scorer = load_model(model, for_process(load, state) if state else load, config=config.scoring)
        identity = {"model": model, "adapter": adapter_record(load.adapter), "load": vars(load)}
        held = None
    else:
        scorer = wrap_model(model, processor, config=config.scoring)
        fingerprint = config.fingerprint(in_memory_identity(model), None, data_identity(data, examples))
        identity = {"model": scorer.model_id, "adapter": in_memory_adapter(model), "load": None,
                    "in_memory": type(model).__name__}
        held = model
    if config.decode:  # Issue 30: every score and generation of the audit goes through the decode-time fix
        from mbias.decoded_scoring import with_decode

        scorer = with_decode(scorer, config.decode)
    if rank == 0:
        _prepare_folder(out, fingerprint, overwrite)
        manifest = {
            "fingerprint": fingerprint, "model": identity["model"], "adapter": identity["adapter"],
            "data": data if isinstance(data, str) else loaded.source,
            "n_examples": len(examples), "skipped_records": loaded.skipped, "config": config.to_dict(),
            "load": identity["load"], "family": scorer.family,
            "device_map": getattr(scorer.model, "hf_device_map", None),
            "methods": {name: {"definition": p.definition, **p.describe(scorer)} for name, p in probes.items()},
            "provenance": provenance(model_revision=getattr(scorer.model.config, "_commit_hash", None),
                                     device=str(scorer.device), world_size=world),
        }
        if "in_memory" in identity:
            manifest["in_memory"] = identity["in_memory"]
        store.write_json_atomic(out / store.MANIFEST, manifest)
    if state:
        state.wait_for_everyone()

    done = {r["id"] for r in store.all_records(out, repair=rank == 0)}
    if state:
        state.wait_for_everyone()
    todo = [i for i in range(len(examples)) if i % world == rank and examples[i].id not in done]
    if done and rank == 0:
        logger.info("resuming: %d of %d samples already done", len(done), len(examples))
    with eval_mode(held):
        _audit_samples(scorer, examples, todo, probes, config, store.shard_path(out, rank, world), on_error,
                       progress and rank == 0, f"auditing (process 1 of {world})" if world > 1 else "auditing")

    if state:
        state.wait_for_everyone()
    if rank != 0:
        return None
    records = store.merge_shards(out)
    records = [r for r in records if r["index"] < len(examples)]  # Issue 31: a rerun with a lower --max-samples
    manifest = store_json(out / store.MANIFEST)
    summary = summarize(records, probes, manifest, config.verdict_margin)
    summary["examples"] = _report_examples(records, examples, config.report_examples)
    from mbias.decoding import describe

    summary["decode"] = describe(config.decode)  # Issue 30: None when decoding was plain
    store.write_json_atomic(out / store.SUMMARY, summary)
    if report:
        from mbias.reports import render_audit

        render_audit(out)
    return summary, records, manifest


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode inside, and every module's own mode restored after (a model being trained may keep
    some parts, a frozen vision tower say, in eval mode on purpose). ``None``: nothing to do."""
    if model is None:
        yield
        return
    modules = list(model.modules())
    modes = [m.training for m in modules]
    model.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.training = mode


def in_memory_identity(model) -> str:
    """What a model held in memory is, for the resume check: its class, name and a digest of its weights (one
    float64 sum per tensor, so a model trained further, or another adapter, is a different model). Weights on the
    meta device (offloaded to disk) count by name and shape only."""
    import torch

    sums, names = [], []
    for name, p in model.named_parameters():
        names.append(f"{name}:{tuple(p.shape)}:{p.dtype}")
        if p.device.type != "meta":
            sums.append(torch.sum(p.detach(), dtype=torch.float64).cpu())
    digest = hashlib.sha256("\n".join(names).encode())
    if sums:
        digest.update(torch.stack(sums).numpy().tobytes())
    return f"in-memory:{type(model).__name__}:{getattr(model, 'name_or_path', '')}@{digest.hexdigest()[:16]}"


def in_memory_adapter(model) -> dict | None:
    """The report's adapter record of an in-memory ``PeftModel`` (None for a plain model)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return None
    cfg = model.active_peft_config
    return {"path": f"(in memory: {model.active_adapter})", "base_model": cfg.base_model_name_or_path,
            "peft_type": cfg.peft_type.value,
            "recipe": None, "steps": None, "routed": False}


def data_identity(data, examples) -> str:
    """A data reference as given; in-memory data as a digest of its examples (ids, texts, image keys, and the
    pixels of in-memory images)."""
    if isinstance(data, str):
        return data
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.id, ex.question, ex.answer, ex.choices, ex.category, ex.image_key]).encode())
        if not isinstance(ex.image, (str, Path)) and ex.image is not None:
            digest.update(ex.image.tobytes())
    return f"in-memory:{len(examples)}@{digest.hexdigest()[:16]}"


def _load_examples(data: str, config: AuditConfig, on_error: str, state):
    """The dataset, checked once: with several processes the first opens every image and hands its verdicts to
    the others (so all skip the same records, and a bad record stops every process with the same message)."""
    from mbias.data import check_image, load_data, load_rows

    if not isinstance(data, str):  # a datasets.Dataset or a list of dicts, in this process's memory
        return load_rows(data, on_error=on_error, max_samples=config.max_samples, columns=config.columns)

    def load(image_check=None):
        return load_data(data, on_error=on_error, max_samples=config.max_samples, columns=config.columns,
                         image_check=image_check)

    if state is None:
        return load()
    from accelerate.utils import broadcast_object_list

    verdicts, failure, loaded = {}, None, None
    if state.is_main_process:
        def judged(path):
            problem = check_image(path)
            if problem:
                verdicts[str(path)] = problem
            return problem

        try:
            loaded = load(judged)
        except DataError as exc:
            failure = str(exc)
    verdicts, failure = broadcast_object_list([verdicts, failure])
    if failure:
        raise DataError(failure)
    return loaded if loaded is not None else load(lambda path: verdicts.get(str(path)))


def store_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _audit_samples(scorer, examples, todo, probes, config, path, on_error, progress, desc) -> None:
    writer = store.RecordWriter(path)
    try:
        for record in audit_records(scorer, examples, todo, probes, config, on_error, progress, desc):
            writer.write(record)
    finally:
        writer.close()


def audit_records(scorer, examples, todo, probes, config, on_error: str = "stop", progress: bool = False,
                  desc: str = "auditing"):
    """One record per sample ``examples[i]`` for ``i`` in ``todo``, as it is computed (the audit writes each to
    disk at once; the training monitor keeps them in memory)."""
    from tqdm.auto import tqdm

    skipped = 0
    for i in tqdm(todo, desc=desc, unit="sample", disable=not progress):
        ex = examples[i]
        try:
            prepared = scorer.prepare(ex)
        except DataError as exc:
            if on_error == "stop":
                raise DataError(f"{exc}; the samples before it are saved, rerun the same command to "
                                "resume after fixing it") from None
            skipped += 1
            logger.warning("skipping %s: %s", ex.id, exc)
            continue
        partner = _swap_partner(examples, i)
        ctx = SampleContext(scorer, prepared, run_seed=config.seed,
                            swap_image=partner.load_image() if partner is not None else None)
        t0 = time.perf_counter()
        full = ctx.outcome(KEEP, KEEP)
        record = {"id": ex.id, "index": i, "image_key": ex.image_key, "category": ex.category,
                  "question": ex.question, "answer": ex.answer, "prediction": full.prediction,
                  "correct": float(full.correct)}
        if ex.meta.get("cue_answer") is not None:  # the answer the data's planted cue points to
            record["cue_answer"] = str(ex.meta["cue_answer"])
        record["probes"] = {}
        for name, probe in probes.items():
            record["probes"][name] = probe.run(ctx)
        logger.debug("%s audited in %.2f s", ex.id, time.perf_counter() - t0)
        yield record
    if skipped:
        logger.warning("skipped %d samples whose image could not be read", skipped)


def _report_examples(records: list[dict], examples, n: int) -> list[dict]:
    """A few samples with token and patch attributions and a small thumbnail, so reports need only JSON."""
    import base64
    import io

    chosen = [r for r in records if "mm_shap" in r["probes"]][:n]
    by_id = {ex.id: ex for ex in (examples[r["index"]] for r in chosen)}
    out = []
    for r in chosen:
        mm = r["probes"]["mm_shap"]
        img = by_id[r["id"]].load_image()
        img.thumbnail((160, 160))
        if max(img.size) < 96:  # tiny synthetic images: enlarge with hard edges so cells stay visible
            scale = max(1, 128 // max(img.size))
            img = img.resize((img.width * scale, img.height * scale), 0)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append({
            "id": r["id"], "question": r["question"], "answer": r["answer"], "prediction": r["prediction"],
            "correct": r["correct"], "category": r.get("category"), "tokens": mm["players"][: mm["n_text"]],
            "token_phi": mm["phi"][: mm["n_text"]], "grid": mm["grid"], "cells": mm["cells"],
            "patch_phi": mm["phi"][mm["n_text"]:], "t_shap": mm["t_shap"], "view_box": mm.get("view_box"),
            "image_png": base64.b64encode(buf.getvalue()).decode("ascii"),
        })
    return out
