"""The second battery of user input (issue 31), by class: odd but valid inputs work; hostile files, wrong values
and mismatched artefacts are refused in one line before any work; racing audits and a SIGTERM'd fine-tune leave
their folders consistent and resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mbias.cli import main
from mbias.errors import ConfigError, DataError, ModelLoadError
from mbias.example import open_image

FAST = "probe_config:\n  mm_shap: {n_permutations: 4}\n  degradation: {draws: 2, rates: [0.0, 0.5]}\n"


def _one_line(exc: Exception) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbias: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def tiny_llava(tiny_model_dir):
    return tiny_model_dir("llava")


# --- odd but valid: image modes, byte-order marks, CRLF, spaces and non-ASCII paths ---------------------------------

def _odd_images(folder: Path) -> dict[str, str]:
    """One file per image mode a PNG, JPEG or TIFF commonly carries, named with spaces and non-ASCII letters."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    images = {
        "rgba": Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "la": Image.new("LA", (16, 16), (100, 200)),
        "l": Image.new("L", (16, 16), 100), "one_bit": Image.new("1", (16, 16), 1),
        "i16": Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)), "palette": palette,
        "palette_alpha": transparent, "cmyk": Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
        "float": Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)),
    }
    names = {}
    for key, img in images.items():
        suffix = {"cmyk": ".jpg", "float": ".tiff"}.get(key, ".png")
        names[key] = f"{key} ïmage é{suffix}"
        img.save(folder / names[key], **({"transparency": 0} if key == "palette_alpha" else {}))
    return names


def test_every_common_image_mode_opens_as_rgb_with_its_tones(tmp_path):
    names = _odd_images(tmp_path)
    pixels = {key: open_image(tmp_path / name).getpixel((0, 0)) for key, name in names.items()}
    assert all(len(p) == 3 for p in pixels.values())
    assert pixels["i16"] == (156, 156, 156)  # 40000 / 65535 of white, not clipped to white as PIL converts it
    assert pixels["float"] == (128, 128, 128)
    assert pixels["l"] == (100, 100, 100) and pixels["palette"] == (200, 30, 30)
    assert pixels["palette_alpha"] == (200, 30, 30) and pixels["rgba"] == (255, 127, 127)  # over white
    assert pixels["cmyk"][0] > 200 and max(pixels["cmyk"][1:]) < 60


def _jsonl_with_bom_and_crlf(folder: Path, records: list[dict]) -> Path:
    path = folder / "dåta file.jsonl"
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n"
    path.write_bytes(("\ufeff" + text).encode("utf-8"))
    return path


def test_a_jsonl_file_with_a_byte_order_mark_and_crlf_endings_loads(tmp_path):
    from mbias.data import load_data

    names = _odd_images(tmp_path / "ïmages with spaces")
    records = [{"id": key, "image": f"ïmages with spaces/{name}", "question": "Which colour?", "answer": "red",
                "choices": ["red", "blue"]} for key, name in names.items()]
    loaded = load_data(str(_jsonl_with_bom_and_crlf(tmp_path, records)))
    assert [ex.id for ex in loaded.examples] == list(names)
    assert all(ex.load_image().mode == "RGB" for ex in loaded.examples)


def test_a_yaml_config_with_a_byte_order_mark_and_crlf_endings_loads(tmp_path):
    from mbias.config import load_yaml

    cfg = tmp_path / "cönfig file.yaml"
    cfg.write_bytes("\ufeffseed: 3\r\nprobe_config:\r\n  mm_shap: {grid: 2}\r\n".encode("utf-8"))
    assert load_yaml(cfg) == {"seed": 3, "probe_config": {"mm_shap": {"grid": 2}}}


@pytest.fixture(scope="module")
def odd_audit(tiny_llava, tmp_path_factory):
    """An audit run through the CLI on every odd image mode, from and into paths with spaces and non-ASCII."""
    root = tmp_path_factory.mktemp("odd") / "wörk späce"
    names = _odd_images(root / "imgs")
    records = [{"id": key, "image": f"imgs/{name}", "question": "Which colour is it?", "answer": "red",
                "choices": ["red", "blue"]} for key, name in names.items()]
    data = _jsonl_with_bom_and_crlf(root, records)
    cfg = root / "fäst.yaml"
    cfg.write_bytes(("\ufeff" + FAST).replace("\n", "\r\n").encode())
    out = root / "öut dir"
    assert main(["audit", "--model", tiny_llava, "--data", str(data), "--out", str(out), "--config", str(cfg),
                 "--probes", "modality_shapley,ablation", "--no-progress"]) == 0
    return out, len(records)


