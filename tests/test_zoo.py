"""The zoo on a reduced training config: determinism, caching, zoo: references, no half-built folders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mbias.zoo as zoo
from mbias.zoo.train import ZooTrainConfig, train_tiny

SMALL = ZooTrainConfig(steps=12, batch_size=16, train_size=64, warmup=2)


@pytest.fixture()
def small_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MBIAS_CACHE", str(tmp_path / "cache"))
    entries = {name: dataclasses.replace(e, train=SMALL) for name, e in zoo._entries().items()}
    monkeypatch.setattr(zoo, "_entries", lambda: entries)
    monkeypatch.setattr(zoo, "EVAL_SIZE", 8)
    return tmp_path / "cache"


def _train_once(tmp_path, tag):
    from mbias.models import load_model
    from mbias.synth import load_synth
    from mbias.tiny import build_llava

    path = build_llava(tmp_path / tag, image_size=32, patch_size=8, seed=0)
    scorer = load_model(str(path), device="cpu")
    ds = load_synth("shapes-p90/train")
    with zoo._deterministic(0):
        info = train_tiny(scorer, [ds[i] for i in range(64)], SMALL, progress=False)
    return scorer.model.state_dict(), info


def test_training_is_deterministic_and_learns(tmp_path):
    a, info_a = _train_once(tmp_path, "a")
    b, info_b = _train_once(tmp_path, "b")
    assert info_a["loss_curve"] == info_b["loss_curve"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert info_a["final_loss"] < info_a["first_loss"] - 0.3  # the mean over 12 steps already drops


def test_zoo_reference_builds_once_and_loads(small_zoo, capsys):
    from mbias.cli import main
    from mbias.models import load_model

    assert main(["zoo", "list"]) == 0
    assert "not built" in capsys.readouterr().out
    scorer = load_model("zoo:shapes-p90", device="cpu")
    assert scorer.family == "llava"
    path = zoo.zoo_model_path("shapes-p90", build=False)
    stamp = (path / "zoo.json").stat().st_mtime
    load_model("zoo:shapes-p90", device="cpu")  # cached: no rebuild
    assert (path / "zoo.json").stat().st_mtime == stamp
    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert "shapes-p90" in listing and "built" in listing
    leftovers = [p for p in (small_zoo / "zoo").iterdir() if ".tmp-" in p.name]
    assert not leftovers


def test_failed_build_leaves_nothing_behind(small_zoo, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mbias.zoo.train.train_tiny", boom)
    with pytest.raises(RuntimeError):
        zoo.build_zoo_model("shapes-p50", progress=False)
    folder = small_zoo / "zoo"
    assert not [p for p in folder.iterdir() if p.is_dir()]


def test_unknown_zoo_name_lists_known_ones():
    from mbias.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="shapes-p90"):
        zoo.zoo_entry("shapes-p42")
