"""The zoo on a reduced training config: determinism, caching, zoo: references, no half-built folders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mbias.zoo as zoo
import mbias.zoo.pinned as pinned
from mbias.zoo.train import ZooTrainConfig, train_tiny

SMALL = ZooTrainConfig(steps=12, batch_size=16, train_size=64, warmup=2)


@pytest.fixture()
def small_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MBIAS_CACHE", str(tmp_path / "cache"))
    entries = {name: dataclasses.replace(e, train=SMALL) for name, e in zoo._entries().items()}
    monkeypatch.setattr(zoo, "_entries", lambda: entries)
    monkeypatch.setattr(zoo, "EVAL_SIZE", 8)
    monkeypatch.setattr(pinned, "PINNED_DIR", tmp_path / "no-pinned-builds")  # every name trains here
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


@pytest.fixture()
def fake_pinned(tmp_path, monkeypatch):
    """A pinned folder holding one tiny (untrained) build, pinned as shapes-p90, in the shipped layout."""
    import json

    from mbias.tiny import build_llava

    root = tmp_path / "pinned"
    folder = build_llava(root / "shapes-p90-seed3", image_size=32, patch_size=8, seed=3)
    stat = {"mean": 0.5, "ci95": [0.45, 0.55], "n": 500, "n_missing": 0}
    behaviour = {s: {"n": 500, "accuracy": stat, "cue_following": stat} for s in pinned.BEHAVIOUR_SPLITS}
    record = {"build": "shapes-p90-seed3", "description": "test build", "behaviour": behaviour,
              "build_record": {"threads": 1}, "sha256": {f.name: pinned.sha256(f) for f in folder.iterdir()}}
    (folder / pinned.RECORD).write_text(json.dumps(record))
    (root / "index.json").write_text(json.dumps({"aliases": {"shapes-p90": "shapes-p90-seed3"}}))
    monkeypatch.setattr(pinned, "PINNED_DIR", root)
    monkeypatch.setenv("MBIAS_CACHE", str(tmp_path / "cache"))
    return folder


def test_a_pinned_name_loads_the_shipped_build_and_its_digest_is_its_identity(fake_pinned):
    from mbias.models import load_model

    assert zoo.zoo_model_path("shapes-p90") == fake_pinned
    assert zoo.zoo_model_path("shapes-p90-seed3") == fake_pinned  # the build's own name
    assert zoo.zoo_entry("shapes-p90").train.seed == 3  # the public name stands for the pinned seed
    assert load_model("zoo:shapes-p90", device="cpu").family == "llava"
    digest = pinned.sha256(fake_pinned / "model.safetensors")
    assert zoo.model_identity("zoo:shapes-p90") == f"zoo:shapes-p90@sha256:{digest[:16]}"
    assert not (fake_pinned.parent.parent / "cache").exists()  # nothing trained, nothing cached


def test_a_tampered_pinned_file_is_refused_with_what_to_do(fake_pinned, capsys):
    from mbias.cli import main
    from mbias.errors import ModelLoadError

    weights = fake_pinned / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"does not match its recorded sha256.*--rebuild"):
        zoo.zoo_model_path("shapes-p90")
    code = main(["audit", "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/test-cp", "--max-samples", "2",
                 "--out", str(fake_pinned.parent.parent / "audit"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "does not match its recorded sha256" in err and "Traceback" not in err
    weights.unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        zoo.zoo_model_path("shapes-p90")


def test_zoo_list_shows_each_pinned_models_measured_behaviour(fake_pinned, capsys):
    from mbias.cli import main

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("shapes-p90 "))
    assert "pinned build shapes-p90-seed3" in line
    assert "test-cp 0.50 [0.45, 0.55], follows the cue on 50% [45, 55]" in out
    assert main(["zoo", "build", "shapes-p90"]) == 0  # pinned: nothing to build without --rebuild
    assert "is pinned" in capsys.readouterr().out


def test_the_shipped_builds_are_intact_current_and_cover_the_ladder():
    """Every shipped build matches its digests and was trained by today's recipe (a change to the training code
    or data changes the key: re-pin with benchmarks/zoo_pin.py), and the ladder has a model in every band."""
    builds = pinned.pinned_builds()
    assert {"shapes-p00", "shapes-p50", "shapes-p70", "shapes-p90", "shapes-p99"} <= set(builds)
    bands = set()
    for name, build in builds.items():
        assert pinned.verified_folder(name) == pinned.PINNED_DIR / build
        record = pinned.pinned_record(build)
        assert record["build_record"]["key"] == zoo.zoo_entry(build).key(), build
        bands.add(pinned.band_of(record["behaviour"]["test-cp"]["cue_following"]["mean"]))
    assert bands == {pinned.band_of(lo) for lo, _ in pinned.LADDER_BANDS}
    size = sum(f.stat().st_size for f in pinned.PINNED_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20  # the package grows by under 10 MB


def test_rebuild_trains_here_and_compares_with_the_shipped_build(fake_pinned, small_zoo, monkeypatch, capsys):
    from mbias.cli import main

    monkeypatch.setattr(pinned, "PINNED_DIR", fake_pinned.parent)  # small_zoo hid the pinned folder
    monkeypatch.setattr(pinned, "BEHAVIOUR_N", 4)
    assert main(["zoo", "build", "shapes-p90", "--rebuild", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shapes-p90-seed3" in out  # trained the pinned build's recipe and seed, into the cache
    assert "shipped:" in out and "rebuilt here:" in out and "weights differ from the shipped build" in out
    assert "test-cp        accuracy       shipped 0.500" in out
    assert zoo.zoo_model_path("shapes-p90") == fake_pinned  # the public name still loads the shipped build