def test_an_audit_runs_on_odd_images_and_paths(odd_audit):
    out, n = odd_audit
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == n and (out / "report.html").exists()


# --- hostile files ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [40, 50], ids=["over-the-warning-limit", "over-the-error-limit"])
def test_a_decompression_bomb_is_one_line_naming_the_file(side, tmp_path, monkeypatch):
    from PIL import Image

    from mbias.data import check_image

    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above it and refuses above twice it
    assert "decompression bomb" in check_image(path) and str(path) in check_image(path)
    with pytest.raises(DataError) as err:
        open_image(path)
    assert str(path) in _one_line(err.value) and "megapixel" in str(err.value)


def test_a_symlink_loop_is_named_as_one(tmp_path):
    from mbias.data import check_image

    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert "symbolic link that loops" in check_image(tmp_path / "a.png")
    assert "symbolic link that points to nothing" in check_image(tmp_path / "dangling.png")
    with pytest.raises(DataError) as err:
        open_image(tmp_path / "a.png")
    assert "loops" in _one_line(err.value)


@pytest.mark.parametrize("change,message", [
    ({"choices": ["red", "red", "blue"]}, "repeats 'red'"),
    ({"choices": ["red", "Red "]}, "repeats 'Red '"),
    ({"choices": ["red"]}, "at least two strings"),
    ({"choices": ["red", " "]}, "empty choice"),
    ({"question": "why " * 6000}, "24,000 characters long, over the 20,000"),
])
def test_choices_that_leave_nothing_to_choose_and_huge_questions_are_refused(change, message, tmp_path):
    from PIL import Image

    from mbias.data import load_data

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    record = {"id": "a", "image": "x.png", "question": "What colour?", "answer": "red", **change}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_data(str(tmp_path / "d.jsonl"))
    assert message in _one_line(err.value) and "line 1" in str(err.value)
    assert time.perf_counter() - t0 < 5


# --- wrong values in flags and configs ---------------------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    ({"probes": 5}, "probes must be a list of probe names"),
    ({"probes": []}, "no probes selected"),
    ({"probes": [1, 2]}, "probes must be a list of probe names"),
    ({"scoring": 5}, "scoring must be a mapping"),
    ({"probe_config": [1, 2]}, "probe_config must map probe names"),
    ({"probe_config": {"mm_shap": 5}}, "probe_config must map probe names"),
    ({"columns": 5}, "columns must map fields"),
])
def test_audit_config_fields_of_the_wrong_type_are_one_line(values, message):
    from mbias.config import build_config
    from mbias.diagnose.config import AuditConfig

    with pytest.raises(ConfigError) as err:
        build_config(AuditConfig, values, where="audit.yaml")
    assert message in _one_line(err.value)


@pytest.mark.parametrize("values,message", [
    ({"recipe_config": "[1"}, "recipe_config '[1' is not valid YAML"),
    ({"eval_strategy": "steps"}, "drop eval_strategy"),
    ({"bf16": True}, "bf16"),  # TrainingArguments' own check, on a machine without a bf16 GPU
    ({"save_total_limit": 0}, "FinetuneConfig.save_total_limit must be an integer >= 1 or unset; got 0"),
    ({"dataloader_num_workers": -1}, "FinetuneConfig.dataloader_num_workers must be an integer >= 0"),
    ({"lora_targets": 3}, "lora_targets must be a list"),
])
def test_finetune_settings_that_transformers_would_reject_deep_inside_are_one_line(values, message):
    import torch

    from mbias.config import build_config
    from mbias.finetune.config import FinetuneConfig

    if "bf16" in values and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        pytest.skip("this machine trains in bf16")
    with pytest.raises(ConfigError) as err:
        build_config(FinetuneConfig, values, where="ft.yaml")
    assert message in _one_line(err.value)


def test_lora_targets_may_be_written_as_text():
    from mbias.finetune.config import FinetuneConfig

    assert FinetuneConfig(lora_targets="language, projector").lora_targets == ["language", "projector"]


