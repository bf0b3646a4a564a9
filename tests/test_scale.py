"""Scale on existing engines: one model split by accelerate's device map (scores equal the single-device path),
audits data-parallel under ``accelerate launch`` with a device map per process, fine-tuning under DDP (two
processes end with the adapter one process trains on the doubled batch), and the launchers each recipe refuses.
Two processes run on CPU with gloo; FSDP and DeepSpeed need GPUs (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mbias.cli import main
from mbias.errors import ConfigError, ModelLoadError
from mbias.models import load_model
from mbias.models.config import LoadOptions
from mbias.models.families import FAMILIES
from mbias.tiny import BUILDERS

MODEL_TYPES = [t for family in FAMILIES for t in family.model_types if t in BUILDERS]
DATA = "synth:shapes-p90/train"


def _why(proc) -> str:
    """A failed launch's own errors (the launcher's traceback that ends its stderr says only that a rank died)."""
    lines = [line for line in proc.stderr.splitlines() if "rror" in line or "terminate" in line or "bort" in line]
    return "\n".join(lines[:20]) or proc.stderr[-2000:]


def _split_cpu_and_disk(scorer) -> dict[str, str]:
    """A hand-written device map: the vision side on the CPU, the language model and the head offloaded to disk."""
    vision = set(scorer.vision_modules + scorer.projector_modules)
    placed = {f"model.{name}": "cpu" if name in vision else "disk" for name, _ in scorer.model.model.named_children()}
    placed.update({f"model.{name}": "cpu" for name, _ in scorer.model.model.named_parameters(recurse=False)})
    placed["lm_head"] = "disk"
    return placed


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_a_model_split_between_cpu_and_disk_scores_as_on_one_device(family, tiny_model_dir, shapes_image, tmp_path):
    from mbias.example import Example

    whole = load_model(tiny_model_dir(family), device="cpu")
    placed = _split_cpu_and_disk(whole)
    split = load_model(tiny_model_dir(family), device_map=placed, offload_folder=str(tmp_path / "offload"))
    assert set(split.model.hf_device_map.values()) == {"cpu", "disk"}
    assert any(p.device.type == "meta" for p in split.model.parameters())  # really offloaded, read per forward
    ex = Example(id="ex0", image=shapes_image, question="What colour is the circle?", answer="red",
                 choices=["red", "green", "blue"])
    a, b = whole.prepare(ex), split.prepare(ex)
    G = whole.config.patch_grid ** 2
    ik = torch.rand(6, G, generator=torch.Generator().manual_seed(0)) > 0.5
    tk = torch.rand(6, a.n_question, generator=torch.Generator().manual_seed(1)) > 0.5
    assert torch.allclose(whole.score(a, ik, tk), split.score(b, ik, tk), atol=1e-5)
    assert torch.allclose(whole.score(a, answers=a.choice_ids), split.score(b, answers=b.choice_ids), atol=1e-5)
    assert whole.predict(a).text == split.predict(b).text


FAST = """
probe_config:
  mm_shap: {n_permutations: 4}
  degradation: {draws: 2, rates: [0.0, 0.5]}
  pdm: {max_new_tokens: 2}
