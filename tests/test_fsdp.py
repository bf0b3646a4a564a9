"""Every recipe under FSDP2: two processes, each holding half of every parameter (torch's ``fully_shard`` over gloo
on CPU) and stepping on half of the batch, end with the weights one unsharded process trains on the whole batch.

accelerate does not shard on CPU (with ``cpu=True`` its FSDP2 plugin is ignored), so ``tests/fsdp_step.py`` shards
the model itself and drives each recipe through ``StepContext``, the recipe's whole interface to its loop (the
Trainer + accelerate FSDP2 path runs on a GPU: ``benchmarks/gpu_check.sh``). Recipes refused under FSDP
(``Recipe.launchers``) are left out; none is today.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mbias.errors import ConfigError

STEP = Path(__file__).parent / "fsdp_step.py"

# One run per code path a recipe's step takes on sharded parameters: gradient hooks replaced by scaling after
# backward (ogm_ge in gradient mode, with noise: under FSDP2 the noise's std is the whole batch's gradient's, so
# even the noise is exact), learning-rate scaling (ogm_ge's default), whole-gradient norms and weight
# perturbations on shards (sam, msam), the frozen base through disabled adapters (poe, lmh, mdpo), heads and gates
# outside the sharded model (cggm, lmh), held-out measurements with as many forwards on every process (miles).
FSDP_RUNS = [("plain", "plain", {}), ("poe", "poe", {}), ("lmh", "lmh", {"gate_lr": 0.5}), ("mdpo", "mdpo", {}),
             ("sam", "sam", {}), ("msam", "msam", {}), ("miles", "miles", {"every_steps": 1}),
             ("mnl", "mnl", {"reduction": "batch"}), ("cggm", "cggm", {}),
             ("ogm_ge gradient+noise", "ogm_ge", {"noise": "both", "mode": "gradient"}), ("ogm_ge", "ogm_ge", {})]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_runs(tiny_model_dir, tmp_path_factory):
    """(one process, two sharded processes): label -> {"weights", "losses", "dtensor"}, both runs made once."""
    from mbias.finetune.recipes import RECIPES

    runs = [r for r in FSDP_RUNS if "fsdp" in RECIPES.get(r[1]).launchers]
    folder = tmp_path_factory.mktemp("fsdp")
    model, spec = tiny_model_dir("llava"), json.dumps(runs)
    one = subprocess.run([sys.executable, str(STEP), model, spec, str(folder / "one.pt")], capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), str(STEP), model, spec, str(folder / "two.pt"), "--shard"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    return torch.load(folder / "one.pt"), torch.load(folder / "two.pt")


@pytest.mark.slow
@pytest.mark.parametrize("label", [r[0] for r in FSDP_RUNS])
def test_two_fsdp_sharded_processes_train_the_weights_of_one_process_with_the_doubled_batch(label, fsdp_runs):
    one, two = fsdp_runs
    assert two[label]["dtensor"]  # really sharded: every trained parameter a DTensor shard
    a, b = one[label]["weights"], two[label]["weights"]
    assert a.keys() == b.keys() and len(a) > 0  # the same parameters trained (none frozen by the sharding)
    # Adam moves each weight by about lr (1e-3) per step whatever the gradient's size, so a step that used only a
    # process's half, or reduced a gradient twice, leaves many weights 1e-4..3e-3 away; summation order leaves ~1e-6
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float((diff > 1e-4).float().mean()) < 1e-3 and float(diff.median()) < 1e-6, \
        (int((diff > 1e-4).sum()), float(diff.max()))
    assert all(torch.isfinite(torch.tensor(two[label]["losses"])))


def test_every_fsdp_run_names_a_registered_recipe_and_every_recipe_has_one():
    from mbias.finetune.recipes import RECIPES

    assert {r[1] for r in FSDP_RUNS} == {n for n in RECIPES.names() if "fsdp" in RECIPES.get(n).launchers}


@pytest.mark.parametrize("recipe, settings", [("msam", {}), ("sam", {}), ("ogm_ge", {"mode": "gradient"}),
                                              ("cggm", {"mode": "gradient"})])
def test_fsdp_refuses_accumulation_for_a_step_that_reads_each_micro_batchs_gradient(recipe, settings):
    """FSDP2 under accelerate's accumulation reduces gradients only at the last micro-batch, so a step that reads or
    edits ``p.grad`` per micro-batch would read zeros: refused, with the setting that makes it exact."""
    from types import SimpleNamespace

    from mbias.config import build_config
    from mbias.finetune.recipes import RECIPES
    from mbias.finetune.trainer import check_accumulation

    cls = RECIPES.get(recipe)
    r = cls(build_config(cls.config_class, settings, where="recipe_config"))
    with pytest.raises(ConfigError, match="sync_each_batch: true"):
        check_accumulation(r, "fsdp", 2, SimpleNamespace(plugin_kwargs={}))
    check_accumulation(r, "fsdp", 2, SimpleNamespace(plugin_kwargs={"sync_each_batch": True}))
    check_accumulation(r, "fsdp", 1, SimpleNamespace(plugin_kwargs={}))
    check_accumulation(r, "ddp", 2, SimpleNamespace(plugin_kwargs={}))
    lr_only = RECIPES.get("ogm_ge")(build_config(RECIPES.get("ogm_ge").config_class, {"noise": "none"}))
    check_accumulation(lr_only, "fsdp", 2, SimpleNamespace(plugin_kwargs={}))  # update mode without noise: lr only


def test_an_fsdp_launch_without_gpus_says_accelerate_does_not_shard_there(monkeypatch):
    from mbias.finetune.config import FinetuneConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    with pytest.raises(ConfigError, match="accelerate does not shard models on CPU"):
        FinetuneConfig(output_dir="unused", use_cpu=True)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    FinetuneConfig(output_dir="unused", use_cpu=True)


def test_qlora_under_fsdp_is_refused_before_loading(monkeypatch, tmp_path):
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import build_trainer
    from mbias.models.config import LoadOptions

    config = FinetuneConfig(output_dir="unused")  # made before the launch's environment: a GPU run's config
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="4/8-bit base under FSDP is not supported"):
        build_trainer("zoo:not-built", "synth:shapes-p90/train", tmp_path / "ft", config=config,
                      load=LoadOptions(load_in_4bit=True))