@pytest.mark.parametrize("flags,message", [
    (["--probes", ""], "no probes selected"),
    (["--batch-size", "-1"], "ScoringConfig.batch_size must be an integer >= 1"),
    (["--max-samples", "-3"], "AuditConfig.max_samples"),
    (["--device-map", "gpu0"], "device_map must be one of auto"),
    (["--device-map", "auto", "--max-memory", "0=lots"], "'lots' for 0 is not a size"),
    (["--device-map", "auto", "--max-memory", "=5GiB"], "is not a device"),
    (["--device-map", "auto", "--max-memory", "0=0GiB,cpu=8GiB"], "0=0GiB leaves no room on that device"),
])
def test_wrong_flag_values_stop_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    err = _refused(capsys, ["audit", "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/test-cp",
                            "--out", str(out), *flags])
    assert message in err
    assert not out.exists()


def test_a_column_mapping_naming_a_column_the_data_lacks_is_one_line(tmp_path):
    from PIL import Image

    from mbias.data import load_data

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "x.png", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError) as err:
        load_data(str(tmp_path / "d.jsonl"), columns={"question": "text"})
    assert "missing 'text' (the question column)" in _one_line(err.value)


def test_a_hub_dataset_while_offline_answers_within_seconds(monkeypatch):
    pytest.importorskip("datasets")
    from mbias.data import load_data

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_data("hf:mbias-no-such-org/no-such-set:test")
    assert "could not load hf:mbias-no-such-org/no-such-set:test" in _one_line(err.value)
    assert time.perf_counter() - t0 < 30


# --- mismatched artefacts ----------------------------------------------------------------------------------------

def test_an_adapter_trained_on_another_base_model_is_one_line(tiny_llava, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mbias.models import load_model
    from mbias.tiny import build_tiny

    base = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    targets = [n for n, _ in base.named_modules() if n.endswith("multi_modal_projector.linear_1")]
    get_peft_model(base, LoraConfig(target_modules=targets, r=2)).save_pretrained(tmp_path / "adapter")
    wider = build_tiny("llava", tmp_path / "wider", hidden=96)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(wider), device="cpu", adapter=str(tmp_path / "adapter"))
    msg = _one_line(err.value)
    assert "does not fit the model" in msg and f"trained on {tiny_llava}" in msg and "--model" in msg


@pytest.mark.parametrize("edit,message", [
    ("del s['verdict']", "summary.verdict is missing"),
    ("s['verdict']['dominant_modality'] = 'sideways'", "dominant_modality must be one of language"),
    ("del s['probes']['modality_shapley']['language_share']", "modality_shapley.language_share is missing"),
    ("s['n_samples'] = 'many'", "summary.n_samples must be integer"),
    ("s['schema_version'] = 99", "summary.schema_version must be 1"),
    ("s.clear()", "summary.schema_version is missing"),
])
def test_report_says_what_an_edited_summary_breaks(edit, message, odd_audit, tmp_path, capsys):
    import shutil

    out = tmp_path / "audit"
    shutil.copytree(odd_audit[0], out)
    s = json.loads((out / "summary.json").read_text())
    exec(edit)
    (out / "summary.json").write_text(json.dumps(s))
    err = _refused(capsys, ["report", str(out)])
    assert message in err and "summary.json" in err


# --- concurrency: one audit per folder ---------------------------------------------------------------------------

def test_an_audit_into_a_folder_in_use_is_refused_at_once(tiny_llava, tmp_path, capsys):
    from mbias.outdir import LOCK, out_dir_lock

    out = tmp_path / "audit"
    with out_dir_lock(out, "audit"):
        err = _refused(capsys, ["audit", "--model", tiny_llava, "--data", "synth:shapes-p90/test-cp", "--out",
                                str(out), "--max-samples", "2", "--probes", "modality_shapley", "--no-progress"])
        assert f"{out} is in use by another mbias audit (pid {os.getpid()}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    # released: the same command runs, and a refused run (bad data) leaves no folder behind
    assert main(["audit", "--model", tiny_llava, "--data", "synth:shapes-p90/test-cp", "--out", str(out),
                 "--max-samples", "2", "--probes", "modality_shapley", "--no-progress", "--no-report"]) == 0
    assert main(["audit", "--model", tiny_llava, "--data", str(tmp_path / "none.jsonl"), "--out",
                 str(tmp_path / "new" / "audit"), "--no-progress"]) == 2
    assert "no dataset at" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()


