"""The zoo: tiny LLaVA models trained from scratch on ``synth:shapes-pNN/train``, loadable as ``zoo:NAME``.

The names the README, docs, demo and benchmarks use resolve to builds shipped with mbias (``mbias.zoo.pinned``):
the same weights on every machine, checked against their sha256 on load. Any other name (``shapes-p90-seed12``)
is trained here on first use and cached. A cached model's cache folder is keyed by a hash of everything that shapes it (training config, dataset, zoo version),
so changing any of them builds a fresh model instead of silently reusing a stale one. Builds take a file lock
(two processes asking for the same model build it once) and write to a temporary folder renamed at the end, so
an interrupted build never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from mbias.errors import ModelLoadError
from mbias.zoo.train import ZooTrainConfig

logger = logging.getLogger(__name__)

ZOO_VERSION = 1  # bump when training code changes in a way that changes the weights
EVAL_SPLIT, EVAL_SIZE = "test-balanced", 300


@dataclass(frozen=True)
class ZooEntry:
    name: str
    data: str
    description: str
    train: ZooTrainConfig = field(default_factory=ZooTrainConfig)

    def key(self) -> str:
        from mbias.synth import SYNTH_VERSION

        blob = json.dumps({"data": self.data, "train": self.train.to_dict(), "zoo": ZOO_VERSION,
                           "synth": SYNTH_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _entries() -> dict[str, ZooEntry]:
    from mbias.synth import PRIORS

    entries = {
        f"shapes-p{k}": ZooEntry(
            name=f"shapes-p{k}", data=f"synth:shapes-p{k}/train",
            description=f"tiny LLaVA trained on shapes with a {int(v * 100)}% language prior")
        for k, v in PRIORS.items()
    }
    # the learning-speed scenario's base: nothing learned yet, so a fine-tune trains vision and language from
    # scratch and the easy modality (the wording) can starve the slow one (docs/recipes.md)
    entries["scratch"] = ZooEntry(name="scratch", data="synth:shapes-p00/train", train=ZooTrainConfig(steps=0),
                                  description="tiny LLaVA at its random initialisation (a base that has not "
                                              "learned to see or read)")
    return entries


def zoo_entry(name: str) -> ZooEntry:
    """The entry of ``name``; ``NAME-seedN`` is NAME trained with seed N (another build of the same recipe:
    whether a planted prior survives training varies between builds, so a finding should hold on several). A
    pinned public name stands for the build it pins (``shapes-p90`` -> ``shapes-p90-seedN``)."""
    from mbias.zoo.pinned import pinned_builds

    entries = _entries()
    name = pinned_builds().get(name, name)
    base, _, seed = name.rpartition("-seed")
    if base in entries and seed.isdigit():
        entry = entries[base]
        return dataclasses.replace(entry, name=name, train=dataclasses.replace(entry.train, seed=int(seed)),
                                   description=f"{entry.description} (training seed {int(seed)})")
    if name not in entries:
        raise ModelLoadError(f"unknown zoo model {name!r}; known: {', '.join(entries)} (and NAME-seedN for "
                             "another training seed)")
    return entries[name]


def cache_root() -> Path:
    """``$MBIAS_CACHE`` or ``~/.cache/mbias``."""
    return Path(os.environ.get("MBIAS_CACHE", Path.home() / ".cache" / "mbias")).expanduser()


def model_dir(entry: ZooEntry) -> Path:
    return cache_root() / "zoo" / f"{entry.name}-{entry.key()}"


def model_identity(ref: str) -> str:
    """What a model reference stands for, for caches and resume checks: ``zoo:NAME`` keeps its name when its
    training config changes, so it becomes ``zoo:NAME@KEY`` (``zoo:NAME@sha256:DIGEST`` for a pinned build, whose
    weights are the identity); any other reference is returned as given."""
    from mbias.zoo.pinned import pinned_builds, pinned_record

    if not ref.startswith("zoo:"):
        return ref
    name = ref.removeprefix("zoo:")
    build = pinned_builds().get(name)
    if build is not None:
        return f"{ref}@sha256:{pinned_record(build)['sha256']['model.safetensors'][:16]}"
    return f"{ref}@{zoo_entry(name).key()}"


def zoo_model_path(name: str, *, build: bool = True, progress: bool = True) -> Path:
    """The folder of ``zoo:name``: the shipped build when the name is pinned (its files checked against their
    sha256), else the cached build, training it first if needed (about 90 s on a 2-core CPU)."""
    from mbias.zoo.pinned import verified_folder

    shipped = verified_folder(name)
    if shipped is not None:
        return shipped
    entry = zoo_entry(name)
    path = model_dir(entry)
    if (path / "zoo.json").exists():
        return path
    if not build:
        raise ModelLoadError(f"zoo:{name} is not built yet; run: mbias zoo build {name}")
    return build_zoo_model(name, progress=progress)


def build_zoo_model(name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Train ``zoo:name`` from scratch into the cache (never the shipped folder); returns the model folder."""
    return build_entry(zoo_entry(name), force=force, progress=progress)