"""


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_an_audit_with_device_map_max_memory_and_offload_equals_the_default_run(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llava")
    size = sum(p.numel() * p.element_size() for p in load_model(model, device="cpu").model.parameters())
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST)
    common = ["audit", "--model", model, "--data", "synth:shapes-p90/test-cp", "--max-samples", "3", "--config",
              str(cfg), "--no-progress", "--no-report"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--device-map", "auto", "--max-memory",
                 f"cpu={size // 2}", "--offload-folder", str(tmp_path / "offload")]) == 0
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert set(manifest["device_map"].values()) == {"cpu", "disk"}  # half on the CPU, the rest on disk
    assert _records(tmp_path / "split") == _records(tmp_path / "default")  # every probe, every number


@pytest.mark.parametrize("flags, expected", [
    (["--max-memory", "cpu=1GiB"], "add --device-map auto"),
    (["--device-map", "auto", "--max-memory", "gpu0=1GiB"], "is not a device"),
    (["--device-map", "auto", "--max-memory", "0=lots"], "is not a size"),
    (["--device-map", "nowhere.json"], "no such file"),
    (["--device-map", "auto", "--device", "cpu"], "exclude each other"),
    (["--load-in-4bit", "--load-in-8bit"], "exclude each other"),
    (["--dtype", "float64"], "dtype must be one of"),
])
def test_bad_placement_flags_are_one_line_before_any_work(flags, expected, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "--model", str(tmp_path / "unused"), "--data", "synth:shapes-p90/test-cp", "--out",
                 str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err and not out.exists()


def test_one_definition_of_the_loading_options():
    """The CLI flags, load_model's keywords and the manifest all come from LoadOptions' fields."""
    import dataclasses

    from mbias.cli import build_parser

    fields = {f.name for f in dataclasses.fields(LoadOptions)}
    for command in ("audit", "finetune"):
        args = build_parser().parse_args([command, "--model", "m", "--data", "d", "--out", "o", "--device-map",
                                          "auto", "--max-memory", "0=70GiB,cpu=200GiB"])
        opts = LoadOptions.from_args(args)
        assert opts.max_memory == {"0": "70GiB", "cpu": "200GiB"} and opts.device == "auto"
        assert fields <= set(vars(args))
    with pytest.raises(TypeError):
        load_model("m", devcie="cpu")  # a misspelt option is not silently dropped


def test_each_process_takes_its_own_slice_of_the_nodes_gpus(monkeypatch, tmp_path):
    """8 GPUs as 2 processes x 4 (the GPU machine's arithmetic, checked without GPUs): the second process gets GPUs
    4-7, and GPU i of --max-memory or of a map file is the i-th of its slice."""
    from types import SimpleNamespace

    import accelerate.utils

    from mbias.models.loading import for_process

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(accelerate.utils, "get_max_memory", lambda: {**{i: 80 * 2**30 for i in range(8)}, "cpu": 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    second = SimpleNamespace(device=torch.device("cuda", 1), num_processes=2, process_index=1, local_process_index=1)
    opts = for_process(LoadOptions(device_map="auto", offload_folder=str(tmp_path)), second)
    assert sorted(opts.max_memory) == ["4", "5", "6", "7", "cpu"] and opts.offload_folder == str(tmp_path / "rank1")
    opts = for_process(LoadOptions(device_map="auto", max_memory="0=70GiB,3=70GiB,cpu=100GiB"), second)
    assert opts.max_memory == {"4": "70GiB", "7": "70GiB", "cpu": "100GiB"}
    with pytest.raises(ConfigError, match="names GPU 4, but each of the 2 processes on this node has 4 GPUs"):
        for_process(LoadOptions(device_map="auto", max_memory="4=70GiB"), second)
    placed = tmp_path / "map.json"
    placed.write_text(json.dumps({"model.vision_tower": 0, "model.language_model": 3, "lm_head": "cpu"}))
    opts = for_process(LoadOptions(device_map=str(placed)), second)
    assert opts.device_map == {"model.vision_tower": 4, "model.language_model": 7, "lm_head": "cpu"}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    with pytest.raises(ConfigError, match="16 processes per node with a device map each need at least 16 GPUs"):
        for_process(LoadOptions(device_map="auto"), second)
    assert for_process(LoadOptions(), second).device == "cuda:1"  # no map: the process's own GPU, as before


def test_an_adapter_on_a_disk_offloaded_model_is_refused_clearly(tiny_model_dir, tmp_path):
    whole = load_model(tiny_model_dir("llava"), device="cpu")
    with pytest.raises(ModelLoadError, match="offloaded to disk"):
        load_model(tiny_model_dir("llava"), adapter=str(tmp_path), device_map=_split_cpu_and_disk(whole),
                     offload_folder=str(tmp_path / "offload"))


@pytest.mark.slow
def test_two_audit_processes_each_with_a_device_map_share_the_work(tiny_model_dir, tmp_path, accelerate_launch):
    model = tiny_model_dir("llava")
    size = sum(p.numel() * p.element_size() for p in load_model(model, device="cpu").model.parameters())
    common = ["audit", "--model", model, "--data", "synth:shapes-p90/test-cp", "--max-samples", "6", "--probes",
              "modality_shapley,ablation", "--no-report"]
    assert main([*common, "--out", str(tmp_path / "single"), "--no-progress"]) == 0
    proc = subprocess.run([*accelerate_launch(), "-m", "mbias", *common, "--out", str(tmp_path / "double"), "--device-map", "auto",
                           "--max-memory", f"cpu={size // 2}", "--offload-folder", str(tmp_path / "offload")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _why(proc)
    assert proc.stderr.count("auditing (process 1 of 2)") >= 1 and "auditing:" not in proc.stderr  # one bar
    assert sorted(p.name for p in (tmp_path / "offload").iterdir()) == ["rank0", "rank1"]
    manifest = json.loads((tmp_path / "double" / "manifest.json").read_text())
    assert manifest["provenance"]["world_size"] == 2 and "disk" in manifest["device_map"].values()
    single, double = _records(tmp_path / "single"), _records(tmp_path / "double")
    assert [r["id"] for r in double] == [r["id"] for r in single]
    for a, b in zip(single, double, strict=True):  # one thread per process: float sums may differ in the last bits
        sa, sb = a["probes"]["modality_shapley"], b["probes"]["modality_shapley"]
        assert sa["language_share"] == pytest.approx(sb["language_share"], rel=1e-3, abs=1e-4)
        # the ablation's log-probs too: on some CPUs one thread and two round the same sums differently (6.0834293
        # vs 6.0834298 seen), so numbers agree to float32 noise and everything else exactly
        pa, pb = a["probes"]["ablation"], b["probes"]["ablation"]
        assert pa.keys() == pb.keys() and a["prediction"] == b["prediction"]
        for key in pa:
            if isinstance(pa[key], float):
                assert pa[key] == pytest.approx(pb[key], rel=1e-5, abs=1e-6), key
            else:
                assert pa[key] == pb[key], key


def test_images_are_checked_by_one_process_and_its_verdicts_reach_the_others(tmp_path, monkeypatch):
    """What the other processes of a data-parallel audit do: no image opened, the same records skipped."""
    from PIL import Image

    import mbias.data
    from mbias.data import load_data

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("not an image")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "image": img, "question": "q?", "answer": "a"}) + "\n"
                            for i, img in enumerate(["ok.png", "bad.png", "ok.png"])))
    verdicts = {}

    def judged(path):
        problem = mbias.data.check_image(path)
        if problem:
            verdicts[str(path)] = problem
        return problem

    first = load_data(str(data), on_error="skip", image_check=judged)
    monkeypatch.setattr(mbias.data, "check_image", lambda path: pytest.fail("opened an image again"))
    others = load_data(str(data), on_error="skip", image_check=lambda path: verdicts.get(str(path)))
    assert [e.id for e in first.examples] == [e.id for e in others.examples] == ["0", "2"]
    assert first.problems == others.problems and len(verdicts) == 1


# ---- fine-tuning: DDP equals one process with the doubled batch; sharded launchers refused where untested

# Settings whose per-sample signals agree between a batch and its halves: mnl's default "batch_classes" divides
# by the number of valid choices in the batch, which differs between halves (docs/scaling.md), so its DDP
# equality holds for reduction "batch"; ogm_ge's noise is scaled by each process's own gradient's std. lmh's gate
# learns fast here so that a gate trained on each process's half alone would show in two steps.
# The last run trains a modality-routed adapter (lora_routing): each process routes its own half of the batch.
DDP_RUNS = [(*run, False) for run in [
    ("plain", {}, 1), ("poe", {}, 1), ("lmh", {"gate_lr": 0.5}, 1), ("mdpo", {}, 1), ("msam", {}, 1), ("msam", {}, 2),
    ("miles", {"every_steps": 1}, 1), ("mnl", {"reduction": "batch"}, 1), ("cggm", {}, 1),
    ("ogm_ge", {"noise": "none", "mode": "gradient"}, 2)]] + [("miles", {"every_steps": 1}, 1, True)]


def _adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, settings, grad_accum, routed", DDP_RUNS)
def test_two_ddp_processes_train_the_adapter_of_one_process_with_the_doubled_batch(recipe, settings, grad_accum, routed,
                                                                                 tiny_model_dir, tmp_path, accelerate_launch):
    import yaml

    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"recipe_config": settings, "gradient_accumulation_steps": grad_accum, "max_train_samples": 16,
                                   "eval_samples": 8, "warmup_steps": 0.0, "logging_steps": 1}))
    common = ["finetune", "--model", tiny_model_dir("llava"), "--data", DATA, "--recipe", recipe, "--max-steps", "2",
              "--learning-rate", "1e-3", "--config", str(cfg), "--no-progress", *(["--lora-routing", "true"] if routed else [])]
    assert main([*common, "--per-device-train-batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    proc = subprocess.run([*accelerate_launch(), "-m", "mbias", *common, "--per-device-train-batch-size", "2", "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _why(proc)
    parts = ("", "vision", "language") if routed else ("",)
    one = {f"{p}/{k}": v for p in parts for k, v in _adapter_weights(tmp_path / "one" / p).items()}
    two = {f"{p}/{k}": v for p in parts for k, v in _adapter_weights(tmp_path / "two" / p).items()}
    assert one.keys() == two.keys()
    # Adam moves each weight by about lr (1e-3) per step whatever the gradient's size, so a process that used only
    # its half of the batch, or a statistic of its half, leaves 5-90% of the weights 1e-4..3e-3 away. Summation order
    # (one thread per process) leaves float noise, which Adam amplifies only where a gradient is itself near zero:
    # a handful of weights out of 38,400.
    diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    assert float((diff > 1e-4).float().mean()) < 1e-3 and float(diff.median()) < 1e-6, \
        (int((diff > 1e-4).sum()), float(diff.max()))


def test_every_recipe_states_its_launchers_and_refuses_the_others():
    from mbias.finetune.recipes import RECIPES

    for name in RECIPES.names():
        recipe = RECIPES.get(name)()
        recipe.check_launcher("single")
        recipe.check_launcher("ddp")
        recipe.check_launcher("fsdp")  # FSDP2: tests/test_fsdp.py shows every recipe exact on shards
        for launcher in ("fsdp", "deepspeed"):
            if launcher in recipe.launchers:
                continue
            with pytest.raises(ConfigError) as err:
                recipe.check_launcher(launcher)
            msg = str(err.value)
            assert "\n" not in msg and "one process or under DDP or FSDP" in msg and f"recipe {name!r}" in msg


def test_the_trainer_refuses_a_sharded_launch_before_training(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """What `accelerate launch` with a DeepSpeed config meets on a GPU machine: the trainer reports the launcher,
    the recipe refuses it before any step, and the CLI prints one line with exit code 2."""
    from mbias.finetune.trainer import BalancedTrainer

    monkeypatch.setattr(BalancedTrainer, "launcher", property(lambda self: "deepspeed"))
    monkeypatch.setattr(BalancedTrainer, "training_step", lambda *a, **k: pytest.fail("a step ran"))
    rc = main(["finetune", "--model", tiny_model_dir("llava"), "--data", DATA, "--recipe", "msam", "--max-steps",
               "1", "--out", str(tmp_path / "ft"), "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("mbias: error: recipe 'msam' runs in one process or under DDP or FSDP")
    assert "not under DeepSpeed: DeepSpeed's engine runs backward" in last


def test_finetune_refuses_a_device_map_under_several_processes(tmp_path, monkeypatch):
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import build_trainer

    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch sets; refused before any data or model loads
    with pytest.raises(ConfigError, match="splits one model over GPUs in one process"):
        build_trainer("zoo:not-built", DATA, tmp_path / "ft", config=FinetuneConfig(),
                      load=LoadOptions(device_map="auto"))


def test_finetune_refuses_offloaded_layers(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("llava")
    placed = tmp_path / "map.json"
    placed.write_text(json.dumps(_split_cpu_and_disk(load_model(model, device="cpu"))))
    assert main(["finetune", "--model", model, "--data", DATA, "--out", str(tmp_path / "ft"), "--device-map",
                 str(placed), "--offload-folder", str(tmp_path / "off"), "--max-steps", "1", "--no-progress"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' own progress bars
    assert last.startswith("mbias: error:") and "cannot train layers offloaded" in last