def test_a_fine_tune_into_a_folder_in_use_is_refused_at_once(tiny_llava, tmp_path, capsys):
    from mbias.outdir import out_dir_lock

    out = tmp_path / "ft"
    with out_dir_lock(out, "fine-tune"):
        err = _refused(capsys, ["finetune", "--model", tiny_llava, "--data", "synth:shapes-p90/train", "--out",
                                str(out), "--max-steps", "1", "--max-train-samples", "4", "--no-progress"])
        assert f"{out} is in use by another mbias fine-tune (pid {os.getpid()}" in err


def test_two_audits_racing_into_one_folder_leave_it_consistent(tiny_llava, tmp_path):
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST)
    out = tmp_path / "raced"
    cmd = [sys.executable, "-m", "mbias", "audit", "--model", tiny_llava, "--data", "synth:shapes-p90/test-cp",
           "--out", str(out), "--max-samples", "6", "--probes", "modality_shapley,ablation", "--config", str(cfg),
           "--no-progress", "--no-report"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        if rc != 0:
            assert rc == 2 and "is in use by another mbias audit" in err.strip().splitlines()[-1], err[-2000:]
    ids = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(ids) == 6 and len(set(ids)) == 6
    from mbias.store import summary_problem

    summary = json.loads((out / "summary.json").read_text())
    assert summary_problem(summary) is None and summary["n_samples"] == 6


def test_a_rerun_with_fewer_samples_summarises_those(tiny_llava, tmp_path):
    out = tmp_path / "audit"
    common = ["audit", "--model", tiny_llava, "--data", "synth:shapes-p90/test-cp", "--out", str(out),
              "--probes", "modality_shapley", "--no-progress"]
    assert main([*common, "--max-samples", "4"]) == 0
    assert main([*common, "--max-samples", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_samples"] == 2


# --- signals: a fine-tune stopped with SIGTERM resumes with the same command --------------------------------------

def test_a_sigterm_fine_tune_resumes_with_the_same_command(tiny_llava, tmp_path):
    from mbias.finetune.trainer import IN_PROGRESS

    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "mbias", "finetune", "--model", tiny_llava, "--data", "synth:shapes-p90/train",
           "--out", str(out), "--recipe", "plain", "--max-steps", "40", "--per-device-train-batch-size", "2",
           "--max-train-samples", "16", "--eval-samples", "4", "--logging-steps", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "training_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].strip().splitlines()
    assert proc.returncode == 143, err[-5:]  # 128 + SIGTERM, as a scheduler expects
    assert "fine-tuning stopped by SIGTERM at step" in err[-1] and "run the same command again" in err[-1]
    stopped = int(err[-1].split(" at step ")[1].split()[0])
    assert 2 <= stopped < 40, "the signal came too late to test resuming"
    assert (out / "checkpoints" / f"checkpoint-{stopped}" / "trainer_state.json").exists()
    assert not (out / "adapter_model.safetensors").exists()  # the folder does not pass for a finished run
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming the interrupted run in {out} from checkpoint-{stopped}" in done.stderr
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert (out / "adapter_model.safetensors").exists() and not (out / "checkpoints" / IN_PROGRESS).exists()


def _fake_checkpoints(folder: Path, steps: dict[int, bool], settings: dict) -> None:
    from mbias.finetune.trainer import IN_PROGRESS

    folder.mkdir(parents=True)
    for step, complete in steps.items():
        (folder / f"checkpoint-{step}").mkdir()
        if complete:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (folder / IN_PROGRESS).write_text(json.dumps({"model": "m", "settings": settings}))


def test_resuming_skips_a_half_written_checkpoint_and_refuses_other_settings(tmp_path):
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.trainer import interrupted_checkpoint, resume_settings

    config = FinetuneConfig(recipe="poe", learning_rate=1e-3)
    ckpts = tmp_path / "ft" / "checkpoints"
    _fake_checkpoints(ckpts, {2: True, 4: True, 6: False}, resume_settings(config))
    assert interrupted_checkpoint(ckpts, config, "m") == ckpts / "checkpoint-4"
    with pytest.raises(ConfigError) as err:
        interrupted_checkpoint(ckpts, FinetuneConfig(recipe="poe", learning_rate=5e-4), "m")
    msg = _one_line(err.value)
    assert "stopped at checkpoint-4 with learning_rate 0.001, not 0.0005" in msg and "another --out" in msg
    assert interrupted_checkpoint(tmp_path / "elsewhere", config, "m") is None  # nothing was interrupted