def build_entry(entry: ZooEntry, *, force: bool = False, progress: bool = True) -> Path:
    """Train ``entry`` (a zoo name's or one a benchmark defines, e.g. at another image geometry) into the cache."""
    name = entry.name
    final = model_dir(entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{entry.name}.lock"):
        if (final / "zoo.json").exists() and not force:
            return final
        logger.info("building zoo:%s (a tiny LLaVA trained from scratch; about 90 s on a 2-core CPU at the zoo's "
                    "32 px)", name)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            record = _train_into(entry, tmp, progress)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-built model behind
            raise
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        logger.info("zoo:%s built in %.0f s, %s accuracy %.3f", name, record["build_seconds"], EVAL_SPLIT,
                    record["eval"][EVAL_SPLIT]["accuracy"])
        return final


def _train_into(entry: ZooEntry, tmp: Path, progress: bool) -> dict:
    import torch

    from mbias.data import load_data
    from mbias.models import load_model
    from mbias.synth import load_synth
    from mbias.tiny import build_llava
    from mbias.zoo.train import choice_accuracy, train_tiny

    cfg = entry.train
    t0 = time.perf_counter()
    build_llava(tmp, hidden=cfg.hidden, text_layers=cfg.text_layers, vision_layers=cfg.vision_layers,
                image_size=cfg.image_size, patch_size=cfg.patch_size, vision_hidden=cfg.vision_hidden, seed=cfg.seed)
    scorer = load_model(str(tmp), device="cpu", dtype="float32")
    data = load_data(entry.data, max_samples=cfg.train_size).examples
    with _deterministic(cfg.seed):
        info = train_tiny(scorer, [data[i] for i in range(len(data))], cfg, progress=progress)
    scorer.model.save_pretrained(tmp)
    evaluation = load_synth(f"{entry.data.rsplit('/', 1)[0]}/{EVAL_SPLIT}")
    acc = choice_accuracy(scorer, [evaluation[i] for i in range(min(EVAL_SIZE, len(evaluation)))])
    record = {"name": entry.name, "key": entry.key(), "data": entry.data, "train_config": cfg.to_dict(),
              "zoo_version": ZOO_VERSION, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": machine(),
              "build_seconds": round(time.perf_counter() - t0, 1), **info, "eval": {EVAL_SPLIT: acc}}
    (tmp / "zoo.json").write_text(json.dumps(record, indent=2))
    return record


@contextlib.contextmanager
def _deterministic(seed: int):
    import torch

    torch.manual_seed(seed)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def machine() -> str:
    """The CPU model and core count (what decides a build's float rounding), e.g. ``AMD EPYC 9B14 x 2``."""
    from mbias.provenance import machine_info

    info = machine_info()
    return f"{info['cpu_model'] or info['arch']} x {info['cores']}"


def zoo_status() -> list[dict]:
    """One row per public name: pinned (shipped, with its measured behaviour), built here, or not built."""
    from mbias.zoo.pinned import pinned_builds, pinned_record

    rows = []
    pinned = pinned_builds()
    names = list(dict.fromkeys([*_entries(), *pinned]))
    for name in names:
        if name in pinned:
            record = pinned_record(pinned[name])
            rows.append({"name": name, "status": "pinned", "build": pinned[name],
                         "behaviour": record["behaviour"], "description": record["description"]})
            continue
        entry = _entries()[name]
        path = model_dir(entry)
        built = (path / "zoo.json").exists()
        measured = path / "behaviour.json"  # written by `mbias zoo build NAME --rebuild`
        rows.append({"name": name, "status": "built" if built else "not built", "build": entry.name,
                     "behaviour": json.loads(measured.read_text()) if measured.exists() else None,
                     "path": str(path) if built else "",
                     "description": entry.description})
    return rows


def rebuild_report(name: str, *, force: bool, progress: bool = True) -> tuple[Path, list[str]]:
    """Train ``zoo:name`` here (from scratch with ``force``), measure its behaviour, and say how it compares with
    the shipped build of the same name; returns the folder and the lines to print."""
    from mbias.models import load_model
    from mbias.zoo.pinned import behaviour_line, measure_behaviour, pinned_builds, pinned_record, sha256

    entry = zoo_entry(name)
    path = build_zoo_model(entry.name, force=force, progress=progress)
    behaviour = measure_behaviour(load_model(str(path), device="cpu", dtype="float32"),
                                  entry.data.split("/")[0].removeprefix("synth:shapes-p"), progress=progress)
    (path / "behaviour.json").write_text(json.dumps(behaviour, indent=2))
    lines = [f"rebuilt here: {behaviour_line(behaviour)}"]
    build = pinned_builds().get(name)
    if build is None:
        return path, lines
    shipped = pinned_record(build)
    same = shipped["sha256"]["model.safetensors"] == sha256(path / "model.safetensors")
    record = shipped["build_record"]
    lines.insert(0, f"shipped:      {behaviour_line(shipped['behaviour'])} (built with {record.get('threads')} "
                    f"thread(s) on {record.get('machine')}, torch {record.get('torch')})")
    lines.append("weights identical to the shipped build" if same else
                 "weights differ from the shipped build (expected on another CPU or thread count: the planted "
                 "bias of a build is decided by float rounding; docs/methods.md)")
    for split in ("test-cp", "test-balanced", "test-id"):
        for key in ("accuracy", "cue_following"):
            a, b = shipped["behaviour"][split][key]["mean"], behaviour[split][key]["mean"]
            lines.append(f"  {split:<14} {key:<14} shipped {a:.3f}  rebuilt {b:.3f}  difference {b - a:+.3f}")
    return path, lines
